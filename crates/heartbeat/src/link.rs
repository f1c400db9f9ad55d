//! The I/O shell of one network: dialling or accepting its connection, then running it
//! (heartbeats out and in, messages out and in) until it ends, and saying why in the log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::wire::{self, Beat, Message, FRAME_LEN_BYTES};
use crate::{
    lock, stopped, Link, Shared, CLOSE_PROTOCOL_ERROR, CLOSE_REFUSED, CLOSE_REPLACED,
    CLOSE_SHUTDOWN, CLOSE_SILENT, DIAL_TIMEOUT_INTERVALS, DIAL_TIMEOUT_MIN_MS, IDLE_TIMEOUT_MS,
    MAX_PENDING_HANDSHAKES, OUTBOX_MESSAGES, REDIAL_SILENT_INTERVALS, REFUSAL_LOG_INTERVAL_MS,
    SHUTDOWN_TIMEOUT_MS,
};

/// Why a connection ended.
enum End {
    /// Closed by QUIC (idle timeout, reset) or by the peer.
    Closed(quinn::ConnectionError),
    /// The peer broke the wire format: we close the connection.
    Protocol(String),
    /// The dialler heard no heartbeat for this long: we close the connection and dial again.
    Silent(Duration),
    Shutdown,
}

/// Dial the peer on network `net`, run the connection, and dial again after `interval` once it
/// ends, until shutdown.
pub(crate) async fn dial_loop(
    shared: Arc<Shared>,
    net: usize,
    endpoint: quinn::Endpoint,
    inbox: mpsc::Sender<Message>,
) {
    let mut stop = shared.shutdown.subscribe();
    let peer_addr = shared.nets[net].peer_addr;
    let dial_timeout = (shared.interval * DIAL_TIMEOUT_INTERVALS as u32).clamp(
        Duration::from_millis(DIAL_TIMEOUT_MIN_MS),
        Duration::from_millis(IDLE_TIMEOUT_MS),
    );
    loop {
        let attempt = tokio::time::timeout(
            dial_timeout,
            mirrorkit_net::connect(&endpoint, peer_addr, &shared.peer),
        );
        let result = tokio::select! {
            result = attempt => result,
            _ = stopped(&mut stop) => break,
        };
        match result {
            Ok(Ok(conn)) => {
                if let End::Shutdown = run(&shared, net, conn, &inbox).await {
                    break;
                }
            }
            Ok(Err(e)) => shared.dial_failed(net, e.to_string()),
            Err(_elapsed) => shared.dial_failed(
                net,
                format!("no answer within {} ms", dial_timeout.as_millis()),
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.interval) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    close_endpoint(endpoint).await;
}

/// Accept the peer's connections on network `net` until shutdown: each authenticated
/// connection whose certificate names the peer replaces the previous one; any other is refused
/// and logged with its remote address.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    net: usize,
    endpoint: quinn::Endpoint,
    inbox: mpsc::Sender<Message>,
) {
    let mut stop = shared.shutdown.subscribe();
    let handshake_timeout = Duration::from_millis(IDLE_TIMEOUT_MS);
    let mut handshakes: JoinSet<Result<quinn::Connection, (SocketAddr, String)>> = JoinSet::new();
    let mut links = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                if handshakes.len() >= MAX_PENDING_HANDSHAKES {
                    incoming.refuse();
                    shared.refused(
                        net,
                        remote,
                        format!("{MAX_PENDING_HANDSHAKES} handshakes already in progress"),
                    );
                    continue;
                }
                handshakes.spawn(async move {
                    let connecting = incoming
                        .accept()
                        .map_err(|e| (remote, format!("handshake failed: {e}")))?;
                    match tokio::time::timeout(handshake_timeout, connecting).await {
                        Ok(Ok(conn)) => Ok(conn),
                        Ok(Err(e)) => Err((remote, format!("handshake failed: {e}"))),
                        Err(_elapsed) => Err((
                            remote,
                            format!(
                                "handshake not completed within {} ms",
                                handshake_timeout.as_millis()
                            ),
                        )),
                    }
                });
            }
            Some(done) = handshakes.join_next() => match done {
                Ok(Ok(conn)) => match mirrorkit_net::peer_node_name(&conn) {
                    Some(name) if name == shared.peer => {
                        let shared = Arc::clone(&shared);
                        let inbox = inbox.clone();
                        links.spawn(async move {
                            run(&shared, net, conn, &inbox).await;
                        });
                    }
                    name => {
                        conn.close(CLOSE_REFUSED.into(), b"refused: not this node's peer");
                        let named = name.map_or("no node".to_owned(), |n| format!("node {n:?}"));
                        shared.refused(
                            net,
                            conn.remote_address(),
                            format!(
                                "its certificate names {named}, and this node's peer is {:?}",
                                shared.peer
                            ),
                        );
                    }
                },
                Ok(Err((remote, reason))) => shared.refused(net, remote, reason),
                Err(e) => tracing::error!(
                    network = %shared.nets[net].name,
                    "a handshake task failed: {e}"
                ),
            },
            Some(_) = links.join_next() => {}
        }
    }
    handshakes.abort_all();
    // The connections see the same shutdown signal and close themselves.
    while links.join_next().await.is_some() {}
    close_endpoint(endpoint).await;
}

async fn close_endpoint(endpoint: quinn::Endpoint) {
    endpoint.close(CLOSE_SHUTDOWN.into(), b"shutting down");
    let drained = Duration::from_millis(SHUTDOWN_TIMEOUT_MS / 2);
    let _ = tokio::time::timeout(drained, endpoint.wait_idle()).await;
}

/// Run one connection until it ends; it is the network's current connection meanwhile.
async fn run(
    shared: &Arc<Shared>,
    net: usize,
    conn: quinn::Connection,
    inbox: &mpsc::Sender<Message>,
) -> End {
    let (outbox, outbox_rx) = mpsc::channel(OUTBOX_MESSAGES);
    let outbox_bytes = Arc::new(AtomicUsize::new(0));
    let id = shared.install(net, conn.clone(), outbox, Arc::clone(&outbox_bytes));
    let mut stop = shared.shutdown.subscribe();
    let end = tokio::select! {
        end = send_beats(shared, net, id, &conn) => end,
        end = receive_beats(shared, net, id, &conn) => end,
        end = write_messages(&conn, outbox_rx, &outbox_bytes) => end,
        end = read_messages(&conn, inbox) => end,
        _ = stopped(&mut stop) => End::Shutdown,
    };
    match &end {
        End::Closed(_) => {}
        End::Protocol(_) => conn.close(CLOSE_PROTOCOL_ERROR.into(), b"protocol error"),
        End::Silent(_) => conn.close(CLOSE_SILENT.into(), b"no heartbeat"),
        End::Shutdown => conn.close(CLOSE_SHUTDOWN.into(), b"shutting down"),
    }
    shared.uninstall(net, id, conn.remote_address(), &end);
    end
}

/// A heartbeat every interval; also watches this connection's silence, which makes a dialler
/// give it up.
async fn send_beats(shared: &Shared, net: usize, id: u64, conn: &quinn::Connection) -> End {
    let mut ticks = tokio::time::interval(shared.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let redial_after = shared.interval * REDIAL_SILENT_INTERVALS as u32;
    let mut counter = 0u64;
    loop {
        ticks.tick().await;
        counter += 1;
        let beat = Beat {
            boot_id: shared.boot_id,
            counter,
        };
        match conn.send_datagram(Bytes::copy_from_slice(&beat.encode())) {
            Ok(()) => {}
            Err(quinn::SendDatagramError::ConnectionLost(e)) => return End::Closed(e),
            Err(e) => return End::Protocol(format!("cannot send heartbeats: {e}")),
        }
        let silent_for = shared.check_silence(net, id, Instant::now());
        if shared.dials && silent_for >= redial_after {
            return End::Silent(silent_for);
        }
    }
}

async fn receive_beats(shared: &Shared, net: usize, id: u64, conn: &quinn::Connection) -> End {
    let mut warned = false;
    loop {
        let datagram = match conn.read_datagram().await {
            Ok(datagram) => datagram,
            Err(e) => return End::Closed(e),
        };
        match Beat::decode(&datagram) {
            Ok(beat) => shared.heard(net, id, beat, Instant::now()),
            // An authenticated peer that sends something else is a bug or another version;
            // it is not a heartbeat, and one log line per connection says so.
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    network = %shared.nets[net].name,
                    remote = %conn.remote_address(),
                    "ignoring malformed heartbeats from {}: {e}",
                    shared.peer
                );
            }
            Err(_) => {}
        }
    }
}

async fn write_messages(
    conn: &quinn::Connection,
    mut outbox: mpsc::Receiver<Vec<u8>>,
    outbox_bytes: &AtomicUsize,
) -> End {
    let mut stream = match conn.open_uni().await {
        Ok(stream) => stream,
        Err(e) => return End::Closed(e),
    };
    if let Err(e) = stream.write_all(&wire::STREAM_MAGIC).await {
        return write_end(e);
    }
    while let Some(frame) = outbox.recv().await {
        let written = stream.write_all(&frame).await;
        outbox_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        if let Err(e) = written {
            return write_end(e);
        }
    }
    // The queue's sender goes only when this connection is replaced, which also closes it: the
    // other branches report that.
    std::future::pending().await
}

fn write_end(e: quinn::WriteError) -> End {
    match e {
        quinn::WriteError::ConnectionLost(e) => End::Closed(e),
        other => End::Protocol(format!("the peer refused our message stream: {other}")),
    }
}

async fn read_messages(conn: &quinn::Connection, inbox: &mpsc::Sender<Message>) -> End {
    let mut stream = match conn.accept_uni().await {
        Ok(stream) => stream,
        Err(e) => return End::Closed(e),
    };
    let mut magic = [0u8; 4];
    if let Err(e) = stream.read_exact(&mut magic).await {
        return read_end(e);
    }
    if let Err(e) = wire::check_stream_magic(magic) {
        return End::Protocol(e.to_string());
    }
    let mut discarding = false;
    loop {
        let mut prefix = [0u8; FRAME_LEN_BYTES];
        if let Err(e) = stream.read_exact(&mut prefix).await {
            return read_end(e);
        }
        let len = match wire::decode_frame_len(prefix) {
            Ok(len) => len,
            Err(e) => return End::Protocol(e.to_string()),
        };
        let mut body = vec![0u8; len];
        if let Err(e) = stream.read_exact(&mut body).await {
            return read_end(e);
        }
        let message = match Message::decode_body(&body) {
            Ok(message) => message,
            Err(e) => return End::Protocol(e.to_string()),
        };
        // Waiting here when the daemon is slow pushes back on the peer's stream only.
        if inbox.send(message).await.is_err() && !discarding {
            discarding = true;
            tracing::debug!("nobody reads the peer's messages any more; discarding them");
        }
    }
}

fn read_end(e: quinn::ReadExactError) -> End {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => {
            End::Protocol("the peer ended its message stream".to_owned())
        }
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => End::Closed(e),
        quinn::ReadExactError::ReadError(other) => {
            End::Protocol(format!("the peer's message stream broke: {other}"))
        }
    }
}

/// A connection's end, for an operator.
fn describe(end: &End) -> String {
    match end {
        End::Closed(quinn::ConnectionError::ApplicationClosed(close)) => {
            let reason = String::from_utf8_lossy(&close.reason);
            match u32::try_from(close.error_code.into_inner()) {
                Ok(CLOSE_SHUTDOWN) => "the peer is shutting down".to_owned(),
                Ok(CLOSE_PROTOCOL_ERROR) => {
                    "the peer closed it: this node broke the wire format (see the peer's log)"
                        .to_owned()
                }
                Ok(CLOSE_REFUSED) => "the peer refused it: it expects another node name".to_owned(),
                Ok(CLOSE_REPLACED) => "replaced by a newer connection".to_owned(),
                Ok(CLOSE_SILENT) => "the peer heard no heartbeat on it and dials again".to_owned(),
                _ => format!(
                    "closed by the peer with code {}: {reason}",
                    close.error_code
                ),
            }
        }
        End::Closed(quinn::ConnectionError::TimedOut) => {
            format!("no packet from the peer for {IDLE_TIMEOUT_MS} ms")
        }
        End::Closed(e) => e.to_string(),
        End::Protocol(reason) => format!("closed it: the peer broke the wire format: {reason}"),
        End::Silent(silent_for) => format!(
            "closed it after {} ms without a heartbeat; dialling again",
            silent_for.as_millis()
        ),
        End::Shutdown => "shutting down".to_owned(),
    }
}

impl Shared {
    /// Make `conn` the current connection of `net`, replacing (and closing) any previous one.
    fn install(
        &self,
        net: usize,
        conn: quinn::Connection,
        outbox: mpsc::Sender<Vec<u8>>,
        outbox_bytes: Arc<AtomicUsize>,
    ) -> u64 {
        let id = self.next_link_id.fetch_add(1, Ordering::Relaxed);
        let remote = conn.remote_address();
        let previous = {
            let mut state = lock(&self.nets[net].state);
            state.last_error = None;
            state.link.replace(Link {
                id,
                conn,
                outbox,
                outbox_bytes,
                since: Instant::now(),
                last_beat: None,
                last_counter: 0,
                silent: false,
            })
        };
        let name = &self.nets[net].name;
        match previous {
            Some(previous) => {
                previous
                    .conn
                    .close(CLOSE_REPLACED.into(), b"replaced by a newer connection");
                tracing::info!(
                    network = %name,
                    remote = %remote,
                    "network {name}: a new connection from {} replaces the previous one",
                    self.peer
                );
            }
            None => tracing::info!(
                network = %name,
                remote = %remote,
                "network {name} up: connected to {}",
                self.peer
            ),
        }
        id
    }

    /// Forget connection `id` of `net` if it is still the current one, and log why it ended.
    fn uninstall(&self, net: usize, id: u64, remote: SocketAddr, end: &End) {
        let reason = describe(end);
        let current = {
            let mut state = lock(&self.nets[net].state);
            if state.link.as_ref().is_some_and(|l| l.id == id) {
                state.link = None;
                if !matches!(end, End::Shutdown) {
                    state.last_error = Some(reason.clone());
                }
                true
            } else {
                false
            }
        };
        let name = &self.nets[net].name;
        if !current {
            tracing::debug!(network = %name, remote = %remote, "previous connection ended: {reason}");
            return;
        }
        match end {
            End::Shutdown => {
                tracing::info!(network = %name, remote = %remote, "network {name} closed: {reason}")
            }
            End::Protocol(_) => tracing::error!(
                network = %name,
                remote = %remote,
                "network {name} down: {reason}"
            ),
            End::Closed(_) | End::Silent(_) => tracing::warn!(
                network = %name,
                remote = %remote,
                "network {name} down: {reason}"
            ),
        }
    }

    /// A dial failed; logged when the reason changes, so that a peer down for an hour does not
    /// fill the log.
    fn dial_failed(&self, net: usize, reason: String) {
        let changed = {
            let mut state = lock(&self.nets[net].state);
            let changed = state.last_error.as_deref() != Some(reason.as_str());
            state.last_error = Some(reason.clone());
            changed
        };
        let name = &self.nets[net].name;
        let addr = self.nets[net].peer_addr;
        if changed {
            tracing::warn!(
                network = %name,
                remote = %addr,
                "network {name} down: cannot connect to {} at {addr}: {reason}",
                self.peer
            );
        } else {
            tracing::debug!(network = %name, remote = %addr, "cannot connect: {reason}");
        }
    }

    /// An incoming connection was refused. Logged as a warning when the remote or the reason
    /// changes, or [`REFUSAL_LOG_INTERVAL_MS`] after the last warning: a misconfigured node
    /// retrying ten times a second must not fill the log.
    fn refused(&self, net: usize, remote: SocketAddr, reason: String) {
        let name = &self.nets[net].name;
        let text = format!("refused a connection from {remote}: {reason}");
        let now = Instant::now();
        let warn = {
            let mut state = lock(&self.nets[net].state);
            if state.link.is_none() {
                state.last_error = Some(text.clone());
            }
            let repeated = state.last_refusal.as_ref().is_some_and(|(last, at)| {
                *last == text
                    && now.saturating_duration_since(*at)
                        < Duration::from_millis(REFUSAL_LOG_INTERVAL_MS)
            });
            if !repeated {
                state.last_refusal = Some((text.clone(), now));
            }
            !repeated
        };
        if warn {
            tracing::warn!(network = %name, remote = %remote, "network {name}: {text}");
        } else {
            tracing::debug!(network = %name, remote = %remote, "network {name}: {text}");
        }
    }

    /// A heartbeat arrived on connection `id` of `net`.
    fn heard(&self, net: usize, id: u64, beat: Beat, now: Instant) {
        {
            let mut state = lock(&self.nets[net].state);
            let Some(link) = state.link.as_mut().filter(|l| l.id == id) else {
                // A connection being replaced: the new one speaks for the peer.
                return;
            };
            if beat.counter <= link.last_counter {
                // Reordered behind a newer one: nothing new.
                return;
            }
            // Counters start at 1 on each connection: a gap after the first is beats lost.
            let gap = if link.last_counter == 0 {
                0
            } else {
                beat.counter - link.last_counter - 1
            };
            link.last_counter = beat.counter;
            link.last_beat = Some(now);
            if std::mem::take(&mut link.silent) {
                tracing::info!(
                    network = %self.nets[net].name,
                    "network {}: heartbeats from {} again",
                    self.nets[net].name,
                    self.peer
                );
            }
            state.received += 1;
            state.missed = state.missed.saturating_add(gap);
            state.last_heard = Some(now);
        }
        {
            let mut boot_id = lock(&self.peer_boot_id);
            if *boot_id != Some(beat.boot_id) {
                match *boot_id {
                    None => tracing::info!(
                        "first heartbeat from {}, boot id {:016x}",
                        self.peer,
                        beat.boot_id
                    ),
                    Some(old) => tracing::info!(
                        "{} restarted: boot id {old:016x}, now {:016x}",
                        self.peer,
                        beat.boot_id
                    ),
                }
                *boot_id = Some(beat.boot_id);
            }
        }
        self.heard.send_replace(Some(now));
    }

    /// How long connection `id` of `net` has been silent; logs the start of a silence once.
    fn check_silence(&self, net: usize, id: u64, now: Instant) -> Duration {
        let mut state = lock(&self.nets[net].state);
        let Some(link) = state.link.as_mut().filter(|l| l.id == id) else {
            return Duration::ZERO;
        };
        let silent_for = link.silent_for(now);
        if silent_for >= self.silent_after && !link.silent {
            link.silent = true;
            tracing::warn!(
                network = %self.nets[net].name,
                "network {} down: no heartbeat from {} for {} ms",
                self.nets[net].name,
                self.peer,
                silent_for.as_millis()
            );
        }
        silent_for
    }
}
