//! The live registry: one handle that readers load a snapshot from, and reloads that swap it.
//!
//! Each request loads the [`Snapshot`] once and keeps it to the end, so a request in flight
//! (and an upgraded tunnel) finishes under the registry it started with. A reload reads every
//! file, compares the content digest with the one serving (a touch with no change does nothing),
//! parses and validates everything, and swaps only on success; an error keeps the last good
//! registry serving.
//!
//! [`spawn_watcher`] triggers reloads: `notify` events on the watched directories (the
//! directories, not the files, so editors that save by rename and Kubernetes' `..data` symlink
//! swap are seen), debounced, plus a slow poll for filesystems where events are lost.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::{self, ConfigError};
use crate::control::certs::CertStore;
use crate::metrics::{Metrics, ResultLabel};
use crate::policy::registry::Registry;

/// One registry generation, as served.
#[derive(Debug)]
pub struct Snapshot {
    pub registry: Registry,
    /// Grows by one for each reload that changed something; the first load is 1.
    pub generation: u64,
    /// When this generation was loaded (RFC 3339, UTC).
    pub loaded_at: String,
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadResult {
    /// A new generation serves.
    Success(u64),
    /// The files hash to the digest already serving.
    Unchanged,
    /// The last good registry keeps serving.
    Error(Vec<ConfigError>),
}

/// The live registry handle shared by the proxy, the admin endpoint and the reloader.
pub struct Live {
    current: ArcSwap<Snapshot>,
    /// The directory reloads read.
    dir: PathBuf,
    /// The last failed reload's first error; `None` after a good one.
    last_error: Mutex<Option<ConfigError>>,
    /// Serialises reloads (a watcher event and SIGHUP may race), and holds the compiled files of
    /// the last good registry so that a reload recompiles only what changed.
    reloading: Mutex<config::CompileCache>,
    metrics: Arc<Metrics>,
    /// The https listener's certificates, reloaded with the registry.
    certs: Option<Arc<CertStore>>,
    /// Every finished reload attempt, numbered, for whoever waits on one (tests, tools).
    status: watch::Sender<(u64, ReloadResult)>,
    /// The audit log, when on: each reload that changes the policy or fails is recorded.
    audit: std::sync::OnceLock<crate::audit::Sink>,
}

impl Live {
    /// Starts serving `registry` (already loaded and validated) as generation 1.
    pub fn new(registry: Registry, dir: PathBuf, metrics: Arc<Metrics>) -> Self {
        Self::with_certs(registry, dir, metrics, None)
    }

    /// Like [`Live::new`], with the https listener's certificates to reload too.
    pub fn with_certs(
        registry: Registry,
        dir: PathBuf,
        metrics: Arc<Metrics>,
        certs: Option<Arc<CertStore>>,
    ) -> Self {
        metrics.generation.set(1);
        metrics.last_reload_success.set(1);
        if let Some(c) = &certs {
            metrics.set_certs(
                c.load()
                    .certs
                    .iter()
                    .map(|c| (c.name.as_str(), c.not_after)),
            );
        }
        Live {
            current: ArcSwap::from_pointee(Snapshot {
                registry,
                generation: 1,
                loaded_at: crate::rfc3339(SystemTime::now()),
            }),
            dir,
            last_error: Mutex::new(None),
            reloading: Mutex::new(config::CompileCache::default()),
            metrics,
            certs,
            status: watch::channel((0, ReloadResult::Unchanged)).0,
            audit: std::sync::OnceLock::new(),
        }
    }

    /// Records reloads in the audit log from now on (set once, at start).
    pub fn set_audit(&self, sink: crate::audit::Sink) {
        let _ = self.audit.set(sink);
    }

    /// Hands a reload to the audit log: `success` (the generation and digest now serving) or
    /// `error` (the first error; the last good registry keeps serving). An unchanged reload (the
    /// periodic poll) is not recorded.
    fn audit_reload(&self, result: &ReloadResult) {
        let Some(sink) = self.audit.get() else {
            return;
        };
        let (result, error) = match result {
            ReloadResult::Success(_) => ("success", None),
            ReloadResult::Error(errors) => ("error", errors.first().map(ToString::to_string)),
            ReloadResult::Unchanged => return,
        };
        let snapshot = self.current.load();
        sink.record(crate::audit::Event::Reload(crate::audit::ReloadFacts {
            time_ms: crate::unix_now_ms(),
            generation: snapshot.generation,
            registry_digest: snapshot.registry.digest.clone(),
            result,
            error,
        }));
    }

    /// The certificate store, when the https listener is on.
    pub fn certs(&self) -> Option<&Arc<CertStore>> {
        self.certs.as_ref()
    }

    /// Attempts so far and the last result; changes after every reload attempt.
    pub fn subscribe(&self) -> watch::Receiver<(u64, ReloadResult)> {
        self.status.subscribe()
    }

    /// The snapshot serving now. Hold it for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn last_error(&self) -> Option<ConfigError> {
        self.last_error.lock().map(|g| g.clone()).unwrap_or(None)
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Re-reads the registry directory (and the certs directory) and swaps in what is valid and
    /// different. Each part that fails keeps its last good version serving.
    pub fn reload(&self) -> ReloadResult {
        // A poisoned lock only means an earlier reload panicked; the cache is still sound data.
        let mut cache = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut errors = Vec::new();
        let registry = match config::read_registry(&self.dir) {
            Err(e) => {
                errors.extend(e.0);
                None
            }
            Ok(files) if cache.digest(&files) == self.current.load().registry.digest => None,
            Ok(files) => match config::compile_registry_cached(&files, &mut cache) {
                Err(e) => {
                    errors.extend(e.0);
                    None
                }
                // Recompiled to the registry already serving (a first reload, whose cache is
                // empty, cannot tell before compiling when a file names an `upstream_ca`).
                Ok(r) if r.digest == self.current.load().registry.digest => None,
                Ok(r) => Some(r),
            },
        };
        let certs_changed = match self.certs.as_ref().map(|c| c.reload()) {
            Some(Ok(changed)) => changed,
            Some(Err(e)) => {
                errors.extend(e);
                false
            }
            None => false,
        };
        if certs_changed {
            if let Some(c) = &self.certs {
                self.metrics.set_certs(
                    c.load()
                        .certs
                        .iter()
                        .map(|c| (c.name.as_str(), c.not_after)),
                );
            }
        }
        let generation = if registry.is_some() || certs_changed {
            let registry = registry.unwrap_or_else(|| self.current.load().registry.clone());
            Some(self.swap(registry))
        } else {
            None
        };
        let result = match (errors.is_empty(), generation) {
            (false, _) => ReloadResult::Error(errors),
            (true, Some(g)) => ReloadResult::Success(g),
            (true, None) => ReloadResult::Unchanged,
        };
        self.record(&result);
        self.audit_reload(&result);
        self.status.send_modify(|(n, r)| {
            *n += 1;
            *r = result.clone();
        });
        result
    }

    /// Installs `registry` as the next generation.
    fn swap(&self, registry: Registry) -> u64 {
        let generation = self.current.load().generation + 1;
        self.current.store(Arc::new(Snapshot {
            registry,
            generation,
            loaded_at: crate::rfc3339(SystemTime::now()),
        }));
        self.metrics
            .generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        generation
    }

    fn record(&self, result: &ReloadResult) {
        let label = match result {
            ReloadResult::Success(g) => {
                self.metrics
                    .generation
                    .set(i64::try_from(*g).unwrap_or(i64::MAX));
                "success"
            }
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Error(_) => "error",
        };
        self.metrics
            .reloads
            .get_or_create(&ResultLabel { result: label })
            .inc();
        let ok = !matches!(result, ReloadResult::Error(_));
        self.metrics.last_reload_success.set(i64::from(ok));
        if let Ok(mut last) = self.last_error.lock() {
            *last = match result {
                ReloadResult::Error(errors) => errors.first().cloned(),
                _ => None,
            };
        }
        match result {
            ReloadResult::Success(g) => {
                tracing::info!(generation = g, dir = %self.dir.display(), "registry reloaded")
            }
            ReloadResult::Unchanged => {
                tracing::debug!(dir = %self.dir.display(), "registry unchanged")
            }
            ReloadResult::Error(errors) => {
                for e in errors {
                    tracing::error!(file = %e.file.display(), line = e.line, column = e.column, "reload failed, last good registry keeps serving: {}", e);
                }
            }
        }
    }
}

/// How the watcher behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Directories whose changes trigger a reload.
    pub dirs: Vec<PathBuf>,
    /// Quiet time after the last event before reloading (a save is often several events).
    pub debounce: Duration,
    /// Longest a burst of events may delay a reload.
    pub max_delay: Duration,
    /// Re-read everything this often, in case events were lost.
    pub poll_interval: Duration,
}

impl WatchOptions {
    pub fn new(dirs: Vec<PathBuf>, poll_interval: Duration) -> Self {
        WatchOptions {
            dirs,
            debounce: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            poll_interval,
        }
    }
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatcherHandle {
    task: tokio::task::JoinHandle<()>,
}

/// How often the watched directories are checked for having been removed or replaced (a new
/// directory at the same path, which the old watch does not see).
const REWATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies a directory: device, inode and creation time (an inode number is often
/// reused at once by a directory created again), `None` while it does not exist.
type DirIdentity = Option<(u64, u64, Option<SystemTime>)>;

fn dir_identity(dir: &std::path::Path) -> DirIdentity {
    let m = std::fs::metadata(dir)
        .ok()
        .filter(std::fs::Metadata::is_dir)?;
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt as _;
        (m.dev(), m.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Some((dev, ino, m.created().ok()))
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether an event can mean new content. Access events (opens and reads, our own included)
/// cannot, and reacting to them would make every reload trigger the next.
fn is_change(kind: &EventKind) -> bool {
    !matches!(kind, EventKind::Access(_))
}

/// Watches `opts.dirs` and reloads `live` on change (debounced), and every `poll_interval`.
pub fn spawn_watcher(live: Arc<Live>, opts: WatchOptions) -> notify::Result<WatcherHandle> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    // Set when a watched directory itself is removed or renamed away: its watch is gone.
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost_flag = Arc::clone(&lost);
    let watched = opts.dirs.clone();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if is_change(&ev.kind) => {
                if matches!(
                    ev.kind,
                    EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
                ) && ev.paths.iter().any(|p| watched.contains(p))
                {
                    lost_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                // A full channel already holds a pending trigger: nothing is lost.
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "file watcher error; the poll fallback still reloads")
            }
        })?;
    let mut identities = Vec::with_capacity(opts.dirs.len());
    for dir in &opts.dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        identities.push(dir_identity(dir));
        tracing::info!(dir = %dir.display(), poll_interval = ?opts.poll_interval, "watching for registry changes");
    }
    let task = tokio::spawn(async move {
        let mut poll = tokio::time::interval(opts.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        let mut rewatch = tokio::time::interval(REWATCH_INTERVAL);
        rewatch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cause = tokio::select! {
                _ = rewatch.tick() => {
                    // A directory removed and created again (or replaced by a rename) is a new
                    // inode: the watch on the old one sees nothing of it. Watch the new one and
                    // reload at once.
                    let mut replaced = false;
                    let watch_lost = lost.swap(false, std::sync::atomic::Ordering::SeqCst);
                    for (dir, known) in opts.dirs.iter().zip(identities.iter_mut()) {
                        let now = dir_identity(dir);
                        if now == *known && !(watch_lost && now.is_some()) {
                            continue;
                        }
                        if watch_lost && now.is_none() {
                            // Not back yet: look again at the next tick.
                            lost.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        *known = now;
                        if now.is_none() {
                            continue;
                        }
                        let _ = watcher.unwatch(dir);
                        match watcher.watch(dir, RecursiveMode::NonRecursive) {
                            Ok(()) => tracing::info!(dir = %dir.display(), "directory created again: watching it again"),
                            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the directory again; the poll still reloads"),
                        }
                        replaced = true;
                    }
                    if !replaced {
                        continue;
                    }
                    "directory replaced"
                }
                got = rx.recv() => {
                    if got.is_none() {
                        return;
                    }
                    // Debounce: wait for a quiet spell, but not longer than max_delay in all.
                    let until = tokio::time::Instant::now() + opts.max_delay;
                    loop {
                        let quiet = tokio::time::sleep(opts.debounce);
                        tokio::select! {
                            more = rx.recv() => if more.is_none() { return },
                            () = quiet => break,
                        }
                        if tokio::time::Instant::now() >= until {
                            break;
                        }
                    }
                    "change"
                }
                _ = poll.tick() => "poll",
            };
            let live = Arc::clone(&live);
            let result = tokio::task::spawn_blocking(move || live.reload()).await;
            if let Ok(ReloadResult::Success(g)) = result {
                tracing::debug!(generation = g, cause, "reload applied");
            }
        }
    });
    Ok(WatcherHandle { task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_utc() {
        let at = |s: u64| crate::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_825_600), "2000-02-29T12:00:00Z");
        assert_eq!(at(1_795_435_200), "2026-11-23T12:00:00Z");
    }
}
