//! Reload figures: compiling a large registry, and the latency from a change on disk to the new
//! generation serving (through the notify watcher and its debounce).
//!
//! `cargo bench --bench reload` prints median and max of each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consent_gateway::config::{
    compile_registry, compile_registry_cached, load_registry, CompileCache,
};
use consent_gateway::control::live::{spawn_watcher, Live, WatchOptions};
use consent_gateway::metrics::Metrics;

/// One registry file with `cookies` entries (a mix of names and prefixes, five categories).
fn host_file(i: usize, cookies: usize) -> String {
    let mut s = format!(
        "hosts = [\"portal{i}.example\", \"*.portal{i}.example\"]\nupstream = \"http://10.0.{}.{}:8080\"\ngpc = [\"marketing\"]\n",
        i / 250,
        i % 250
    );
    let cats = [
        "necessary",
        "statistical",
        "marketing",
        "preferences",
        "third-party",
    ];
    for c in 0..cookies {
        let cat = cats[c % cats.len()];
        let key = if c % 2 == 0 { "prefix" } else { "name" };
        s.push_str(&format!(
            "\n[[cookie]]\n{key} = \"cookie_{c}_\"\ncategory = \"{cat}\"\nconsent = [\"{cat}\", \"C000{}\"]\nprovider = \"Provider {c}\"\nfunction = \"Function {c}\"\npurpose = \"Purpose of cookie {c} on portal {i}\"\n",
            c % 5
        ));
    }
    s
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    // 1. Compile 1,000 hosts x 40 cookies.
    let files: Vec<(PathBuf, String)> = (0..1000)
        .map(|i| {
            (
                PathBuf::from(format!("hosts/portal{i:04}.toml")),
                host_file(i, 40),
            )
        })
        .collect();
    let bytes: usize = files.iter().map(|(_, t)| t.len()).sum();
    let mut times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let r = compile_registry(&files).unwrap();
        times.push(t.elapsed());
        assert_eq!(r.policies.len(), 1000);
    }
    let (cmed, cmax) = stats(times);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for (_, text) in &files {
            let v: toml::Table = toml::from_str(text).unwrap();
            std::hint::black_box(v);
        }
        times.push(t.elapsed());
    }
    let (pmed, _) = stats(times);
    println!("  of which TOML parsing alone (to a toml::Table): median {pmed:?}");
    let (med, max) = (cmed, cmax);
    println!(
        "compile 1000 hosts x 40 cookies ({:.1} MiB of TOML): median {med:?}, max {max:?}",
        bytes as f64 / 1048576.0
    );

    // A reload where one file of the 1,000 changed: the others are reused from the cache.
    let mut cache = CompileCache::default();
    compile_registry_cached(&files, &mut cache).unwrap();
    let mut times = Vec::new();
    for round in 0..15 {
        let mut changed = files.clone();
        changed[round * 37 % 1000]
            .1
            .push_str(&format!("\n# edit {round}\n"));
        let t = Instant::now();
        let r = compile_registry_cached(&changed, &mut cache).unwrap();
        times.push(t.elapsed());
        assert_eq!(r.policies.len(), 1000);
    }
    let (med, max) = stats(times);
    println!("recompile after one of the 1000 files changed (cache): median {med:?}, max {max:?}");

    // Same, read from disk (what a reload does).
    let dir = tempfile::tempdir().unwrap();
    for (p, t) in &files {
        std::fs::write(dir.path().join(p.file_name().unwrap()), t).unwrap();
    }
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        load_registry(dir.path()).unwrap();
        times.push(t.elapsed());
    }
    let (med, max) = stats(times);
    println!("read + compile the same from disk: median {med:?}, max {max:?}");

    // 2. Change on disk -> new generation serving, through the watcher.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portal.toml");
        std::fs::write(&file, host_file(0, 40)).unwrap();
        let live = Arc::new(Live::new(load_registry(dir.path()).unwrap(), dir.path().to_owned(), Arc::new(Metrics::new())));
        let _w = spawn_watcher(Arc::clone(&live), WatchOptions::new(vec![dir.path().to_owned()], Duration::from_secs(3600))).unwrap();
        let mut rx = live.subscribe();
        let mut times = Vec::new();
        for round in 1..=40u64 {
            let text = host_file(0, 40).replace("Purpose of cookie 0", &format!("Purpose {round}"));
            let tmp = dir.path().join(".portal.toml.tmp");
            std::fs::write(&tmp, text).unwrap();
            let t = Instant::now();
            std::fs::rename(&tmp, &file).unwrap();
            while live.load().generation < round + 1 {
                tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.unwrap().unwrap();
            }
            times.push(t.elapsed());
        }
        let (med, max) = stats(times);
        println!("change on disk -> new generation serving (40 rounds, debounce 100 ms): median {med:?}, max {max:?}");
    });
}
