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
use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::registry::Registry;
use crate::reload::{spawn_watcher, Live, ReloadResult, WatchOptions, WatcherHandle};

/// A gateway that is serving.
pub struct Gateway {
    /// The bound proxy address (useful when the config asked for port 0).
    pub http_addr: Option<SocketAddr>,
    /// The bound admin address.
    pub admin_addr: Option<SocketAddr>,
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    proxy_task: Option<JoinHandle<usize>>,
    admin_task: Option<JoinHandle<usize>>,
    /// Registry watcher; `None` when the config asks for no watching.
    _watcher: Option<WatcherHandle>,
}

async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    })
}

impl Gateway {
    /// Binds every listener of `config` and starts serving `registry`.
    pub async fn start(config: &GatewayConfig, registry: Registry) -> std::io::Result<Gateway> {
        let metrics = Arc::new(Metrics::new());
        let live = Arc::new(Live::new(
            registry,
            config.registry_dir.clone(),
            Arc::clone(&metrics),
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (admin_shutdown, admin_rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));

        let mut proxy_task = None;
        let mut http_addr = None;
        if let Some(addr) = config.listen_http {
            let listener = bind(addr, "listen.http").await?;
            http_addr = Some(listener.local_addr()?);
            let proxy = Arc::new(Proxy::new(
                Arc::clone(&live),
                Arc::clone(&metrics),
                config.limits.clone(),
                config.trusted_proxies.clone(),
                "http",
            ));
            let handler = move |req, peer| Arc::clone(&proxy).handle(req, peer);
            proxy_task = Some(tokio::spawn(crate::server::serve(
                listener,
                handler,
                config.limits.clone(),
                Some(Arc::clone(&metrics)),
                shutdown_rx.clone(),
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
                listener, handler, limits, None, admin_rx,
            )));
        }
        let watcher = if config.watch {
            let opts = WatchOptions::new(vec![config.registry_dir.clone()], config.poll_interval);
            Some(spawn_watcher(Arc::clone(&live), opts).map_err(|e| {
                std::io::Error::other(format!(
                    "cannot watch {}: {e}",
                    config.registry_dir.display()
                ))
            })?)
        } else {
            None
        };
        ready.store(true, Ordering::SeqCst);
        Ok(Gateway {
            http_addr,
            admin_addr,
            live,
            metrics,
            ready,
            shutdown,
            admin_shutdown,
            proxy_task,
            admin_task,
            _watcher: watcher,
        })
    }

    /// Re-reads the registry directory (SIGHUP).
    pub async fn reload(&self) -> ReloadResult {
        let live = Arc::clone(&self.live);
        tokio::task::spawn_blocking(move || live.reload())
            .await
            .unwrap_or_else(|e| {
                ReloadResult::Error(vec![crate::config::ConfigError {
                    file: self.live.dir().to_owned(),
                    line: 1,
                    column: 1,
                    message: format!("reload task failed: {e}"),
                }])
            })
    }

    /// Starts the drain: `/readyz` turns 503 and the proxy listener closes.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
    }

    /// Waits for the drain to end, then stops the admin listener. Returns how many connections
    /// were cut at the end of the grace period.
    pub async fn wait(mut self) -> usize {
        let cut = match self.proxy_task.take() {
            Some(t) => t.await.unwrap_or(0),
            None => 0,
        };
        let _ = self.admin_shutdown.send(true);
        if let Some(t) = self.admin_task.take() {
            let _ = t.await;
        }
        cut
    }
}
