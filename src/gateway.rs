//! The running gateway: listeners bound, proxy and admin served, shutdown and reload wired.
//!
//! `main`, the demo and the tests all start the gateway through [`Gateway::start`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{ConfigError, GatewayConfig};
use crate::control::admin::{self, AdminState};
use crate::control::certs::{self, CertStore};
use crate::control::live::{spawn_watcher, Live, ReloadResult, WatchOptions, WatcherHandle};
use crate::edge::tls;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::policy::registry::Registry;
use crate::proxy::upstream::Upstreams;
use crate::proxy::Proxy;

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
    /// The live cookie inventory (`/inventory`).
    pub inventory: Arc<Inventory>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    /// The proxy worker threads.
    workers: Vec<Worker>,
    admin_task: Option<JoinHandle<usize>>,
    /// Registry and certs watcher; `None` when the config asks for no watching.
    _watcher: Option<WatcherHandle>,
    /// The audit log's writer, with `[audit]`; drained by [`Gateway::wait`].
    audit: Option<crate::audit::Audit>,
    /// When the drain began, and how long it may take (`shutdown_grace`): the audit queue is
    /// drained within what is left of it.
    shutdown_at: std::sync::OnceLock<tokio::time::Instant>,
    grace: std::time::Duration,
}

/// Pending connections the kernel queues for a listener (`listen(2)` backlog; nginx uses 511,
/// the Linux default cap `net.core.somaxconn` is 4096). tokio's default is 128.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listening socket with `SO_REUSEADDR` (a restart does not wait for old connections in
/// TIME_WAIT; it does not let two processes listen on one port) and a backlog of
/// [`LISTEN_BACKLOG`]. Returned as a std listener, not yet registered with any runtime, so that
/// each worker can register its own copy.
///
/// With `reuse_port`, `SO_REUSEPORT` too: several sockets of this process listen on the address,
/// one per worker, and the kernel spreads new connections over them by a hash of their addresses.
fn bind(addr: SocketAddr, what: &str, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let err = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    if reuse_port {
        socket.set_reuseport(true).map_err(err)?;
    }
    socket.bind(addr).map_err(err)?;
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(err)?
        .into_std()
        .map_err(err)
}

/// A proxy listener as one worker serves it.
struct ProxyListener {
    listener: std::net::TcpListener,
    /// The config field that names it, for errors.
    what: &'static str,
    /// `http` or `https`.
    scheme: &'static str,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

/// What every worker shares (or, for the upstream pools, has its own copy of).
struct WorkerShared {
    live: Arc<Live>,
    upstreams: Upstreams,
    metrics: Arc<Metrics>,
    limits: crate::config::Limits,
    trusted_proxies: Vec<crate::config::Cidr>,
    permits: Arc<Semaphore>,
    inventory: Arc<Inventory>,
    shutdown: watch::Receiver<bool>,
    /// The audit log's queue, with `[audit]`.
    audit: Option<crate::audit::Sink>,
    /// The worker's number, from 0 (its thread is `proxy-<n>`).
    n: u32,
}

/// One proxy worker: a thread running a single-threaded runtime that accepts on every proxy
/// listener (its own `SO_REUSEPORT` socket, or a copy of the one shared socket) and serves its
/// connections start to end, with its own upstream connection pools. A request never
/// changes threads, so no lock or wake-up crosses cores on the hot path (the model of nginx's
/// worker processes).
struct Worker {
    done: tokio::sync::oneshot::Receiver<usize>,
    /// One per listener: fires (with its connections left to drain) once it is closed.
    closed: Vec<tokio::sync::oneshot::Receiver<usize>>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    fn spawn(listeners: Vec<ProxyListener>, shared: WorkerShared) -> std::io::Result<Worker> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, done) = tokio::sync::oneshot::channel();
        let (notices, closed): (Vec<_>, Vec<_>) = listeners
            .iter()
            .map(|_| tokio::sync::oneshot::channel())
            .unzip();
        // The worker logs where its starter logs (the global subscriber, or a scoped one).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{}", shared.n))
            .spawn(move || {
                let cut = tracing::dispatcher::with_default(&dispatch, || {
                    rt.block_on(Worker::run(listeners, notices, shared))
                });
                let _ = tx.send(cut);
            })?;
        Ok(Worker {
            done,
            closed,
            thread,
        })
    }

    /// Serves every listener until the shutdown; returns how many connections were cut.
    async fn run(
        listeners: Vec<ProxyListener>,
        notices: Vec<tokio::sync::oneshot::Sender<usize>>,
        shared: WorkerShared,
    ) -> usize {
        let upstreams = Arc::new(shared.upstreams);
        let worker_gauge = shared
            .metrics
            .worker_connections_open
            .get_or_create(&crate::metrics::WorkerLabel { worker: shared.n })
            .clone();
        let mut tasks = tokio::task::JoinSet::new();
        for (l, notice) in listeners.into_iter().zip(notices) {
            let listener = match TcpListener::from_std(l.listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "proxy worker cannot register its listener");
                    continue;
                }
            };
            let proxy = Arc::new(
                Proxy::new(
                    Arc::clone(&shared.live),
                    Arc::clone(&upstreams),
                    Arc::clone(&shared.metrics),
                    shared.limits.clone(),
                    shared.trusted_proxies.clone(),
                    l.scheme,
                    &shared.inventory,
                )
                .with_audit(shared.audit.clone()),
            );
            // Boxed per request: hyper keeps one slot the size of this future for every open
            // connection, idle keep-alive ones included; a pointer there instead of the whole
            // request state (~2 KiB) saves that much per idle connection.
            let handler = move |req, peer| Box::pin(Arc::clone(&proxy).handle(req, peer));
            tasks.spawn(crate::edge::server::serve_with(
                listener,
                handler,
                shared.limits.clone(),
                Some(Arc::clone(&shared.metrics)),
                shared.shutdown.clone(),
                l.acceptor,
                crate::edge::server::ListenerHooks {
                    permits: Arc::clone(&shared.permits),
                    closed: Some(notice),
                    worker_gauge: Some(worker_gauge.clone()),
                    probes: None,
                    listener: l.scheme,
                },
            ));
        }
        let mut cut = 0;
        while let Some(r) = tasks.join_next().await {
            cut += r.unwrap_or(0);
        }
        cut
    }

    /// Waits for the worker's drain to end and its thread to exit.
    async fn wait(self) -> usize {
        let cut = self.done.await.unwrap_or(0);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        cut
    }
}

impl Gateway {
    /// Loads the certificates (with `[tls]`), binds every listener of `config` and starts
    /// serving `registry`.
    pub async fn start(config: &GatewayConfig, registry: Registry) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::new());
        let inventory = Arc::new(Inventory::new(config.inventory.clone()));
        let certs = match &config.tls {
            Some(t) => {
                let set = certs::load_certs(&t.certs_dir, t.default_cert.as_deref())
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
        let audit = match &config.audit {
            Some(a) => {
                let snapshot = live.load();
                let audit = crate::audit::Audit::start(
                    a,
                    Arc::clone(&metrics),
                    snapshot.generation,
                    &snapshot.registry.digest,
                )?;
                live.set_audit(audit.sink());
                Some(audit)
            }
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (admin_shutdown, admin_rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));

        // With several workers and `reuse_port`, each worker gets a socket of its own on the
        // address (the kernel spreads new connections over them); otherwise they share one.
        let reuse_port = config.reuse_port && config.workers > 1;
        let mut listeners = Vec::new();
        let mut bound = [None, None];
        let wanted = [
            (config.listen_http, "listen.http", "http"),
            (config.listen_https, "listen.https", "https"),
        ];
        for (i, (addr, what, scheme)) in wanted.into_iter().enumerate() {
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
            let listener = bind(addr, what, reuse_port)?;
            bound[i] = Some(listener.local_addr()?);
            listeners.push(ProxyListener {
                listener,
                what,
                scheme,
                acceptor,
            });
        }
        // One connection budget for every listener and worker.
        let permits = Arc::new(Semaphore::new(config.limits.max_connections));
        let upstreams = Upstreams::new(config.limits.clone());
        let mut workers = Vec::new();
        if !listeners.is_empty() {
            for n in 0..config.workers.max(1) {
                let mut mine = Vec::with_capacity(listeners.len());
                for l in &listeners {
                    let listener = if reuse_port && n > 0 {
                        bind(l.listener.local_addr()?, l.what, true)?
                    } else {
                        l.listener.try_clone()?
                    };
                    mine.push(ProxyListener {
                        listener,
                        what: l.what,
                        scheme: l.scheme,
                        acceptor: l.acceptor.clone(),
                    });
                }
                let shared = WorkerShared {
                    live: Arc::clone(&live),
                    upstreams: upstreams.sibling(),
                    metrics: Arc::clone(&metrics),
                    limits: config.limits.clone(),
                    trusted_proxies: config.trusted_proxies.clone(),
                    permits: Arc::clone(&permits),
                    inventory: Arc::clone(&inventory),
                    shutdown: shutdown_rx.clone(),
                    audit: audit.as_ref().map(crate::audit::Audit::sink),
                    n: u32::try_from(n).unwrap_or(u32::MAX),
                };
                workers.push(Worker::spawn(mine, shared)?);
            }
        }
        drop(listeners);
        let mut admin_task = None;
        let mut admin_addr = None;
        if let Some(addr) = config.admin {
            let listener = TcpListener::from_std(bind(addr, "admin.listen", false)?)?;
            admin_addr = Some(listener.local_addr()?);
            let state = Arc::new(AdminState {
                live: Arc::clone(&live),
                metrics: Arc::clone(&metrics),
                ready: Arc::clone(&ready),
                inventory: Arc::clone(&inventory),
            });
            let handler = move |req: http::Request<hyper::body::Incoming>, _peer| {
                std::future::ready(
                    admin::handle(&state, &req).map(crate::proxy::body::ProxyBody::full),
                )
            };
            let mut limits = config.limits.clone();
            limits.max_connections = admin::MAX_CONNECTIONS;
            let hooks = crate::edge::server::ListenerHooks {
                permits: Arc::new(Semaphore::new(limits.max_connections)),
                closed: None,
                worker_gauge: None,
                probes: Some(crate::edge::server::ProbeLane::new(admin::is_probe)),
                listener: "admin",
            };
            admin_task = Some(tokio::spawn(crate::edge::server::serve_with(
                listener,
                handler,
                limits,
                Some(Arc::clone(&metrics)),
                admin_rx,
                None,
                hooks,
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
            inventory,
            ready,
            shutdown,
            admin_shutdown,
            workers,
            admin_task,
            _watcher: watcher,
            audit,
            shutdown_at: std::sync::OnceLock::new(),
            grace: config.limits.shutdown_grace,
        })
    }

    /// The audit log, with `[audit]`.
    pub fn audit(&self) -> Option<&crate::audit::Audit> {
        self.audit.as_ref()
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
        let _ = self.shutdown_at.set(tokio::time::Instant::now());
        let _ = self.shutdown.send(true);
    }

    /// Waits until every worker has closed its copy of every proxy listener (from then on new
    /// connections are refused) and returns how many connections are left to drain. Call after
    /// [`Gateway::begin_shutdown`].
    pub async fn listeners_closed(&mut self) -> usize {
        let mut open = 0;
        for w in &mut self.workers {
            for c in w.closed.drain(..) {
                open += c.await.unwrap_or(0);
            }
        }
        open
    }

    /// Waits for the drain to end, then stops the admin listener. Returns how many connections
    /// were cut at the end of the grace period.
    pub async fn wait(mut self) -> usize {
        let mut cut = 0;
        for w in self.workers.drain(..) {
            cut += w.wait().await;
        }
        if let Some(audit) = self.audit.take() {
            // What is left of shutdown_grace, and at least a second for the last records.
            let now = tokio::time::Instant::now();
            let deadline = self.shutdown_at.get().map_or(now, |t| *t + self.grace);
            audit
                .close(deadline.max(now + std::time::Duration::from_secs(1)))
                .await;
        }
        let _ = self.admin_shutdown.send(true);
        if let Some(t) = self.admin_task.take() {
            let _ = t.await;
        }
        cut
    }
}
