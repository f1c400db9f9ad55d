//! mirrorkit-heartbeat: knowing whether the peer node is alive, and carrying the small messages
//! the two nodes' state machines exchange.
//!
//! This crate owns
//! - one QUIC connection per configured heartbeat network between the two nodes, mutually
//!   authenticated with the cluster certificates (`mirrorkit-net`): the node whose name sorts
//!   first dials, the other accepts, checks that the certificate names its configured peer, and
//!   refuses (and logs) anyone else. A dialler redials every `interval_ms` after a loss, and
//!   also when its connection has been silent for [`REDIAL_SILENT_INTERVALS`] intervals (a peer
//!   restarted without closing it); an acceptor lets a new connection from the peer replace the
//!   old one, so that a restarted peer is picked up at once;
//! - the heartbeats: a QUIC datagram every `interval_ms` in each direction on every connection,
//!   from an endpoint of its own whose packets are marked for priority
//!   ([`mirrorkit_net::priority_endpoint`]: DSCP CS6, socket priority 6), so that the
//!   replication traffic, on other connections and ports, cannot queue ahead of them;
//! - failure detection ([`Heartbeat::watch`]): any number of watchers, each with its own
//!   threshold, told `Seen` / `Lost` from heartbeats actually received on any network, never
//!   from QUIC's own idle timer;
//! - the control channel ([`Heartbeat::send`], the receiver returned by [`Heartbeat::start`]):
//!   messages in order on one stream per connection, over the first network that is up.
//!
//! It never decides anything from what it detects (the daemon's state machines do), never
//! retransmits a message across connections (senders repeat their state periodically; a
//! message may therefore be lost, and messages sent over two networks in turn may cross), and
//! never blocks a caller: every queue is bounded, a full send queue drops (`send` returns
//! false) and a full receive queue pushes back on the peer's message stream, never on the
//! heartbeats.
//!
//! # Wire format
//!
//! Inside each connection (QUIC, TLS 1.3, ALPN [`mirrorkit_net::ALPN`]):
//! - heartbeat datagram, [`HEARTBEAT_BYTES`] bytes: `0x01` (format version), the sender's
//!   boot id (u64, big endian, random per process start), a counter (u64, big endian, from 1 on
//!   each connection). Datagrams of another size or version are ignored (logged once per
//!   connection);
//! - messages: each node opens one unidirectional stream per connection, which starts with the
//!   4 bytes `MKC1` ([`STREAM_MAGIC`]) and then carries frames: a u32 big-endian length L (1 to
//!   [`MAX_FRAME_BYTES`]) followed by L bytes, the postcard encoding of [`Message`]
//!   (channel: string of at most [`MAX_CHANNEL_BYTES`] bytes; payload: bytes, at most
//!   [`MAX_PAYLOAD_BYTES`]). A stream that breaks these rules closes its connection with
//!   application error code [`CLOSE_PROTOCOL_ERROR`] and an error in the log.

mod link;
mod liveness;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mirrorkit_net::pki::NodeIdentity;
use mirrorkit_net::{NetError, TransportParams};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::liveness::{Detector, Transition};
pub use crate::wire::{
    Message, HEARTBEAT_BYTES, MAX_CHANNEL_BYTES, MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, STREAM_MAGIC,
};

/// Shortest heartbeat period accepted.
pub const MIN_INTERVAL_MS: u64 = 10;

/// Longest heartbeat period accepted: a few beats must fit in the QUIC idle timeout.
pub const MAX_INTERVAL_MS: u64 = 500;

/// Most heartbeat networks in one configuration.
pub const MAX_NETWORKS: usize = 8;

/// A connection that hears nothing at all (no heartbeat, no acknowledgement) for this long is
/// closed by QUIC. Liveness does not depend on it: it only reclaims dead connections.
pub const IDLE_TIMEOUT_MS: u64 = 3000;

/// QUIC keep-alive period: the heartbeats keep connections busy, so this only fires if they
/// stop; it must stay below [`IDLE_TIMEOUT_MS`].
pub const KEEP_ALIVE_MS: u64 = 2000;

/// Round-trip time QUIC assumes before measuring one: small, so that handshake retransmissions
/// to a peer that is coming back are tightly spaced.
pub const INITIAL_RTT_MS: u64 = 10;

/// A network is up while its connection has heard a heartbeat within this many intervals.
pub const SILENT_INTERVALS: u64 = 5;

/// A dialler closes its connection, and dials again, once it has heard no heartbeat on it for
/// this many intervals: a peer restarted abruptly leaves the old connection silent until the
/// idle timeout, and a new dial reaches the new process at once.
pub const REDIAL_SILENT_INTERVALS: u64 = 2 * SILENT_INTERVALS;

/// Shortest time given to one connection attempt, however short the interval.
pub const DIAL_TIMEOUT_MIN_MS: u64 = 500;

/// Connection attempts are bounded by this many intervals (at least [`DIAL_TIMEOUT_MIN_MS`], at
/// most [`IDLE_TIMEOUT_MS`]): a fresh attempt every few intervals reaches a peer that just came
/// back sooner than the backed-off retransmissions of an old one.
pub const DIAL_TIMEOUT_INTERVALS: u64 = 5;

/// Handshakes an acceptor completes at once; more are refused.
pub const MAX_PENDING_HANDSHAKES: usize = 4;

/// A refusal repeated within this period is logged at debug level only.
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 60_000;

/// Messages queued for one connection before [`Heartbeat::send`] drops.
pub const OUTBOX_MESSAGES: usize = 4096;

/// Bytes of frames queued for one connection before [`Heartbeat::send`] drops.
pub const OUTBOX_MAX_BYTES: usize = 16 << 20;

/// Received messages waiting for the daemon; when full, reading stops and QUIC flow control
/// pushes back on the peer's stream (never on the heartbeats).
pub const INBOX_MESSAGES: usize = 1024;

/// Reports queued for one watcher that is not reading.
pub const WATCH_QUEUE_LEN: usize = 16;

/// A watcher's threshold is at least this many intervals, or it would flap between beats.
pub const MIN_LOST_AFTER_INTERVALS: u64 = 2;

/// Longest [`Heartbeat::shutdown`] waits for its tasks to close their connections.
pub const SHUTDOWN_TIMEOUT_MS: u64 = 2000;

/// Application close code: the node is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code: the peer broke the wire format.
pub const CLOSE_PROTOCOL_ERROR: u32 = 1;
/// Application close code: the certificate names a node that is not this node's peer.
pub const CLOSE_REFUSED: u32 = 2;
/// Application close code: a newer connection from the peer replaces this one.
pub const CLOSE_REPLACED: u32 = 3;
/// Application close code: the dialler heard nothing on this connection and dials again.
pub const CLOSE_SILENT: u32 = 4;

/// One heartbeat network: where this node listens on it, and where the peer does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    /// This node's endpoint on the network is bound here.
    pub local: SocketAddr,
    /// The peer's endpoint on the network. Only the node whose name sorts first dials it; the
    /// other accepts from any address, the certificate deciding who the caller is.
    pub peer: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node: must be the name in the identity's certificate.
    pub node: String,
    /// The other node of the cluster.
    pub peer: String,
    /// In order of preference for messages.
    pub networks: Vec<Network>,
    /// Heartbeat period, [`MIN_INTERVAL_MS`] to [`MAX_INTERVAL_MS`] (the daemon uses 100 or 250).
    pub interval_ms: u64,
}

/// What a watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// The peer was heard on some network within the watcher's threshold (at first, or again
    /// after `Lost`).
    Seen,
    /// No network has heard the peer for the watcher's threshold; `reason` says, per network,
    /// for how long and why.
    Lost { reason: String },
}

/// One network, as seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStatus {
    pub name: String,
    /// Connected, and a heartbeat heard within [`SILENT_INTERVALS`] intervals.
    pub up: bool,
    /// Since the last heartbeat heard on this network, on any connection.
    pub last_heard_ms_ago: Option<u64>,
    /// QUIC's smoothed round-trip time on the current connection.
    pub rtt_us: Option<u64>,
    /// Why the network was last down (failed dial, refused connection, closed connection);
    /// cleared when a connection is established.
    pub last_error: Option<String>,
    /// Heartbeats heard on this network since the daemon started.
    pub received: u64,
    /// Heartbeats the peer sent on a connection and that never arrived (gaps in its
    /// counter), since the daemon started: datagrams lost on the way.
    pub missed: u64,
}

#[derive(thiserror::Error, Debug)]
pub enum HeartbeatError {
    #[error("invalid heartbeat configuration: {reason}")]
    InvalidConfig { reason: String },

    #[error("cannot open heartbeat network {network:?}: {source}")]
    Endpoint {
        network: String,
        #[source]
        source: Box<NetError>,
    },
}

/// The running heartbeats of this node. Clones share them; they stop on [`Heartbeat::shutdown`]
/// or when the last clone is dropped.
#[derive(Clone)]
pub struct Heartbeat {
    shared: Arc<Shared>,
    _stop_on_drop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("node", &self.shared.node)
            .field("peer", &self.shared.peer)
            .finish_non_exhaustive()
    }
}

impl Heartbeat {
    /// Bind every network's endpoint, then start dialling or accepting, and beating. Must be
    /// called within a tokio runtime; the tasks run on it.
    ///
    /// Returns the receiver of the peer's messages; it ends after shutdown.
    pub async fn start(
        identity: NodeIdentity,
        cfg: Config,
    ) -> Result<(Heartbeat, mpsc::Receiver<Message>), HeartbeatError> {
        validate(&identity, &cfg)?;
        let params = transport_params();
        let dials = cfg.node < cfg.peer;
        let mut endpoints = Vec::with_capacity(cfg.networks.len());
        for net in &cfg.networks {
            let endpoint = mirrorkit_net::priority_endpoint(&identity, net.local, &params)
                .map_err(|source| HeartbeatError::Endpoint {
                    network: net.name.clone(),
                    source: Box::new(source),
                })?;
            if dials {
                // The dialling side accepts nothing: one connection per network.
                endpoint.set_server_config(None);
            }
            endpoints.push(endpoint);
        }

        let interval = Duration::from_millis(cfg.interval_ms);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            boot_id: new_boot_id(),
            dials,
            started: Instant::now(),
            interval,
            silent_after: interval * SILENT_INTERVALS as u32,
            runtime: tokio::runtime::Handle::current(),
            nets: cfg
                .networks
                .iter()
                .map(|n| NetShared {
                    name: n.name.clone(),
                    peer_addr: n.peer,
                    state: Mutex::new(NetState::default()),
                })
                .collect(),
            node: cfg.node,
            peer: cfg.peer,
            heard: watch::channel(None).0,
            peer_boot_id: Mutex::new(None),
            shutdown,
            tasks: Mutex::new(Vec::new()),
            next_link_id: AtomicU64::new(1),
        });
        let (inbox, messages) = mpsc::channel(INBOX_MESSAGES);
        let tasks = endpoints
            .into_iter()
            .enumerate()
            .map(|(net, endpoint)| {
                let shared = Arc::clone(&shared);
                let inbox = inbox.clone();
                if dials {
                    tokio::spawn(link::dial_loop(shared, net, endpoint, inbox))
                } else {
                    tokio::spawn(link::accept_loop(shared, net, endpoint, inbox))
                }
            })
            .collect();
        *lock(&shared.tasks) = tasks;
        tracing::info!(
            node = %shared.node,
            peer = %shared.peer,
            boot_id = format_args!("{:016x}", shared.boot_id),
            interval_ms = cfg.interval_ms,
            networks = shared.nets.len(),
            role = if dials { "dials" } else { "accepts" },
            "heartbeats started"
        );
        let stop = Arc::new(StopOnDrop(Arc::clone(&shared)));
        Ok((
            Heartbeat {
                shared,
                _stop_on_drop: stop,
            },
            messages,
        ))
    }

    /// A watcher with its own threshold: reports `Seen` when the peer is heard on any network
    /// (at first, or after being lost), and `Lost` once no network has heard it for
    /// `lost_after_ms` (counted from the start if it was never heard). Reports only changes.
    ///
    /// A threshold below [`MIN_LOST_AFTER_INTERVALS`] intervals is raised to it, with a warning.
    /// The receiver ends after shutdown; dropping it stops the watcher.
    pub fn watch(&self, lost_after_ms: u64) -> mpsc::Receiver<Liveness> {
        let interval_ms = self.shared.interval.as_millis() as u64;
        let min_ms = MIN_LOST_AFTER_INTERVALS * interval_ms;
        let lost_after_ms = if lost_after_ms < min_ms {
            tracing::warn!(
                "a peer-lost threshold of {lost_after_ms} ms is below {MIN_LOST_AFTER_INTERVALS} \
                 heartbeat intervals of {interval_ms} ms; using {min_ms} ms"
            );
            min_ms
        } else {
            lost_after_ms
        };
        let (tx, rx) = mpsc::channel(WATCH_QUEUE_LEN);
        let shared = Arc::clone(&self.shared);
        self.shared
            .runtime
            .spawn(watcher(shared, Duration::from_millis(lost_after_ms), tx));
        rx
    }

    /// Send a message to the peer's daemon: in order with the other messages while one
    /// connection lasts, over the first network (in configuration order) that is up.
    ///
    /// Returns false, and the message is dropped, when no network is up, when that network's
    /// queue is full ([`OUTBOX_MESSAGES`], [`OUTBOX_MAX_BYTES`]), or when the message exceeds
    /// [`MAX_CHANNEL_BYTES`] / [`MAX_PAYLOAD_BYTES`]. A message queued on a connection that
    /// then breaks is lost too: senders repeat their state periodically.
    pub fn send(&self, channel: &str, payload: Vec<u8>) -> bool {
        let message = Message {
            channel: channel.to_owned(),
            payload,
        };
        let frame = match message.encode_frame() {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(channel, "message to {} not sent: {e}", self.shared.peer);
                return false;
            }
        };
        let now = Instant::now();
        for net in &self.shared.nets {
            let state = lock(&net.state);
            let Some(link) = state.link.as_ref() else {
                continue;
            };
            if !link.is_up(now, self.shared.silent_after) {
                continue;
            }
            // Queue on the first network that is up or not at all: spilling onto the next one
            // would reorder messages.
            let len = frame.len();
            if link.outbox_bytes.fetch_add(len, Ordering::AcqRel) + len > OUTBOX_MAX_BYTES {
                link.outbox_bytes.fetch_sub(len, Ordering::AcqRel);
                tracing::warn!(
                    channel,
                    network = %net.name,
                    "message to {} dropped: {OUTBOX_MAX_BYTES} bytes already queued",
                    self.shared.peer
                );
                return false;
            }
            return match link.outbox.try_send(frame) {
                Ok(()) => true,
                Err(_) => {
                    link.outbox_bytes.fetch_sub(len, Ordering::AcqRel);
                    tracing::warn!(
                        channel,
                        network = %net.name,
                        "message to {} dropped: {OUTBOX_MESSAGES} messages already queued",
                        self.shared.peer
                    );
                    false
                }
            };
        }
        tracing::debug!(
            channel,
            "message to {} dropped: no network is up",
            self.shared.peer
        );
        false
    }

    /// Each network's state, in configuration order.
    pub fn networks(&self) -> Vec<NetworkStatus> {
        self.shared.statuses(Instant::now())
    }

    /// The boot id of the peer process last heard (it changes when the peer restarts).
    pub fn peer_boot_id(&self) -> Option<u64> {
        *lock(&self.shared.peer_boot_id)
    }

    /// This process's boot id, as the peer sees it in the heartbeats.
    pub fn boot_id(&self) -> u64 {
        self.shared.boot_id
    }

    /// Close every connection (the peer sees them close at once, but reports the peer lost
    /// only after its thresholds, like any silence), stop the tasks and release the ports.
    /// Waits at most [`SHUTDOWN_TIMEOUT_MS`]; idempotent.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_TIMEOUT_MS);
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("a heartbeat task did not stop within {SHUTDOWN_TIMEOUT_MS} ms");
                task.abort();
            }
        }
    }
}

/// Signals the tasks to stop when the last [`Heartbeat`] clone goes.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

/// State shared by the API and the tasks.
struct Shared {
    node: String,
    peer: String,
    boot_id: u64,
    /// This node dials (its name sorts first); the other accepts.
    dials: bool,
    started: Instant,
    interval: Duration,
    /// A network with no heartbeat for this long is not up.
    silent_after: Duration,
    runtime: tokio::runtime::Handle,
    nets: Vec<NetShared>,
    /// When the peer was last heard on any network.
    heard: watch::Sender<Option<Instant>>,
    peer_boot_id: Mutex<Option<u64>>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    next_link_id: AtomicU64,
}

struct NetShared {
    name: String,
    peer_addr: SocketAddr,
    state: Mutex<NetState>,
}

#[derive(Default)]
struct NetState {
    link: Option<Link>,
    last_heard: Option<Instant>,
    last_error: Option<String>,
    /// The last refusal logged as a warning, and when.
    last_refusal: Option<(String, Instant)>,
    /// See [`NetworkStatus::received`] and [`NetworkStatus::missed`].
    received: u64,
    missed: u64,
}

/// The current connection of a network.
struct Link {
    id: u64,
    conn: quinn::Connection,
    outbox: mpsc::Sender<Vec<u8>>,
    outbox_bytes: Arc<AtomicUsize>,
    since: Instant,
    last_beat: Option<Instant>,
    /// Counter of the newest heartbeat heard on this connection.
    last_counter: u64,
    /// Whether the silence of this connection was logged (so that its end is logged once).
    silent: bool,
}

impl Link {
    /// Silent since the last heartbeat on this connection, or since it was established.
    fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_beat.unwrap_or(self.since))
    }

    fn is_up(&self, now: Instant, silent_after: Duration) -> bool {
        self.silent_for(now) < silent_after
    }
}

impl Shared {
    fn statuses(&self, now: Instant) -> Vec<NetworkStatus> {
        self.nets
            .iter()
            .map(|net| {
                let state = lock(&net.state);
                NetworkStatus {
                    name: net.name.clone(),
                    up: state
                        .link
                        .as_ref()
                        .is_some_and(|l| l.is_up(now, self.silent_after)),
                    last_heard_ms_ago: state
                        .last_heard
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                    rtt_us: state.link.as_ref().map(|l| l.conn.rtt().as_micros() as u64),
                    last_error: state.last_error.clone(),
                    received: state.received,
                    missed: state.missed,
                }
            })
            .collect()
    }

    /// Why the peer is lost, network by network.
    fn lost_reason(&self, silent_for: Duration, lost_after: Duration) -> String {
        let now = Instant::now();
        let nets: Vec<String> = self
            .nets
            .iter()
            .map(|net| {
                let state = lock(&net.state);
                let heard = match state.last_heard {
                    Some(t) => format!(
                        "silent for {} ms",
                        now.saturating_duration_since(t).as_millis()
                    ),
                    None => "never heard".to_owned(),
                };
                let link = match (&state.link, &state.last_error) {
                    (Some(_), _) => "connection open".to_owned(),
                    (None, Some(e)) => format!("not connected: {e}"),
                    (None, None) => "not connected".to_owned(),
                };
                format!("{}: {heard}, {link}", net.name)
            })
            .collect();
        format!(
            "no heartbeat from {} on any network for {} ms (threshold {} ms); {}",
            self.peer,
            silent_for.as_millis(),
            lost_after.as_millis(),
            nets.join("; ")
        )
    }
}

/// Report `Seen` / `Lost` changes for one threshold until shutdown or until the receiver goes.
async fn watcher(shared: Arc<Shared>, lost_after: Duration, tx: mpsc::Sender<Liveness>) {
    let mut heard = shared.heard.subscribe();
    let mut stop = shared.shutdown.subscribe();
    let mut detector = Detector::new(lost_after, shared.started);
    loop {
        let last_heard = *heard.borrow_and_update();
        let (transition, recheck_at) = detector.step(last_heard, Instant::now());
        if let Some(transition) = transition {
            let report = match transition {
                Transition::Seen => Liveness::Seen,
                Transition::Lost { silent_for } => Liveness::Lost {
                    reason: shared.lost_reason(silent_for, lost_after),
                },
            };
            tokio::select! {
                sent = tx.send(report) => if sent.is_err() { return },
                _ = stopped(&mut stop) => return,
            }
            continue;
        }
        let recheck = async {
            match recheck_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = heard.changed() => if changed.is_err() { return },
            _ = recheck => {}
            _ = stopped(&mut stop) => return,
            _ = tx.closed() => return,
        }
    }
}

/// Resolves once shutdown is requested.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: stopped too.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

fn validate(identity: &NodeIdentity, cfg: &Config) -> Result<(), HeartbeatError> {
    let invalid = |reason: String| Err(HeartbeatError::InvalidConfig { reason });
    for name in [&cfg.node, &cfg.peer] {
        if let Err(e) = mirrorkit_net::pki::validate_node_name(name) {
            return invalid(e.to_string());
        }
    }
    if cfg.node == cfg.peer {
        return invalid(format!(
            "node and peer are both {:?}: the peer is the other node",
            cfg.node
        ));
    }
    if identity.node_name() != cfg.node {
        return invalid(format!(
            "the identity is node {:?}'s, the configuration is for node {:?}",
            identity.node_name(),
            cfg.node
        ));
    }
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&cfg.interval_ms) {
        return invalid(format!(
            "interval_ms is {}, expected {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS}",
            cfg.interval_ms
        ));
    }
    if cfg.networks.is_empty() || cfg.networks.len() > MAX_NETWORKS {
        return invalid(format!(
            "{} networks given, expected 1 to {MAX_NETWORKS}",
            cfg.networks.len()
        ));
    }
    for (i, net) in cfg.networks.iter().enumerate() {
        if net.name.is_empty() {
            return invalid(format!("network number {} has no name", i + 1));
        }
        let earlier = &cfg.networks[..i];
        if earlier.iter().any(|n| n.name == net.name) {
            return invalid(format!("network {:?} is given twice", net.name));
        }
        if earlier.iter().any(|n| n.local == net.local) {
            return invalid(format!(
                "networks {:?} and {:?} both bind {}",
                earlier
                    .iter()
                    .find(|n| n.local == net.local)
                    .map_or("", |n| &n.name),
                net.name,
                net.local
            ));
        }
    }
    Ok(())
}

fn transport_params() -> TransportParams {
    const MIB: u64 = 1 << 20;
    TransportParams {
        idle_timeout_ms: IDLE_TIMEOUT_MS,
        keep_alive_ms: KEEP_ALIVE_MS,
        // Room for a few maximal frames; the queues above are the real bound.
        stream_window_bytes: 4 * MIB,
        connection_window_bytes: 8 * MIB,
        send_window_bytes: 8 * MIB,
        initial_rtt_ms: INITIAL_RTT_MS,
    }
}

/// A random identifier of this process start: the std hasher's keys are random per process.
fn new_boot_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(since_epoch.as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Lock, ignoring poisoning: every critical section leaves the state consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
