//! The audit writer: a bounded queue from the request path to one thread that seals and appends.
//!
//! The request path calls [`Sink::record`], which never blocks: a full queue counts the record as
//! lost (`consent_gateway_audit_lost_total`) and the writer records the loss as its next record.
//! The writer thread stamps (`seq`, `replica`), serializes, seals and appends in batches (one
//! `write` for whatever is queued), rotates by size, and never lets an I/O error reach a request:
//! a failed write is logged (at most every [`ERROR_LOG_EVERY`]), counted
//! (`consent_gateway_audit_write_errors_total`), cut back out of the file so the chain stays
//! whole, and its records counted as lost. A file that cannot be opened is retried every second.
//!
//! The chain's anchor is found at the first open: the hash of the last whole record of the file
//! (or of `<path>.1` when the file is new after a rotation), else a random value, logged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::compact::{decode_reload, encode_reload, ResponseDraft, ResponseWriter};
use super::record::{
    canonical_event, canonical_loss, canonical_start, hex, seal_in_place, sha256_hex, unseal,
    Event, LossFacts, Stamp, StartFacts, HASH_LEN, SEAL_LEN,
};
use crate::config::{AuditConfig, AuditPath};
use crate::metrics::Metrics;

/// Least time between two error log lines about the same trouble.
pub const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// Time between attempts to open a file that would not open (or to repair one after an error).
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// A batch is written once it is this large, even with more records queued.
const BATCH_BYTES: usize = 256 << 10;
/// How far back from the end of a file the last whole record is looked for.
const TAIL_BYTES: u64 = 1 << 20;
/// How long the writer sleeps waiting for records before it records pending losses.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How long the writer lets records gather once the first one is queued, before it writes them
/// all at once: one wake-up and one `write(2)` per batch instead of per record. This is the most
/// a record waits in the queue (besides the time the writer needs for the records before it).
pub const GATHER: Duration = Duration::from_millis(10);
/// Records queued that end a gathering early (or half the queue, if smaller).
const WAKE_AT: usize = 512;
/// Bytes of queue buffer kept between batches (a burst may grow it further for a while).
const QUEUE_KEEP_BYTES: usize = 1 << 20;

/// What the writer is doing, so that the request path wakes it only when it must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a record: the first one queued wakes it.
    Idle,
    /// Letting records gather (until [`GATHER`] has passed): only the `wake_at`-th wakes it.
    Gathering,
    /// Working, or already woken: nobody needs to wake it.
    Busy,
}

/// Kinds of the records in the queue.
const RESPONSE: u8 = 1;
const RELOAD: u8 = 2;

/// The queue between the request path and the writer.
struct Queue {
    /// The records queued, each as its kind (a byte), its length (4 bytes, little-endian) and its
    /// facts in the encoding of [`super::compact`]: one buffer, reused, so that queueing a record
    /// allocates nothing and the writer frees nothing the request path allocated.
    bytes: Vec<u8>,
    /// Records in `bytes`.
    records: usize,
    /// Flushes asked for: answered once every record queued before them is written.
    flushes: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Write everything queued, then stop.
    stop: bool,
    /// The writer is gone: nothing is taken any more.
    closed: bool,
    state: State,
}

impl Queue {
    /// Something to write or answer.
    fn has_work(&self) -> bool {
        self.records > 0 || !self.flushes.is_empty() || self.stop
    }

    /// Something that should not wait for the gathering to end.
    fn urgent(&self) -> bool {
        !self.flushes.is_empty() || self.stop
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits on it; see [`State`] for who notifies it.
    wake: Condvar,
    /// Records the queue holds.
    capacity: usize,
    /// Records queued that end a gathering.
    wake_at: usize,
    /// Records dropped because the queue was full, not yet told in a `loss` record.
    queue_lost: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the queue and wakes the writer unless it is working or already woken.
    fn control(&self, change: impl FnOnce(&mut Queue)) {
        let mut q = self.lock();
        change(&mut q);
        let wake = q.state != State::Busy;
        q.state = State::Busy;
        drop(q);
        if wake {
            self.wake.notify_one();
        }
    }
}

/// The request path's and the reloader's handle: cheap to clone, never blocks (it takes a lock
/// held only to push or to swap the queue out, never while writing).
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
}

impl Sink {
    /// Queues a record; when the queue is full it is counted as lost instead.
    pub fn record(&self, event: Event) {
        match &event {
            Event::Response(r) => self.response(&ResponseDraft::from(&**r)),
            Event::Reload(r) => {
                let mut bytes = Vec::new();
                encode_reload(r, &mut bytes);
                self.push(RELOAD, &bytes);
            }
        }
    }

    /// Queues a `response` record (the request path's way: its facts are copied into the
    /// queue's buffer); when the queue is full it is counted as lost instead.
    pub fn response(&self, draft: &ResponseDraft) {
        self.push(RESPONSE, draft.bytes());
    }

    fn push(&self, kind: u8, facts: &[u8]) {
        let shared = &*self.shared;
        // (A record over 4 GiB cannot come from one response: lost rather than mis-framed.)
        let len = u32::try_from(facts.len()).unwrap_or(u32::MAX);
        let mut q = shared.lock();
        if q.closed || q.records >= shared.capacity || len == u32::MAX {
            drop(q);
            shared.queue_lost.fetch_add(1, Ordering::Relaxed);
            shared.metrics.audit_lost.inc();
            return;
        }
        q.bytes.push(kind);
        q.bytes.extend_from_slice(&len.to_le_bytes());
        q.bytes.extend_from_slice(facts);
        q.records += 1;
        let wake = match q.state {
            State::Idle => true,
            State::Gathering => q.records >= shared.wake_at,
            State::Busy => false,
        };
        if wake {
            q.state = State::Busy;
        }
        drop(q);
        if wake {
            shared.wake.notify_one();
        }
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit::Sink")
    }
}

/// Makes the writer wait (a test hook: a writer stuck on a slow disk, without one).
#[derive(Default)]
struct Hold {
    held: Mutex<bool>,
    released: Condvar,
}

impl Hold {
    fn wait(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn set(&self, on: bool) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = on;
        self.released.notify_all();
    }
}

/// While alive, the writer takes nothing more from the queue. See [`Audit::hold_writer`].
pub struct HoldGuard(Arc<Hold>);

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// The running audit log: its writer thread and the handle to stop it.
pub struct Audit {
    sink: Sink,
    hold: Arc<Hold>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Audit {
    /// Starts the writer thread. The first record it writes is `start`, naming the registry
    /// serving (`generation`, `registry_digest`). Only a failure to spawn the thread is an error:
    /// a file that cannot be opened is logged and retried.
    pub fn start(
        config: &AuditConfig,
        metrics: Arc<Metrics>,
        generation: u64,
        registry_digest: &str,
    ) -> std::io::Result<Audit> {
        let capacity = config.queue.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                bytes: Vec::new(),
                records: 0,
                flushes: Vec::new(),
                stop: false,
                closed: false,
                state: State::Busy,
            }),
            wake: Condvar::new(),
            capacity,
            wake_at: WAKE_AT.min(capacity / 2).max(1),
            queue_lost: AtomicU64::new(0),
            metrics,
        });
        let hold = Arc::new(Hold::default());
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let out = match &config.path {
            AuditPath::Stdout => Output::Stdout,
            AuditPath::File(path) => Output::File(FileOut {
                path: path.clone(),
                max_bytes: config.max_bytes,
                keep: config.keep,
                file: None,
                len: 0,
                dirty: false,
                retry_at: None,
                rotate_retry_at: None,
            }),
        };
        let writer = Writer {
            out,
            replica: replica(),
            seq: 0,
            prev: None,
            start: Some(StartFacts {
                version: env!("CARGO_PKG_VERSION"),
                generation,
                registry_digest: registry_digest.to_owned(),
            }),
            loss: LossFacts {
                lost: 0,
                queue_full: 0,
                write_error: 0,
            },
            shared: Arc::clone(&shared),
            batch: Batch::default(),
            last_error_log: None,
            responses: ResponseWriter::default(),
        };
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread_hold = Arc::clone(&hold);
        let gone = Gone(Arc::clone(&shared));
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || writer.run(&thread_hold));
                drop(gone);
                let _ = done_tx.send(());
            })?;
        Ok(Audit {
            sink: Sink { shared },
            hold,
            done: Some(done),
        })
    }

    /// A handle for the request path.
    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    /// Waits until every record queued before this call is written (or has failed).
    pub async fn flush(&self) {
        let (ack, written) = tokio::sync::oneshot::channel();
        let mut gone = false;
        self.sink.shared.control(|q| match q.closed {
            true => gone = true,
            false => q.flushes.push(ack),
        });
        if !gone {
            let _ = written.await;
        }
    }

    /// Test hook: the writer takes nothing more from the queue until the guard is dropped (as a
    /// writer stuck on a slow disk would), so that the queue fills.
    #[doc(hidden)]
    pub fn hold_writer(&self) -> HoldGuard {
        self.hold.set(true);
        HoldGuard(Arc::clone(&self.hold))
    }

    /// Drains the queue and stops the writer, waiting until `deadline` at most. Returns whether
    /// everything queued was written in time.
    pub async fn close(mut self, deadline: tokio::time::Instant) -> bool {
        self.sink.shared.control(|q| q.stop = true);
        let Some(done) = self.done.take() else {
            return true;
        };
        let drained = tokio::time::timeout_at(deadline, done).await.is_ok();
        if !drained {
            tracing::error!("audit log: the queue was not drained within shutdown_grace; records still queued are lost");
        }
        drained
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        // Not closed (a test or an error path): stop the writer without waiting.
        if self.done.is_some() {
            self.sink.shared.control(|q| q.stop = true);
        }
    }
}

/// Dropped when the writer thread ends (also by a panic): the queue is closed, so that records
/// are counted as lost and flushes are not waited for.
struct Gone(Arc<Shared>);

impl Drop for Gone {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.closed = true;
        q.flushes.clear();
        let left = q.records as u64;
        q.records = 0;
        q.bytes = Vec::new();
        drop(q);
        if left > 0 {
            self.0.metrics.audit_lost.inc_by(left);
        }
    }
}

/// The name of this machine or pod (Kubernetes sets a pod's host name to its name).
fn replica() -> String {
    let from_file = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    from_file("/proc/sys/kernel/hostname")
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| from_file("/etc/hostname"))
        .unwrap_or_else(|| "unknown".to_owned())
}

use crate::unix_now_ms as now_ms;

/// A random anchor for a new chain.
fn random_anchor() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => hex(&bytes),
        Err(_) => {
            // No system randomness: still unique per process and time, if guessable.
            tracing::warn!(
                "audit log: no system random source; the anchor is derived from the time and pid"
            );
            let seed = format!(
                "{}-{}-{:?}",
                std::process::id(),
                now_ms(),
                std::time::Instant::now()
            );
            sha256_hex(seed.as_bytes())
        }
    }
}

enum Output {
    Stdout,
    File(FileOut),
}

struct FileOut {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    /// Bytes of whole records in the file: what a failed write is cut back to.
    len: u64,
    /// A write failed and may have left part of a batch in the file.
    dirty: bool,
    /// No open or repair is tried before this.
    retry_at: Option<Instant>,
    /// No rotation is tried before this (a rename that failed).
    rotate_retry_at: Option<Instant>,
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// The end of a log file: the hash of its last whole record, and whether a torn line follows it.
struct Tail {
    hash: Option<String>,
    torn: bool,
}

fn read_tail(path: &Path) -> std::io::Result<Option<Tail>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let from = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut buf)?;
    let torn = buf.last() != Some(&b'\n');
    let whole = match buf.iter().rposition(|&b| b == b'\n') {
        Some(end) => &buf[..end],
        None => &[][..],
    };
    let line = match whole.iter().rposition(|&b| b == b'\n') {
        Some(start) => &whole[start + 1..],
        None if from == 0 => whole,
        None => &[][..],
    };
    let hash = unseal(line).map(|s| {
        if !s.intact() {
            tracing::warn!(file = %path.display(), "audit log: the last record of the file does not verify; the chain goes on from it and `audit verify` will name it");
        }
        s.hash.to_owned()
    });
    Ok(Some(Tail { hash, torn }))
}

/// Records sealed but not yet written.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Event records in it.
    events: u64,
    /// The hash of its last record.
    tip: Option<[u8; HASH_LEN]>,
    /// It holds the start record.
    start: Option<StartFacts>,
    /// The losses its loss records tell.
    loss: Option<LossFacts>,
}

struct Writer {
    out: Output,
    replica: String,
    /// The last `seq` given.
    seq: u64,
    /// The hash of the last record written: the next record's `prev`. `None` until the log has
    /// been opened and its anchor found.
    prev: Option<String>,
    /// The start record, until written.
    start: Option<StartFacts>,
    /// Losses not yet told in a loss record (queue-full ones are taken from `shared`).
    loss: LossFacts,
    shared: Arc<Shared>,
    batch: Batch,
    last_error_log: Option<Instant>,
    /// Serializes `response` records (remembering the last one's fields).
    responses: ResponseWriter,
}

impl Writer {
    fn run(mut self, hold: &Hold) {
        // The start record goes out now, not with the first event.
        if self.ready() {
            self.emit_pending();
            self.commit();
        }
        let shared = Arc::clone(&self.shared);
        let mut records: Vec<u8> = Vec::new();
        let mut flushes = Vec::new();
        loop {
            let mut q = shared.lock();
            while !q.has_work() {
                q.state = State::Idle;
                let (back, waited) = shared
                    .wake
                    .wait_timeout(q, IDLE_TICK)
                    .unwrap_or_else(|p| p.into_inner());
                q = back;
                if waited.timed_out() && !q.has_work() {
                    // Idle: the start record if the log would not open before, and losses that
                    // happened since the last record.
                    q.state = State::Busy;
                    drop(q);
                    if (self.start.is_some() || self.has_losses()) && self.ready() {
                        self.emit_pending();
                        self.commit();
                    }
                    q = shared.lock();
                }
            }
            // Let more records come, so that they are written together.
            if !q.urgent() && q.records < shared.wake_at {
                q.state = State::Gathering;
                let until = Instant::now() + GATHER;
                loop {
                    let now = Instant::now();
                    if q.urgent() || q.records >= shared.wake_at || now >= until {
                        break;
                    }
                    q = shared
                        .wake
                        .wait_timeout(q, until - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            q.state = State::Busy;
            drop(q);
            hold.wait();
            let stop = self.take(&shared, &mut records, &mut flushes);
            self.write(&mut records, &mut flushes);
            if stop {
                // Whatever was queued while the last batch was written.
                self.take(&shared, &mut records, &mut flushes);
                self.write(&mut records, &mut flushes);
                break;
            }
        }
        self.close();
    }

    /// Takes everything queued (leaving `records`' empty buffer in its place); true to stop.
    fn take(
        &self,
        shared: &Shared,
        records: &mut Vec<u8>,
        flushes: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    ) -> bool {
        let mut q = shared.lock();
        std::mem::swap(&mut q.bytes, records);
        q.records = 0;
        flushes.append(&mut q.flushes);
        q.stop
    }

    /// Writes the queued `records` (leaving the buffer empty) and answers `flushes`.
    fn write(
        &mut self,
        records: &mut Vec<u8>,
        flushes: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    ) {
        let mut rest = &records[..];
        while let Some((&kind, tail)) = rest.split_first() {
            let Some((len, tail)) = tail.split_first_chunk::<4>() else {
                break;
            };
            let Some((facts, tail)) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)
            else {
                break;
            };
            self.event(kind, facts);
            rest = tail;
        }
        records.clear();
        // A burst grew the buffer: give most of it back.
        if records.capacity() > QUEUE_KEEP_BYTES {
            records.shrink_to(QUEUE_KEEP_BYTES);
        }
        if !flushes.is_empty() && self.has_losses() && self.ready() {
            self.emit_pending();
        }
        self.commit();
        for ack in flushes.drain(..) {
            let _ = ack.send(());
        }
    }

    /// Seals a queued record onto the batch (or counts it lost when the log is not open).
    fn event(&mut self, kind: u8, facts: &[u8]) {
        if !self.ready() {
            self.loss.write_error += 1;
            self.loss.lost += 1;
            self.shared.metrics.audit_lost.inc();
            return;
        }
        self.emit_pending();
        let seq = self.next_seq();
        // Serialized straight onto the batch, and sealed there.
        let start = self.batch.bytes.len();
        if kind == RESPONSE {
            let stamp = Stamp {
                seq,
                time_ms: 0,
                replica: &self.replica,
            };
            self.responses.write(stamp, facts, &mut self.batch.bytes);
        } else {
            let reload = decode_reload(facts);
            let stamp = Stamp {
                seq,
                time_ms: reload.time_ms,
                replica: &self.replica,
            };
            let c = canonical_event(stamp, &Event::Reload(reload));
            self.batch.bytes.extend_from_slice(&c);
        }
        self.seal_last(start);
        self.batch.events += 1;
        if self.batch.bytes.len() >= BATCH_BYTES {
            self.commit();
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn has_losses(&self) -> bool {
        self.loss.lost > 0 || self.shared.queue_lost.load(Ordering::Relaxed) > 0
    }

    /// The start record (once) and a loss record (when records were lost) go before the next
    /// record.
    fn emit_pending(&mut self) {
        if let Some(start) = self.start.take() {
            let seq = self.next_seq();
            let c = canonical_start(
                Stamp {
                    seq,
                    time_ms: now_ms(),
                    replica: &self.replica,
                },
                &start,
            );
            self.append(&c);
            self.batch.start = Some(start);
        }
        let queue_full = self.shared.queue_lost.swap(0, Ordering::Relaxed);
        let mut loss = std::mem::replace(
            &mut self.loss,
            LossFacts {
                lost: 0,
                queue_full: 0,
                write_error: 0,
            },
        );
        loss.queue_full += queue_full;
        loss.lost += queue_full;
        if loss.lost > 0 {
            let seq = self.next_seq();
            let c = canonical_loss(
                Stamp {
                    seq,
                    time_ms: now_ms(),
                    replica: &self.replica,
                },
                &loss,
            );
            self.append(&c);
            let told = self.batch.loss.get_or_insert(LossFacts {
                lost: 0,
                queue_full: 0,
                write_error: 0,
            });
            told.lost += loss.lost;
            told.queue_full += loss.queue_full;
            told.write_error += loss.write_error;
        }
    }

    /// Seals a record onto the batch. Call only when [`Writer::ready`].
    fn append(&mut self, canonical: &[u8]) {
        let start = self.batch.bytes.len();
        self.batch.bytes.extend_from_slice(canonical);
        self.seal_last(start);
    }

    /// Seals the record whose canonical bytes end the batch (from `start`), rotating first when
    /// its line would take the file past `max_bytes`. Call only when [`Writer::ready`].
    fn seal_last(&mut self, mut start: usize) {
        // The line's length is known before it is sealed (the canonical bytes without their `}`,
        // the seal, `\n`), so that it is sealed after the batch before it is written: if that
        // write fails, the line chains to the last record that reached the file.
        let len = (self.batch.bytes.len() - start + SEAL_LEN) as u64;
        if let Output::File(f) = &self.out {
            let size = f.len + start as u64;
            let due = f.rotate_retry_at.map_or(true, |t| Instant::now() >= t);
            if size > 0 && size + len > f.max_bytes && due {
                let record = self.batch.bytes.split_off(start);
                self.commit();
                self.rotate();
                start = self.batch.bytes.len();
                self.batch.bytes.extend_from_slice(&record);
            }
        }
        let hash = match (&self.batch.tip, &self.prev) {
            (Some(tip), _) => {
                let tip = *tip;
                seal_in_place(&mut self.batch.bytes, start, &tip)
            }
            (None, Some(prev)) => seal_in_place(&mut self.batch.bytes, start, prev.as_bytes()),
            (None, None) => {
                self.batch.bytes.truncate(start);
                return;
            }
        };
        self.batch.tip = Some(hash);
    }

    /// Whether the log is open and its chain anchored; opens (or repairs) it when due.
    fn ready(&mut self) -> bool {
        let Output::File(f) = &mut self.out else {
            if self.prev.is_none() {
                let anchor = random_anchor();
                tracing::info!(anchor = %anchor, "audit log on standard output: new chain anchored at a random value");
                self.prev = Some(anchor);
            }
            return true;
        };
        if f.file.is_some() && !f.dirty {
            return true;
        }
        if f.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let result = if f.file.is_none() {
            Self::open(f, &mut self.prev)
        } else {
            // Cut back what a failed write may have left, so the chain stays whole. If that
            // fails too, the file is opened again next time (it may have been replaced).
            match f.file.as_ref().map(|file| file.set_len(f.len)) {
                Some(Err(e)) => {
                    f.file = None;
                    Err(e)
                }
                _ => {
                    f.dirty = false;
                    Ok(())
                }
            }
        };
        match result {
            Ok(()) => {
                f.retry_at = None;
                true
            }
            Err(e) => {
                f.retry_at = Some(Instant::now() + RETRY_EVERY);
                let path = f.path.display().to_string();
                self.error(&path, "cannot open the audit log", &e);
                false
            }
        }
    }

    /// Opens the file; on the first open, finds the chain's anchor.
    fn open(f: &mut FileOut, prev: &mut Option<String>) -> std::io::Result<()> {
        if prev.is_none() {
            let tail = match read_tail(&f.path)? {
                Some(t) => Some((t, f.path.clone())),
                None if f.keep > 0 => {
                    let older = rotated(&f.path, 1);
                    read_tail(&older)?.map(|t| (t, older))
                }
                None => None,
            };
            let mut file = open_append(&f.path)?;
            f.len = file.metadata()?.len();
            if tail.as_ref().is_some_and(|(t, p)| t.torn && *p == f.path) {
                // The last process stopped mid-line: end that line, go on after the last whole
                // record (`audit verify` accepts a torn line followed by a start record).
                file.write_all(b"\n")?;
                f.len += 1;
                tracing::warn!(file = %f.path.display(), "audit log ended in a torn line (the gateway stopped while writing it); the chain goes on from the last whole record");
            }
            let (anchor, from) = match tail {
                Some((Tail { hash: Some(h), .. }, p)) => (h, p.display().to_string()),
                Some((Tail { hash: None, .. }, p)) => {
                    tracing::warn!(file = %p.display(), "audit log: the file's last whole line is not an audit record (another file at this path?); a new chain starts from a random value and `audit verify` will stop at the first line");
                    (
                        random_anchor(),
                        "a random value (no audit record to go on from)".to_owned(),
                    )
                }
                None => (random_anchor(), "a random value (new log)".to_owned()),
            };
            tracing::info!(file = %f.path.display(), anchor = %anchor, from = %from, "audit log: chain anchored");
            *prev = Some(anchor);
            f.file = Some(file);
        } else {
            let file = open_append(&f.path)?;
            f.len = file.metadata()?.len();
            f.file = Some(file);
        }
        f.dirty = false;
        Ok(())
    }

    /// Renames `path` to `path.1` (shifting older ones up to `path.<keep>`) and opens a new file.
    fn rotate(&mut self) {
        let Output::File(f) = &mut self.out else {
            return;
        };
        if let Some(file) = f.file.take() {
            // The rotated file is complete on disk before the new one starts.
            let _ = file.sync_data();
        }
        let shifted = (|| -> std::io::Result<()> {
            if f.keep == 0 {
                return std::fs::remove_file(&f.path);
            }
            for n in (1..f.keep).rev() {
                match std::fs::rename(rotated(&f.path, n), rotated(&f.path, n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&f.path, rotated(&f.path, 1))
        })();
        let path = f.path.display().to_string();
        match shifted {
            Ok(()) => {
                f.rotate_retry_at = None;
                tracing::info!(file = %path, last_hash = %self.prev.as_deref().unwrap_or(""), "audit log rotated");
            }
            Err(e) => {
                f.rotate_retry_at = Some(Instant::now() + ERROR_LOG_EVERY);
                self.error(&path, "cannot rotate the audit log (writing on to it)", &e);
            }
        }
        let Output::File(f) = &mut self.out else {
            return;
        };
        match open_append(&f.path).and_then(|file| Ok((file.metadata()?.len(), file))) {
            Ok((len, file)) => {
                f.len = len;
                f.file = Some(file);
                f.dirty = false;
            }
            Err(e) => {
                f.retry_at = Some(Instant::now() + RETRY_EVERY);
                let path = f.path.display().to_string();
                self.error(&path, "cannot open the audit log after rotating it", &e);
            }
        }
    }

    /// Writes the batch. On failure its records are lost (counted, and told in the next loss
    /// record; their `seq`s leave a gap) and the chain goes on from the last record written.
    fn commit(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        if batch.bytes.is_empty() {
            return;
        }
        let usable = match &self.out {
            Output::Stdout => true,
            Output::File(f) => f.file.is_some() && !f.dirty,
        };
        // `ready` opens or repairs the file when due, and reports its own errors.
        let reported = !usable && !self.ready();
        let written = match &mut self.out {
            _ if reported => Err(std::io::Error::other("the audit log is not open")),
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&batch.bytes).and_then(|()| out.flush())
            }
            Output::File(f) => match f.file.as_mut() {
                None => Err(std::io::Error::other("the audit log is not open")),
                Some(file) => match file.write_all(&batch.bytes) {
                    Ok(()) => {
                        f.len += batch.bytes.len() as u64;
                        Ok(())
                    }
                    Err(e) => {
                        f.dirty = true;
                        f.retry_at = Some(Instant::now() + RETRY_EVERY);
                        Err(e)
                    }
                },
            },
        };
        match written {
            Ok(()) => {
                if let Some(tip) = batch.tip {
                    self.prev = Some(String::from_utf8_lossy(&tip).into_owned());
                }
                let records = batch.events
                    + u64::from(batch.start.is_some())
                    + u64::from(batch.loss.is_some());
                self.shared.metrics.audit_records.inc_by(records);
            }
            Err(e) => {
                // Told again: the start record, and the losses the failed loss record held.
                if self.start.is_none() {
                    self.start = batch.start;
                }
                if let Some(l) = batch.loss {
                    self.loss.lost += l.lost;
                    self.loss.queue_full += l.queue_full;
                    self.loss.write_error += l.write_error;
                }
                self.loss.lost += batch.events;
                self.loss.write_error += batch.events;
                self.shared.metrics.audit_lost.inc_by(batch.events);
                if !reported {
                    let path = match &self.out {
                        Output::Stdout => "stdout".to_owned(),
                        Output::File(f) => f.path.display().to_string(),
                    };
                    self.error(&path, "cannot write the audit log", &e);
                }
            }
        }
        // The next batch reuses the buffer.
        let mut bytes = batch.bytes;
        if self.batch.bytes.is_empty() && bytes.capacity() <= 2 * BATCH_BYTES {
            bytes.clear();
            self.batch.bytes = bytes;
        }
    }

    /// Counts an I/O error; logs it unless one was logged within [`ERROR_LOG_EVERY`].
    fn error(&mut self, path: &str, what: &str, e: &std::io::Error) {
        self.shared.metrics.audit_write_errors.inc();
        let now = Instant::now();
        if self
            .last_error_log
            .map_or(true, |t| now.duration_since(t) >= ERROR_LOG_EVERY)
        {
            self.last_error_log = Some(now);
            tracing::error!(
                file = path,
                error = %e,
                lost = self.shared.metrics.audit_lost.get(),
                "{what}: records are counted as lost; requests are served as usual"
            );
        }
    }

    fn close(&mut self) {
        if let Output::File(f) = &mut self.out {
            if let Some(file) = f.file.take() {
                let _ = file.sync_data();
            }
        }
        tracing::info!(last_hash = %self.prev.as_deref().unwrap_or(""), seq = self.seq, "audit log closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::ReloadFacts;
    use crate::audit::verify::verify_bytes;

    fn config(path: PathBuf, max_bytes: u64, keep: u32) -> AuditConfig {
        AuditConfig {
            path: AuditPath::File(path),
            max_bytes,
            keep,
            queue: 64,
        }
    }

    fn reload(n: u64) -> Event {
        Event::Reload(ReloadFacts {
            time_ms: now_ms(),
            generation: n,
            registry_digest: "d".repeat(64),
            result: "success",
            error: None,
        })
    }

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap_or_default()
    }

    #[tokio::test]
    async fn rotation_keeps_the_chain_and_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new());
        let audit = Audit::start(&config(path.clone(), 1024, 2), metrics.clone(), 1, "x").unwrap();
        for n in 0..40 {
            audit.sink().record(reload(n));
        }
        audit.flush().await;
        assert!(
            audit
                .close(tokio::time::Instant::now() + Duration::from_secs(10))
                .await
        );
        let files = [rotated(&path, 2), rotated(&path, 1), path.clone()];
        assert!(!rotated(&path, 3).exists());
        let bytes: Vec<Vec<u8>> = files.iter().map(|p| read(p)).collect();
        for b in &bytes {
            assert!(b.len() as u64 <= 1024, "a file over max_bytes: {}", b.len());
        }
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        let r = verify_bytes(
            names
                .iter()
                .map(String::as_str)
                .zip(bytes.iter().map(Vec::as_slice)),
        )
        .unwrap();
        assert!(r.records > 0 && r.lost == 0, "{r:?}");
        assert_eq!(metrics.audit_records.get(), 41);
    }

    #[tokio::test]
    async fn a_full_disk_loses_records_then_the_log_recovers_with_a_loss_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // Every write to /dev/full fails with ENOSPC, as on a full disk.
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let metrics = Arc::new(Metrics::new());
        let audit =
            Audit::start(&config(path.clone(), 1 << 20, 3), metrics.clone(), 1, "x").unwrap();
        for n in 0..5 {
            audit.sink().record(reload(n));
        }
        audit.flush().await;
        assert!(metrics.audit_write_errors.get() >= 1);
        assert_eq!(metrics.audit_lost.get(), 5);
        assert_eq!(metrics.audit_records.get(), 0);
        // Room again: the path is a plain file. The writer retries every second, so records are
        // handed to it until one is written.
        std::fs::remove_file(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 5;
        while metrics.audit_records.get() == 0 {
            assert!(Instant::now() < deadline, "the log never recovered");
            audit.sink().record(reload(n));
            n += 1;
            audit.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        audit
            .close(tokio::time::Instant::now() + Duration::from_secs(10))
            .await;
        let bytes = read(&path);
        let r = verify_bytes([("audit.jsonl", &bytes[..])]).unwrap();
        assert_eq!(r.lost, metrics.audit_lost.get());
        assert!(r.lost >= 5 && r.losses.len() == 1, "{r:?}");
        assert_eq!(r.records, metrics.audit_records.get());
        assert_eq!(r.records + r.lost, n + 2, "{r:?}");
    }

    #[tokio::test]
    async fn a_restart_continues_the_chain_and_a_torn_tail_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new());
        for round in 0..3 {
            let audit =
                Audit::start(&config(path.clone(), 1 << 20, 1), metrics.clone(), 1, "x").unwrap();
            audit.sink().record(reload(round));
            audit.flush().await;
            audit
                .close(tokio::time::Instant::now() + Duration::from_secs(10))
                .await;
            if round == 1 {
                // A crash mid-line.
                let mut f = OpenOptions::new().append(true).open(&path).unwrap();
                f.write_all(b"{\"audit\":1,\"seq\":3,\"tim").unwrap();
            }
        }
        let bytes = read(&path);
        let r = verify_bytes([("audit.jsonl", &bytes[..])]).unwrap();
        assert_eq!(r.starts, 3);
        assert_eq!(r.records, 6);
        assert_eq!(r.torn.len(), 1);
        assert_eq!(r.torn[0].line, 5);
    }
}
