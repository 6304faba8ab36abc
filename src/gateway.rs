//! The running gateway: listeners bound, proxy and admin served, shutdown and reload wired.
//!
//! `main`, the demo and the tests all start the gateway through [`Gateway::start`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::{ConfigError, GatewayConfig};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::registry::Registry;
use crate::reload::{spawn_watcher, Live, ReloadResult, WatchOptions, WatcherHandle};
use crate::tls::{self, CertStore, Upstreams};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Certs(Vec<ConfigError>),
}

/// A gateway that is serving.
pub struct Gateway {
    /// The bound proxy address (useful when the config asked for port 0).
    pub http_addr: Option<SocketAddr>,
    /// The bound https address.
    pub https_addr: Option<SocketAddr>,
    /// The bound admin address.
    pub admin_addr: Option<SocketAddr>,
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    proxy_tasks: Vec<JoinHandle<usize>>,
    admin_task: Option<JoinHandle<usize>>,
    /// Registry and certs watcher; `None` when the config asks for no watching.
    _watcher: Option<WatcherHandle>,
}

async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    })
}

impl Gateway {
    /// Loads the certificates (with `[tls]`), binds every listener of `config` and starts
    /// serving `registry`.
    pub async fn start(config: &GatewayConfig, registry: Registry) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::new());
        let certs = match &config.tls {
            Some(t) => {
                let set = tls::load_certs(&t.certs_dir, t.default_cert.as_deref())
                    .map_err(StartError::Certs)?;
                Some(Arc::new(CertStore::new(
                    set,
                    t.certs_dir.clone(),
                    t.default_cert.clone(),
                )))
            }
            None => None,
        };
        let live = Arc::new(Live::with_certs(
            registry,
            config.registry_dir.clone(),
            Arc::clone(&metrics),
            certs.clone(),
        ));
        let upstreams = Arc::new(Upstreams::new(config.limits.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (admin_shutdown, admin_rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));

        let mut proxy_tasks = Vec::new();
        let listeners = [
            (config.listen_http, "listen.http", "http"),
            (config.listen_https, "listen.https", "https"),
        ];
        let mut bound = [None, None];
        for (i, (addr, what, scheme)) in listeners.into_iter().enumerate() {
            let Some(addr) = addr else { continue };
            let acceptor = match (scheme, &certs) {
                ("https", Some(store)) => {
                    let cfg = tls::server_config(Arc::clone(store))
                        .map_err(|e| std::io::Error::other(format!("TLS configuration: {e}")))?;
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
                }
                ("https", None) => continue,
                _ => None,
            };
            let listener = bind(addr, what).await?;
            bound[i] = Some(listener.local_addr()?);
            let proxy = Arc::new(Proxy::new(
                Arc::clone(&live),
                Arc::clone(&upstreams),
                Arc::clone(&metrics),
                config.limits.clone(),
                config.trusted_proxies.clone(),
                scheme,
            ));
            // Boxed per request: hyper keeps one slot the size of this future for every open
            // connection, idle keep-alive ones included; a pointer there instead of the whole
            // request state (~2 KiB) saves that much per idle connection.
            let handler = move |req, peer| Box::pin(Arc::clone(&proxy).handle(req, peer));
            proxy_tasks.push(tokio::spawn(crate::server::serve(
                listener,
                handler,
                config.limits.clone(),
                Some(Arc::clone(&metrics)),
                shutdown_rx.clone(),
                acceptor,
            )));
        }
        let mut admin_task = None;
        let mut admin_addr = None;
        if let Some(addr) = config.admin {
            let listener = bind(addr, "admin.listen").await?;
            admin_addr = Some(listener.local_addr()?);
            let state = Arc::new(AdminState {
                live: Arc::clone(&live),
                metrics: Arc::clone(&metrics),
                ready: Arc::clone(&ready),
            });
            let handler = move |req: http::Request<hyper::body::Incoming>, _peer| {
                let state = Arc::clone(&state);
                async move { admin::handle(&state, &req) }
            };
            let mut limits = config.limits.clone();
            limits.max_connections = 64;
            admin_task = Some(tokio::spawn(crate::server::serve(
                listener, handler, limits, None, admin_rx, None,
            )));
        }
        let watcher = if config.watch {
            let mut dirs = vec![config.registry_dir.clone()];
            if let Some(t) = &config.tls {
                dirs.push(t.certs_dir.clone());
            }
            let opts = WatchOptions::new(dirs, config.poll_interval);
            Some(
                spawn_watcher(Arc::clone(&live), opts)
                    .map_err(|e| std::io::Error::other(format!("cannot watch for changes: {e}")))?,
            )
        } else {
            None
        };
        ready.store(true, Ordering::SeqCst);
        Ok(Gateway {
            http_addr: bound[0],
            https_addr: bound[1],
            admin_addr,
            live,
            metrics,
            ready,
            shutdown,
            admin_shutdown,
            proxy_tasks,
            admin_task,
            _watcher: watcher,
        })
    }

    /// Re-reads the registry and certs directories (SIGHUP).
    pub async fn reload(&self) -> ReloadResult {
        let live = Arc::clone(&self.live);
        tokio::task::spawn_blocking(move || live.reload())
            .await
            .unwrap_or_else(|e| {
                ReloadResult::Error(vec![ConfigError {
                    file: self.live.dir().to_owned(),
                    line: 1,
                    column: 1,
                    message: format!("reload task failed: {e}"),
                }])
            })
    }

    /// Starts the drain: `/readyz` turns 503 and the proxy listeners close.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
    }

    /// Waits for the drain to end, then stops the admin listener. Returns how many connections
    /// were cut at the end of the grace period.
    pub async fn wait(mut self) -> usize {
        let mut cut = 0;
        for t in self.proxy_tasks.drain(..) {
            cut += t.await.unwrap_or(0);
        }
        let _ = self.admin_shutdown.send(true);
        if let Some(t) = self.admin_task.take() {
            let _ = t.await;
        }
        cut
    }
}
