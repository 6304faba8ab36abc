//! The `consent-gateway` command: parses the command line and connects the parts.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use consent_gateway::config;

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
        /// A Set-Cookie value from the upstream (repeat for several).
        #[arg(long = "set-cookie", required = true)]
        set_cookie: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config: _ } => {
            eprintln!("run: not built yet");
            ExitCode::from(1)
        }
        Command::Check { config } => check(&config),
        Command::Explain {
            config,
            host,
            cookie,
            gpc,
            set_cookie,
        } => explain(&config, &host, cookie.as_deref(), gpc, &set_cookie),
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok((_, registry)) => {
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
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(1)
        }
    }
}

fn explain(
    path: &Path,
    host: &str,
    cookie: Option<&str>,
    gpc: bool,
    set_cookies: &[String],
) -> ExitCode {
    let registry = match config::load(path) {
        Ok((_, r)) => r,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    let Some(policy) = registry.lookup(host.as_bytes()) else {
        eprintln!("{host}: no registry file names this host (the proxy answers 421)");
        return ExitCode::from(1);
    };
    match consent_gateway::explain::explain(
        policy,
        cookie,
        gpc,
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
