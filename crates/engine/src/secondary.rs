//! The secondary's receiver: accepts the primary's replication session, applies its
//! operations in order through the store, and acknowledges each one after it is applied
//! (for fsync and the end of a synchronisation, after it is durable).
//!
//! A message that is malformed, out of sequence, or that the store refuses (a path outside the
//! root, an unknown handle) is answered with `Failed`, logged, and ends the session: nothing
//! was changed by it, and the primary continues alone until a new synchronisation.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Mutex as AsyncMutex;

use mirrorkit_cluster::generation::{compare, Relation};
use mirrorkit_module::MirrorFilter;
use mirrorkit_store::{StateFile, Store};
use mirrorkit_wire::{
    self as wire, DataState, Hello, Message, Op, Role, SyncMode, PROTOCOL_VERSION,
};
use tracing::{error, info, warn};

use crate::frames::{read_frame, write_message, FrameError};
use crate::managed::{EngineEvent, DECISION_TIMEOUT_MS};

/// What the secondary needs to know.
#[derive(Clone, Debug)]
pub struct SecondaryConfig {
    pub mirror: String,
    pub node: String,
    /// Only this node (by its certificate) may open a session.
    pub peer_node: String,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    /// A cluster manager decides whether each resync may proceed and hears of every session's
    /// outcome (`crate::managed`).
    pub managed: Option<crate::managed::Events>,
}

/// Counters for status and tests.
#[derive(Debug, Default)]
pub struct SecondaryCounters {
    pub ops_applied: AtomicU64,
    pub sessions: AtomicU64,
    pub refused: AtomicU64,
}

/// Accept sessions forever. A new session from the primary replaces the previous one.
pub async fn run(
    endpoint: quinn::Endpoint,
    cfg: SecondaryConfig,
    counters: Arc<SecondaryCounters>,
) -> Result<(), String> {
    let receiver = Arc::new(Receiver::open(cfg, counters)?);
    while let Some(conn) = mirrorkit_net::accept(&endpoint).await {
        let who = mirrorkit_net::peer_node_name(&conn).unwrap_or_default();
        if who != receiver.cfg.peer_node {
            warn!(mirror = %receiver.cfg.mirror, remote = %conn.remote_address(), node = %who,
                "refused replication session: only node {} may replicate to this node", receiver.cfg.peer_node);
            receiver.counters.refused.fetch_add(1, Ordering::Relaxed);
            conn.close(1u32.into(), b"not the configured peer");
            continue;
        }
        let receiver = receiver.clone();
        tokio::spawn(async move {
            match greet(&conn).await {
                Ok((send, recv, hello)) => receiver.serve(conn, send, recv, hello).await,
                Err(end) => {
                    info!(mirror = %receiver.cfg.mirror, "replication session ended: {end}");
                    conn.close(0u32.into(), b"session ended");
                }
            }
        });
    }
    Ok(())
}

/// The primary's selection of what is replicated, from its greeting.
fn selection(hello: &Hello) -> Result<Arc<MirrorFilter>, String> {
    if hello.include.len() > wire::MAX_PATTERNS || hello.exclude.len() > wire::MAX_PATTERNS {
        return Err(format!(
            "the primary sent more than {} include or exclude patterns",
            wire::MAX_PATTERNS
        ));
    }
    // Each pattern is checked as module.toml's are.
    MirrorFilter::from_patterns(&hello.include, &hello.exclude)
        .map(Arc::new)
        .map_err(|e| format!("the primary sent an invalid pattern: {e}"))
}

/// Longest a new connection may take to open its stream and greet. Default 5000 ms.
const GREETING_TIMEOUT_MS: u64 = 5000;

/// Read the greeting of a new connection: its stream and the primary's `Hello`. A malformed
/// greeting is answered with `Bye` and logged; nothing else is done with the connection.
pub async fn greet(
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream, Hello), String> {
    let greeting_timeout = std::time::Duration::from_millis(GREETING_TIMEOUT_MS);
    let (mut send, mut recv) = match tokio::time::timeout(greeting_timeout, conn.accept_bi()).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("no replication stream: {e}")),
        Err(_) => {
            return Err(format!(
                "no replication stream within {GREETING_TIMEOUT_MS} ms"
            ))
        }
    };
    let mut buf = Vec::new();
    let bad = match tokio::time::timeout(greeting_timeout, read_frame(&mut recv, &mut buf)).await {
        Ok(Ok(true)) => match wire::decode_frame(&buf) {
            Ok((Message::Hello(h), _)) => return Ok((send, recv, h)),
            Ok((other, _)) => format!("expected a greeting, got {other:?}"),
            Err(e) => format!("malformed greeting: {e}"),
        },
        Ok(Ok(false)) => return Err("primary closed the stream before greeting".into()),
        Ok(Err(FrameError::Wire(e))) => format!("malformed greeting: {e}"),
        Ok(Err(e)) => return Err(format!("greeting: {e}")),
        Err(_) => format!("no greeting within {GREETING_TIMEOUT_MS} ms"),
    };
    error!(remote = %conn.remote_address(), "refused replication session: {bad}");
    Err(reject(&mut send, bad).await)
}

/// The receiving end of one mirror: its store, state file and current session.
pub struct Receiver {
    cfg: SecondaryConfig,
    store: AsyncMutex<Store>,
    state: StateFile,
    counters: Arc<SecondaryCounters>,
    current: Mutex<Option<quinn::Connection>>,
}

impl Receiver {
    /// Open the replicated directory and check the state file.
    pub fn open(cfg: SecondaryConfig, counters: Arc<SecondaryCounters>) -> Result<Self, String> {
        let store = Store::open(&cfg.root).map_err(|e| {
            format!(
                "cannot open replicated directory {}: {e}",
                cfg.root.display()
            )
        })?;
        let state = StateFile::new(&cfg.state_dir);
        state
            .load()
            .map_err(|e| format!("mirror {}: {e}", cfg.mirror))?;
        Ok(Receiver {
            cfg,
            store: AsyncMutex::new(store),
            state,
            counters,
            current: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &SecondaryConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &SecondaryCounters {
        &self.counters
    }

    /// Serve one greeted session to its end, then close the connection (and, managed, report
    /// the end).
    pub async fn serve(
        &self,
        conn: quinn::Connection,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        hello: Hello,
    ) {
        let end = serve(self, &conn, &mut send, recv, hello).await;
        info!(mirror = %self.cfg.mirror, "replication session ended: {end}");
        conn.close(0u32.into(), b"session ended");
        if let Some(events) = &self.cfg.managed {
            let _ = events.send(EngineEvent::SyncLost {
                mirror: self.cfg.mirror.clone(),
                reason: end,
            });
        }
    }

    /// End the current session, if any (the receiver is being stopped).
    pub fn close_current(&self) {
        let cur = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(c) = cur {
            c.close(0u32.into(), b"receiver stopped");
        }
    }

    /// Wait until no session holds the store (after `close_current`).
    pub async fn idle(&self) {
        drop(self.store.lock().await);
    }
}

/// One session, from its greeting. Returns why it ended. Once its greeting is accepted it
/// replaces the `current` session (whose thread then lets go of the store); a connection that
/// does not greet validly changes nothing.
async fn serve(
    receiver: &Receiver,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
    hello: Hello,
) -> String {
    let Receiver {
        cfg,
        store,
        state,
        counters,
        current,
    } = receiver;
    let mut buf = Vec::new();
    if hello.version != PROTOCOL_VERSION
        || hello.mirror != cfg.mirror
        || hello.role != Role::Primary
    {
        let r = format!(
            "greeting for mirror {:?} as {:?} with protocol {} does not match mirror {:?}, primary, protocol {}",
            hello.mirror, hello.role, hello.version, cfg.mirror, PROTOCOL_VERSION
        );
        return refuse(conn, send, cfg, r).await;
    }
    if hello.node != cfg.peer_node {
        let r = format!(
            "greeting names node {:?}, but the certificate names node {:?}",
            hello.node, cfg.peer_node
        );
        return refuse(conn, send, cfg, r).await;
    }
    let filter = match selection(&hello) {
        Ok(f) => f,
        Err(r) => return refuse(conn, send, cfg, r).await,
    };
    // A valid greeting: this session replaces the current one, whose thread then ends and lets
    // go of the store.
    let old = current
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .replace(conn.clone());
    if let Some(old) = old {
        old.close(0u32.into(), b"replaced by a new session");
    }
    let mut store = store.lock().await;
    store.reset_session();
    let mut mstate = match state.load() {
        Ok(s) => s,
        Err(e) => return refuse(conn, send, cfg, e.to_string()).await,
    };
    let relation = compare(&mstate, &hello.data);
    if let Err(r) = acceptable(relation, &mstate, &hello.data) {
        return refuse(conn, send, cfg, r).await;
    }
    store.set_filter(filter);
    let me = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: cfg.node.clone(),
        mirror: cfg.mirror.clone(),
        role: Role::Secondary,
        data: mstate.clone(),
        include: Vec::new(),
        exclude: Vec::new(),
    });
    if let Err(e) = write_message(send, &me).await {
        return format!("greeting: {e}");
    }
    counters.sessions.fetch_add(1, Ordering::Relaxed);
    info!(mirror = %cfg.mirror, primary = %hello.node, consistent = mstate.consistent, ?relation, "replication session started");
    let mut expected = 1u64;
    let mut ack = Vec::new();
    loop {
        match read_frame(&mut recv, &mut buf).await {
            Ok(true) => {}
            Ok(false) => return "primary closed the replication stream".into(),
            Err(FrameError::Wire(e)) => {
                error!(mirror = %cfg.mirror, "rejected message from the primary: {e}");
                return reject(send, format!("malformed message: {e}")).await;
            }
            Err(e) => return format!("replication stream: {e}"),
        }
        let (msg, data) = match wire::decode_frame(&buf) {
            Ok(x) => x,
            Err(e) => {
                error!(mirror = %cfg.mirror, "rejected message from the primary: {e}");
                return reject(send, format!("malformed message: {e}")).await;
            }
        };
        let (seq, op, fixes) = match msg {
            Message::Op { seq, op, fixes } => (seq, op, fixes),
            Message::Bye { reason } => return format!("primary ended the session: {reason}"),
            other => {
                error!(mirror = %cfg.mirror, "rejected message from the primary: unexpected {other:?}");
                return reject(send, format!("unexpected message {other:?}")).await;
            }
        };
        if seq != expected {
            let r = format!("operation {seq} out of sequence (expected {expected})");
            error!(mirror = %cfg.mirror, "rejected message from the primary: {r}");
            return fail(send, seq, libc::EPROTO, r).await;
        }
        expected += 1;
        if let Op::SyncBegin { mode, preserve } = &op {
            if *mode == SyncMode::Incremental && !relation.incremental() {
                let r = format!("the primary asked for an incremental resync, but the data generations ({relation:?}) require comparing all data");
                error!(mirror = %cfg.mirror, "rejected message from the primary: {r}");
                return fail(send, seq, libc::EPROTO, r).await;
            }
            // Accepted only because an operator forced the primary: this node's data must be
            // kept aside before anything is overwritten, whatever the primary asks.
            let must_preserve = !matches!(
                relation,
                Relation::BothNew | Relation::Same { .. } | Relation::PeerNewer { .. }
            );
            if must_preserve && !*preserve {
                let r = format!("this node's data diverged from the primary's ({relation:?}): a resync without keeping it aside first is refused");
                error!(mirror = %cfg.mirror, "rejected message from the primary: {r}");
                return fail(send, seq, libc::EPROTO, r).await;
            }
            if *preserve {
                if !hello.data.forced {
                    let r = "the primary asked to resolve a split brain but was not forced by an operator".to_string();
                    error!(mirror = %cfg.mirror, "rejected message from the primary: {r}");
                    return fail(send, seq, libc::EPROTO, r).await;
                }
                let kept = tokio::task::block_in_place(|| preserve_copy(cfg));
                match kept {
                    Ok(dir) => warn!(mirror = %cfg.mirror, kept = %dir.display(),
                        "an operator made the peer the survivor of a split brain: this node's data was copied aside before the resync"),
                    Err(e) => {
                        let r = format!("cannot keep this node's divergent data aside: {e}");
                        error!(mirror = %cfg.mirror, "{r}");
                        return fail(send, seq, libc::EIO, r).await;
                    }
                }
            }
            if let Some(events) = &cfg.managed {
                if let Err(r) = ask_manager(events, cfg, &hello.data, *mode).await {
                    error!(mirror = %cfg.mirror, "resync refused by the cluster manager: {r}");
                    return fail(send, seq, libc::EPERM, r).await;
                }
                // The manager persisted its view (the copy inconsistent) first: start from it.
                mstate = match state.load() {
                    Ok(s) => s,
                    Err(e) => return fail(send, seq, libc::EIO, e.to_string()).await,
                };
            }
            mstate.begin_resync_as_target();
            if let Err(e) = state.store(&mstate) {
                return fail(send, seq, libc::EIO, e.to_string()).await;
            }
            warn!(mirror = %cfg.mirror, ?mode, "copy marked inconsistent: resync in progress");
        }
        let sync_op = matches!(
            op,
            Op::SyncDir { .. }
                | Op::SyncFile { .. }
                | Op::SyncData { .. }
                | Op::SyncLink { .. }
                | Op::SyncRemove { .. }
                | Op::SyncClearXattrs { .. }
                | Op::SyncProbe { .. }
                | Op::SyncHole { .. }
        );
        if sync_op && mstate.consistent {
            // From now until SyncDone this copy is a mix of old and new: never a state the
            // primary passed through. Record it before the first change.
            mstate.consistent = false;
            if let Err(e) = state.store(&mstate) {
                return fail(send, seq, libc::EIO, e.to_string()).await;
            }
            warn!(mirror = %cfg.mirror, "copy marked inconsistent: full synchronisation in progress");
        }
        let durable = matches!(
            op,
            Op::Fsync { .. }
                | Op::FsyncPath { .. }
                | Op::Barrier
                | Op::SyncDone
                | Op::SyncProbe { .. }
                | Op::VerifyProbe { .. }
        );
        // Operations that wait for the disk run off the async workers (the runtime is
        // multi-threaded); the others are a page-cache copy, cheaper than a hand-off.
        let applied = if durable {
            tokio::task::block_in_place(|| store.apply(&op, data, &fixes))
        } else {
            store.apply(&op, data, &fixes)
        };
        if let Err(e) = applied {
            error!(mirror = %cfg.mirror, seq, "cannot apply {}: {e}", op.name());
            if mstate.consistent {
                mstate.consistent = false;
                if let Err(se) = state.store(&mstate) {
                    error!(mirror = %cfg.mirror, "cannot record that the copy is inconsistent: {se}");
                }
            }
            return fail(send, seq, e.errno(), e.to_string()).await;
        }
        if matches!(op, Op::SyncDone) {
            mstate.resync_done_as_target(&hello.data);
            if let Err(e) = state.store(&mstate) {
                return fail(send, seq, libc::EIO, e.to_string()).await;
            }
            info!(mirror = %cfg.mirror, "copy consistent: full synchronisation complete");
            let recorded = tokio::task::block_in_place(|| {
                crate::link::record_selection(
                    &cfg.state_dir,
                    &cfg.root,
                    &hello.include,
                    &hello.exclude,
                )
            });
            if let Err(e) = recorded {
                // Harmless: as primary later, this node compares all data once.
                warn!(mirror = %cfg.mirror, "cannot record the selection now in sync: {e}");
            }
            if let Some(events) = &cfg.managed {
                let _ = events.send(EngineEvent::InSync {
                    mirror: cfg.mirror.clone(),
                    source: hello.data.clone(),
                });
            }
        }
        counters.ops_applied.fetch_add(1, Ordering::Relaxed);
        let encoded = if matches!(
            op,
            Op::SyncProbe { .. } | Op::VerifyProbe { .. } | Op::SyncLink { .. }
        ) {
            let (file, digests) = store.last_probe();
            wire::encode_frame(&Message::Probed { seq, file }, digests, &mut ack)
        } else {
            wire::encode_frame(&Message::Ack { seq }, &[], &mut ack)
        };
        if let Err(e) = encoded {
            return format!("cannot encode acknowledgement: {e}");
        }
        if let Err(e) = send.write_all(&ack).await {
            return format!("cannot acknowledge: {e}");
        }
    }
}

/// Managed: ask the cluster manager whether this resync may proceed; it persists the copy as
/// inconsistent before it answers yes.
async fn ask_manager(
    events: &crate::managed::Events,
    cfg: &SecondaryConfig,
    source: &DataState,
    mode: SyncMode,
) -> Result<(), String> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let asked = events.send(EngineEvent::ResyncStarting {
        mirror: cfg.mirror.clone(),
        source: source.clone(),
        full: mode == SyncMode::Compare,
        reply,
    });
    if asked.is_err() {
        return Err("the cluster manager is not running".into());
    }
    match tokio::time::timeout(
        std::time::Duration::from_millis(DECISION_TIMEOUT_MS),
        answer,
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the cluster manager dropped the question".into()),
        Err(_) => Err(format!(
            "the cluster manager did not answer within {DECISION_TIMEOUT_MS} ms"
        )),
    }
}

/// Whether this node may take the primary's data, given how their generations relate: never
/// when its own data is newer or diverged, unless an operator forced the primary.
fn acceptable(relation: Relation, mine: &DataState, primary: &DataState) -> Result<(), String> {
    let gen = |d: &DataState| {
        d.current
            .map(|g| g.to_string())
            .unwrap_or_else(|| "none".into())
    };
    match relation {
        Relation::BothNew | Relation::Same { .. } | Relation::PeerNewer { .. } => Ok(()),
        _ if primary.forced => Ok(()),
        Relation::LocalNewer { .. } => Err(format!(
            "this node holds newer data (generation {}) than the primary (generation {}): refusing to be overwritten; make this node primary, or force the other with `prim`",
            gen(mine),
            gen(primary)
        )),
        Relation::SplitBrain => Err(format!(
            "split brain: this node (generation {}) and the primary (generation {}) both changed the data since they last shared it; nothing is overwritten until an operator chooses the survivor with `prim`",
            gen(mine),
            gen(primary)
        )),
        Relation::NeitherConsistent => Err(
            "neither copy is consistent: an operator must choose the survivor with `prim`".into(),
        ),
    }
}

/// Copy this node's replicated tree aside, outside the root, before a resync overwrites it:
/// into `<state dir>/split-brain/<UTC time>/`. Never deleted by mirrorkit.
fn preserve_copy(cfg: &SecondaryConfig) -> Result<PathBuf, String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let parent = cfg.state_dir.join("split-brain");
    std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    // A fresh directory, even for two copies within one second.
    let mut dir = parent.join(format!("{secs}"));
    let mut n = 1;
    loop {
        match std::fs::create_dir(&dir) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                dir = parent.join(format!("{secs}-{n}"));
                n += 1;
            }
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--sparse=always")
        .arg(format!("{}/.", cfg.root.display()))
        .arg(&dir)
        .output()
        .map_err(|e| format!("cannot run cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cp -a {} {} failed: {}",
            cfg.root.display(),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // Durable before the resync overwrites the originals (the state directory may be on
    // another file system than the replicated one).
    std::fs::File::open(&dir)
        .and_then(|f| mirrorkit_store::sys::syncfs(std::os::fd::AsFd::as_fd(&f)))
        .map_err(|e| format!("cannot flush the copy in {}: {e}", dir.display()))?;
    Ok(dir)
}

/// How long a refusal waits for the primary to receive it before the connection closes.
const FAREWELL_MS: u64 = 1000;

/// Finish the stream and give the peer a moment to read the last message.
async fn farewell(send: &mut quinn::SendStream) {
    let _ = send.finish();
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(FAREWELL_MS),
        send.stopped(),
    )
    .await;
}

/// Refuse a session at its greeting: log why, with the peer's address, and say it.
async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    cfg: &SecondaryConfig,
    reason: String,
) -> String {
    error!(mirror = %cfg.mirror, remote = %conn.remote_address(), "refused replication session: {reason}");
    reject(send, reason).await
}

async fn reject(send: &mut quinn::SendStream, reason: String) -> String {
    let _ = write_message(
        send,
        &Message::Bye {
            reason: reason.clone(),
        },
    )
    .await;
    farewell(send).await;
    reason
}

async fn fail(send: &mut quinn::SendStream, seq: u64, errno: i32, reason: String) -> String {
    let msg = Message::Failed {
        seq,
        errno,
        reason: reason.clone(),
    };
    let _ = write_message(send, &msg).await;
    farewell(send).await;
    reason
}
