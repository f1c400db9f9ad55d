//! The primary's connection driver: connects to the peer, greets it, runs a full
//! synchronisation, carries operations and acknowledgements, and starts over after a loss.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mirrorkit_cluster::generation::{compare, Relation};
use mirrorkit_wire::{self as wire, DataState, Hello, Message, Role, SyncMode, PROTOCOL_VERSION};
use tracing::{error, info, warn};

use crate::core::Core;
use crate::frames::{read_frame, write_message};
use crate::link::Link;

/// Delay between two attempts to reach the peer: short, so that a returning peer is resynced
/// at once (an attempt to an absent peer costs one packet, and repeated errors are logged once).
/// Default 200 ms.
pub const RECONNECT_DELAY_MS: u64 = 200;
/// Longest one connection attempt waits for the peer's handshake. QUIC would otherwise wait
/// for its idle timeout, retransmitting ever more slowly, and a peer that returns meanwhile
/// would wait for the next retransmission. A handshake takes two round trips: enough up to
/// 500 ms of round-trip time. Default 1000 ms.
pub const CONNECT_ATTEMPT_MS: u64 = 1000;
/// While the peer does not answer, a new connection attempt starts this often (the earlier
/// ones still waiting): a returning peer is reached by a fresh attempt's first packet within
/// this delay, instead of by an older attempt's retransmission, which QUIC spaces out more and
/// more. Default 100 ms.
pub const CONNECT_STAGGER_MS: u64 = 100;
/// Delay after the peer refused the session, or this node refused the peer (split brain,
/// newer data on the peer): an operator must act; the peer's log gets one refusal per attempt.
/// Default 5000 ms.
pub const REFUSED_DELAY_MS: u64 = 5000;

/// After the peer failed to apply an operation (a full disk, say), the next attempts wait
/// this long, doubled at each new failure up to [`FAILED_DELAY_MAX_MS`]: each attempt resends
/// what the peer lacks, and it would fail the same way until an operator acts. Default 1000 ms.
pub const FAILED_DELAY_MS: u64 = 1000;
/// Default 30 s.
pub const FAILED_DELAY_MAX_MS: u64 = 30_000;

/// Why a session ended: the peer is unreachable or the link broke, or one side refused, or
/// the peer could not apply an operation.
enum Ended {
    Lost(String),
    Refused(String),
    Failed(String),
}

/// How the reader of acknowledgements ended.
struct ReadEnd {
    reason: String,
    /// The peer reported an operation it could not apply.
    peer_failed: bool,
}

impl ReadEnd {
    fn lost(reason: String) -> ReadEnd {
        ReadEnd {
            reason,
            peer_failed: false,
        }
    }
}

impl From<String> for Ended {
    fn from(s: String) -> Self {
        Ended::Lost(s)
    }
}

/// How often the driver notices that the link ended a session on its own (peer timeout).
const SESSION_CHECK_MS: u64 = 100;

/// Where the peer is.
#[derive(Clone, Debug)]
pub struct PeerAddr {
    pub node: String,
    pub addr: SocketAddr,
}

/// Run forever: keep the peer connected and in sync.
pub async fn run(core: Arc<Core>, endpoint: quinn::Endpoint, node: String, peer: PeerAddr) {
    let mut last_error = String::new();
    // Failures of the peer in a row (forgotten once none came for twice the longest delay).
    let mut failures = 0u32;
    let mut last_failure: Option<tokio::time::Instant> = None;
    loop {
        let (e, delay) = match session(&core, &endpoint, &node, &peer).await {
            Ok(()) => (String::new(), RECONNECT_DELAY_MS),
            Err(Ended::Lost(e)) => (e, RECONNECT_DELAY_MS),
            Err(Ended::Refused(e)) => (e, REFUSED_DELAY_MS),
            Err(Ended::Failed(e)) => {
                let now = tokio::time::Instant::now();
                if last_failure
                    .is_some_and(|t| now - t > Duration::from_millis(2 * FAILED_DELAY_MAX_MS))
                {
                    failures = 0;
                }
                last_failure = Some(now);
                failures = failures.saturating_add(1);
                let delay = FAILED_DELAY_MS
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(FAILED_DELAY_MAX_MS);
                core.link.note_retry(&e, delay);
                (e, delay)
            }
        };
        if e != last_error && !e.is_empty() {
            warn!(mirror = %core.mirror, peer = %peer.node, addr = %peer.addr, "replication link to the peer: {e}");
        }
        last_error = e;
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

/// Connect to the peer: attempts start every [`CONNECT_STAGGER_MS`] for
/// [`CONNECT_ATTEMPT_MS`], each waiting at most [`CONNECT_ATTEMPT_MS`] for its handshake. The
/// first to complete is the connection (the others are dropped). An attempt that fails
/// otherwise than by waiting (the peer answered: it refused the certificate, say) ends them
/// all with its error.
async fn connect_staggered(
    endpoint: &quinn::Endpoint,
    peer: &PeerAddr,
) -> Result<quinn::Connection, String> {
    let started = tokio::time::Instant::now();
    let attempt_for = Duration::from_millis(CONNECT_ATTEMPT_MS);
    let mut attempts = tokio::task::JoinSet::new();
    let mut next = started;
    loop {
        if next.duration_since(started) < attempt_for && tokio::time::Instant::now() >= next {
            let (endpoint, addr, node) = (endpoint.clone(), peer.addr, peer.node.clone());
            attempts.spawn(async move {
                tokio::time::timeout(attempt_for, mirrorkit_net::connect(&endpoint, addr, &node))
                    .await
            });
            next += Duration::from_millis(CONNECT_STAGGER_MS);
        }
        let launching = next.duration_since(started) < attempt_for;
        if !launching && attempts.is_empty() {
            return Err(format!(
                "the peer did not answer within {CONNECT_ATTEMPT_MS} ms (not running, or unreachable)"
            ));
        }
        tokio::select! {
            done = attempts.join_next(), if !attempts.is_empty() => match done {
                Some(Ok(Ok(Ok(conn)))) => return Ok(conn),
                Some(Ok(Ok(Err(e)))) => return Err(e.to_string()),
                Some(Err(e)) => return Err(format!("connection attempt failed: {e}")),
                // Timed out, or nothing left.
                Some(Ok(Err(_))) | None => {}
            },
            _ = tokio::time::sleep_until(next), if launching => {}
        }
    }
}

/// One connection, from connect to loss. Returns the reason it ended.
async fn session(
    core: &Arc<Core>,
    endpoint: &quinn::Endpoint,
    node: &str,
    peer: &PeerAddr,
) -> Result<(), Ended> {
    let conn = connect_staggered(endpoint, peer)
        .await
        .map_err(Ended::Lost)?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| format!("cannot open the replication stream: {e}"))?;
    let mine = core.link.data_state();
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: node.to_string(),
        mirror: core.mirror.clone(),
        role: Role::Primary,
        data: mine.clone(),
        include: core.filter().patterns().0.to_vec(),
        exclude: core.filter().patterns().1.to_vec(),
    });
    write_message(&mut send, &hello)
        .await
        .map_err(|e| format!("cannot greet the peer: {e}"))?;
    let mut buf = Vec::new();
    let got = tokio::time::timeout(
        Duration::from_millis(core.link.config().peer_timeout_ms),
        read_frame(&mut recv, &mut buf),
    )
    .await
    .map_err(|_| "the peer did not answer the greeting in time".to_string())?
    .map_err(|e| format!("cannot read the peer's greeting: {e}"))?;
    if !got {
        return Err(Ended::Lost(
            "the peer closed the stream during the greeting".into(),
        ));
    }
    let reply = wire::decode_frame(&buf).map_err(|e| format!("peer's greeting: {e}"))?;
    let theirs = match reply.0 {
        Message::Hello(h)
            if h.version == PROTOCOL_VERSION && h.mirror == core.mirror && h.role == Role::Secondary => h.data,
        Message::Hello(h) => {
            return Err(Ended::Refused(format!(
                "peer {} answered as {:?} for mirror {:?} with protocol version {} (expected secondary, {:?}, {})",
                h.node, h.role, h.mirror, h.version, core.mirror, PROTOCOL_VERSION
            )))
        }
        Message::Bye { reason } => {
            return Err(Ended::Refused(format!(
                "peer refused the session: {reason}"
            )))
        }
        other => {
            return Err(Ended::Lost(format!(
                "peer answered the greeting with {other:?}"
            )))
        }
    };
    let (mode, preserve) = match plan(&mine, &theirs) {
        Ok((SyncMode::Incremental, preserve)) if core.link.selection_changed() => {
            info!(mirror = %core.mirror, peer = %peer.node, "what is replicated changed since the peer was last in sync: comparing all data instead of an incremental resync");
            (SyncMode::Compare, preserve)
        }
        Ok(p) => p,
        Err(reason) => {
            error!(mirror = %core.mirror, peer = %peer.node, "{reason}");
            let _ = write_message(
                &mut send,
                &Message::Bye {
                    reason: reason.clone(),
                },
            )
            .await;
            let _ = send.finish();
            return Err(Ended::Refused(reason));
        }
    };
    info!(mirror = %core.mirror, peer = %peer.node, addr = %peer.addr, ?mode, preserve, "replication link up");

    let link = core.link.clone();
    let session = link.begin_session(send, tokio::runtime::Handle::current());
    let reader = tokio::spawn(read_loop(recv, link.clone(), session, peer.node.clone()));
    let sync_core = core.clone();
    let sync = tokio::task::spawn_blocking(move || {
        crate::sync::full_sync(&sync_core, session, mode, preserve)
    });

    // The reader may end first (the peer died mid-synchronisation): the session ends then,
    // which stops the synchroniser, instead of leaving it waiting for answers.
    let mut reader = reader;
    let mut sync = sync;
    let mut reader_end: Option<ReadEnd> = None;
    let sync_result = loop {
        tokio::select! {
            r = &mut sync => break r,
            r = &mut reader, if reader_end.is_none() => {
                let why = r.unwrap_or_else(|e| ReadEnd::lost(format!("reader task failed: {e}")));
                link.lost(session, why.reason.clone());
                reader_end = Some(why);
            }
        }
    };
    match sync_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            link.lost(session, format!("synchronisation stopped: {e}"));
        }
        Err(e) => {
            error!(mirror = %core.mirror, "synchronisation task failed: {e}");
            link.lost(session, format!("synchronisation task failed: {e}"));
        }
    }
    // Runs until the stream ends or the link ends the session (peer timeout).
    let end = if let Some(end) = reader_end {
        end
    } else {
        loop {
            tokio::select! {
                r = &mut reader => break r.unwrap_or_else(|e| ReadEnd::lost(format!("reader task failed: {e}"))),
                _ = tokio::time::sleep(Duration::from_millis(SESSION_CHECK_MS)) => {
                    if link.session() != session {
                        reader.abort();
                        break ReadEnd::lost(link.status().1);
                    }
                }
            }
        }
    };
    link.lost(session, end.reason.clone());
    conn.close(0u32.into(), b"session ended");
    Err(if end.peer_failed {
        Ended::Failed(end.reason)
    } else {
        Ended::Lost(end.reason)
    })
}

/// How to bring the peer to this node's data, or why this node must not (its data is older
/// than the peer's, or both changed apart, and no operator forced this node).
pub fn plan(mine: &DataState, theirs: &DataState) -> Result<(SyncMode, bool), String> {
    let gen = |d: &DataState| {
        d.current
            .map(|g| g.to_string())
            .unwrap_or_else(|| "none".into())
    };
    match compare(mine, theirs) {
        Relation::BothNew => Ok((SyncMode::Compare, false)),
        r @ (Relation::Same { .. } | Relation::LocalNewer { .. }) => Ok((
            if r.incremental() {
                SyncMode::Incremental
            } else {
                SyncMode::Compare
            },
            false,
        )),
        _ if mine.forced => Ok((SyncMode::Compare, true)),
        Relation::PeerNewer { .. } => Err(format!(
            "the peer holds newer data (generation {}) than this node (generation {}): this node must not be primary; make the peer primary, or force this node with `prim` (the peer's divergent data is then kept aside)",
            gen(theirs),
            gen(mine)
        )),
        Relation::SplitBrain => Err(format!(
            "split brain: this node (generation {}) and the peer (generation {}) both changed the data since they last shared it; nothing is overwritten: choose the survivor with `prim` (the other side's data is kept aside)",
            gen(mine),
            gen(theirs)
        )),
        Relation::NeitherConsistent => Err(
            "neither copy is consistent (both were targets of an interrupted resync): choose the survivor with `prim`".into(),
        ),
    }
}

/// Read acknowledgements until the stream ends; returns why it ended.
async fn read_loop(mut recv: quinn::RecvStream, link: Link, session: u64, peer: String) -> ReadEnd {
    let mut buf = Vec::new();
    loop {
        match read_frame(&mut recv, &mut buf).await {
            Ok(true) => {}
            Ok(false) => return ReadEnd::lost("peer closed the replication stream".into()),
            Err(e) => return ReadEnd::lost(format!("replication stream: {e}")),
        }
        match wire::decode_frame(&buf) {
            Ok((Message::Ack { seq }, _)) => link.on_ack(session, seq),
            Ok((Message::Probed { seq, file }, digests)) => {
                link.on_probed(session, seq, file, digests.to_vec())
            }
            Ok((Message::Failed { seq, errno, reason }, _)) => {
                // The reason usually names the error already ("... (os error 28)").
                let code = if reason.contains("os error") {
                    String::new()
                } else {
                    format!(" (errno {errno})")
                };
                let r = format!(
                    "{peer} could not apply operation {seq}: {reason}{code}; {peer} is out of sync (fix the cause on {peer}; the primary retries, less and less often)"
                );
                error!("{r}");
                link.lost(session, r.clone());
                return ReadEnd {
                    reason: r,
                    peer_failed: true,
                };
            }
            Ok((Message::Bye { reason }, _)) => {
                return ReadEnd::lost(format!("peer ended the session: {reason}"))
            }
            Ok((other, _)) => {
                let r = format!("unexpected message from the peer: {other:?}");
                link.lost(session, r.clone());
                return ReadEnd::lost(r);
            }
            Err(e) => {
                let r = format!("malformed message from the peer: {e}");
                link.lost(session, r.clone());
                return ReadEnd::lost(r);
            }
        }
    }
}
