//! The node's witness client: claims, renewals and releases of the primary role per module, and
//! the [`WitnessEvent`]s the module's state machine waits for.
//!
//! Semantics (those of the simulated client in `crates/cluster/tests/sim`):
//! - a claim is sent at once (or as soon as the connection is up); its first grant emits
//!   `Granted{op}` once; from then on the client holds the grant and renews it by itself every
//!   `lease_ms / 4` (same claim: same op and generations);
//! - while holding, the client keeps a deadline: `sent_at + held_ms + lease_ms − margin` of the
//!   latest granted request, `sent_at` taken before sending it (the witness counts its lease from
//!   its own decision, later), `held_ms` how long the witness held the request before deciding,
//!   and `margin = max(100 ms, lease_ms / 10)` for clock-rate differences and the daemon's own
//!   delay. If the deadline passes (renewals unanswered, link down), `Unreachable{op}` is emitted
//!   at the deadline and renewals stop: the node fences itself before the witness may grant the
//!   other node;
//! - a refusal (of the claim or of a renewal), or an error answer, emits `Refused{op, reason}`
//!   and stops renewals;
//! - a claim unanswered within `lease_ms + 2000 ms` (the witness may hold it for up to a lease)
//!   emits `Unreachable{op}`;
//! - a new claim of the same module replaces the previous one (a grant already held carries
//!   over, with its deadline, until the new claim is answered); nothing more is emitted for the
//!   replaced op. `release` stops renewals, forgets the claim and sends a release, best effort;
//!   nothing more is emitted for the released op.
//!
//! At most one of `Refused` / `Unreachable` is emitted per op, and nothing after it. A grant
//! that arrives after the deadline it allows (a reply delayed by more than the lease) emits
//! `Unreachable` instead of `Granted`.
//!
//! One QUIC connection to the witness, re-established [`RECONNECT_DELAY`] after it breaks, and
//! at once when a renewal goes unanswered for a third of the lease (the witness never holds its
//! holder's renewals, so the connection is dead: a restarted witness cannot reset the old
//! connection, and QUIC's idle timeout is longer than a lease). Requests carry the client's
//! incarnation and a sequence number, so that the witness never applies a request after a
//! later one of the same client (QUIC streams are not ordered with respect to each other).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use mirrorkit_cluster::generation::GenId;
use mirrorkit_cluster::machine::{OpId, WitnessEvent};
use mirrorkit_net::pki::NodeIdentity;
use mirrorkit_net::TransportParams;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::protocol::{
    check_lease, check_module_name, decode_reply, encode_request, Reply, Request, RequestBody,
    MAX_FRAME_BYTES, MAX_HISTORY,
};

/// Delay before dialling again after a connection broke or an attempt failed.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// A claim may go unanswered for its lease plus this long (the witness may hold it for up to a
/// lease) before it is reported `Unreachable`.
pub const CLAIM_GRACE: Duration = Duration::from_millis(2000);

/// Smallest safety margin taken off a lease.
pub const MIN_MARGIN: Duration = Duration::from_millis(100);

/// The safety margin taken off a lease of `lease`: `max(100 ms, lease / 10)`.
pub fn margin(lease: Duration) -> Duration {
    MIN_MARGIN.max(lease / 10)
}

/// How often a held grant is renewed.
fn renew_interval(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(10))
}

/// A renewal unanswered this long means a dead connection (the witness never holds its
/// holder's renewals): the client dials again at once rather than wait for QUIC's idle timeout,
/// longer than a lease (a restarted witness cannot reset the old connection).
fn renewal_timeout(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(100))
}

enum Command {
    Claim {
        module: String,
        op: OpId,
        current: Option<GenId>,
        history: Vec<GenId>,
        force: bool,
        lease_ms: u32,
    },
    Release {
        module: String,
    },
    Shutdown,
}

/// The node's witness client. Its methods never block; its tasks run until [`shutdown`]
/// (or until the value is dropped).
///
/// [`shutdown`]: WitnessClient::shutdown
#[derive(Debug)]
pub struct WitnessClient {
    tx: mpsc::UnboundedSender<Command>,
}

impl WitnessClient {
    /// Start the client of the node `identity` for the witness at `witness_addr`, whose
    /// certificate names `witness_name`. Events are sent on `events` as `(module, event)`.
    /// Must be called within a tokio runtime.
    pub fn start(
        identity: NodeIdentity,
        witness_addr: SocketAddr,
        witness_name: String,
        events: mpsc::UnboundedSender<(String, WitnessEvent)>,
    ) -> WitnessClient {
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            identity,
            addr: witness_addr,
            name: witness_name,
            events,
            incarnation: random_u64(),
            seq: 0,
            endpoint: None,
            link: None,
            next_link: 0,
            connecting: None,
            closed: None,
            reconnect_at: None,
            failures: 0,
            claims: HashMap::new(),
            pending_release: BTreeSet::new(),
            requests: JoinSet::new(),
            next_req: 0,
        };
        tokio::spawn(driver.run(rx));
        WitnessClient { tx }
    }

    /// Claim (or confirm, for a new generation) the primary role of `module`, replacing any
    /// previous claim of it.
    pub fn claim(
        &self,
        module: &str,
        op: OpId,
        current: Option<GenId>,
        history: Vec<GenId>,
        force: bool,
        lease_ms: u32,
    ) {
        self.send(Command::Claim {
            module: module.to_owned(),
            op,
            current,
            history,
            force,
            lease_ms,
        });
    }

    /// Give up the primary role of `module`: stop renewing, forget the claim, tell the witness
    /// (best effort).
    pub fn release(&self, module: &str) {
        self.send(Command::Release {
            module: module.to_owned(),
        });
    }

    /// Stop: close the connection; no event is sent afterwards.
    pub fn shutdown(&self) {
        self.send(Command::Shutdown);
    }

    fn send(&self, cmd: Command) {
        if self.tx.send(cmd).is_err() {
            debug!("witness client already stopped: command dropped");
        }
    }
}

/// A per-process random number (no dependency on a random number generator crate).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct Link {
    id: u64,
    conn: quinn::Connection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The claim's first request (or a resend of it).
    Initial,
    Renewal,
    Release,
}

struct Outcome {
    module: String,
    op: OpId,
    req: u64,
    kind: Kind,
    /// The connection the request went on.
    link: u64,
    /// No answer within the request's time limit.
    timed_out: bool,
    sent_at: Instant,
    lease: Duration,
    result: Result<Reply, String>,
}

/// The current claim of one module.
struct ModuleClaim {
    op: OpId,
    current: Option<GenId>,
    history: Vec<GenId>,
    force: bool,
    lease_ms: u32,
    /// `Granted` not yet emitted.
    awaiting: bool,
    /// A grant is held (renewals run, the deadline applies).
    holding: bool,
    /// `Refused` or `Unreachable` was emitted: nothing more for this op.
    done: bool,
    /// While holding: the grant is lost at this instant.
    deadline: Option<Instant>,
    /// While awaiting: reported unreachable at this instant.
    claim_timeout: Instant,
    next_renew: Option<Instant>,
    /// While awaiting and no request is in flight: send again from then on.
    resend_at: Instant,
    /// The request id of the claim's request in flight, if any.
    in_flight: Option<u64>,
    tasks: Vec<AbortHandle>,
}

impl ModuleClaim {
    fn lease(&self) -> Duration {
        Duration::from_millis(u64::from(self.lease_ms))
    }

    fn abort_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.in_flight = None;
    }
}

struct Driver {
    identity: NodeIdentity,
    addr: SocketAddr,
    name: String,
    events: mpsc::UnboundedSender<(String, WitnessEvent)>,
    incarnation: u64,
    seq: u64,
    endpoint: Option<quinn::Endpoint>,
    link: Option<Link>,
    next_link: u64,
    connecting: Option<BoxFuture<Result<quinn::Connection, String>>>,
    closed: Option<BoxFuture<quinn::ConnectionError>>,
    reconnect_at: Option<Instant>,
    /// Connection attempts failed in a row.
    failures: u32,
    claims: HashMap<String, ModuleClaim>,
    /// Releases to send once connected (the module has no claim since).
    pending_release: BTreeSet<String>,
    requests: JoinSet<Outcome>,
    next_req: u64,
}

enum Wake {
    Command(Option<Command>),
    Done(Result<Outcome, tokio::task::JoinError>),
    Connected(Result<quinn::Connection, String>),
    Closed(quinn::ConnectionError),
    Timer,
}

async fn poll_opt<T>(f: &mut Option<BoxFuture<T>>) -> T {
    match f.as_mut() {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let now = Instant::now();
            self.run_due(now);
            self.maybe_connect(now);
            let wake_at = self.next_wake();
            let wake = tokio::select! {
                cmd = rx.recv() => Wake::Command(cmd),
                Some(done) = self.requests.join_next(), if !self.requests.is_empty() => Wake::Done(done),
                res = poll_opt(&mut self.connecting) => Wake::Connected(res),
                err = poll_opt(&mut self.closed) => Wake::Closed(err),
                () = sleep_opt(wake_at) => Wake::Timer,
            };
            match wake {
                Wake::Command(None) | Wake::Command(Some(Command::Shutdown)) => break,
                Wake::Command(Some(Command::Claim {
                    module,
                    op,
                    current,
                    history,
                    force,
                    lease_ms,
                })) => self.on_claim(module, op, current, history, force, lease_ms),
                Wake::Command(Some(Command::Release { module })) => self.on_release(module),
                Wake::Done(Ok(outcome)) => self.on_outcome(outcome),
                Wake::Done(Err(e)) => {
                    if e.is_panic() {
                        warn!("a witness request task panicked: {e}");
                    }
                }
                Wake::Connected(res) => {
                    self.connecting = None;
                    self.on_connected(res);
                }
                Wake::Closed(err) => {
                    self.closed = None;
                    self.on_closed(err);
                }
                Wake::Timer => {}
            }
        }
        self.requests.abort_all();
        if let Some(link) = self.link.take() {
            link.conn.close(0u32.into(), b"node shutting down");
        }
        if let Some(ep) = self.endpoint.take() {
            ep.close(0u32.into(), b"node shutting down");
        }
        debug!(witness = %self.name, "witness client stopped");
    }

    /// Send `ev`; `why` explains an `Unreachable` in the log.
    fn emit(&self, module: &str, ev: WitnessEvent, why: &str) {
        match &ev {
            WitnessEvent::Granted { op } => {
                info!(module = %module, op, witness = %self.name, "module {module}: the witness granted claim {op}");
            }
            WitnessEvent::Refused { op, reason } => {
                warn!(module = %module, op, witness = %self.name, "module {module}: the witness refused claim {op}: {reason}");
            }
            WitnessEvent::Unreachable { op } => {
                warn!(module = %module, op, witness = %self.name, addr = %self.addr, "module {module}: claim {op}: the witness {} at {} is unreachable: {why}", self.name, self.addr);
            }
        }
        if self.events.send((module.to_owned(), ev)).is_err() {
            debug!(module = %module, "witness event dropped: nobody listens");
        }
    }

    fn finish(&mut self, module: &str, ev: WitnessEvent, why: &str) {
        if let Some(c) = self.claims.get_mut(module) {
            c.done = true;
            c.awaiting = false;
            c.holding = false;
            c.abort_tasks();
        }
        self.emit(module, ev, why);
    }

    fn on_claim(
        &mut self,
        module: String,
        op: OpId,
        current: Option<GenId>,
        history: Vec<GenId>,
        force: bool,
        lease_ms: u32,
    ) {
        let now = Instant::now();
        self.pending_release.remove(&module);
        let previous = self.claims.remove(&module);
        let mut carried = None;
        if let Some(mut p) = previous {
            p.abort_tasks();
            if !p.done && p.holding {
                carried = Some((p.deadline, p.next_renew));
            }
        }
        let lease = Duration::from_millis(u64::from(lease_ms));
        let mut claim = ModuleClaim {
            op,
            current,
            history,
            force,
            lease_ms,
            awaiting: true,
            holding: carried.is_some(),
            done: false,
            deadline: carried.and_then(|c| c.0),
            claim_timeout: now + lease + CLAIM_GRACE,
            next_renew: carried.and_then(|c| c.1),
            resend_at: now,
            in_flight: None,
            tasks: Vec::new(),
        };
        let invalid = check_module_name(&module)
            .and_then(|()| check_lease(lease_ms))
            .and_then(|()| {
                if claim.history.len() > MAX_HISTORY {
                    Err(format!(
                        "a history of {} generations, at most {MAX_HISTORY}",
                        claim.history.len()
                    ))
                } else {
                    Ok(())
                }
            });
        if let Err(reason) = invalid {
            claim.done = true;
            claim.awaiting = false;
            claim.holding = false;
            self.claims.insert(module.clone(), claim);
            self.emit(
                &module,
                WitnessEvent::Refused {
                    op,
                    reason: format!("invalid claim: {reason}"),
                },
                "",
            );
            return;
        }
        debug!(module = %module, op, generation = ?current, force, lease_ms, "module {module}: claiming the primary role (op {op})");
        self.claims.insert(module.clone(), claim);
        self.send_claim(&module, Kind::Initial);
    }

    fn on_release(&mut self, module: String) {
        if let Some(mut c) = self.claims.remove(&module) {
            c.abort_tasks();
        }
        debug!(module = %module, "module {module}: releasing the primary role");
        if self.link.is_some() {
            self.send_release(&module);
        } else {
            self.pending_release.insert(module);
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Send `module`'s claim (a first request or a renewal), if connected.
    fn send_claim(&mut self, module: &str, kind: Kind) {
        let Some(link) = &self.link else {
            return;
        };
        let (conn, link) = (link.conn.clone(), link.id);
        let seq = self.next_seq();
        self.next_req += 1;
        let req = self.next_req;
        let Some(c) = self.claims.get_mut(module) else {
            return;
        };
        let body = RequestBody {
            incarnation: self.incarnation,
            seq,
            request: Request::Claim {
                module: module.to_owned(),
                op: c.op,
                current: c.current,
                history: c.history.clone(),
                force: c.force,
                lease_ms: c.lease_ms,
            },
        };
        let lease = c.lease();
        let op = c.op;
        let timeout = match kind {
            Kind::Renewal => renewal_timeout(lease),
            // The witness may hold a claim for up to a lease.
            _ => lease * 2 + CLAIM_GRACE * 2,
        };
        let module_owned = module.to_owned();
        // Taken before the request leaves: the witness's lease starts later than this.
        let sent_at = Instant::now();
        let handle = self.requests.spawn(async move {
            let (result, timed_out) =
                match tokio::time::timeout(timeout, exchange(&conn, &body)).await {
                    Ok(r) => (r, false),
                    Err(_) => (Err(format!("no answer within {timeout:?}")), true),
                };
            Outcome {
                module: module_owned,
                op,
                req,
                kind,
                link,
                timed_out,
                sent_at,
                lease,
                result,
            }
        });
        c.tasks.retain(|t| !t.is_finished());
        c.tasks.push(handle);
        if kind == Kind::Initial {
            c.in_flight = Some(req);
        }
    }

    fn send_release(&mut self, module: &str) {
        let Some(link) = &self.link else {
            return;
        };
        let (conn, link) = (link.conn.clone(), link.id);
        let seq = self.next_seq();
        self.next_req += 1;
        let req = self.next_req;
        let body = RequestBody {
            incarnation: self.incarnation,
            seq,
            request: Request::Release {
                module: module.to_owned(),
            },
        };
        let module = module.to_owned();
        let sent_at = Instant::now();
        self.requests.spawn(async move {
            let result = match tokio::time::timeout(CLAIM_GRACE, exchange(&conn, &body)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {CLAIM_GRACE:?}")),
            };
            Outcome {
                module,
                op: 0,
                req,
                kind: Kind::Release,
                link,
                timed_out: false,
                sent_at,
                lease: Duration::ZERO,
                result,
            }
        });
    }

    fn on_outcome(&mut self, o: Outcome) {
        if o.kind == Kind::Release {
            match o.result {
                Ok(Reply::Released { .. }) => {
                    debug!(module = %o.module, "module {}: the witness took the release", o.module);
                }
                Ok(other) => {
                    warn!(module = %o.module, "module {}: unexpected answer to a release: {other:?}", o.module);
                }
                Err(e) => {
                    debug!(module = %o.module, "module {}: release not delivered: {e}", o.module);
                }
            }
            return;
        }
        let now = Instant::now();
        if o.kind == Kind::Renewal && o.timed_out {
            self.drop_link(
                o.link,
                &format!(
                    "a renewal went unanswered for {:?}",
                    renewal_timeout(o.lease)
                ),
            );
        }
        let Some(c) = self.claims.get_mut(&o.module) else {
            return;
        };
        if c.in_flight == Some(o.req) {
            c.in_flight = None;
        }
        if c.op != o.op || c.done {
            return;
        }
        let module = o.module;
        let op = o.op;
        let failure = match o.result {
            Ok(Reply::Granted {
                op: granted,
                lease_ms,
                held_ms,
            }) if granted == op => {
                let lease = o.lease.min(Duration::from_millis(u64::from(lease_ms)));
                let span = (Duration::from_millis(u64::from(held_ms)) + lease)
                    .saturating_sub(margin(lease));
                let until = o.sent_at + span;
                let deadline = c.deadline.map_or(until, |d| d.max(until));
                c.deadline = Some(deadline);
                if deadline <= now {
                    // Granted too late to be of any use: the grant may already have run out.
                    debug!(module = %module, op, "module {module}: grant of claim {op} arrived after its deadline");
                    self.finish(
                        &module,
                        WitnessEvent::Unreachable { op },
                        "its grant arrived after the deadline it allowed",
                    );
                    return;
                }
                c.holding = true;
                if c.next_renew.is_none() {
                    c.next_renew = Some(now + renew_interval(c.lease()));
                }
                if std::mem::take(&mut c.awaiting) {
                    self.emit(&module, WitnessEvent::Granted { op }, "");
                }
                return;
            }
            Ok(Reply::Refused {
                op: refused,
                reason,
            }) if refused == op => {
                self.finish(&module, WitnessEvent::Refused { op, reason }, "");
                return;
            }
            Ok(Reply::Error { reason }) => {
                let reason = format!("the witness could not take the request: {reason}");
                self.finish(&module, WitnessEvent::Refused { op, reason }, "");
                return;
            }
            Ok(Reply::Superseded { .. }) => {
                // A later request of ours decides; resend if nothing else is on its way.
                debug!(module = %module, op, "module {module}: request superseded at the witness");
                None
            }
            Ok(other) => Some(format!("unexpected answer {other:?}")),
            Err(e) => Some(e),
        };
        if let Some(e) = &failure {
            debug!(module = %module, op, kind = ?o.kind, "module {module}: witness request failed: {e}");
        }
        if c.awaiting && c.in_flight.is_none() {
            let retry = if failure.is_some() {
                now + RECONNECT_DELAY
            } else {
                now
            };
            c.resend_at = retry;
            if failure.is_some() && retry >= c.claim_timeout {
                self.finish(
                    &module,
                    WitnessEvent::Unreachable { op },
                    "the request failed and no time is left to send it again",
                );
            }
        }
    }

    /// Fire what is due at `now`: lost grants, claim timeouts, renewals, resends.
    fn run_due(&mut self, now: Instant) {
        let modules: Vec<String> = self.claims.keys().cloned().collect();
        let connected = self.link.is_some();
        for module in modules {
            let Some(c) = self.claims.get_mut(&module) else {
                continue;
            };
            if c.done {
                continue;
            }
            let op = c.op;
            if c.holding && c.deadline.is_some_and(|d| d <= now) {
                self.finish(
                    &module,
                    WitnessEvent::Unreachable { op },
                    "its renewals went unanswered and the grant runs out now",
                );
                continue;
            }
            if c.awaiting && c.claim_timeout <= now {
                let waited = c.lease() + CLAIM_GRACE;
                self.finish(
                    &module,
                    WitnessEvent::Unreachable { op },
                    &format!("the claim went unanswered for {waited:?}"),
                );
                continue;
            }
            let mut renew = false;
            if c.holding && c.next_renew.is_some_and(|t| t <= now) {
                c.next_renew = Some(now + renew_interval(c.lease()));
                renew = connected;
            }
            let resend = connected && c.awaiting && c.in_flight.is_none() && c.resend_at <= now;
            if resend {
                self.send_claim(&module, Kind::Initial);
            } else if renew {
                self.send_claim(&module, Kind::Renewal);
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let connected = self.link.is_some();
        let mut at: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        for c in self.claims.values().filter(|c| !c.done) {
            if c.holding {
                consider(c.deadline);
                consider(c.next_renew);
            }
            if c.awaiting {
                consider(Some(c.claim_timeout));
                if connected && c.in_flight.is_none() {
                    consider(Some(c.resend_at));
                }
            }
        }
        if self.link.is_none() && self.connecting.is_none() {
            consider(self.reconnect_at);
        }
        at
    }

    fn maybe_connect(&mut self, now: Instant) {
        if self.link.is_some()
            || self.connecting.is_some()
            || self.reconnect_at.is_some_and(|t| t > now)
        {
            return;
        }
        if self.endpoint.is_none() {
            let bind = if self.addr.is_ipv4() {
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
            } else {
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
            };
            match mirrorkit_net::endpoint(&self.identity, bind, &TransportParams::default()) {
                Ok(ep) => self.endpoint = Some(ep),
                Err(e) => {
                    self.connect_failed(now, format!("cannot create the QUIC endpoint: {e}"));
                    return;
                }
            }
        }
        let Some(ep) = self.endpoint.clone() else {
            return;
        };
        let (addr, name) = (self.addr, self.name.clone());
        self.connecting = Some(Box::pin(async move {
            mirrorkit_net::connect(&ep, addr, &name)
                .await
                .map_err(|e| e.to_string())
        }));
    }

    fn connect_failed(&mut self, now: Instant, reason: String) {
        self.failures += 1;
        if self.failures == 1 {
            warn!(witness = %self.name, addr = %self.addr, "cannot connect to the witness {} at {}: {reason}; retrying every {RECONNECT_DELAY:?}", self.name, self.addr);
        } else {
            debug!(witness = %self.name, addr = %self.addr, "cannot connect to the witness: {reason}");
        }
        self.reconnect_at = Some(now + RECONNECT_DELAY);
    }

    fn on_connected(&mut self, res: Result<quinn::Connection, String>) {
        let now = Instant::now();
        let conn = match res {
            Ok(c) => c,
            Err(e) => return self.connect_failed(now, e),
        };
        self.failures = 0;
        self.next_link += 1;
        info!(witness = %self.name, addr = %self.addr, "connected to the witness {} at {}", self.name, self.addr);
        let watched = conn.clone();
        self.closed = Some(Box::pin(async move { watched.closed().await }));
        self.link = Some(Link {
            id: self.next_link,
            conn,
        });
        for module in std::mem::take(&mut self.pending_release) {
            self.send_release(&module);
        }
        let modules: Vec<String> = self.claims.keys().cloned().collect();
        for module in modules {
            let Some(c) = self.claims.get_mut(&module) else {
                continue;
            };
            if c.done {
                continue;
            }
            if c.awaiting && c.in_flight.is_none() {
                self.send_claim(&module, Kind::Initial);
            } else if c.holding {
                c.next_renew = Some(now + renew_interval(c.lease()));
                self.send_claim(&module, Kind::Renewal);
            }
        }
    }

    /// Close the connection `id` if it is the current one, and dial again at once.
    fn drop_link(&mut self, id: u64, why: &str) {
        if self.link.as_ref().is_none_or(|l| l.id != id) {
            return;
        }
        warn!(witness = %self.name, addr = %self.addr, "connection to the witness {} at {}: {why}; dialling again", self.name, self.addr);
        if let Some(l) = self.link.take() {
            l.conn.close(0u32.into(), b"unresponsive");
        }
        self.closed = None;
        for c in self.claims.values_mut() {
            c.in_flight = None;
        }
        self.reconnect_at = None;
    }

    fn on_closed(&mut self, err: quinn::ConnectionError) {
        let id = self.link.as_ref().map_or(0, |l| l.id);
        warn!(witness = %self.name, addr = %self.addr, link = id, "connection to the witness {} at {} lost: {err}; reconnecting", self.name, self.addr);
        self.link = None;
        for c in self.claims.values_mut() {
            c.in_flight = None;
        }
        self.reconnect_at = Some(Instant::now() + RECONNECT_DELAY);
    }
}

/// One request and its answer on a new stream of `conn`.
async fn exchange(conn: &quinn::Connection, body: &RequestBody) -> Result<Reply, String> {
    let frame = encode_request(body).map_err(|e| format!("cannot encode the request: {e}"))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| format!("cannot open a stream: {e}"))?;
    send.write_all(&frame)
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    send.finish()
        .map_err(|e| format!("cannot finish the request: {e}"))?;
    let bytes = recv
        .read_to_end(MAX_FRAME_BYTES)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    decode_reply(&bytes).map_err(|e| format!("unreadable answer: {e}"))
}
