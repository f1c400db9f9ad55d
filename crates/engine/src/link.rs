//! The primary's end of the replication link: numbering, pipelining and acknowledgement of
//! operations, and the decision to continue alone when the peer stops answering.
//!
//! The durability rule (docs/architecture.md, "The contract"): an operation submitted while
//! the peer is in sync is reported complete by `wait` only once the peer acknowledged it (for
//! fsync, once the peer's fsync returned), or once this node recorded durably that the peer is
//! no longer in sync. Never otherwise.
//!
//! Modes:
//! - `Alone`: no peer. Operations are not sent. The state file says the peer is not in sync.
//! - `Syncing`: connected; a synchronisation is running. Application operations are not
//!   sent; what they touch is recorded and synchronised again before the switch.
//! - `InSync`: every operation is sent, in the order the primary completed them.
//!
//! The dirty record (`record`): until the peer confirmed a synchronisation, every change is
//! recorded durably before it is made (`premark`). Once it confirmed, changes are only kept in
//! memory while the peer may not have them durably (sent and not acknowledged, or
//! acknowledged after its last flush); when the peer is lost they go to the record first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mirrorkit_store::StateFile;
use mirrorkit_wire::{self as wire, DataState, GenId, Message, Op, ProbeFile, TimeFix};
use tracing::{error, info, warn};

use crate::record::{Found, Record, RecordError};
pub use crate::record::{Mark, MarkSet};
use mirrorkit_cluster::generation::Role;

/// Limits and timeouts of the link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Longest an operation waits for the peer's acknowledgement before this node continues
    /// alone. Default 3000 ms.
    pub peer_timeout_ms: u64,
    /// Most operations sent and not yet acknowledged. Default 4096.
    pub max_inflight_ops: usize,
    /// Most data bytes sent and not yet acknowledged. Default 64 MiB.
    pub max_inflight_bytes: usize,
    /// Most bytes of file data per second a synchronisation sends (`None`: as fast as the
    /// disks and the network go). The application's own writes are never limited.
    pub resync_bytes_per_sec: Option<u64>,
    /// The operator who forced this node to become primary (`prim`, `--force`) although its
    /// data may be older than its peer's, for the log. `None`: such a start is refused.
    pub forced_by: Option<String>,
    /// A cluster manager drives this link (`crate::managed`): it persists the generations,
    /// and writes are held from the loss of the peer until it calls `allow_alone`.
    pub managed: Option<crate::managed::Events>,
    /// What is replicated (`module.toml`'s `include`/`exclude` patterns); the peer follows
    /// the same selection, sent in the greeting. Default: everything.
    pub filter: std::sync::Arc<mirrorkit_module::MirrorFilter>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            peer_timeout_ms: 3000,
            max_inflight_ops: 4096,
            max_inflight_bytes: 64 << 20,
            resync_bytes_per_sec: None,
            forced_by: None,
            managed: None,
            filter: std::sync::Arc::new(mirrorkit_module::MirrorFilter::everything()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Alone,
    Syncing,
    InSync,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Alone => "alone",
            Mode::Syncing => "syncing",
            Mode::InSync => "in-sync",
        }
    }
}

/// What `submit` hands back: wait on it to know the peer has the operation.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    session: u64,
    seq: u64,
}

/// Counters for status, benchmarks and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub ops_sent: AtomicU64,
    pub data_bytes_sent: AtomicU64,
    pub sync_data_bytes_sent: AtomicU64,
    pub sessions: AtomicU64,
    pub times_alone: AtomicU64,
    /// Bytes of file data the last synchronisations had to compare or send (chunks probed).
    pub sync_probe_bytes: AtomicU64,
    /// Bytes of file data the dirty record listed when the last synchronisation started.
    pub sync_recorded_bytes: AtomicU64,
    /// Progress of the last synchronisation: bytes of file data compared or sent, bytes
    /// planned (growing as catch-up passes find more), and when it started (ms since the
    /// Unix epoch).
    pub sync_done_bytes: AtomicU64,
    pub sync_total_bytes: AtomicU64,
    pub sync_started_ms: AtomicU64,
    /// Online verify: 1 while one runs; bytes compared and differences found by the last.
    pub verify_running: AtomicU64,
    pub verify_done_bytes: AtomicU64,
    pub verify_differences: AtomicU64,
    /// Replication latency of the application's operations while in sync (not the
    /// synchroniser's): from sending one to the peer's acknowledgement (applied there; flushed
    /// too for barriers). Operations acknowledged, the sum of their latencies,
    /// how many fell in each of [`LATENCY_BUCKETS_US`] (the last slot: above all of them),
    /// and a moving average of the recent ones (1/16 weight to each new one).
    pub acks: AtomicU64,
    pub ack_latency_us_sum: AtomicU64,
    pub ack_latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    pub ack_latency_recent_us: AtomicU64,
}

/// Upper bounds (inclusive, microseconds) of the replication latency histogram.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

impl Counters {
    /// Count one acknowledged operation that took `us` microseconds.
    fn ack_latency(&self, us: u64) {
        self.acks.fetch_add(1, Ordering::Relaxed);
        self.ack_latency_us_sum.fetch_add(us, Ordering::Relaxed);
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.ack_latency_buckets[slot].fetch_add(1, Ordering::Relaxed);
        // Updated under the link's lock (acknowledgements are handled one at a time).
        let old = self.ack_latency_recent_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            us
        } else {
            old - old / 16 + us / 16
        };
        self.ack_latency_recent_us
            .store(new.max(1), Ordering::Relaxed);
    }
}

/// One operation sent and not yet acknowledged.
struct Inflight {
    seq: u64,
    bytes: usize,
    /// What it changes, recorded if the peer is lost before it has it durably.
    marks: Vec<Mark>,
    /// The peer flushes everything before acknowledging it (barrier, end of a sync).
    flushes: bool,
    /// When it was sent, for the replication latency; `None` for the synchroniser's own
    /// operations (a resync's data and its final flush are not application latency).
    sent: Option<Instant>,
}

/// The session's replication stream, written by submitting threads (never from async code:
/// `block_on` would panic there; FUSE workers and the synchroniser's blocking thread are not).
struct StreamWriter {
    stream: quinn::SendStream,
    rt: tokio::runtime::Handle,
}

struct St {
    mode: Mode,
    /// Incremented whenever a connection starts or ends; tickets of an older session are
    /// complete (the loss of their session was recorded durably first).
    session: u64,
    next_seq: u64,
    acked: u64,
    inflight: VecDeque<Inflight>,
    inflight_bytes: usize,
    tx: Option<StreamWriter>,
    /// Changes since the current synchronisation pass started (for its catch-up).
    pass: MarkSet,
    reason: String,
    /// What the state file currently says about the peer.
    stored_in_sync: bool,
    encode_buf: Vec<u8>,
    /// The persisted state of this node's data (generations).
    data: DataState,
    /// The durable record of changes the peer may lack; written while `!stored_in_sync`.
    record: Record,
    /// Marks of the operation under way (between `premark` and `submit`).
    slot: Vec<Mark>,
    /// Marks of operations the peer acknowledged after its last flush.
    since_flush: Vec<Mark>,
    /// Answers to probes, by sequence number.
    replies: HashMap<u64, (ProbeFile, Vec<u8>)>,
    /// Managed: the peer was lost and the manager has not yet allowed this node to go on
    /// alone; no write completes meanwhile.
    held: bool,
    /// The heartbeats say the peer is lost (since when, and why): an operation waits for it
    /// only while acknowledgements keep coming, not for the whole peer timeout.
    suspect: Option<(Instant, String)>,
    /// When the peer last acknowledged something (or the session began).
    last_ack_at: Instant,
    /// Managed: what the peer may lack that could not be written to the dirty record yet (a
    /// full state disk), with the record's base and the error. Writes stay held until it is
    /// written (`retry_record`, `allow_alone`).
    unrecorded: Option<(Option<GenId>, Vec<Mark>, String)>,
    /// Managed: the manager's `allow_alone` that came while `unrecorded` waited.
    allow_pending: Option<DataState>,
    /// Writes are failed, never acknowledged (the manager fenced this node).
    fenced: bool,
    /// What is replicated (the directory and its patterns) differs from what the peer last
    /// confirmed in sync, or that is unknown: the next synchronisation compares all data,
    /// since the dirty record says nothing of entries that just entered the set.
    selection_changed: bool,
}

struct Inner {
    st: Mutex<St>,
    cv: Condvar,
    cfg: LinkConfig,
    state_file: StateFile,
    counters: Counters,
    mirror: String,
    /// Where the selection last confirmed in sync is kept, and the current one.
    selection_file: std::path::PathBuf,
    selection: String,
}

/// Whether this primary term began from the generation the peer holds: the generation this
/// node's data had just before it (pushed into the history when the term began) is the one the
/// record is relative to. That is so only when this node held exactly that data: as a
/// secondary that took it from the peer, or as a primary whose peer was proven in sync at a
/// clean stop (an unclean one drops the record's base instead). Every term begins with a new
/// generation before its mount, so nothing was written in it yet.
fn new_term_from_peer_generation(data: &DataState) -> bool {
    data.bitmap.is_some() && data.history.first() == data.bitmap.as_ref()
}

/// File, in the state directory, naming the selection (directory and patterns) the peer last
/// confirmed in sync.
pub const SELECTION_FILE: &str = "selection";

/// What a peer's copy is a copy of: the replicated directory and its patterns.
fn selection_id(root: &std::path::Path, filter: &mirrorkit_module::MirrorFilter) -> String {
    let (include, exclude) = filter.patterns();
    format!(
        "directory {}\ninclude {include:?}\nexclude {exclude:?}\n",
        root.display()
    )
}

/// Secondary: its copy is in sync, under the primary's patterns, in the directory `root`:
/// record that selection, so that as primary later (with the same patterns) it resyncs its
/// peer incrementally, as the node that held the selection in sync.
pub(crate) fn record_selection(
    state_dir: &std::path::Path,
    root: &std::path::Path,
    include: &[String],
    exclude: &[String],
) -> Result<(), String> {
    let filter = mirrorkit_module::MirrorFilter::from_patterns(include, exclude)
        .map_err(|e| e.to_string())?;
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    mirrorkit_store::state::replace_durably(
        &state_dir.join(SELECTION_FILE),
        selection_id(&root, &filter).as_bytes(),
    )
    .map_err(|e| e.to_string())
}

/// Shared handle to the link; cheap to clone.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

/// The link was lost or changed session while the caller was using it.
#[derive(Debug, thiserror::Error)]
#[error("replication session ended: {0}")]
pub struct SessionLost(pub String);

impl Link {
    /// A link that starts alone: this node becomes primary without its peer, so a new
    /// generation of its data starts, and the record keeps every change until a
    /// synchronisation completes.
    /// `root`: the replicated directory (it is part of what the peer holds a copy of).
    pub fn new(
        mirror: &str,
        cfg: LinkConfig,
        state_file: StateFile,
        state_dir: &std::path::Path,
        root: &std::path::Path,
    ) -> Result<Self, String> {
        let mut data = state_file.load().map_err(|e| e.to_string())?;
        let was = data.clone();
        // A node that never held this mirror's data in any role (new, or wiped): a peer that
        // has some refuses it as primary, so it may start.
        let never_held = data.current.is_none() && data.role == Role::None;
        if cfg.managed.is_some() {
            // The manager persisted the primary generation before mounting.
            if data.role != Role::Primary || !data.consistent || data.current.is_none() {
                return Err(format!(
                    "the cluster manager mounted the mirror as primary, but the state file {} does not record a primary generation: refusing to run on it",
                    state_file.path().display()
                ));
            }
        } else {
            Self::start_alone(mirror, &cfg, &mut data, never_held)?;
        }
        let (record, found) = Record::open(state_dir, data.bitmap).map_err(|e| e.to_string())?;
        if data.bitmap.is_some() && found != Found::Valid {
            if new_term_from_peer_generation(&data) && found != Found::Unreadable {
                // This node's data was the peer's generation when this term began (it took it
                // as secondary, or handed it over after a barrier), and nothing was written in
                // this term before this mount: the record starts empty, and it is complete.
                info!(mirror, base = %data.bitmap.map(|g| g.to_string()).unwrap_or_default(),
                    "this term starts from the generation the peer holds: the record starts empty, and the next synchronisation sends only what changes from now on");
            } else {
                warn!(mirror, ?found, "dirty record missing, damaged or for another generation: the next synchronisation compares all data");
                data.bitmap = None;
            }
        }
        if was.unclean {
            warn!(mirror, "this node stopped while primary with its peer in sync, without recording what the peer may lack: the next synchronisation compares all data");
        }
        state_file.store(&data).map_err(|e| e.to_string())?;
        let selection = selection_id(root, &cfg.filter);
        let selection_file = state_dir.join(SELECTION_FILE);
        let selection_changed = match std::fs::read_to_string(&selection_file) {
            Ok(last) if last == selection => false,
            Ok(_) => {
                warn!(mirror, file = %selection_file.display(), "the replicated directory or its include/exclude patterns changed since the peer was last in sync: the next synchronisation compares all data");
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                info!(mirror, "no record of the selection the peer last confirmed: the next synchronisation compares all data");
                true
            }
            Err(e) => {
                warn!(mirror, file = %selection_file.display(), "cannot read the selection the peer last confirmed ({e}): the next synchronisation compares all data");
                true
            }
        };
        info!(mirror, generation = %data.current.map(|g| g.to_string()).unwrap_or_default(),
            base = %data.bitmap.map(|g| g.to_string()).unwrap_or_else(|| "none".into()),
            managed = cfg.managed.is_some(), "primary starts alone");
        Ok(Link {
            inner: Arc::new(Inner {
                st: Mutex::new(St {
                    mode: Mode::Alone,
                    session: 0,
                    next_seq: 1,
                    acked: 0,
                    inflight: VecDeque::new(),
                    inflight_bytes: 0,
                    tx: None,
                    pass: MarkSet::default(),
                    reason: "starting: peer not connected yet".into(),
                    stored_in_sync: false,
                    encode_buf: Vec::new(),
                    data,
                    record,
                    slot: Vec::new(),
                    since_flush: Vec::new(),
                    replies: HashMap::new(),
                    suspect: None,
                    last_ack_at: Instant::now(),
                    unrecorded: None,
                    allow_pending: None,
                    held: false,
                    fenced: false,
                    selection_changed,
                }),
                cv: Condvar::new(),
                cfg,
                state_file,
                counters: Counters::default(),
                mirror: mirror.to_string(),
                selection_file,
                selection,
            }),
        })
    }

    /// Standalone start (`mirrorkit mirror primary`): this node decides itself whether it may
    /// lead, and starts a new generation.
    fn start_alone(
        mirror: &str,
        cfg: &LinkConfig,
        data: &mut DataState,
        never_held: bool,
    ) -> Result<(), String> {
        match (&cfg.forced_by, data.may_lead_alone()) {
            (Some(who), stale) => {
                let why = match stale {
                    Ok(()) => "its data was not stale".to_string(),
                    Err(s) => s.to_string(),
                };
                warn!(mirror, forced_by = %who, previous = %data.current.map(|g| g.to_string()).unwrap_or_else(|| "none".into()),
                    "primary FORCED by an operator ({why}): this node's data becomes the reference; a peer with other data keeps its divergent files aside when it returns");
                data.force_lead(fresh_gen());
            }
            (None, Ok(())) => data.begin_alone(fresh_gen()),
            (None, Err(_)) if never_held => data.begin_alone(fresh_gen()),
            (None, Err(stale)) => {
                return Err(format!(
                    "refusing to start as primary: {stale}. Start this node as secondary so that it takes its peer's data, or, if the peer's data is lost for good, force it with --force (its peer then keeps its own divergent files aside when it returns)"
                ));
            }
        }
        Ok(())
    }

    /// Whether the next synchronisation must compare all data because what is replicated
    /// changed (or is not known to match) since the peer was last confirmed in sync.
    pub fn selection_changed(&self) -> bool {
        self.lock().selection_changed
    }

    /// What this node knows of its data, for the greeting.
    pub fn data_state(&self) -> DataState {
        self.lock().data.clone()
    }

    /// The record's marks (a copy), for a synchronisation that uses it.
    pub fn recorded(&self) -> MarkSet {
        self.lock().record.marks().clone()
    }

    /// Record what the operation about to be made changes. Call with the ordering lock held,
    /// before the local system call. While the peer is not confirmed in sync the marks are
    /// durable when this returns; an error means they are not, and the operation must not be
    /// made.
    pub fn premark(&self, marks: Vec<Mark>) -> Result<(), RecordError> {
        let mut st = self.lock();
        if !st.stored_in_sync {
            st.record.add(&marks)?;
        }
        // The synchronisation pass learns of the change only in `submit`, once it is done
        // here: a pass that took the marks earlier could read the old bytes and never again.
        st.slot = marks;
        Ok(())
    }

    /// The operation under way is over (with the ordering lock still held): marks `submit`
    /// did not take go to the running synchronisation pass.
    pub fn release_slot(&self) {
        let mut st = self.lock();
        let marks = std::mem::take(&mut st.slot);
        if st.mode == Mode::Syncing {
            for m in &marks {
                st.pass.add(m);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, St> {
        // A panic while holding this lock would be a bug; the data it guards stays usable.
        self.inner.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    /// Mode and the reason it was entered, as shown to operators and tests: in-sync only once
    /// the peer confirmed the end of the synchronisation (until then its copy is incomplete,
    /// although every new operation is already sent).
    pub fn status(&self) -> (Mode, String) {
        let st = self.lock();
        if st.mode == Mode::InSync && !st.stored_in_sync {
            return (
                Mode::Syncing,
                "full synchronisation sent: waiting for the peer to confirm it".into(),
            );
        }
        (st.mode, st.reason.clone())
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub fn config(&self) -> &LinkConfig {
        &self.inner.cfg
    }

    /// Submit an application operation that has just completed locally. Call with the
    /// file system's ordering lock held, so that submission order is completion order, after
    /// `premark`.
    pub fn submit(&self, op: Op, data: &[u8], fixes: Vec<TimeFix>) -> Option<Ticket> {
        let mut st = self.lock();
        let marks = std::mem::take(&mut st.slot);
        match st.mode {
            Mode::Alone => None,
            Mode::Syncing => {
                for m in &marks {
                    st.pass.add(m);
                }
                None
            }
            Mode::InSync => {
                let session = st.session;
                let seq = self.send_locked(st, &op, data, fixes, marks).ok()?;
                Some(Ticket { session, seq })
            }
        }
    }

    /// Submit a synchronisation message of session `session` (the synchroniser's own traffic).
    pub fn submit_sync(&self, session: u64, op: &Op, data: &[u8]) -> Result<Ticket, SessionLost> {
        let st = self.lock();
        if st.session != session || st.mode == Mode::Alone {
            return Err(SessionLost(st.reason.clone()));
        }
        let seq = self.send_locked(st, op, data, Vec::new(), Vec::new())?;
        if matches!(op, Op::SyncData { .. }) {
            self.inner
                .counters
                .sync_data_bytes_sent
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(Ticket { session, seq })
    }

    /// Number, encode and queue one message, waiting for room in the in-flight window.
    fn send_locked(
        &self,
        mut st: MutexGuard<'_, St>,
        op: &Op,
        data: &[u8],
        fixes: Vec<TimeFix>,
        marks: Vec<Mark>,
    ) -> Result<u64, SessionLost> {
        let session = st.session;
        let start = Instant::now();
        let deadline = start + Duration::from_millis(self.inner.cfg.peer_timeout_ms);
        while !st.inflight.is_empty()
            && (st.inflight.len() >= self.inner.cfg.max_inflight_ops
                || st.inflight_bytes + data.len() > self.inner.cfg.max_inflight_bytes)
        {
            let now = Instant::now();
            let (until, suspected) = wait_deadline(&st, start, deadline);
            if now >= until {
                let reason = match suspected {
                    Some(why) => format!(
                        "{why}, and no acknowledgement for {SUSPECT_GRACE_MS} ms while the in-flight window is full"
                    ),
                    None => format!(
                        "peer did not make room in the in-flight window ({} operations, {} bytes) within {} ms",
                        st.inflight.len(),
                        st.inflight_bytes,
                        self.inner.cfg.peer_timeout_ms
                    ),
                };
                self.go_alone_locked(&mut st, session, reason);
                return Err(SessionLost(st.reason.clone()));
            }
            st = self
                .inner
                .cv
                .wait_timeout(st, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if st.session != session {
                return Err(SessionLost(st.reason.clone()));
            }
        }
        let seq = st.next_seq;
        let msg = Message::Op {
            seq,
            op: op.clone(),
            fixes,
        };
        let mut buf = std::mem::take(&mut st.encode_buf);
        let encoded = wire::encode_header(&msg, data.len(), &mut buf);
        if let Err(e) = encoded {
            st.encode_buf = buf;
            // Our own message does not fit the protocol: a bug, but the peer must not be
            // trusted to have this operation.
            let reason = format!("cannot encode {} operation: {e}", op.name());
            error!(mirror = %self.inner.mirror, "{reason}");
            self.go_alone_locked(&mut st, session, reason);
            return Err(SessionLost(st.reason.clone()));
        }
        let mut frame = Vec::with_capacity(buf.len() + data.len());
        frame.extend_from_slice(&buf);
        frame.extend_from_slice(data);
        st.encode_buf = buf;
        let Some(tx) = &mut st.tx else {
            return Err(SessionLost(st.reason.clone()));
        };
        // Written by the submitting thread itself, in sequence order (the state lock is held):
        // no hand-off to another task on the latency path. The in-flight window is smaller than
        // QUIC's send and stream windows, so this completes without waiting for the network.
        let written = tx.rt.block_on(tx.stream.write_chunk(Bytes::from(frame)));
        if let Err(e) = written {
            self.go_alone_locked(&mut st, session, format!("replication stream: {e}"));
            return Err(SessionLost(st.reason.clone()));
        }
        st.next_seq += 1;
        let timed = st.mode == Mode::InSync;
        st.inflight.push_back(Inflight {
            seq,
            bytes: data.len(),
            marks,
            flushes: matches!(op, Op::Barrier | Op::SyncDone),
            sent: timed.then(Instant::now),
        });
        st.inflight_bytes += data.len();
        let c = &self.inner.counters;
        c.ops_sent.fetch_add(1, Ordering::Relaxed);
        if matches!(op, Op::Write { .. }) {
            c.data_bytes_sent
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(seq)
    }

    /// Block until the peer acknowledged the ticket's operation, or until its session ended
    /// (the end was recorded durably before), or until the peer timeout: then this node
    /// records that the peer is out of sync and continues alone.
    pub fn wait(&self, t: Ticket) {
        if !self.wait_acked(t) {
            self.wait_released();
        }
    }

    /// Managed: block while writes are held (the peer was lost and the manager has not yet
    /// recorded a new generation). Returns at once otherwise.
    pub fn wait_released(&self) {
        if self.inner.cfg.managed.is_none() {
            return;
        }
        let mut st = self.lock();
        while st.held && !st.fenced {
            st = self.inner.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Managed: the manager persisted `data` (a new generation whose base is the generation
    /// the peer holds): writes held since the loss of the peer may complete.
    pub fn allow_alone(&self, data: DataState) {
        let mut st = self.lock();
        if st.unrecorded.is_some() && !self.write_unrecorded(&mut st) {
            // The record first: writes stay held until `retry_record` writes it.
            st.allow_pending = Some(data);
            return;
        }
        self.allow_alone_locked(&mut st, data);
    }

    fn allow_alone_locked(&self, st: &mut MutexGuard<'_, St>, data: DataState) {
        // (A link that holds nothing, in sync in a module of several mirrors, only adopts it.)
        if st.held && data.bitmap.is_some() && data.bitmap != st.record.base() {
            warn!(mirror = %self.inner.mirror, "the new generation's base differs from the dirty record's: the next synchronisation compares all data");
        }
        st.data = data;
        if st.held {
            info!(mirror = %self.inner.mirror, "the cluster manager recorded a new generation: held writes complete");
        }
        st.held = false;
        self.inner.cv.notify_all();
    }

    /// Managed: the manager persisted `data`; the next greeting announces it.
    pub fn adopt_state(&self, data: DataState) {
        self.lock().data = data;
    }

    /// Managed: release every held writer without the peer (the caller has cut the
    /// application off the mount first, so that nothing it releases reaches the application
    /// as a success).
    pub fn fence(&self) {
        let mut st = self.lock();
        st.fenced = true;
        self.inner.cv.notify_all();
    }

    /// As `wait`, telling whether the peer acknowledged (true) or the session ended (false).
    pub fn wait_acked(&self, t: Ticket) -> bool {
        self.wait_acked_within(t, self.inner.cfg.peer_timeout_ms)
    }

    /// As `wait_acked`, bounded by `timeout_ms` instead of the peer timeout: for waits of the
    /// synchroniser that no application operation is blocked on.
    pub fn wait_acked_within(&self, t: Ticket, timeout_ms: u64) -> bool {
        let mut st = self.lock();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(timeout_ms);
        loop {
            if st.session != t.session {
                return false;
            }
            if st.acked >= t.seq {
                return true;
            }
            let now = Instant::now();
            let (until, suspected) = wait_deadline(&st, start, deadline);
            if now >= until {
                let reason = match suspected {
                    Some(why) => format!(
                        "{why}, and no acknowledgement for {SUSPECT_GRACE_MS} ms while operation {} waited",
                        t.seq
                    ),
                    None => format!(
                        "peer did not acknowledge operation {} within {timeout_ms} ms",
                        t.seq
                    ),
                };
                self.go_alone_locked(&mut st, t.session, reason);
                return false;
            }
            st = self
                .inner
                .cv
                .wait_timeout(st, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A connection is up: start a session in `Syncing` mode. Returns the session number.
    pub fn begin_session(&self, stream: quinn::SendStream, rt: tokio::runtime::Handle) -> u64 {
        let mut st = self.lock();
        st.session += 1;
        st.mode = Mode::Syncing;
        st.reason = "peer connected: full synchronisation running".into();
        st.next_seq = 1;
        st.acked = 0;
        st.inflight.clear();
        st.inflight_bytes = 0;
        st.tx = Some(StreamWriter { stream, rt });
        st.pass = MarkSet::default();
        st.replies.clear();
        // A new connection: the peer is alive, whatever the heartbeats said.
        st.suspect = None;
        st.last_ack_at = Instant::now();
        self.inner.counters.sessions.fetch_add(1, Ordering::Relaxed);
        info!(mirror = %self.inner.mirror, session = st.session, "link state: syncing (peer connected, full synchronisation starts)");
        self.inner.cv.notify_all();
        st.session
    }

    /// What the application changed since the last call, during a synchronisation.
    pub fn take_dirty(&self, session: u64) -> Result<MarkSet, SessionLost> {
        let mut st = self.lock();
        if st.session != session || st.mode != Mode::Syncing {
            return Err(SessionLost(st.reason.clone()));
        }
        Ok(std::mem::take(&mut st.pass))
    }

    /// How much the application changed since the pass started (paths and files).
    pub fn dirty_len(&self) -> usize {
        let st = self.lock();
        st.pass.entries.len() + st.pass.metas.len() + st.pass.chunks.len() + st.pass.tails.len()
    }

    /// Wait for the answer to probe `t`: what the peer made of its file, and its digests.
    pub fn wait_reply(&self, t: Ticket) -> Result<(ProbeFile, Vec<u8>), SessionLost> {
        if !self.wait_acked_within(t, crate::sync::SYNC_DRAIN_TIMEOUT_MS) {
            return Err(SessionLost(self.lock().reason.clone()));
        }
        let mut st = self.lock();
        match st.replies.remove(&t.seq) {
            Some(r) => Ok(r),
            None => Err(SessionLost(format!(
                "peer acknowledged probe {} without answering it",
                t.seq
            ))),
        }
    }

    /// The peer answered probe `seq` (and so acknowledged it).
    pub fn on_probed(&self, session: u64, seq: u64, file: ProbeFile, digests: Vec<u8>) {
        {
            let mut st = self.lock();
            if st.session != session {
                return;
            }
            st.replies.insert(seq, (file, digests));
        }
        self.on_ack(session, seq);
    }

    /// The synchronisation of `session` has sent everything, ending with `SyncDone`; call with
    /// the file system's ordering lock held. From now on every operation is sent.
    pub fn enter_in_sync(&self, session: u64) -> Result<(), SessionLost> {
        let mut st = self.lock();
        if st.session != session || st.mode != Mode::Syncing {
            return Err(SessionLost(st.reason.clone()));
        }
        st.mode = Mode::InSync;
        st.reason = "peer in sync: every write is mirrored before it is acknowledged".into();
        st.pass = MarkSet::default();
        Ok(())
    }

    /// The peer acknowledged `SyncDone`: record durably that it is in sync, then start the
    /// record over (from now on changes are sent, not recorded).
    pub fn record_in_sync(&self, session: u64) -> Result<(), SessionLost> {
        let mut st = self.lock();
        if st.session != session || st.mode != Mode::InSync {
            return Err(SessionLost(st.reason.clone()));
        }
        let mut data = st.data.clone();
        data.resync_done_as_source();
        // Until a clean stop: a crash now may leave writes the peer never acknowledged.
        data.unclean = true;
        if let Err(e) = self.inner.state_file.store(&data) {
            let reason = format!("cannot record that the peer is in sync: {e}");
            self.go_alone_locked(&mut st, session, reason);
            return Err(SessionLost(st.reason.clone()));
        }
        st.data = data;
        st.stored_in_sync = true;
        if st.selection_changed {
            // This synchronisation compared all data under the current selection.
            match mirrorkit_store::state::replace_durably(
                &self.inner.selection_file,
                self.inner.selection.as_bytes(),
            ) {
                Ok(()) => st.selection_changed = false,
                Err(e) => {
                    warn!(mirror = %self.inner.mirror, file = %self.inner.selection_file.display(), "cannot record the selection now in sync ({e}): the next synchronisation compares all data again")
                }
            }
        }
        if let Err(e) = st.record.reset(None) {
            // Harmless: the record is only read relative to the generation it names.
            warn!(mirror = %self.inner.mirror, "cannot empty the dirty record: {e}");
        }
        st.since_flush.clear();
        info!(mirror = %self.inner.mirror, session, "link state: in-sync (synchronisation complete)");
        if let Some(events) = &self.inner.cfg.managed {
            let _ = events.send(crate::managed::EngineEvent::PeerInSync {
                mirror: self.inner.mirror.clone(),
            });
        }
        Ok(())
    }

    /// Prove that the peer holds, durably, every operation acknowledged so far (a handover's
    /// last step): a barrier the peer flushes before acknowledging it. Call once the
    /// application is stopped.
    pub fn barrier(&self) -> Result<(), String> {
        let Some(session) = self.in_sync_session() else {
            return Err(format!("the peer is not in sync: {}", self.status().1));
        };
        let t = self
            .submit_sync(session, &Op::Barrier, &[])
            .map_err(|e| e.to_string())?;
        if self.wait_acked(t) {
            Ok(())
        } else {
            Err(format!(
                "the peer did not confirm the barrier: {}",
                self.status().1
            ))
        }
    }

    /// A clean stop: once everything sent is flushed by the peer, record that no write of
    /// this node can be missing from the peer. Returns whether it could.
    pub fn clean_stop(&self) -> bool {
        let Some(session) = self.in_sync_session() else {
            return false;
        };
        let Ok(t) = self.submit_sync(session, &Op::Barrier, &[]) else {
            return false;
        };
        if !self.wait_acked(t) {
            return false;
        }
        let mut st = self.lock();
        if st.session != session || !st.stored_in_sync {
            return false;
        }
        let mut data = st.data.clone();
        data.unclean = false;
        match self.inner.state_file.store(&data) {
            Ok(()) => {
                st.data = data;
                info!(mirror = %self.inner.mirror, "clean stop: the peer holds every write of this node");
                true
            }
            Err(e) => {
                warn!(mirror = %self.inner.mirror, "cannot record the clean stop: {e}");
                false
            }
        }
    }

    /// The peer acknowledged everything up to `seq`.
    pub fn on_ack(&self, session: u64, seq: u64) {
        let mut st = self.lock();
        if st.session != session || seq <= st.acked {
            return;
        }
        st.acked = seq.min(st.next_seq - 1);
        let now = Instant::now();
        st.last_ack_at = now;
        while st.inflight.front().is_some_and(|f| f.seq <= st.acked) {
            let Some(f) = st.inflight.pop_front() else {
                break;
            };
            if let Some(sent) = f.sent {
                let us = u64::try_from(now.saturating_duration_since(sent).as_micros());
                self.inner.counters.ack_latency(us.unwrap_or(u64::MAX));
            }
            st.inflight_bytes -= f.bytes;
            if f.flushes {
                st.since_flush.clear();
            } else if st.stored_in_sync && !f.marks.is_empty() {
                st.since_flush.extend(f.marks);
            }
        }
        self.inner.cv.notify_all();
    }

    /// The cluster manager's heartbeats lost the peer (`reason`): from now on, an operation
    /// waits for the peer only while acknowledgements keep coming (at most
    /// [`SUSPECT_GRACE_MS`] apart), instead of the whole peer timeout. A peer that is merely
    /// slow, or whose heartbeats alone were lost, keeps acknowledging and nothing changes; a
    /// dead one is given up at once, so that the application's writes stall for the
    /// heartbeats' detection time, not for the peer timeout.
    pub fn peer_silent(&self, reason: String) {
        let mut st = self.lock();
        if st.mode == Mode::Alone || st.suspect.is_some() {
            return;
        }
        info!(mirror = %self.inner.mirror, session = st.session, "replication waits only while the peer acknowledges: {reason}");
        st.suspect = Some((Instant::now(), reason));
        self.inner.cv.notify_all();
    }

    /// The session ended because the peer failed to apply an operation (`why`), and the
    /// connection driver waits `delay_ms` before its next attempt: while alone, the reason
    /// says both (whatever else ended the session first, such as its stream closing).
    pub fn note_retry(&self, why: &str, delay_ms: u64) {
        let mut st = self.lock();
        if st.mode == Mode::Alone {
            st.reason = format!("{why}; next attempt in {} s", delay_ms.div_ceil(1000));
        }
    }

    /// The heartbeats hear the peer again: operations wait the whole peer timeout again.
    pub fn peer_heard(&self) {
        self.lock().suspect = None;
    }

    /// The session ended (connection lost, peer refused an operation, stream error).
    pub fn lost(&self, session: u64, reason: String) {
        let mut st = self.lock();
        self.go_alone_locked(&mut st, session, reason);
    }

    /// Something this synchronisation sent did not take on the peer (the application moved
    /// things meanwhile): the next pass sends it again.
    pub fn mark_pending(&self, m: Mark) {
        let mut st = self.lock();
        if st.mode == Mode::Syncing {
            st.pass.add(&m);
        }
    }

    /// Online verify found the peer's copy different in `marks` while in sync (session
    /// `session`): continue alone with them recorded, so that the next session's incremental
    /// resync repairs exactly them.
    pub fn repair(&self, session: u64, marks: Vec<Mark>, reason: String) {
        let mut st = self.lock();
        if st.session != session || st.mode != Mode::InSync {
            return;
        }
        st.since_flush.extend(marks);
        error!(mirror = %self.inner.mirror, "{reason}: the peer is no longer in sync");
        self.go_alone_locked(&mut st, session, reason);
    }

    /// The current session cannot continue (an operation could not be expressed for the
    /// peer): continue alone, so that a full synchronisation repairs it.
    pub fn lost_current(&self, reason: &str) {
        let mut st = self.lock();
        let session = st.session;
        error!(mirror = %self.inner.mirror, "{reason}: the peer is no longer in sync");
        self.go_alone_locked(&mut st, session, reason.to_string());
    }

    fn go_alone_locked(&self, st: &mut MutexGuard<'_, St>, session: u64, reason: String) {
        if st.session != session || st.mode == Mode::Alone {
            return;
        }
        // Durably first: no waiter is released, and no later operation completes, before the
        // record holds what the peer may lack and the state file says the peer is out of sync.
        if st.stored_in_sync {
            let mut marks: Vec<Mark> = std::mem::take(&mut st.since_flush);
            for f in std::mem::take(&mut st.inflight) {
                marks.extend(f.marks);
            }
            marks.extend(st.slot.iter().cloned());
            if self.inner.cfg.managed.is_some() {
                self.record_loss_managed(st, &marks);
            } else {
                self.record_loss(st, &marks);
            }
            st.stored_in_sync = false;
        }
        if let Some(events) = &self.inner.cfg.managed {
            // Nothing completes until the manager has persisted a new generation.
            st.held = true;
            let _ = events.send(crate::managed::EngineEvent::PeerOutOfSync {
                mirror: self.inner.mirror.clone(),
                reason: reason.clone(),
            });
        }
        self.end_session_locked(st, reason);
    }

    /// Standalone: a new generation and the record of what the peer may lack, durably, before
    /// any waiter is released.
    fn record_loss(&self, st: &mut MutexGuard<'_, St>, marks: &[Mark]) {
        {
            let mut data = st.data.clone();
            data.peer_lost(fresh_gen());
            loop {
                let stored = st
                    .record
                    .reset(data.bitmap)
                    .and_then(|()| st.record.add(marks))
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        self.inner
                            .state_file
                            .store(&data)
                            .map_err(|e| e.to_string())
                    });
                match stored {
                    Ok(()) => break,
                    Err(e) => {
                        // Releasing writes without this record could let a stale peer be
                        // trusted later: keep trying, loudly.
                        error!(mirror = %self.inner.mirror, "cannot record that the peer is out of sync, retrying: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            info!(mirror = %self.inner.mirror, generation = %data.current.map(|g| g.to_string()).unwrap_or_default(),
                recorded = marks.len(), "peer lost while in sync: new data generation, changes recorded from now on");
            st.data = data;
        }
    }

    /// Managed: the record of what the peer may lack, based on the generation the peer holds
    /// (the manager's new generation names it as its base), durably; writes stay held.
    fn record_loss_managed(&self, st: &mut MutexGuard<'_, St>, marks: &[Mark]) {
        let base = st.data.current;
        // Merged with what an earlier loss could not record yet (same base: the generation
        // the peer last shared).
        let (base, mut all, _) = st
            .unrecorded
            .take()
            .unwrap_or((base, Vec::new(), String::new()));
        all.extend_from_slice(marks);
        st.unrecorded = Some((base, all, String::new()));
        if self.write_unrecorded(st) {
            info!(mirror = %self.inner.mirror, recorded = marks.len(),
                "peer lost while in sync: changes recorded; writes held until the cluster manager records a new generation");
        }
    }

    /// Write what waits to be recorded; on failure keep it (writes stay held) and say why,
    /// once per new error.
    fn write_unrecorded(&self, st: &mut MutexGuard<'_, St>) -> bool {
        let Some((base, marks, last_error)) = st.unrecorded.take() else {
            return true;
        };
        let stored = st
            .record
            .reset(base)
            .and_then(|()| st.record.add(&marks))
            .map_err(|e| e.to_string());
        match stored {
            Ok(()) => true,
            Err(e) => {
                if e != last_error {
                    error!(mirror = %self.inner.mirror, "cannot record what the peer may lack ({e}): writes are held until it is recorded (retried)");
                }
                st.unrecorded = Some((base, marks, e));
                false
            }
        }
    }

    /// Managed: try again to record what the peer may lack (after a full state disk); once
    /// done, a pending `allow_alone` completes. The record's error while it waits, if any.
    pub fn retry_record(&self) -> Option<String> {
        let mut st = self.lock();
        st.unrecorded.as_ref()?;
        if self.write_unrecorded(&mut st) {
            info!(mirror = %self.inner.mirror, "what the peer may lack is recorded after all");
            if let Some(data) = st.allow_pending.take() {
                self.allow_alone_locked(&mut st, data);
            }
            return None;
        }
        st.unrecorded.as_ref().map(|(_, _, e)| e.clone())
    }

    fn end_session_locked(&self, st: &mut MutexGuard<'_, St>, reason: String) {
        warn!(mirror = %self.inner.mirror, session = st.session, from = st.mode.as_str(), "link state: alone ({reason})");
        st.mode = Mode::Alone;
        st.reason = reason;
        st.session += 1;
        st.tx = None;
        st.inflight.clear();
        st.inflight_bytes = 0;
        st.pass = MarkSet::default();
        st.replies.clear();
        self.inner
            .counters
            .times_alone
            .fetch_add(1, Ordering::Relaxed);
        self.inner.cv.notify_all();
    }

    /// The session number while the peer is in sync (every operation is sent), else `None`.
    pub fn in_sync_session(&self) -> Option<u64> {
        let st = self.lock();
        (st.mode == Mode::InSync).then_some(st.session)
    }

    /// Session currently running (for the connection driver).
    pub fn session(&self) -> u64 {
        self.lock().session
    }
}

/// While the heartbeats say the peer is lost, how long an operation waits without any
/// acknowledgement from the peer before this node continues alone.
pub const SUSPECT_GRACE_MS: u64 = 250;

/// When a wait that started at `start` with `deadline` (the peer timeout) must give up: the
/// deadline, or earlier if the peer is suspect and has acknowledged nothing for
/// [`SUSPECT_GRACE_MS`] since the later of the suspicion, the wait's start and its last
/// acknowledgement. With the suspicion's reason when that is what ends it.
fn wait_deadline(st: &St, start: Instant, deadline: Instant) -> (Instant, Option<&str>) {
    match &st.suspect {
        Some((since, why)) => {
            let cap =
                (*since).max(start).max(st.last_ack_at) + Duration::from_millis(SUSPECT_GRACE_MS);
            if cap < deadline {
                (cap, Some(why.as_str()))
            } else {
                (deadline, None)
            }
        }
        None => (deadline, None),
    }
}

/// A new random generation identifier.
pub fn fresh_gen() -> GenId {
    let mut b = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut b)
    });
    if read.is_err() {
        // No randomness device: time and process make a value unique enough here.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let h = blake3::hash(format!("{t}/{}", std::process::id()).as_bytes());
        b.copy_from_slice(&h.as_bytes()[..8]);
    }
    GenId(u64::from_le_bytes(b).max(1))
}
