//! The witness process: the I/O shell around one [`Arbiter`] per module. It accepts the nodes'
//! connections, reads one request per stream, holds a claim while another node's lease runs,
//! makes every change of holder or recorded generation durable before answering, and logs
//! every grant that changes something, every refusal and every release.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mirrorkit_net::pki::NodeIdentity;
use mirrorkit_net::{NetError, TransportParams};
use quinn::{RecvStream, SendStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::arbiter::{gen_text, Arbiter, Claim, Decision, Durable, ReleaseDecision, Tag};
use crate::config::ServerConfig;
use crate::protocol::{decode_request, encode_reply, Reply, Request, MAX_FRAME_BYTES};
use crate::state::StateDir;
use crate::WitnessError;

/// How long a node may take to send its whole request once it opened the stream.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Server::shutdown`] waits for the connections' tasks to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Application error code of a stream or connection the witness ends for a protocol problem.
const CODE_PROTOCOL: u32 = 1;

/// One module: its arbiter, and a signal for the claims waiting on it when its holder releases.
struct Slot {
    arbiter: tokio::sync::Mutex<Arbiter>,
    released: Notify,
}

struct Shared {
    cluster: String,
    nodes: Vec<String>,
    state: StateDir,
    /// Time 0 of the arbiters' clock.
    start: Instant,
    modules: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn slot(&self, module: &str) -> Arc<Slot> {
        let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(modules.entry(module.to_owned()).or_insert_with(|| {
            Arc::new(Slot {
                arbiter: tokio::sync::Mutex::new(Arbiter::new(module)),
                released: Notify::new(),
            })
        }))
    }

    /// Make `durable` the durable state of `module` (blocking I/O off the async workers).
    async fn persist(self: &Arc<Self>, module: &str, durable: Durable) -> Result<(), String> {
        let shared = Arc::clone(self);
        let module = module.to_owned();
        tokio::task::spawn_blocking(move || shared.state.persist(&module, &durable))
            .await
            .map_err(|e| format!("the state write did not complete: {e}"))?
            .map_err(|e| e.to_string())
    }

    fn not_a_node(&self, node: &str) -> String {
        format!(
            "{node} is not one of the nodes of this witness (cluster {}, nodes {})",
            self.cluster,
            self.nodes.join(", ")
        )
    }
}

/// A running witness.
pub struct Server {
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("cluster", &self.shared.cluster)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Check the configuration, load the state (refusing a state file it cannot read), load the
    /// witness's certificate and start listening. Must be called within a tokio runtime.
    pub fn start(cfg: ServerConfig) -> Result<Server, WitnessError> {
        cfg.check()
            .map_err(|(field, reason)| WitnessError::ConfigField {
                path: "the witness configuration".to_owned(),
                field,
                reason,
            })?;
        let (state, loaded) = StateDir::open(&cfg.state_dir, &cfg.cluster)?;
        let identity =
            NodeIdentity::load(&cfg.certs, &cfg.name).map_err(|source| WitnessError::Identity {
                name: cfg.name.clone(),
                dir: cfg.certs.clone(),
                source: Box::new(source),
            })?;
        let endpoint = mirrorkit_net::endpoint(&identity, cfg.listen, &TransportParams::default())
            .map_err(|source| WitnessError::Listen {
                addr: cfg.listen,
                source: Box::new(source),
            })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| WitnessError::Listen {
                addr: cfg.listen,
                source: Box::new(NetError::Bind {
                    addr: cfg.listen,
                    source,
                }),
            })?;
        let mut modules = HashMap::new();
        for (module, durable) in loaded {
            match &durable.holder {
                Some(h) => info!(
                    module = %module,
                    holder = %h,
                    recorded = %gen_text(durable.recorded),
                    "module {module}: {h} held the primary role before this start; its lease of {} ms is honoured from now",
                    durable.lease_ms
                ),
                None => info!(
                    module = %module,
                    recorded = %gen_text(durable.recorded),
                    "module {module}: no holder, recorded generation {}",
                    gen_text(durable.recorded)
                ),
            }
            if let Some(h) = durable.holder.as_ref().filter(|h| !cfg.nodes.contains(h)) {
                warn!(module = %module, holder = %h, "module {module}: the persisted holder {h} is not a configured node");
            }
            modules.insert(
                module.clone(),
                Arc::new(Slot {
                    arbiter: tokio::sync::Mutex::new(Arbiter::restored(&module, durable)),
                    released: Notify::new(),
                }),
            );
        }
        let shared = Arc::new(Shared {
            cluster: cfg.cluster.clone(),
            nodes: cfg.nodes.clone(),
            state,
            start: Instant::now(),
            modules: Mutex::new(modules),
        });
        let (stop, stop_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), Arc::clone(&shared), stop_rx));
        info!(
            cluster = %cfg.cluster,
            name = %cfg.name,
            addr = %local_addr,
            state_dir = %shared.state.path().display(),
            "witness of cluster {} listening on {local_addr} for nodes {}",
            cfg.cluster,
            cfg.nodes.join(", ")
        );
        Ok(Server {
            local_addr,
            endpoint,
            stop,
            accept_task,
            shared,
        })
    }

    /// The address the witness listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop: close every connection, and wait (a few seconds at most) until no request is in
    /// progress, so that the state directory is free for another witness when this returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.endpoint.close(0u32.into(), b"witness shutting down");
        if let Err(e) = self.accept_task.await {
            error!("the witness's accept task failed: {e}");
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while Arc::strong_count(&self.shared) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if Arc::strong_count(&self.shared) > 1 {
            warn!("witness stopped with requests still in progress");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        info!(addr = %self.local_addr, "witness stopped");
    }
}

/// Run the witness until `shutdown` completes.
pub async fn serve(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WitnessError> {
    let server = Server::start(cfg)?;
    shutdown.await;
    server.shutdown().await;
    Ok(())
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        // Only the stop signal may interrupt `accept`: dropping it mid-handshake would close
        // the connection being accepted.
        let conn = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            conn = mirrorkit_net::accept(&endpoint) => conn,
        };
        while let Some(done) = conns.try_join_next() {
            if let Err(e) = done {
                if e.is_panic() {
                    error!("a witness connection task panicked: {e}");
                }
            }
        }
        match conn {
            Some(conn) => {
                conns.spawn(serve_connection(conn, Arc::clone(&shared)));
            }
            None => break,
        }
    }
    conns.shutdown().await;
}

async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let remote = conn.remote_address();
    let Some(node) = mirrorkit_net::peer_node_name(&conn) else {
        warn!(remote = %remote, "refused a connection from {remote}: its certificate names no node");
        conn.close(CODE_PROTOCOL.into(), b"no node name in the certificate");
        return;
    };
    let known = shared.nodes.contains(&node);
    if known {
        info!(node = %node, remote = %remote, "node {node} connected from {remote}");
    } else {
        warn!(
            node = %node,
            remote = %remote,
            "connection from {remote}: {}; its requests are refused",
            shared.not_a_node(&node)
        );
    }
    let node: Arc<str> = node.into();
    let mut streams = JoinSet::new();
    loop {
        let accepted = conn.accept_bi().await;
        while let Some(done) = streams.try_join_next() {
            if let Err(e) = done {
                if e.is_panic() {
                    error!(node = %node, "a witness request task panicked: {e}");
                }
            }
        }
        match accepted {
            Ok((send, recv)) => {
                streams.spawn(serve_stream(
                    Arc::clone(&shared),
                    Arc::clone(&node),
                    known,
                    send,
                    recv,
                ));
            }
            Err(e) => {
                info!(node = %node, remote = %remote, "node {node} at {remote} disconnected: {e}");
                break;
            }
        }
    }
    streams.shutdown().await;
}

async fn serve_stream(
    shared: Arc<Shared>,
    node: Arc<str>,
    known: bool,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let received = Instant::now();
    let frame = match tokio::time::timeout(REQUEST_READ_TIMEOUT, recv.read_to_end(MAX_FRAME_BYTES))
        .await
    {
        Err(_) => {
            warn!(node = %node, "request from {node} not complete after {REQUEST_READ_TIMEOUT:?}: stream dropped");
            let _ = send.reset(CODE_PROTOCOL.into());
            return;
        }
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            warn!(node = %node, "request from {node} longer than {MAX_FRAME_BYTES} bytes: refused");
            let reason = format!("request longer than {MAX_FRAME_BYTES} bytes");
            return answer(&node, send, Reply::Error { reason }).await;
        }
        Ok(Err(e)) => {
            debug!(node = %node, "request stream from {node} ended: {e}");
            return;
        }
        Ok(Ok(frame)) => frame,
    };
    let body = match decode_request(&frame) {
        Ok(b) => b,
        Err(e) => {
            warn!(node = %node, "malformed request from {node}: {e}");
            return answer(
                &node,
                send,
                Reply::Error {
                    reason: e.to_string(),
                },
            )
            .await;
        }
    };
    let tag = Tag {
        incarnation: body.incarnation,
        seq: body.seq,
    };
    let reply = match body.request {
        Request::Claim {
            module,
            op,
            current,
            history,
            force,
            lease_ms,
        } => {
            if !known {
                let reason = shared.not_a_node(&node);
                warn!(node = %node, module = %module, "claim of module {module} refused: {reason}");
                Reply::Refused { op, reason }
            } else {
                let claim = Claim {
                    current,
                    history,
                    force,
                    lease_ms,
                };
                let stopped = send.stopped();
                let held = on_claim(&shared, &node, &module, op, tag, &claim, received, stopped);
                match held.await {
                    Some(reply) => reply,
                    None => return,
                }
            }
        }
        Request::Release { module } => {
            if !known {
                let reason = shared.not_a_node(&node);
                warn!(node = %node, module = %module, "release of module {module} refused: {reason}");
                Reply::Error { reason }
            } else {
                on_release(&shared, &node, &module, tag).await
            }
        }
    };
    answer(&node, send, reply).await;
}

/// Write `reply` and finish the stream.
async fn answer(node: &str, mut send: SendStream, reply: Reply) {
    let frame = match encode_reply(&reply) {
        Ok(f) => f,
        Err(e) => {
            error!(node = %node, "cannot encode the reply {reply:?}: {e}");
            let _ = send.reset(CODE_PROTOCOL.into());
            return;
        }
    };
    if let Err(e) = send.write_all(&frame).await {
        debug!(node = %node, "cannot answer {node}: {e}");
        return;
    }
    let _ = send.finish();
}

/// Decide a claim; `None` if the node gave up waiting (stream stopped, connection lost).
#[allow(clippy::too_many_arguments)]
async fn on_claim(
    shared: &Arc<Shared>,
    node: &str,
    module: &str,
    op: u64,
    tag: Tag,
    claim: &Claim,
    received: Instant,
    stopped: impl Future<Output = Result<Option<quinn::VarInt>, quinn::StoppedError>>,
) -> Option<Reply> {
    let slot = shared.slot(module);
    tokio::pin!(stopped);
    // The time until which the claim is held (the blocking lease's expiry when first seen).
    let mut hold_until: Option<u64> = None;
    loop {
        let mut arb = slot.arbiter.lock().await;
        let now = shared.now_ms();
        let waited = hold_until.is_some_and(|t| now >= t);
        match arb.decide(node, tag, claim, now, waited) {
            Decision::Superseded => {
                debug!(module = %module, node = %node, op, "claim {op} of {node} superseded by a later request");
                return Some(Reply::Superseded { op });
            }
            Decision::Refuse(reason) => {
                warn!(
                    module = %module,
                    node = %node,
                    op,
                    generation = %gen_text(claim.current),
                    holder = arb.holder().unwrap_or("none"),
                    "module {module}: claim {op} of {node} refused: {reason}"
                );
                return Some(Reply::Refused { op, reason });
            }
            Decision::RetryAt(t) => {
                let until = *hold_until.get_or_insert(t);
                let holder = arb.holder().unwrap_or("none").to_owned();
                // Created under the lock: a release (also under the lock) cannot be missed.
                let released = slot.released.notified();
                drop(arb);
                info!(
                    module = %module,
                    node = %node,
                    op,
                    holder = %holder,
                    "module {module}: claim {op} of {node} waits for {holder}'s lease to end (in {} ms)",
                    until.saturating_sub(now)
                );
                tokio::select! {
                    () = tokio::time::sleep_until(shared.instant(until)) => {}
                    () = released => {}
                    _ = &mut stopped => {
                        info!(module = %module, node = %node, op, "module {module}: {node} gave up its waiting claim {op}");
                        return None;
                    }
                }
            }
            Decision::Grant { persist } => {
                let recorded_before = arb.recorded();
                if let Some(durable) = persist {
                    if let Err(e) = shared.persist(module, durable).await {
                        error!(module = %module, node = %node, "module {module}: cannot record the grant to {node}: {e}");
                        return Some(Reply::Refused {
                            op,
                            reason: format!("the witness cannot record the grant durably: {e}"),
                        });
                    }
                }
                let now = shared.now_ms();
                let granted_at = Instant::now();
                let previous = arb.apply_grant(node, tag, claim, now);
                let held_ms = u32::try_from(granted_at.duration_since(received).as_millis())
                    .unwrap_or(u32::MAX);
                let generation = gen_text(claim.current);
                if previous.as_deref() != Some(node) {
                    info!(
                        module = %module,
                        node = %node,
                        op,
                        generation = %generation,
                        previous = previous.as_deref().unwrap_or("none"),
                        forced = claim.force,
                        "module {module}: primary role granted to {node} (generation {generation}, previous holder {}, lease {} ms)",
                        previous.as_deref().unwrap_or("none"),
                        claim.lease_ms
                    );
                } else if recorded_before != claim.current {
                    info!(
                        module = %module,
                        node = %node,
                        op,
                        generation = %generation,
                        "module {module}: {node} now holds generation {generation} (was {})",
                        gen_text(recorded_before)
                    );
                } else {
                    debug!(module = %module, node = %node, op, "module {module}: lease of {node} renewed");
                }
                return Some(Reply::Granted {
                    op,
                    lease_ms: claim.lease_ms,
                    held_ms,
                });
            }
        }
    }
}

async fn on_release(shared: &Arc<Shared>, node: &str, module: &str, tag: Tag) -> Reply {
    let slot = shared.slot(module);
    let mut arb = slot.arbiter.lock().await;
    let released = Reply::Released {
        module: module.to_owned(),
    };
    match arb.release(node, tag) {
        ReleaseDecision::Superseded => {
            debug!(module = %module, node = %node, "release by {node} superseded by a later request");
            released
        }
        ReleaseDecision::Ignore => {
            debug!(module = %module, node = %node, "module {module}: release by {node}, which does not hold it: nothing to do");
            released
        }
        ReleaseDecision::Release { persist } => {
            let generation = gen_text(persist.recorded);
            if let Err(e) = shared.persist(module, persist).await {
                error!(module = %module, node = %node, "module {module}: cannot record the release by {node}: {e}");
                return Reply::Error {
                    reason: format!("the witness cannot record the release durably: {e}"),
                };
            }
            arb.apply_release(node, tag);
            slot.released.notify_waiters();
            info!(
                module = %module,
                node = %node,
                generation = %generation,
                "module {module}: {node} released the primary role (recorded generation {generation})"
            );
            released
        }
    }
}
