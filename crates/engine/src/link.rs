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
//! - `Syncing`: connected; a full synchronisation is running. Application operations are not
//!   sent; the paths they touch are recorded (`dirty`) and synchronised again before the switch.
//! - `InSync`: every operation is sent, in the order the primary completed them.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mirrorkit_store::{MirrorState, StateFile};
use mirrorkit_wire::{self as wire, Message, Op, RelPath, TimeFix};

/// What an application operation touched, for a synchronisation in progress.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dirty {
    /// Whatever is at this path must be synchronised again, recursively.
    Entry(RelPath),
    /// Only the attributes of this path changed (a directory's time when an entry changed).
    Meta(RelPath),
}
use tracing::{error, info, warn};

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
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            peer_timeout_ms: 3000,
            max_inflight_ops: 4096,
            max_inflight_bytes: 64 << 20,
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
    inflight: VecDeque<(u64, usize)>,
    inflight_bytes: usize,
    tx: Option<StreamWriter>,
    dirty: BTreeSet<Dirty>,
    reason: String,
    /// What the state file currently says about the peer.
    stored_in_sync: bool,
    encode_buf: Vec<u8>,
}

struct Inner {
    st: Mutex<St>,
    cv: Condvar,
    cfg: LinkConfig,
    state_file: StateFile,
    counters: Counters,
    mirror: String,
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
    /// A link that starts alone. The state file is set to "peer not in sync" first: until a
    /// synchronisation completes, nothing says the peer has this node's data.
    pub fn new(mirror: &str, cfg: LinkConfig, state_file: StateFile) -> Result<Self, String> {
        let mut state = state_file.load().map_err(|e| e.to_string())?;
        state.consistent = true;
        if state.peer_in_sync {
            state.peer_in_sync = false;
        }
        state_file.store(&state).map_err(|e| e.to_string())?;
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
                    dirty: BTreeSet::new(),
                    reason: "starting: peer not connected yet".into(),
                    stored_in_sync: false,
                    encode_buf: Vec::new(),
                }),
                cv: Condvar::new(),
                cfg,
                state_file,
                counters: Counters::default(),
                mirror: mirror.to_string(),
            }),
        })
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
    /// file system's ordering lock held, so that submission order is completion order.
    /// `dirty` names the paths it touched; it is called only during a synchronisation.
    pub fn submit(
        &self,
        op: Op,
        data: &[u8],
        fixes: Vec<TimeFix>,
        dirty: impl FnOnce() -> Vec<Dirty>,
    ) -> Option<Ticket> {
        let mut st = self.lock();
        match st.mode {
            Mode::Alone => None,
            Mode::Syncing => {
                st.dirty.extend(dirty());
                None
            }
            Mode::InSync => {
                let session = st.session;
                let seq = self.send_locked(st, &op, data, fixes).ok()?;
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
        let seq = self.send_locked(st, op, data, Vec::new())?;
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
    ) -> Result<u64, SessionLost> {
        let session = st.session;
        let deadline = Instant::now() + Duration::from_millis(self.inner.cfg.peer_timeout_ms);
        while !st.inflight.is_empty()
            && (st.inflight.len() >= self.inner.cfg.max_inflight_ops
                || st.inflight_bytes + data.len() > self.inner.cfg.max_inflight_bytes)
        {
            let now = Instant::now();
            if now >= deadline {
                let reason = format!(
                    "peer did not make room in the in-flight window ({} operations, {} bytes) within {} ms",
                    st.inflight.len(),
                    st.inflight_bytes,
                    self.inner.cfg.peer_timeout_ms
                );
                self.go_alone_locked(&mut st, session, reason);
                return Err(SessionLost(st.reason.clone()));
            }
            st = self
                .inner
                .cv
                .wait_timeout(st, deadline - now)
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
        st.inflight.push_back((seq, data.len()));
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
        let _ = self.wait_acked(t);
    }

    /// As `wait`, telling whether the peer acknowledged (true) or the session ended (false).
    pub fn wait_acked(&self, t: Ticket) -> bool {
        self.wait_acked_within(t, self.inner.cfg.peer_timeout_ms)
    }

    /// As `wait_acked`, bounded by `timeout_ms` instead of the peer timeout: for waits of the
    /// synchroniser that no application operation is blocked on.
    pub fn wait_acked_within(&self, t: Ticket, timeout_ms: u64) -> bool {
        let mut st = self.lock();
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if st.session != t.session {
                return false;
            }
            if st.acked >= t.seq {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                let reason = format!(
                    "peer did not acknowledge operation {} within {timeout_ms} ms",
                    t.seq
                );
                self.go_alone_locked(&mut st, t.session, reason);
                return false;
            }
            st = self
                .inner
                .cv
                .wait_timeout(st, deadline - now)
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
        st.dirty.clear();
        self.inner.counters.sessions.fetch_add(1, Ordering::Relaxed);
        info!(mirror = %self.inner.mirror, session = st.session, "link state: syncing (peer connected, full synchronisation starts)");
        self.inner.cv.notify_all();
        st.session
    }

    /// Paths touched by the application since the last call, during a synchronisation.
    pub fn take_dirty(&self, session: u64) -> Result<BTreeSet<Dirty>, SessionLost> {
        let mut st = self.lock();
        if st.session != session || st.mode != Mode::Syncing {
            return Err(SessionLost(st.reason.clone()));
        }
        Ok(std::mem::take(&mut st.dirty))
    }

    pub fn dirty_len(&self) -> usize {
        self.lock().dirty.len()
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
        st.dirty.clear();
        Ok(())
    }

    /// The peer acknowledged `SyncDone`: record durably that it is in sync.
    pub fn record_in_sync(&self, session: u64) -> Result<(), SessionLost> {
        let mut st = self.lock();
        if st.session != session || st.mode != Mode::InSync {
            return Err(SessionLost(st.reason.clone()));
        }
        let state = MirrorState {
            consistent: true,
            peer_in_sync: true,
        };
        if let Err(e) = self.inner.state_file.store(&state) {
            let reason = format!("cannot record that the peer is in sync: {e}");
            self.go_alone_locked(&mut st, session, reason);
            return Err(SessionLost(st.reason.clone()));
        }
        st.stored_in_sync = true;
        info!(mirror = %self.inner.mirror, session, "link state: in-sync (full synchronisation complete)");
        Ok(())
    }

    /// The peer acknowledged everything up to `seq`.
    pub fn on_ack(&self, session: u64, seq: u64) {
        let mut st = self.lock();
        if st.session != session || seq <= st.acked {
            return;
        }
        st.acked = seq.min(st.next_seq - 1);
        while let Some(&(s, bytes)) = st.inflight.front() {
            if s > st.acked {
                break;
            }
            st.inflight.pop_front();
            st.inflight_bytes -= bytes;
        }
        self.inner.cv.notify_all();
    }

    /// The session ended (connection lost, peer refused an operation, stream error).
    pub fn lost(&self, session: u64, reason: String) {
        let mut st = self.lock();
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
        // state file says the peer is out of sync.
        if st.stored_in_sync {
            let state = MirrorState {
                consistent: true,
                peer_in_sync: false,
            };
            loop {
                match self.inner.state_file.store(&state) {
                    Ok(()) => break,
                    Err(e) => {
                        // Releasing writes without this record could let a stale peer be
                        // trusted later: keep trying, loudly.
                        error!(mirror = %self.inner.mirror, "cannot record that the peer is out of sync, retrying: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            st.stored_in_sync = false;
        }
        warn!(mirror = %self.inner.mirror, session, from = st.mode.as_str(), "link state: alone ({reason})");
        st.mode = Mode::Alone;
        st.reason = reason;
        st.session += 1;
        st.tx = None;
        st.inflight.clear();
        st.inflight_bytes = 0;
        st.dirty.clear();
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
