//! Config files: serde types shaped like the files, compiled into validated types.
//!
//! `config/gateway.toml` becomes a [`GatewayConfig`]; every `*.toml` in the registry dir becomes a
//! [`HostPolicy`], and all of them together a [`Registry`]. Every error names the file, line,
//! column and field (`config/hosts/paris.toml:14:3: cookie[2]: set either name or prefix, not
//! both`). Unknown fields are errors, so a typo never silently weakens the policy. Relative paths
//! are resolved against the directory of the file that names them.
//!
//! The parts: [`span`] (errors with their place), [`gateway`] (the `gateway.toml` schema),
//! [`host_file`] (one registry file compiled), [`dir`] (the registry directory read, digested and
//! compiled into a [`Registry`]).

pub mod dir;
pub mod gateway;
pub mod host_file;
pub mod span;

#[cfg(test)]
pub(crate) mod fixture;

pub use dir::*;
pub use gateway::*;
pub use host_file::*;
pub use span::{ConfigError, ConfigErrors};

use std::path::Path;

use crate::policy::registry::Registry;

/// Loads the gateway file and its registry.
pub fn load(path: &Path) -> Result<(GatewayConfig, Registry), ConfigErrors> {
    let gateway = load_gateway(path)?;
    let registry = load_registry(&gateway.registry_dir)?;
    Ok((gateway, registry))
}

#[cfg(test)]
mod tests {
    use super::dir::*;
    use super::gateway::*;
    use super::host_file::*;

    use super::*;

    use std::path::PathBuf;
    use std::time::Duration;

    use crate::policy::registry::{Mode, UnknownCookies};

    fn host_err(text: &str) -> String {
        match parse_host_file(Path::new("hosts/t.toml"), text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const HEAD: &str = "hosts = [\"t.example\"]\nupstream = \"http://127.0.0.1:8000\"\n";

    #[test]
    fn durations_parse() {
        let cases = [
            ("10s", 10_000),
            ("500ms", 500),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            (" 3s ", 3000),
            ("1h 30m", 5_400_000),
            ("1.5s", 1500),
            ("10sec", 10_000),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for s in [
            "",
            "10",
            "s",
            "-1s",
            "10S",
            "10 parsecs",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for s in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(s.parse::<Cidr>().is_err(), "{s}");
        }
    }

    #[test]
    fn positions_are_line_and_column() {
        let text = format!("{HEAD}\n[[cookie]]\nname = \"a\"\ncategory = \"x\"\n\n[[cookie]]\ncategory = \"y\"\nname = \"b\"\nprefix = \"c\"\n");
        assert_eq!(
            host_err(&text),
            "hosts/t.toml:11:10: cookie[1]: set either name or prefix, not both"
        );
    }

    #[test]
    fn neither_name_nor_prefix_points_at_the_entry() {
        let text = format!("{HEAD}[[cookie]]\ncategory = \"x\"\n");
        let e = host_err(&text);
        assert!(e.starts_with("hosts/t.toml:"), "{e}");
        assert!(e.ends_with("cookie[0]: set either name or prefix"), "{e}");
        let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
        assert!((3..=4).contains(&line), "{e}");
    }

    #[test]
    fn unknown_field_is_an_error() {
        let e = host_err(&format!(
            "{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"x\"\ncategroy = \"y\"\n"
        ));
        assert!(
            e.starts_with("hosts/t.toml:6:1: unknown field `categroy`"),
            "{e}"
        );
    }

    #[test]
    fn each_invalid_host_file_is_refused_with_its_place() {
        let cases: Vec<(String, &str)> = vec![
            ("hosts = []\nupstream = \"http://a:1\"\n".into(), "1:9: hosts: list at least one host name"),
            ("hosts = [\"\"]\nupstream = \"http://a:1\"\n".into(), "1:10: hosts[0]: host pattern is empty"),
            ("hosts = [\"a.*.b\"]\nupstream = \"http://a:1\"\n".into(), "1:10: hosts[0]: host pattern \"a.*.b\""),
            ("hosts = [\"a\", \"A.\"]\nupstream = \"http://a:1\"\n".into(), "1:15: hosts[1]: a is listed twice"),
            ("hosts = [\"a\"]\nupstream = \"ftp://a:1\"\n".into(), "2:12: upstream: \"ftp://a:1\" is not an absolute"),
            ("hosts = [\"a\"]\nupstream = \"a:1\"\n".into(), "2:12: upstream: \"a:1\" is not an absolute"),
            ("hosts = [\"a\"]\nupstream = \"http://a:1/x\"\n".into(), "2:12: upstream: \"http://a:1/x\" is not an absolute"),
            (format!("{HEAD}mode = \"enforcing\"\n"), "3:8: unknown variant `enforcing`, expected `enforce` or `report-only`"),
            (format!("{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"x\"\n[[cookie]]\nname = \"a\"\ncategory = \"y\"\n"), "7:8: cookie[1]: name \"a\" is already listed by cookie[0]"),
            (format!("{HEAD}[[cookie]]\nname = \"a b\"\ncategory = \"x\"\n"), "4:8: cookie[0]: name \"a b\" is not a valid cookie name"),
            (format!("{HEAD}[[cookie]]\nname = \"cookies_preferences\"\ncategory = \"x\"\n"), "5:12: cookie[0]: \"cookies_preferences\" is the consent cookie"),
            (format!("{HEAD}gpc = [\"marketting\"]\n[[cookie]]\nname = \"a\"\ncategory = \"marketing\"\n"), "3:8: gpc[0]: no cookie entry has category \"marketting\""),
            (format!("{HEAD}gpc = [\"necessary\"]\n"), "3:8: gpc[0]: \"necessary\" needs no consent"),
            (format!("{HEAD}unknown_cookies = \"keep\"\npurge_unknown = true\n"), "4:17: purge_unknown: needs unknown_cookies = \"drop\""),
            (format!("{HEAD}upstream_ca = \"ca.pem\"\n"), "3:15: upstream_ca: only used with an https:// upstream"),
            (format!("{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"x\"\nconsent = []\n"), "6:11: cookie[0]: consent keys must be non-empty strings"),
            (format!("{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"x\"\npath = \"x\"\n"), "6:8: cookie[0]: path \"x\" must start with '/'"),
            (format!("{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"x\"\ndomains = [\"*.x\"]\n"), "6:12: cookie[0]: domains[0]: \"*.x\" is not a domain name"),
            ("hosts = [\"a\"\n".into(), "1:13: unclosed array, expected `]`"),
        ];
        for (text, want) in cases {
            let e = host_err(&text);
            let want = format!("hosts/t.toml:{want}");
            assert!(e.starts_with(&want), "want {want:?}\n got {e:?}");
        }
    }

    #[test]
    fn duplicate_host_across_files_names_both() {
        let files = vec![
            (
                PathBuf::from("hosts/a.toml"),
                "hosts = [\"x.example\"]\nupstream = \"http://a:1\"\n".to_owned(),
            ),
            (
                PathBuf::from("hosts/b.toml"),
                "hosts = [\"y.example\", \"X.example.\"]\nupstream = \"http://a:1\"\n".to_owned(),
            ),
        ];
        let e = compile_registry(&files).unwrap_err().to_string();
        assert_eq!(
            e,
            "hosts/b.toml:1:23: hosts: x.example is already served by hosts/a.toml"
        );
    }

    #[test]
    fn cached_compile_equals_a_fresh_one_and_survives_errors() {
        let file = |name: &str, host: &str, cat: &str| {
            (
                PathBuf::from(format!("hosts/{name}.toml")),
                format!("hosts = [\"{host}\"]\nupstream = \"http://a:1\"\n[[cookie]]\nname = \"c\"\ncategory = \"{cat}\"\n"),
            )
        };
        let mut cache = CompileCache::default();
        let v1 = vec![file("a", "a.test", "x"), file("b", "b.test", "y")];
        let r1 = compile_registry_cached(&v1, &mut cache).unwrap();
        assert_eq!(r1.digest, compile_registry(&v1).unwrap().digest);
        assert_eq!(cache.digest(&v1), r1.digest);
        // One file changes: the other's compiled policy is reused, the result is the same as fresh.
        let v2 = vec![file("a", "a.test", "x"), file("b", "b.test", "z")];
        let r2 = compile_registry_cached(&v2, &mut cache).unwrap();
        let fresh = compile_registry(&v2).unwrap();
        assert_eq!(r2.digest, fresh.digest);
        assert_ne!(r2.digest, r1.digest);
        assert!(
            std::sync::Arc::ptr_eq(&r1.policies[0], &r2.policies[0]),
            "unchanged file reused"
        );
        assert_eq!(r2.lookup(b"b.test").unwrap().cookies[0].category, "z");
        // A broken change fails and leaves the cache as it was.
        let bad = vec![
            file("a", "a.test", "x"),
            (PathBuf::from("hosts/b.toml"), "hosts = [".to_owned()),
        ];
        assert!(compile_registry_cached(&bad, &mut cache).is_err());
        assert_eq!(cache.digest(&v2), r2.digest);
        // A host moving to another file in the same change is not a duplicate.
        let moved = vec![file("a", "b.test", "x"), file("b", "a.test", "z")];
        let r3 = compile_registry_cached(&moved, &mut cache).unwrap();
        assert_eq!(
            r3.lookup(b"b.test").unwrap().file,
            PathBuf::from("hosts/a.toml")
        );
    }

    #[test]
    fn upstream_ca_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let text = format!(
            "hosts = [\"t.example\"]\nupstream = \"https://o.internal\"\nupstream_ca = \"{}\"\n",
            garbage.display()
        );
        let e = host_err(&text);
        assert!(
            e.starts_with("hosts/t.toml:3:15: upstream_ca:") && e.ends_with("no CERTIFICATE block"),
            "{e}"
        );
        let missing = text.replace("garbage.pem", "missing.pem");
        assert!(
            host_err(&missing).contains("cannot read"),
            "{}",
            host_err(&missing)
        );
    }

    #[test]
    fn defaults_are_fail_closed() {
        let p = parse_host_file(Path::new("t.toml"), HEAD).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.unknown_cookies, UnknownCookies::Drop);
        assert!(p.strip_request_cookies && p.purge && !p.purge_unknown);
        assert_eq!(p.consent.cookie, "cookies_preferences");
        assert_eq!(p.upstream.authority.as_str(), "127.0.0.1:8000");
    }

    #[test]
    fn consent_keys_default_to_category_and_accept_one_or_many() {
        let text = format!(
            "{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"statistical\"\n[[cookie]]\nname = \"b\"\ncategory = \"s\"\nconsent = \"ga\"\n[[cookie]]\nname = \"c\"\ncategory = \"s\"\nconsent = [\"ga\", \"C0002\"]\n"
        );
        let p = parse_host_file(Path::new("t.toml"), &text).unwrap();
        let keys: Vec<Vec<String>> = p.cookies.iter().map(|c| c.consent.clone()).collect();
        assert_eq!(
            keys,
            vec![
                vec!["statistical".to_owned()],
                vec!["ga".into()],
                vec!["ga".into(), "C0002".into()]
            ]
        );
    }

    #[test]
    fn upstream_gets_default_port() {
        assert_eq!(
            parse_upstream("https://origin.internal")
                .unwrap()
                .authority
                .as_str(),
            "origin.internal:443"
        );
        assert_eq!(
            parse_upstream("http://origin.internal/")
                .unwrap()
                .authority
                .as_str(),
            "origin.internal:80"
        );
        assert!(parse_upstream("http://user@origin").is_err());
    }

    fn gw_err(text: &str) -> String {
        parse_gateway(Path::new("config/gateway.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn gateway_file_errors_name_their_place() {
        let cases = [
            (
                "[listen]\nhttp = \"nope\"\n",
                "config/gateway.toml:2:8: listen.http: \"nope\" is not an address",
            ),
            (
                "[listen]\n",
                "config/gateway.toml:1:1: listen: set http, https or both",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nidle_timeout = \"ten s\"\n",
                "config/gateway.toml:4:16: limits.idle_timeout: invalid duration \"ten s\"",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nmax_header_bytes = 10\n",
                "config/gateway.toml:4:20: limits.max_header_bytes: must be 8192",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nmax_purge_headers = 0\n",
                "config/gateway.toml:4:21: limits.max_purge_headers: must be 1 to 1024",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nupstream_read_size = \"1KiB\"\n",
                "config/gateway.toml:4:22: limits.upstream_read_size: must be 4KiB to 64KiB",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[proxy]\ntrusted_proxies = [\"10/8\"]\n",
                "config/gateway.toml:4:20: proxy.trusted_proxies[0]:",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[proxy]\nworkers = 5000\n",
                "config/gateway.toml:4:11: proxy.workers: at most 1024",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[proxy]\nworkers = -1\n",
                "config/gateway.toml:4:11:",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\nextra = 1\n",
                "config/gateway.toml:3:1: unknown field `extra`",
            ),
            (
                "[listen]\nhttps = \"127.0.0.1:1\"\n",
                "config/gateway.toml:1:1: listen.https: needs a [tls] table",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"a.jsonl\"\nmax_bytes = \"10 MB\"\n",
                "config/gateway.toml:5:13: audit.max_bytes: invalid size \"10 MB\"",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"a.jsonl\"\nmax_bytes = \"512\"\n",
                "config/gateway.toml:5:13: audit.max_bytes: must be at least 1KiB",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"a.jsonl\"\nkeep = -1\n",
                "config/gateway.toml:5:8: audit.keep: must be 0 to 1000",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"\"\n",
                "config/gateway.toml:4:8: audit.path: set a file path or \"stdout\"",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"a.jsonl\"\nqueue = 0\n",
                "config/gateway.toml:5:9: audit.queue: must be 1 to 1048576",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\nfile = \"a.jsonl\"\n",
                "config/gateway.toml:4:1: unknown field `file`",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[inventory]\nmax_names_per_host = -1\n",
                "config/gateway.toml:4:22: inventory.max_names_per_host: must be 0 (off) to 1000000",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[inventory]\nknowledge = true\n",
                "config/gateway.toml:4:1: unknown field `knowledge`",
            ),
        ];
        for (text, want) in cases {
            let e = gw_err(text);
            assert!(e.starts_with(want), "want {want:?}\n got {e:?}");
        }
    }

    #[test]
    fn gateway_paths_resolve_against_its_directory() {
        let g = parse_gateway(
            Path::new("/etc/cg/gateway.toml"),
            "[listen]\nhttp = \"127.0.0.1:1\"\n[registry]\ndir = \"hosts\"\n[limits]\nidle_timeout = \"45s\"\n",
        )
        .unwrap();
        assert_eq!(g.registry_dir, PathBuf::from("/etc/cg/hosts"));
        assert_eq!(g.limits.idle_timeout, Duration::from_secs(45));
        assert_eq!(g.limits.max_connections, 10_000);
        assert_eq!(g.limits.max_purge_headers, 64);
        assert_eq!(g.limits.upstream_read_size, 32 << 10);
        assert_eq!(g.audit, None);
    }

    #[test]
    fn audit_table_compiles_with_defaults_and_resolved_path() {
        let g = parse_gateway(
            Path::new("/etc/cg/gateway.toml"),
            "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"log/audit.jsonl\"\n",
        )
        .unwrap();
        assert_eq!(
            g.audit,
            Some(AuditConfig {
                path: AuditPath::File(PathBuf::from("/etc/cg/log/audit.jsonl")),
                max_bytes: 100 << 20,
                keep: 10,
                queue: DEFAULT_AUDIT_QUEUE,
            })
        );
        let g = parse_gateway(
            Path::new("gateway.toml"),
            "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"stdout\"\nmax_bytes = \"4KiB\"\nkeep = 0\nqueue = 16\n",
        )
        .unwrap();
        assert_eq!(
            g.audit,
            Some(AuditConfig {
                path: AuditPath::Stdout,
                max_bytes: 4096,
                keep: 0,
                queue: 16,
            })
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in [
            "",
            "MiB",
            "10 MB",
            "1.5GiB",
            "-1",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inventory_is_on_by_default_and_zero_turns_it_off() {
        let on = parse_gateway(Path::new("g.toml"), "[listen]\nhttp = \"127.0.0.1:1\"\n").unwrap();
        assert_eq!(on.inventory, InventoryConfig::default());
        assert_eq!(on.inventory.max_names_per_host, 1000);
        assert!(on.inventory.knowledge_base);
        let off = parse_gateway(
            Path::new("g.toml"),
            "[listen]\nhttp = \"127.0.0.1:1\"\n[inventory]\nmax_names_per_host = 0\nknowledge_base = false\n",
        )
        .unwrap();
        assert_eq!(
            off.inventory,
            InventoryConfig {
                max_names_per_host: 0,
                knowledge_base: false
            }
        );
    }
}
