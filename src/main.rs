//! The `consent-gateway` command: parses the command line and connects the parts.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use consent_gateway::config;
use consent_gateway::gateway::Gateway;

/// jemalloc, which returns freed memory to the system (Cargo.toml says why).
#[cfg(all(feature = "jemalloc", target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "consent-gateway",
    version,
    about = "A reverse proxy that enforces cookie consent at the edge"
)]
struct Cli {
    /// Log format; default: pretty on a terminal, json otherwise.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Serve.
    Run {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Load and validate the gateway file and every registry file.
    Check {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Start a built-in sample portal with the gateway in front of it, on loopback.
    Demo {
        /// Port of the gateway (0: any free port). If the port is taken, any free port is used.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Read a cookie-policy page (as text) and print a registry file for it.
    ImportPolicy {
        /// The policy page, plain text or Markdown.
        file: PathBuf,
        /// The host the registry file serves (with --merge: one of the file's hosts, optional).
        #[arg(long, required_unless_present = "merge")]
        host: Option<String>,
        /// An existing registry file: print it with the cookies the page lists that it has no
        /// entry for added (the file itself is not changed).
        #[arg(long, value_name = "EXISTING.toml")]
        merge: Option<PathBuf>,
    },
    /// Read /inventory from running gateways and print [[cookie]] entries, to review, for the
    /// cookie names their registries do not list.
    Suggest {
        /// Admin URL of a gateway (http://HOST:PORT); several, comma-separated or repeated, are
        /// merged (replicas).
        #[arg(long, value_delimiter = ',', required = true)]
        admin: Vec<String>,
        /// Only this host (its registry file); default: every host.
        #[arg(long)]
        host: Option<String>,
    },
    /// Show, for each Set-Cookie, whether the proxy keeps or drops it and why.
    Explain {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// The request's Host.
        #[arg(long)]
        host: String,
        /// The request's Cookie header.
        #[arg(long)]
        cookie: Option<String>,
        /// The request carries Sec-GPC: 1.
        #[arg(long)]
        gpc: bool,
        /// The request's path (a consent Set-Cookie counts only if a browser would send it
        /// back for this path).
        #[arg(long, default_value = "/")]
        path: String,
        /// The request came over https (a Secure consent Set-Cookie needs it).
        #[arg(long)]
        https: bool,
        /// Also print the purge deletions the response would get for the refused cookies of
        /// --cookie (one `purge` line each).
        #[arg(long)]
        purge: bool,
        /// A Set-Cookie value from the upstream (repeat for several).
        #[arg(long = "set-cookie", required_unless_present = "purge")]
        set_cookie: Vec<String>,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit log files; exit 1 naming the first broken file:line.
    Verify {
        /// The files in rotation order, oldest first (audit.jsonl.2 audit.jsonl.1 audit.jsonl).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logging(cli.log_format);
            runtime().map_or(ExitCode::from(1), |rt| rt.block_on(run(&config)))
        }
        Command::Demo { port } => {
            init_logging(cli.log_format);
            runtime().map_or(ExitCode::from(1), |rt| rt.block_on(demo(port)))
        }
        Command::Check { config } => check(&config),
        Command::ImportPolicy { file, host, merge } => match merge {
            Some(existing) => import_merge(&file, host.as_deref(), &existing),
            None => import_policy(&file, host.as_deref().unwrap_or_default()),
        },
        Command::Suggest { admin, host } => suggest(&admin, host.as_deref()),
        Command::Explain {
            config,
            host,
            cookie,
            gpc,
            path,
            https,
            purge,
            set_cookie,
        } => explain(
            &config,
            &host,
            cookie.as_deref(),
            gpc,
            &consent_gateway::policy::jar::RequestUrl::new(&host, &path, https),
            purge,
            &set_cookie,
        ),
        Command::Audit {
            command: AuditCommand::Verify { files },
        } => audit_verify(&files),
    }
}

fn audit_verify(files: &[PathBuf]) -> ExitCode {
    use consent_gateway::audit::verify::{verify_reader, Verifier, VerifyError};
    let mut v = Verifier::new();
    for path in files {
        let name = path.display().to_string();
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{name}: cannot read: {e}");
                return ExitCode::from(1);
            }
        };
        v.begin_file(name);
        match verify_reader(&mut v, std::io::BufReader::new(file)) {
            Ok(()) => {}
            Err(VerifyError::Broken(b)) => {
                eprintln!("{b}");
                eprintln!("({} records verified before it)", b.verified);
                return ExitCode::from(1);
            }
            Err(e @ VerifyError::Io { .. }) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        }
    }
    let report = match v.finish() {
        Ok(r) => r,
        Err(b) => {
            eprintln!("{b}");
            eprintln!("({} records verified before it)", b.verified);
            return ExitCode::from(1);
        }
    };
    let span = match (&report.first_time, &report.last_time) {
        (Some(a), Some(b)) => format!(" from {a} to {b}"),
        _ => String::new(),
    };
    println!("intact: {} records{span}", report.records);
    if let Some(a) = &report.anchor {
        println!("anchor: {a} (prev of the first record)");
    }
    if let Some(h) = &report.last_hash {
        println!("last hash: {h}");
    }
    println!("starts: {}", report.starts);
    match report.losses.first() {
        Some(first) => println!(
            "lost: {} records, told by {} loss records (first at {first})",
            report.lost,
            report.losses.len()
        ),
        None => println!("lost: 0 records"),
    }
    for g in &report.gaps {
        println!(
            "seq gap: {}: seq {} where {} was expected ({} records were numbered but not written)",
            g.at,
            g.found,
            g.expected,
            g.found.saturating_sub(g.expected)
        );
    }
    for t in &report.torn {
        println!(
            "torn: {t}: not a whole record: the gateway stopped while writing it (not tampering; the chain goes on from the record before it)"
        );
    }
    ExitCode::SUCCESS
}

fn init_logging(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
}

/// The control runtime: signals, the admin endpoint, reloads. The proxy itself runs on its own
/// worker threads (`[proxy] workers`), each with a runtime of its own.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            None
        }
    }
}

async fn run(path: &Path) -> ExitCode {
    let (cfg, registry) = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(file = %e.file.display(), line = e.line, column = e.column, "{e}");
            }
            return ExitCode::from(1);
        }
    };
    let hosts = registry.policies.len();
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let mut gateway = match Gateway::start(&cfg, registry).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    // A listener that is not configured is left out of the line (not logged as "").
    tracing::info!(
        http = gateway.http_addr.map(tracing::field::display),
        https = gateway.https_addr.map(tracing::field::display),
        admin = gateway.admin_addr.map(tracing::field::display),
        registry = %cfg.registry_dir.display(),
        files = hosts,
        "consent-gateway listening"
    );
    signals.serve(&gateway).await;
    gateway.begin_shutdown();
    tracing::info!(grace = ?cfg.limits.shutdown_grace, "shutting down: readiness off, draining");
    let open = gateway.listeners_closed().await;
    tracing::info!(connections = open, grace = ?cfg.limits.shutdown_grace, "listener closed, draining connections");
    let cut = gateway.wait().await;
    tracing::info!(cut, "stopped");
    ExitCode::SUCCESS
}

/// The process's signal streams, installed before the listeners are bound: a SIGTERM that arrives
/// as soon as the gateway looks ready must drain it, not kill it with the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Serves SIGHUP (reload) until SIGTERM or SIGINT.
    async fn serve(mut self, gateway: &Gateway) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { tracing::info!("SIGTERM"); return }
                _ = self.int.recv() => { tracing::info!("SIGINT"); return }
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the registry");
                    gateway.reload().await;
                }
            }
        }
    }
}

async fn demo(port: u16) -> ExitCode {
    match consent_gateway::cli::demo::start(port).await {
        Ok(demo) => {
            println!("{}", demo.instructions());
            let _ = tokio::signal::ctrl_c().await;
            demo.gateway.begin_shutdown();
            demo.gateway.wait().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok((cfg, registry)) => {
            for p in &registry.policies {
                let hosts: Vec<String> = p.hosts.iter().map(ToString::to_string).collect();
                println!(
                    "{}: {} -> {} ({}, {} cookies, consent {} from {})",
                    p.file.display(),
                    hosts.join(", "),
                    p.upstream,
                    p.mode.as_str(),
                    p.cookies.len(),
                    p.consent.format.as_str(),
                    p.consent.cookie,
                );
            }
            check_memory(&cfg);
            if let Some(a) = &cfg.audit {
                check_audit(&cfg.file, a);
            }
            match &cfg.tls {
                Some(t) => check_certs(&t.certs_dir, t.default_cert.as_deref()),
                None => ExitCode::SUCCESS,
            }
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(1)
        }
    }
}

/// One line about memory: the worst case of `max_connections` stalled clients against
/// `[limits] memory_budget`, a warning (on stderr; the exit code stays 0) when it does not fit.
fn check_memory(cfg: &config::GatewayConfig) {
    let l = &cfg.limits;
    let h2 = cfg.listen_https.is_some();
    let mib = |b: u64| b.div_ceil(1 << 20);
    let per = l.worst_case_per_connection(h2);
    let worst = l.worst_case_memory(h2);
    let line = format!(
        "memory: worst case {} MiB = {} MiB for the process + {} connections x {} KiB ({}), budget {} MiB",
        mib(worst),
        mib(config::memory::PROCESS),
        l.max_connections,
        per.div_ceil(1024),
        if h2 { "HTTP/2 with every stream stalled" } else { "HTTP/1, stalled or sending a whole head" },
        mib(l.memory_budget),
    );
    if worst <= l.memory_budget {
        println!("{line}");
    } else {
        let fits = l.memory_budget.saturating_sub(config::memory::PROCESS) / per.max(1);
        eprintln!(
            "{}: warning: {line}: does not fit; limits.max_connections = {fits} would",
            cfg.file.display()
        );
    }
}

/// One line about the audit log; a warning when its directory is missing (the gateway still
/// starts: it logs the error and counts every record as lost until the directory exists).
fn check_audit(gateway_file: &Path, audit: &config::AuditConfig) {
    match &audit.path {
        config::AuditPath::Stdout => {
            println!("audit log: standard output (queue {})", audit.queue);
        }
        config::AuditPath::File(p) => {
            println!(
                "audit log: {} (rotated at {} bytes, {} rotated files kept, queue {})",
                p.display(),
                audit.max_bytes,
                audit.keep,
                audit.queue
            );
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                eprintln!(
                    "{}:1:1: warning: audit.path: directory {} does not exist; the gateway will start, log the error and count every audit record as lost until it does",
                    gateway_file.display(),
                    dir.display()
                );
            }
        }
    }
}

fn import_policy(file: &Path, host: &str) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}:1:1: cannot read: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    match consent_gateway::cli::import::import(&text, &file.display().to_string(), host) {
        Ok(imported) => {
            print!("{}", imported.toml);
            eprintln!(
                "{}: {} cookie entries, {} lines left as comments for review",
                file.display(),
                imported.cookies,
                imported.unclassified
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn import_merge(file: &Path, host: Option<&str>, existing: &Path) -> ExitCode {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| eprintln!("{}:1:1: cannot read: {e}", p.display()))
    };
    let (Ok(text), Ok(current)) = (read(file), read(existing)) else {
        return ExitCode::from(1);
    };
    let source = file.display().to_string();
    match consent_gateway::cli::import::merge(&text, &source, &current, existing, host) {
        Ok(m) => {
            print!("{}", m.toml);
            eprintln!(
                "{source}: {} cookie entries added to {}, {} already there, {} listed under \
                 another category (left as # DIFFERS comments), {} lines left as comments for review",
                m.added,
                existing.display(),
                m.already,
                m.differs,
                m.unclassified
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Certificates expiring sooner than this get a warning from `check`.
const EXPIRY_WARNING_DAYS: i64 = 14;

fn check_certs(dir: &Path, default: Option<&str>) -> ExitCode {
    match consent_gateway::control::certs::load_certs(dir, default) {
        Ok(set) => {
            let now = consent_gateway::unix_now();
            for c in &set.certs {
                let days = (c.not_after - now).div_euclid(86_400);
                let at = consent_gateway::rfc3339(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(u64::try_from(c.not_after).unwrap_or(0)),
                );
                println!(
                    "{}: certificate {} valid until {at} ({days} days)",
                    c.file.display(),
                    c.name
                );
                if days < EXPIRY_WARNING_DAYS {
                    eprintln!(
                        "{}:1:1: warning: certificate {} expires in {days} days ({at})",
                        c.file.display(),
                        c.name
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::from(1)
        }
    }
}

fn explain(
    path: &Path,
    host: &str,
    cookie: Option<&str>,
    gpc: bool,
    url: &consent_gateway::policy::jar::RequestUrl<'_>,
    purge: bool,
    set_cookies: &[String],
) -> ExitCode {
    let (limits, registry) = match config::load(path) {
        Ok((g, r)) => (g.limits, r),
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    let Some(policy) = registry.lookup(host.as_bytes()) else {
        eprintln!("{host}: no registry file names this host (the proxy answers 421)");
        return ExitCode::from(1);
    };
    match consent_gateway::cli::explain::explain(
        policy,
        cookie,
        gpc,
        url,
        set_cookies,
        consent_gateway::unix_now(),
    ) {
        Ok((consent, lines)) => {
            let keys: Vec<&str> = consent.granted.keys().collect();
            eprintln!(
                "host {} ({}, {} mode): {}; granted [{}]{}",
                policy.name,
                policy.file.display(),
                policy.mode.as_str(),
                consent.source,
                keys.join(", "),
                if consent.gpc { "; Sec-GPC: 1" } else { "" }
            );
            let w = lines.iter().map(|l| l.name.len()).max().unwrap_or(0);
            let c = lines.iter().map(|l| l.category.len()).max().unwrap_or(0);
            for l in lines {
                println!(
                    "{:<10} {:<w$} {:<c$} {}: {}",
                    l.verdict, l.name, l.category, l.reason, l.detail
                );
            }
            if purge {
                let exchange = consent_gateway::policy::filter::Exchange {
                    url: url.clone(),
                    now: consent_gateway::unix_now(),
                    max_purge_headers: limits.max_purge_headers,
                };
                match consent_gateway::cli::explain::purge(
                    policy,
                    cookie,
                    gpc,
                    &exchange,
                    set_cookies,
                ) {
                    Ok((deletions, capped)) => {
                        for d in deletions {
                            println!("{:<10} {}", "purge", d.header);
                        }
                        if capped {
                            eprintln!(
                                "purge capped at [limits] max_purge_headers = {}: the other refused cookies are deleted on later responses",
                                limits.max_purge_headers
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(1);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn suggest(admin: &[String], host: Option<&str>) -> ExitCode {
    use consent_gateway::inventory::suggest::{run, SuggestError};
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    match rt.block_on(run(admin, host)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(match e {
                SuggestError::Usage(_) => 2,
                SuggestError::Fetch(_) => 1,
            })
        }
    }
}
