//! docs/rollout.md cannot rot: every shell block of the guide is run, in order, in one bash
//! session, against the demo's sample portal (`consent-gateway demo`, its `origin:` URL as
//! `ORIGIN`), from the repository's root, with the binary under test first on `PATH`. A
//! ```` ```text ```` block right after a shell block is the output that block must print: each of
//! its lines must match a line of the block's output (stdout and stderr), `…` standing for any
//! text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// A shell block of the guide and the output shown after it.
#[derive(Debug)]
struct Block {
    line: usize,
    code: String,
    expect: Vec<String>,
}

/// The guide's fenced blocks: `sh`/`bash`/`shell` are run; `text` is the expected output of the
/// shell block right before it (only blank lines between). Any other fence fails the test, so
/// no command can hide from it.
fn blocks(md: &str) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    let mut lines = md.lines().enumerate();
    // Whether only blank lines separate the current line from the end of the last shell block.
    let mut after_shell = false;
    while let Some((i, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            if !line.trim().is_empty() {
                after_shell = false;
            }
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut body = Vec::new();
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            body.push(l.get(indent..).unwrap_or(l.trim_start()).to_owned());
        }
        match info.trim() {
            "sh" | "bash" | "shell" => {
                out.push(Block {
                    line: i + 1,
                    code: body.join("\n"),
                    expect: Vec::new(),
                });
                after_shell = true;
            }
            "text" => {
                let last = out
                    .last_mut()
                    .filter(|b| after_shell && b.expect.is_empty());
                let last = last.unwrap_or_else(|| {
                    panic!(
                        "docs/rollout.md:{}: an output block must follow a shell block",
                        i + 1
                    )
                });
                last.expect = body.into_iter().filter(|l| !l.trim().is_empty()).collect();
                after_shell = false;
            }
            other => panic!(
                "docs/rollout.md:{}: fence {other:?}: use sh for commands, text for their output",
                i + 1
            ),
        }
    }
    out
}

/// `pattern` with `…` standing for any text matches the whole of `line` (both trimmed).
fn matches(pattern: &str, line: &str) -> bool {
    let (pattern, line) = (pattern.trim(), line.trim());
    let pieces: Vec<&str> = pattern.split('…').collect();
    let [first, middle @ .., last] = pieces.as_slice() else {
        return pattern == line;
    };
    if middle.is_empty() && pieces.len() == 1 {
        return pattern == line;
    }
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    for p in middle {
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[test]
fn pattern_matching_of_expected_output() {
    assert!(matches("9", " 9 "));
    assert!(!matches("9", "19"));
    assert!(matches(
        "set-cookie: _ga=GA1.1.…",
        "set-cookie: _ga=GA1.1.2.3; Path=/"
    ));
    assert!(matches(
        "…/hosts/p.toml: x -> http://127.0.0.1:… (y)",
        "/tmp/a/hosts/p.toml: x -> http://127.0.0.1:80 (y)"
    ));
    assert!(!matches(
        "…/hosts/p.toml: x (y)",
        "/tmp/a/hosts/p.toml: x (z)"
    ));
    assert!(!matches("a…b", "ab c"));
}

#[test]
fn every_shell_block_of_the_rollout_guide_runs_against_the_demo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let md = std::fs::read_to_string(root.join("docs/rollout.md")).unwrap();
    let blocks = blocks(&md);
    assert!(blocks.len() >= 10, "{} shell blocks", blocks.len());
    let curl = Command::new("curl").arg("--version").output();
    assert!(
        curl.is_ok_and(|o| o.status.success()),
        "the rollout guide needs curl (apt-get install -y curl)"
    );

    // The demo's sample portal plays the operator's portal.
    let bin = Path::new(env!("CARGO_BIN_EXE_consent-gateway"));
    let mut demo = Command::new(bin)
        .args(["demo", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo_out = BufReader::new(demo.stdout.take().unwrap());
    let mut origin = None;
    let mut line = String::new();
    while origin.is_none() && demo_out.read_line(&mut line).unwrap() > 0 {
        origin = line
            .trim()
            .strip_prefix("origin:")
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned);
        line.clear();
    }
    let origin = origin.expect("the demo prints its origin: URL");

    let mut script = String::from(
        "set -euo pipefail\nexec 2>&1\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n\
         trap 'exit 1' TERM INT\n",
    );
    for (i, b) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '@@@ block {i}'\n{}\n", b.code));
    }
    script.push_str("echo '@@@ end'\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rollout.sh");
    std::fs::write(&file, &script).unwrap();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // `timeout` ends a block that waits for ever (a reload that never comes) with a failure.
    let out = Command::new("timeout")
        .args(["180", "bash"])
        .arg(&file)
        .current_dir(root)
        .env("PATH", path)
        .env("ORIGIN", &origin)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = demo.kill();
    let _ = demo.wait();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();

    // The output of each block, by its marker.
    let mut outputs: Vec<Vec<&str>> = Vec::new();
    let mut ended = false;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("@@@ ") {
            if rest == "end" {
                ended = true;
            } else {
                outputs.push(Vec::new());
            }
        } else if let Some(o) = outputs.last_mut() {
            o.push(l);
        }
    }
    let failed_at = outputs
        .len()
        .checked_sub(1)
        .and_then(|i| blocks.get(i))
        .map_or(0, |b| b.line);
    assert!(
        out.status.success() && ended,
        "docs/rollout.md: the shell block at line {failed_at} failed ({}):\n{text}",
        out.status
    );
    assert_eq!(outputs.len(), blocks.len());
    for (b, got) in blocks.iter().zip(&outputs) {
        for want in &b.expect {
            assert!(
                got.iter().any(|l| matches(want, l)),
                "docs/rollout.md:{}: no line of the output matches {want:?}; the output:\n{}",
                b.line,
                got.join("\n")
            );
        }
    }
}
