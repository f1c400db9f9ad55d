//! The module state machine: one module on one node. Events in, actions out; no I/O, no clock
//! (the time of each event is passed in), no threads. A shell (the daemon) turns the actions
//! into scripts, mounts, virtual IPs, messages and timers, and their results into events;
//! `tests/sim` drives two machines (and a witness) through a simulated network instead.
//!
//! # States
//!
//! | state | meaning | entered when | left when |
//! | --- | --- | --- | --- |
//! | STOP | module stopped here | boot; `stop`, `forcestop`; a failed promotion or restart | `start`, `restart`, `second`, `prim` |
//! | STARTING | started, choosing a role | `start`, `restart` from STOP/WAIT/SECOND | the peer's status arrives, or `peer_wait_ms` passes |
//! | WAIT | started, may not be primary now; the reason says why and what to do | stale or outdated data (see below); split brain; the peer has newer data; `second`; witness refusal; this node's own check (network) fails | the cause goes (re-decided on every peer status and every `retry_ms`); `prim`; `stop` |
//! | PROMOTING | becoming primary: the peer's consent (if in view), the witness's grant, persist the new generation, the witness's confirmation, `prestart` (unless it ran as secondary), mount, `start_both` (likewise)+`start_prim`, virtual IP | elected with the peer in view; failover; alone on trusted data; the peer handed over; `prim` | every step done (ALONE or PRIM); a step failed (DEMOTING, then STOP); the witness refused, or the peer claimed too and won (WAIT, SECOND, or decided again) |
//! | ALONE | primary, peer not in sync: changes recorded for its resync | promotion done; the mirror's session with the peer ended (after a new generation is persisted and, with a witness, confirmed) | the mirror reports the peer in sync (PRIM); demotion |
//! | PRIM | primary, peer in sync | the mirror reports the peer in sync | the session ends (ALONE); demotion |
//! | RESTARTING | primary, application restarting in place | `restart` on a primary; a checker with policy restart, or policy failover when the peer cannot take over | the scripts ran (ALONE/PRIM); they failed (DEMOTING, then STOP) |
//! | DEMOTING | leaving the primary role: release the virtual IP, `stop_prim`, (when the module stops here: `stop_both`), barrier (handover only), unmount, (stopping: `poststop`), release the witness. Also a secondary or waiting node that stops after its own scripts ran: `stop_both`, the receiver stopped, `poststop` | `stop`; `swap`; `second`; failback; a checker's failover; this node's own check failing with the peer able to take over; the witness grant lost (after `Fence`); yielding to another primary; a failed promotion | the steps ran (each failure logged, an unmount failure fenced): STOP, SECOND, WAIT, or decided again |
//! | SECOND | secondary: `prestart`, then the receiver running, then `start_both` (decisions wait for these scripts); in sync, resyncing (with progress), or waiting for the primary's mirror | the peer is primary and its data is newer or equal; after a handover | the peer is lost (failover if this copy was in sync, else WAIT); the peer stops being primary (decided again); `stop`; `swap` |
//!
//! # Decisions
//!
//! - **With the peer in view**, nobody primary: both nodes run the same election on the two
//!   data states (`elect`): newer data leads; on equal data the default primary if failback is
//!   on, else the node that was primary, else the default primary, else the smaller name; in a
//!   split brain where one side already yielded (it is `outdated`), the other. Anything else
//!   (split brain, data that only a stopped or unwilling node holds) leads to WAIT. Statuses
//!   may be out of date, so the elected node announces its claim (PROMOTING) and commits only
//!   once a status of the peer that has seen the claim shows the peer not claiming too.
//! - **The peer is primary**: follow it (SECOND) if its data is newer or equal, else WAIT
//!   (split brain). A node that waits for, or follows, a peer ahead of it records that durably
//!   (`outdated`), so that a restart does not make it lead alone on its older copy. The resync
//!   itself is the mirror's; this machine persists the copy as inconsistent before the first
//!   resync message is applied and as the source's generation after the last, and refuses a
//!   resync from older or divergent data.
//! - **The peer is lost**: a secondary that was in sync with a primary whose last status said
//!   so (same generation, peer in sync) fails over. Any other node leads alone only on data it
//!   can trust: consistent, last held as primary, not outdated, its peer *not* in sync then
//!   (else the peer may have taken over since; with a witness, that doubt is the witness's to
//!   lift: it grants this node only if no other data may have acknowledged writes since), and
//!   not older than what it last saw of the peer. Otherwise WAIT, with the reason, until the peer returns or an operator forces it
//!   (`prim`, logged with who and when).
//! - **The mirror's session ends**: the primary starts a new generation before it acknowledges
//!   anything the peer misses, even if the peer was only resyncing (it may have reached this
//!   generation unheard). The record keeps its base, so resyncs stay incremental. The held
//!   writes are released once the witness recorded the new generation or, without a witness
//!   and with the peer in view, once a status of the peer has seen it (so that the peer never
//!   fails over believing this node still in the old one); a peer that is lost meanwhile
//!   cannot hear anything: that is a partition.
//! - **Both primary** (a cut link healed, or simultaneous claims): a claim that has not yet
//!   persisted its generation yields; of two that have, the one with older data yields, else
//!   (split brain) the non-preferred one. It stops its application and keeps its data untouched
//!   (WAIT): nothing is merged. `prim` on the survivor starts a fresh generation that
//!   supersedes the other's; the other then resyncs from it in full with its divergent files
//!   kept aside.
//! - **Witness** (`Config::witness`): every promotion, and every new generation of a running
//!   primary, waits for the witness's grant, first for the generation held, then for the new
//!   one, before anything is acknowledged. A primary whose grant is lost fences itself
//!   (`Fence`: no more acknowledged writes, no virtual IP) before the witness may grant the
//!   peer, then demotes to WAIT. One exception keeps a witness outage from stopping a
//!   healthy cluster: a PRIM/ALONE whose witness is *unreachable* while the peer is in view
//!   (and not claiming) goes on **unarbitrated** (the peer takes over only with a grant, which
//!   it asks for only once it lost this node), retries the witness every `retry_ms`, and
//!   fences itself at the first sign of losing the peer: `PeerFading` (silence shorter than
//!   the peer's own detection time), `PeerLost`, the peer claiming, or a new generation to
//!   confirm. Without a witness, a cut link makes both nodes primary (the
//!   secondary fails over, the primary goes on alone); the split brain is reported when the
//!   link heals and resolved as above.
//! - **Failback** (`Config::failback`): a primary that is not the default primary hands over to
//!   it as soon as it is in sync again, unless this primary term began with a handover (an
//!   operator's `swap` is not undone).
//! - **Checkers**: an application checker's `Restart` restarts in place; its `Failover` hands
//!   the application to a peer that can take over (a secondary in sync, eligible), else
//!   restarts in place and says why: never onto stale data, never a stop on its own. A node
//!   checker (`Event::NodeHealth`) makes this node ineligible while it fails: it does not take
//!   the primary role (not even by failover), and as PRIM it hands over as soon as the peer can
//!   take over (else it stays, with a warning in its reason).
//!
//! # Verbs and the states they end in
//!
//! Each verb gets exactly one `Action::VerbDone`: `Ok(state)` or `Err(reason)`.
//!
//! | verb | from | ends in |
//! | --- | --- | --- |
//! | `start` | STOP | ALONE, PRIM, SECOND or WAIT (with reason); STOP (`Err`) if the promotion failed |
//! | `stop` | any | STOP. A PRIM hands over to a SECOND in sync (after a barrier): the peer takes over |
//! | `restart` | primary | ALONE/PRIM (application restarted in place) |
//! | `restart` | STOP, STARTING, WAIT, SECOND | as `start` |
//! | `swap` | PRIM with the peer SECOND in sync | SECOND, once the peer is primary (`Err` if it did not take over within `swap_timeout_ms`) |
//! | `swap` | SECOND in sync with the peer PRIM | ALONE/PRIM |
//! | `prim` | STOP, STARTING, WAIT, SECOND (or an automatic promotion not yet committed), with the peer not primary | ALONE/PRIM on this node's data, whatever its age (`force_lead`) |
//! | `prim` | ALONE/PRIM in a split brain | unchanged; this node's data, in a fresh generation, now supersedes the peer's |
//! | `second` | STOP, STARTING, WAIT | SECOND if the peer is primary, else WAIT until it is |
//! | `second` | PRIM with the peer in sync / ALONE | SECOND (handover) / WAIT |
//! | `forcestop` | any | STOP at once, without scripts |
//!
//! A verb that cannot apply gets `Err` at once and changes nothing; while a verb is in progress
//! only `stop` and `forcestop` are accepted (they interrupt it).
//!
//! # Contract with the shell
//!
//! The actions of one `handle` call are performed in order; those without an `op` are complete
//! before the next starts (a `Persist` is durable, a `Fence` in force, `StopReceiver` done);
//! those with an `op` answer with `Event::Done` (a late or repeated answer is ignored, and every
//! wait has its own deadline here). The mirror reports in order, acknowledges nothing the peer
//! lacks between `PeerOutOfSync` and `AllowAlone`, reads the persisted data state when it opens
//! a session, and after `Unmount` reports nothing more. The witness client renews a granted
//! claim by itself and reports its loss no later than the lease it was granted.

mod elect;
mod events;
#[cfg(test)]
mod tests;
mod types;
mod verbs;

pub use types::*;

use crate::generation::{compare, DataState, GenId, Relation, Role};
use elect::{AloneBlock, Blocked, Candidate, Elected};

/// One asynchronous step the machine waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The peer, in view, acknowledges this node's claim (a status that has seen it).
    Consent,
    Claim,
    Confirm,
    Mount,
    Vip,
    StartScripts,
    StopScripts,
    Barrier,
    Unmount,
    ReleaseVip,
    /// The node's own scripts (`prestart`, `start_both`; `stop_both`, `poststop`): run where
    /// the module starts or stops, whatever its role.
    Prestart,
    StartBoth,
    StopBoth,
    Poststop,
}

impl Step {
    /// A step that runs scripts: its deadline is the script timeout.
    fn runs_scripts(self) -> bool {
        matches!(
            self,
            Step::StartScripts
                | Step::StopScripts
                | Step::Prestart
                | Step::StartBoth
                | Step::StopBoth
                | Step::Poststop
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Awaiting {
    step: Step,
    op: OpId,
}

#[derive(Clone, Debug)]
struct Promotion {
    why: String,
    forced: bool,
    /// The sequence number of the status that announced the claim.
    consent_seq: u64,
    supersede: Option<GenId>,
    /// The primary generation is persisted: this node may have acknowledged writes.
    committed: bool,
    awaiting: Option<Awaiting>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Barrier {
    NotWanted,
    Wanted,
    Passed,
    Failed,
}

/// Where a demotion leads.
#[derive(Clone, Debug)]
enum Goal {
    Stop(String),
    /// SECOND, with the peer taking over (needs the barrier).
    Handover,
    Wait(String),
    /// Decide again (after yielding to another primary).
    Decide,
    /// A promotion or restart failed: STOP with this reason.
    Failed(String),
}

#[derive(Clone, Debug)]
struct Demotion {
    goal: Goal,
    barrier: Barrier,
    awaiting: Option<Awaiting>,
}

#[derive(Clone, Debug)]
enum Phase {
    Stop,
    Starting { deadline_ms: u64 },
    Wait,
    Promoting(Promotion),
    Alone,
    Prim,
    Restarting(Awaiting),
    Demoting(Demotion),
    Second,
}

/// What this node may hold (set when asked for, cleared once released): as primary (`app`,
/// `mount`, `vip`), and whatever its role (`pre`: `prestart` ran, `poststop` is owed; `both`:
/// `start_both` ran, `stop_both` is owed).
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    app: bool,
    mount: bool,
    vip: bool,
    pre: bool,
    both: bool,
}

impl Held {
    /// Anything of the primary role.
    fn any(self) -> bool {
        self.app || self.mount || self.vip
    }

    /// The node's own scripts ran: stopping the module here owes their stop scripts.
    fn node(self) -> bool {
        self.pre || self.both
    }
}

/// Whether the mirror may acknowledge writes the peer misses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    Open,
    /// With a witness: checking the grant before a new generation is persisted.
    Check(OpId),
    /// With a witness: the new generation is persisted; waiting for the witness to record it.
    Confirm(OpId),
    /// Without a witness, the peer in view: the new generation is persisted and announced in
    /// the status numbered `seq`; waiting for a status of the peer that has seen it, so that
    /// the peer never fails over believing this node still in its old generation.
    Tell {
        op: OpId,
        seq: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SwapSide {
    Giving,
    Taking,
}

#[derive(Clone, Debug)]
struct Pending {
    verb: Verb,
    who: String,
    swap: Option<SwapSide>,
}

#[derive(Clone, Debug, Default)]
struct PeerView {
    /// The heartbeat layer hears the peer.
    seen: bool,
    /// `status` arrived since the peer was last lost.
    fresh: bool,
    status: Option<PeerStatus>,
}

impl PeerView {
    fn reachable(&self) -> Option<&PeerStatus> {
        if self.seen && self.fresh {
            self.status.as_ref()
        } else {
            None
        }
    }
}

/// The state machine of one module on one node. See the module documentation.
#[derive(Clone, Debug)]
pub struct Machine {
    cfg: Config,
    /// As persisted: every change goes out as `Action::Persist` before anything relies on it.
    data: DataState,
    boot: u64,
    rng: u64,
    next_op: OpId,
    phase: Phase,
    reason: String,
    since_ms: u64,
    progress: Option<Progress>,
    split_brain: bool,
    peer: PeerView,
    pending: Option<Pending>,
    /// Started with `second`: never leads until it has followed a primary.
    second_only: bool,
    /// A node checker fails (`Event::NodeHealth`): not eligible while it does.
    health_block: Option<String>,
    /// The peer was lost while this secondary held every write it acknowledged.
    failover_eligible: bool,
    /// A failed claim: no new promotion attempt before this time (with its reason).
    hold_off: Option<(u64, String)>,
    held: Held,
    /// Secondary: a script of the node's own half (`prestart`, `start_both`) under way.
    /// Decisions wait for it (`deferred`: one was asked for meanwhile).
    node_step: Option<Awaiting>,
    deferred: bool,
    /// A `Fence` is in force on the mount.
    fenced: bool,
    receiver: bool,
    /// Primary: the mirror reports the peer in sync. Secondary: the session is in sync.
    in_sync: bool,
    /// Secondary: this copy reached the primary's data and no resync has begun since (the
    /// basis of failover; survives the end of the session).
    synced: bool,
    gate: Gate,
    witness_held: bool,
    witness_op: Option<OpId>,
    /// With a witness: primary, the witness's grant lost while the peer is in view. The peer
    /// cannot take over without the witness either; this node leaves at the first sign of
    /// losing the peer (`PeerFading`, `PeerLost`, the peer claiming, a new generation).
    unarbitrated: bool,
    /// `PeerFading` came and no status of the peer since: it may be about to declare this
    /// node lost.
    peer_fading: bool,
    handover: bool,
    /// This primary term may fail back (it did not begin with a handover).
    failback_ok: bool,
    swap_deadline_ms: Option<u64>,
    retry_at_ms: Option<u64>,
    sent: Option<PeerStatus>,
    seq: u64,
}

fn gen_text(g: Option<GenId>) -> String {
    g.map_or_else(|| "none".to_owned(), |g| g.to_string())
}

fn describe(d: &DataState) -> String {
    let role = match d.role {
        Role::None => "never primary nor secondary",
        Role::Primary => "last held as primary",
        Role::Secondary => "last held as secondary",
    };
    format!(
        "generation {}, {}, {}",
        gen_text(d.current),
        if d.consistent {
            "consistent"
        } else {
            "incomplete (interrupted resync)"
        },
        role
    )
}

fn secs(ms: u64) -> String {
    format!("{} s", ms.div_ceil(1000))
}

impl Machine {
    /// A machine for `cfg.module` on `cfg.node`, with the data state persisted on this node
    /// (`DataState::default()` on a new node) and a random `seed` (generation ids, boot id).
    /// The machine starts in STOP; send `Event::Booted` first.
    pub fn new(cfg: Config, data: DataState, seed: u64) -> Machine {
        let mut m = Machine {
            cfg,
            data,
            boot: 0,
            rng: seed,
            next_op: 1,
            phase: Phase::Stop,
            reason: "node started; module stopped".to_owned(),
            since_ms: 0,
            progress: None,
            split_brain: false,
            peer: PeerView::default(),
            pending: None,
            second_only: false,
            health_block: None,
            failover_eligible: false,
            hold_off: None,
            held: Held::default(),
            node_step: None,
            deferred: false,
            fenced: false,
            receiver: false,
            in_sync: false,
            synced: false,
            gate: Gate::Open,
            witness_held: false,
            witness_op: None,
            unarbitrated: false,
            peer_fading: false,
            handover: false,
            failback_ok: true,
            swap_deadline_ms: None,
            retry_at_ms: None,
            sent: None,
            seq: 0,
        };
        m.boot = m.random();
        m
    }

    /// A module file changed while the module runs: take the settings that may change at any
    /// moment (preferences, timeouts); `module`, `node`, `peer` and `witness` stay as they are.
    /// They apply to the next decision.
    pub fn reconfigure(&mut self, cfg: &Config) {
        self.cfg.default_primary = cfg.default_primary.clone();
        self.cfg.failback = cfg.failback;
        self.cfg.peer_wait_ms = cfg.peer_wait_ms;
        self.cfg.script_timeout_ms = cfg.script_timeout_ms;
        self.cfg.step_timeout_ms = cfg.step_timeout_ms;
        self.cfg.swap_timeout_ms = cfg.swap_timeout_ms;
        self.cfg.retry_ms = cfg.retry_ms;
        self.cfg.status_resend_ms = cfg.status_resend_ms;
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The data state as last persisted.
    pub fn data(&self) -> &DataState {
        &self.data
    }

    pub fn state(&self) -> StateKind {
        match self.phase {
            Phase::Stop => StateKind::Stop,
            Phase::Starting { .. } => StateKind::Starting,
            Phase::Wait => StateKind::Wait,
            Phase::Promoting(_) => StateKind::Promoting,
            Phase::Alone => StateKind::Alone,
            Phase::Prim => StateKind::Prim,
            Phase::Restarting(_) => StateKind::Restarting,
            Phase::Demoting(_) => StateKind::Demoting,
            Phase::Second => StateKind::Second,
        }
    }

    /// What the console and the CLI show.
    pub fn status(&self) -> Status {
        let mut reason = self.reason.clone();
        if let (Phase::Second, Some(r)) = (&self.phase, self.not_eligible_reason()) {
            if self.health_block.is_some() {
                reason.push_str(&format!(". NOT ELIGIBLE to take over: {r}"));
            }
        }
        if let Some(a) = self.node_step {
            let script = if a.step == Step::Prestart {
                "prestart"
            } else {
                "start_both"
            };
            reason.push_str(&format!(
                " (this node's {script} script runs: it decides nothing, not even a failover, until it ends)"
            ));
        }
        Status {
            state: self.state(),
            reason,
            since_ms: self.since_ms,
            progress: self.progress,
            split_brain: self.split_brain,
        }
    }

    /// Feed one event that happened at `now_ms`; returns the actions to perform, in order.
    pub fn handle(&mut self, now_ms: u64, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        let now = now_ms;
        match ev {
            Event::Booted => {
                let text = format!("STOP: node started; data: {}", describe(&self.data));
                self.log(&mut out, Level::Info, text);
                self.arm(&mut out, Timer::Status, now + self.cfg.status_resend_ms);
                self.send_status(&mut out, true);
            }
            Event::Verb { verb, who } => self.on_verb(now, verb, who, &mut out),
            Event::Peer(PeerMsg::Status(s)) => self.on_peer_status(now, s, &mut out),
            Event::Peer(PeerMsg::SwapRequest { who }) => self.on_swap_request(now, who, &mut out),
            Event::Peer(PeerMsg::SwapRefused { reason }) => {
                if self.swap_side() == Some(SwapSide::Taking) {
                    self.swap_deadline_ms = None;
                    let msg = format!("{} refused the swap: {reason}", self.cfg.peer);
                    self.finish_verb(&mut out, Err(msg));
                }
            }
            Event::PeerSeen => self.on_peer_seen(now, &mut out),
            Event::PeerLost => self.on_peer_lost(now, &mut out),
            Event::PeerFading => {
                self.peer_fading = true;
                if self.unarbitrated {
                    let what = format!(
                        "lost sight of {} while the witness is unreachable",
                        self.cfg.peer
                    );
                    self.self_fence(now, what, &mut out);
                }
            }
            Event::Done { op, result } => self.on_done(now, op, result, &mut out),
            Event::Mirror(m) => self.on_mirror(now, m, &mut out),
            Event::CheckerFailed { checker, policy } => {
                self.on_checker_failed(now, checker, policy, &mut out)
            }
            Event::NodeHealth { problem } => self.on_node_health(now, problem, &mut out),
            Event::Witness(w) => self.on_witness(now, w, &mut out),
            Event::Timer(t) => self.on_timer(now, t, &mut out),
        }
        self.send_status(&mut out, false);
        out
    }

    // ---- small helpers ----

    fn random(&mut self) -> u64 {
        // splitmix64: the caller's seed makes every run reproducible.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fresh_gen(&mut self) -> GenId {
        loop {
            let g = GenId(self.random());
            if Some(g) != self.data.current && !self.data.history.contains(&g) {
                return g;
            }
        }
    }

    fn op(&mut self) -> OpId {
        let op = self.next_op;
        self.next_op += 1;
        op
    }

    fn log(&self, out: &mut Vec<Action>, level: Level, text: String) {
        out.push(Action::Log {
            level,
            text: format!("{} on {}: {text}", self.cfg.module, self.cfg.node),
        });
    }

    fn arm(&self, out: &mut Vec<Action>, timer: Timer, at_ms: u64) {
        out.push(Action::ArmTimer { timer, at_ms });
    }

    fn persist(&mut self, out: &mut Vec<Action>, d: DataState) {
        if d != self.data {
            self.data = d.clone();
            out.push(Action::Persist(d));
        }
    }

    fn eligible(&self) -> bool {
        !matches!(self.phase, Phase::Stop | Phase::Demoting(_))
            && !self.second_only
            && self.health_block.is_none()
            && !self.handover
    }

    fn committed(&self) -> bool {
        match &self.phase {
            Phase::Promoting(p) => p.committed,
            Phase::Alone | Phase::Prim | Phase::Restarting(_) | Phase::Demoting(_) => true,
            _ => false,
        }
    }

    fn peer_status(&self) -> PeerStatus {
        PeerStatus {
            node: self.cfg.node.clone(),
            boot: self.boot,
            seq: 0,
            state: self.state(),
            data: self.data.clone(),
            eligible: self.eligible(),
            committed: self.committed(),
            forced: matches!(&self.phase, Phase::Promoting(p) if p.forced),
            in_sync: match self.phase {
                Phase::Prim => true,
                Phase::Second => self.in_sync,
                _ => false,
            },
            handover: self.handover,
            seen_boot: self.peer.status.as_ref().map_or(0, |p| p.boot),
            seen_seq: self.peer.status.as_ref().map_or(0, |p| p.seq),
            reason: self.reason.clone(),
        }
    }

    fn send_status(&mut self, out: &mut Vec<Action>, force: bool) {
        let mut s = self.peer_status();
        // What the peer's statuses were (`seen_*`) is no change of this node's own: sending
        // on it alone would echo statuses back and forth.
        let changed = match &self.sent {
            Some(prev) => {
                let mut p = prev.clone();
                p.seq = 0;
                p.seen_boot = s.seen_boot;
                p.seen_seq = s.seen_seq;
                p != s
            }
            None => true,
        };
        if changed || force {
            self.seq += 1;
            s.seq = self.seq;
            self.sent = Some(s.clone());
            out.push(Action::Send(PeerMsg::Status(s)));
        }
    }

    /// Change state (or only the reason), log it, and settle a verb that ends there.
    fn enter(&mut self, now: u64, phase: Phase, reason: String, out: &mut Vec<Action>) {
        let before = self.state();
        self.phase = phase;
        let after = self.state();
        if before != after {
            self.since_ms = now;
        }
        if before != after || reason != self.reason {
            let level = if after == StateKind::Wait {
                Level::Warn
            } else {
                Level::Info
            };
            let text = if before != after {
                format!("{after} (was {before}): {reason}")
            } else {
                format!("{after}: {reason}")
            };
            self.log(out, level, text);
            self.reason = reason;
        }
        if after == StateKind::Wait && self.retry_at_ms.is_none() {
            let at = match &self.hold_off {
                Some((t, _)) if *t > now => *t,
                _ => now + self.cfg.retry_ms,
            };
            self.retry_at_ms = Some(at);
            self.arm(out, Timer::Retry, at);
        }
        self.check_pending(out);
    }

    fn set_reason(&mut self, now: u64, reason: String, out: &mut Vec<Action>) {
        let phase = self.phase.clone();
        self.enter(now, phase, reason, out);
    }

    fn awaiting(&self) -> Option<Awaiting> {
        match &self.phase {
            Phase::Promoting(p) => p.awaiting,
            Phase::Restarting(a) => Some(*a),
            Phase::Demoting(d) => d.awaiting,
            _ => None,
        }
    }

    fn set_awaiting(&mut self, step: Step, op: OpId) {
        let a = Some(Awaiting { step, op });
        match &mut self.phase {
            Phase::Promoting(p) => p.awaiting = a,
            Phase::Demoting(d) => d.awaiting = a,
            Phase::Restarting(r) => *r = Awaiting { step, op },
            _ => {}
        }
    }

    /// Ask for an asynchronous action (`op` is its id) and wait for it, with a deadline.
    fn start_step(
        &mut self,
        now: u64,
        step: Step,
        op: OpId,
        action: Action,
        out: &mut Vec<Action>,
    ) {
        let timeout = if step.runs_scripts() {
            self.cfg.script_timeout_ms
        } else {
            self.cfg.step_timeout_ms
        };
        out.push(action);
        self.arm(out, Timer::Step(op), now + timeout);
        self.set_awaiting(step, op);
    }

    /// Run `scripts` (one batch) as the step `step` of the current phase.
    fn script_step(&mut self, now: u64, step: Step, scripts: Vec<Script>, out: &mut Vec<Action>) {
        let op = self.op();
        self.start_step(now, step, op, Action::RunScripts { op, scripts }, out);
    }

    /// Claim (or confirm) the primary role at the witness for the data as persisted now.
    fn claim(&mut self, now: u64, force: bool, out: &mut Vec<Action>) -> OpId {
        let op = self.op();
        self.witness_op = Some(op);
        out.push(Action::WitnessClaim {
            op,
            current: self.data.current,
            history: self.data.history.clone(),
            force,
        });
        self.arm(out, Timer::Step(op), now + self.cfg.step_timeout_ms);
        op
    }

    fn release_witness(&mut self, out: &mut Vec<Action>) {
        if self.cfg.witness && (self.witness_held || self.witness_op.is_some()) {
            out.push(Action::WitnessRelease);
        }
        self.witness_held = false;
        self.witness_op = None;
        self.unarbitrated = false;
    }

    fn stop_receiver(&mut self, out: &mut Vec<Action>) {
        if self.receiver {
            out.push(Action::StopReceiver);
            self.receiver = false;
        }
        self.in_sync = false;
        self.synced = false;
        self.progress = None;
    }

    fn swap_side(&self) -> Option<SwapSide> {
        self.pending.as_ref().and_then(|p| p.swap)
    }

    /// The peer is SECOND, in sync, and willing: it can take the application over.
    fn peer_can_take_over(&self) -> bool {
        self.peer
            .reachable()
            .is_some_and(|p| p.state == StateKind::Second && p.in_sync && p.eligible && !p.handover)
    }

    // ---- decisions ----

    fn second_only_reason(&self) -> String {
        format!(
            "started as secondary (`second`): waits for {} to become primary; `start` after `stop`, or `prim`, lets it lead",
            self.cfg.peer
        )
    }

    fn not_eligible_reason(&self) -> Option<String> {
        if self.second_only {
            return Some(self.second_only_reason());
        }
        self.health_block.as_ref().map(|p| {
            format!(
                "this node's own check fails ({p}): it does not take the application until the check passes again"
            )
        })
    }

    fn alone_block_reason(&self, b: AloneBlock) -> String {
        let peer = &self.cfg.peer;
        match b {
            AloneBlock::Stale(s) => match s {
                crate::generation::Stale::Inconsistent => format!(
                    "{s}. It waits for {peer} to finish the resync. `prim` here forces it primary on this mixed copy (last resort)."
                ),
                crate::generation::Stale::WasSecondary => format!(
                    "{s}. It waits for {peer}; `prim` here forces it primary and sets aside what {peer} wrote since."
                ),
                crate::generation::Stale::NoHistory => format!(
                    "{s}: it waits for {peer}. `prim` here makes it primary with what its directories hold."
                ),
                crate::generation::Stale::Outdated => format!(
                    "{s}: it waits for {peer}. `prim` here forces it primary and sets aside what {peer} wrote."
                ),
            },
            AloneBlock::PeerMayHaveTakenOver => format!(
                "this node was primary with {peer} in sync when it stopped: {peer} may have taken over since and hold newer data. It waits for {peer}; `prim` here forces it primary and sets aside what {peer} wrote since."
            ),
            AloneBlock::PeerSeenNewer => format!(
                "{peer} was last seen with newer data than this node's ({}): it waits for {peer}; `prim` here forces it primary and sets aside {peer}'s changes.",
                describe(&self.data)
            ),
        }
    }

    fn split_brain_reason(&self, peer_gen: Option<GenId>) -> String {
        let peer = &self.cfg.peer;
        format!(
            "split brain: this node (generation {}) and {peer} (generation {}) both wrote as primary since they last shared data. Nothing was merged. To keep {peer}'s data: `prim` on {peer}; this node then resyncs from it, its divergent files kept aside. To keep this node's: stop the module on {peer}, then `prim` here.",
            gen_text(self.data.current),
            gen_text(peer_gen)
        )
    }

    fn blocked_reason(&self, b: Blocked, p: &PeerStatus) -> String {
        let peer = &self.cfg.peer;
        match b {
            Blocked::SplitBrain => self.split_brain_reason(p.data.current),
            Blocked::NeitherConsistent => format!(
                "neither this node's copy nor {peer}'s is complete (both were targets of interrupted resyncs): `prim` on the node whose data to keep"
            ),
            Blocked::PeerNewerIneligible => format!(
                "{peer} holds newer data but will not become primary ({}: {}). Start it there, or `prim` here to set aside {peer}'s changes.",
                p.state, p.reason
            ),
            Blocked::LocalNewerIneligible => format!(
                "this node holds newer data than {peer} but may not lead: {}",
                self.not_eligible_reason().unwrap_or_else(|| "it is handing over".to_owned())
            ),
            Blocked::BothIneligible => format!(
                "neither this node nor {peer} may lead now ({peer}: {}: {}); {}",
                p.state,
                p.reason,
                self.not_eligible_reason().unwrap_or_default()
            ),
        }
    }

    /// Choose a role. Called in STARTING, WAIT and SECOND (and after a demotion or an
    /// aborted promotion, with the phase set to WAIT).
    fn decide(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.node_step.is_some() {
            // A secondary running its own start scripts decides once they are done.
            self.deferred = true;
            return;
        }
        if let Some(p) = self.peer.reachable().cloned() {
            return self.decide_with_peer(now, &p, out);
        }
        if let Phase::Starting { deadline_ms } = self.phase {
            if now < deadline_ms {
                return;
            }
        }
        let peer = self.cfg.peer.clone();
        if let Some(reason) = self.not_eligible_reason() {
            return self.wait(now, reason, out);
        }
        if self.failover_eligible {
            let why =
                format!("{peer} is lost and this node holds every write it acknowledged: failover");
            return self.try_promote(now, why, out);
        }
        let last = self.peer.status.as_ref().map(|s| &s.data);
        match elect::lead_alone(&self.data, last) {
            Ok(()) => {
                let why = format!(
                    "{peer} is unreachable, and this node was primary, with {peer} not in sync, when it last ran"
                );
                self.try_promote(now, why, out)
            }
            // With a witness, whether the peer took over is the witness's to say: a node
            // becomes primary, or acknowledges a write its peer lacks, only once the witness
            // recorded its generation, so a grant for this node's data proves that no other
            // data may have acknowledged writes since.
            Err(AloneBlock::PeerMayHaveTakenOver) if self.cfg.witness => {
                let why = format!(
                    "{peer} is unreachable and was in sync when this node last ran as primary: the witness decides whether {peer} may have taken over"
                );
                self.try_promote(now, why, out)
            }
            Err(b) => {
                let reason = self.alone_block_reason(b);
                self.wait(now, reason, out)
            }
        }
    }

    /// This node does not lead, and the peer's data is ahead of its own or diverged from it:
    /// remember it durably, so that it does not lead alone on that copy after a restart.
    fn note_peer_ahead(&mut self, r: Relation, out: &mut Vec<Action>) {
        if !r.local_may_lead() && self.data.consistent && !self.data.outdated {
            let mut d = self.data.clone();
            d.outdated = true;
            self.persist(out, d);
        }
    }

    fn decide_with_peer(&mut self, now: u64, p: &PeerStatus, out: &mut Vec<Action>) {
        let peer = self.cfg.peer.clone();
        let r = compare(&self.data, &p.data);
        self.split_brain = r == Relation::SplitBrain;
        if p.state.is_primary() {
            self.note_peer_ahead(r, out);
            if elect::may_follow(r) {
                return self.follow(now, out);
            }
            self.split_brain = true;
            let reason = if r == Relation::SplitBrain {
                self.split_brain_reason(p.data.current)
            } else {
                format!(
                    "{peer} is primary on data older than this node's ({r:?}): a split brain. Nothing was merged. To keep this node's data, stop the module on {peer}, then `prim` here; to keep {peer}'s, `prim` on {peer}."
                )
            };
            return self.wait(now, reason, out);
        }
        if p.state == StateKind::Demoting {
            let reason = format!("{peer} is leaving the primary role; waiting for it to finish");
            return self.wait(now, reason, out);
        }
        let me = Candidate {
            node: &self.cfg.node,
            data: &self.data,
            eligible: self.eligible(),
        };
        let them = Candidate {
            node: &self.cfg.peer,
            data: &p.data,
            eligible: p.eligible,
        };
        match elect::elect(&self.cfg, &me, &them) {
            Elected::Local => {
                let why = match r {
                    Relation::LocalNewer { .. } => {
                        format!("this node holds newer data than {peer}")
                    }
                    Relation::SplitBrain => format!(
                        "split brain with {peer}, which yielded and keeps its data aside until an operator chooses"
                    ),
                    _ if !p.eligible => format!("{peer} will not lead ({}: {})", p.state, p.reason),
                    _ => format!(
                        "this node and {peer} hold the same data and this node is preferred"
                    ),
                };
                self.try_promote(now, why, out)
            }
            Elected::Peer => {
                self.note_peer_ahead(r, out);
                let reason = format!(
                    "{peer} holds the newest data (or is the preferred node) and becomes primary; this node then follows it"
                );
                if matches!(self.phase, Phase::Second) {
                    self.set_reason(now, reason, out);
                } else {
                    self.wait(now, reason, out);
                }
            }
            Elected::Neither(b) => {
                self.note_peer_ahead(r, out);
                let reason = self.blocked_reason(b, p);
                self.wait(now, reason, out)
            }
        }
    }

    fn follow(&mut self, now: u64, out: &mut Vec<Action>) {
        self.second_only = false;
        self.hold_off = None;
        self.split_brain = false;
        if matches!(self.phase, Phase::Second) {
            return;
        }
        self.in_sync = false;
        self.synced = false;
        self.progress = None;
        let reason = format!(
            "secondary of {}: waiting for its mirror to connect",
            self.cfg.peer
        );
        self.enter(now, Phase::Second, reason, out);
        self.engage_secondary(now, out);
    }

    /// A secondary's data and scripts, in order: `prestart` (once per start of the module
    /// here), the receiver, `start_both` (once). Each script is a node step; the next part
    /// follows when it is done.
    fn engage_secondary(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.node_step.is_some() || !matches!(self.phase, Phase::Second) {
            return;
        }
        let script = if !self.held.pre {
            self.held.pre = true;
            (Step::Prestart, Script::Prestart)
        } else {
            if !self.receiver {
                out.push(Action::StartReceiver);
                self.receiver = true;
            }
            if self.held.both {
                return;
            }
            self.held.both = true;
            (Step::StartBoth, Script::StartBoth)
        };
        let op = self.op();
        out.push(Action::RunScripts {
            op,
            scripts: vec![script.1],
        });
        self.arm(out, Timer::Step(op), now + self.cfg.script_timeout_ms);
        self.node_step = Some(Awaiting { step: script.0, op });
    }

    /// A secondary's `prestart` or `start_both` ended.
    fn node_step_done(
        &mut self,
        now: u64,
        step: Step,
        result: Result<(), Failure>,
        out: &mut Vec<Action>,
    ) {
        self.node_step = None;
        if let Err(f) = result {
            let what = if step == Step::Prestart {
                "prestart"
            } else {
                "start_both"
            };
            let reason = format!(
                "the module's {what} script failed on this node: {f}. Fix the cause, then `start`."
            );
            self.deferred = false;
            return self.start_demotion(now, Goal::Failed(reason.clone()), false, reason, out);
        }
        self.engage_secondary(now, out);
        if self.node_step.is_none() && std::mem::take(&mut self.deferred) {
            self.decide(now, out);
        }
    }

    fn wait(&mut self, now: u64, reason: String, out: &mut Vec<Action>) {
        self.stop_receiver(out);
        self.enter(now, Phase::Wait, reason, out);
    }

    /// Promote unless a recent failed claim asks to hold off.
    fn try_promote(&mut self, now: u64, why: String, out: &mut Vec<Action>) {
        if let Some((until, reason)) = self.hold_off.clone() {
            if now < until {
                return self.wait(now, reason, out);
            }
            self.hold_off = None;
        }
        self.start_promotion(now, why, false, None, out);
    }

    // ---- promotion ----

    fn start_promotion(
        &mut self,
        now: u64,
        why: String,
        forced: bool,
        supersede: Option<GenId>,
        out: &mut Vec<Action>,
    ) {
        self.stop_receiver(out);
        self.handover = false;
        let in_view = self.peer.reachable().map(|p| p.handover);
        // After a handover the application is where an operator (or failback) put it.
        self.failback_ok = in_view != Some(true);
        let promo = Promotion {
            why: why.clone(),
            forced,
            consent_seq: 0,
            supersede,
            committed: false,
            awaiting: None,
        };
        self.enter(
            now,
            Phase::Promoting(promo),
            format!("becoming primary ({why})"),
            out,
        );
        if in_view.is_some() {
            // Both nodes may have decided from statuses already out of date: announce the
            // claim and commit only once the peer, having seen it, is not claiming too.
            self.send_status(out, true);
            let seq = self.seq;
            if let Phase::Promoting(p) = &mut self.phase {
                p.consent_seq = seq;
            }
            let op = self.op();
            self.arm(out, Timer::Step(op), now + self.cfg.step_timeout_ms);
            self.set_awaiting(Step::Consent, op);
        } else {
            self.after_consent(now, out);
        }
    }

    fn after_consent(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.cfg.witness {
            let reason = format!(
                "becoming primary ({}): asking the witness",
                self.promotion_why()
            );
            self.set_reason(now, reason, out);
            let forced = matches!(&self.phase, Phase::Promoting(p) if p.forced);
            let op = self.claim(now, forced, out);
            self.set_awaiting(Step::Claim, op);
        } else {
            self.commit(now, out);
        }
    }

    /// Persist the new primary generation: from here on this node may acknowledge writes.
    fn commit(&mut self, now: u64, out: &mut Vec<Action>) {
        let Phase::Promoting(p) = &self.phase else {
            return;
        };
        let (forced, supersede) = (p.forced, p.supersede);
        let fresh = self.fresh_gen();
        let mut d = self.data.clone();
        if forced {
            d.force_lead(fresh);
        } else {
            d.begin_alone(fresh);
        }
        if let Some(g) = supersede {
            d.supersede(g);
        }
        self.persist(out, d);
        self.failover_eligible = false;
        self.synced = false;
        if let Phase::Promoting(p) = &mut self.phase {
            p.committed = true;
        }
        if self.cfg.witness {
            let op = self.claim(now, forced, out);
            self.set_awaiting(Step::Confirm, op);
            let reason = format!(
                "becoming primary ({}): waiting for the witness to record generation {fresh}",
                self.promotion_why()
            );
            self.set_reason(now, reason, out);
        } else {
            self.engage(now, out);
        }
    }

    /// The primary's data and scripts, in order: `prestart` (unless it ran as secondary since
    /// the module started here), the mount, `start_both` (likewise) and `start_prim`, the
    /// virtual IPs.
    fn engage(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.held.pre {
            return self.mount(now, out);
        }
        self.held.pre = true;
        self.script_step(now, Step::Prestart, vec![Script::Prestart], out);
        let reason = format!(
            "becoming primary ({}): running prestart",
            self.promotion_why()
        );
        self.set_reason(now, reason, out);
    }

    fn promotion_why(&self) -> String {
        match &self.phase {
            Phase::Promoting(p) => p.why.clone(),
            _ => String::new(),
        }
    }

    fn mount(&mut self, now: u64, out: &mut Vec<Action>) {
        // The rule the whole product rests on (PRODUCT.md, contract 3): the data state that
        // makes this node the reference is durable before the mirror can acknowledge a write.
        assert!(
            self.data.role == Role::Primary && self.data.consistent && !self.data.peer_in_sync,
            "mount as primary without a persisted primary generation: {:?}",
            self.data
        );
        let forced = matches!(&self.phase, Phase::Promoting(p) if p.forced);
        self.held.mount = true;
        self.fenced = false;
        self.gate = Gate::Open;
        self.in_sync = false;
        let op = self.op();
        self.start_step(
            now,
            Step::Mount,
            op,
            Action::MountPrimary { op, forced },
            out,
        );
        let reason = format!(
            "becoming primary ({}): mounting the mirror",
            self.promotion_why()
        );
        self.set_reason(now, reason, out);
    }

    fn promotion_step_done(
        &mut self,
        now: u64,
        step: Step,
        result: Result<(), Failure>,
        out: &mut Vec<Action>,
    ) {
        if let Err(f) = result {
            let what = match step {
                Step::Prestart => "the prestart script",
                Step::Mount => "mounting the mirror",
                Step::Vip => "taking the virtual IP",
                _ => "the start scripts",
            };
            let reason = format!(
                "could not become primary: {what} failed: {f}. Fix the cause, then `start`; {} takes over if it can.",
                self.cfg.peer
            );
            return self.start_demotion(now, Goal::Failed(reason.clone()), false, reason, out);
        }
        match step {
            Step::Prestart => self.mount(now, out),
            Step::Mount => {
                self.held.app = true;
                let mut scripts = Vec::new();
                if !self.held.both {
                    self.held.both = true;
                    scripts.push(Script::StartBoth);
                }
                scripts.push(Script::StartPrim);
                self.script_step(now, Step::StartScripts, scripts, out);
                let reason = format!(
                    "becoming primary ({}): running the start scripts",
                    self.promotion_why()
                );
                self.set_reason(now, reason, out);
            }
            Step::StartScripts => {
                self.held.vip = true;
                let op = self.op();
                self.start_step(now, Step::Vip, op, Action::TakeVip { op }, out);
                let reason = format!(
                    "becoming primary ({}): taking the virtual IP",
                    self.promotion_why()
                );
                self.set_reason(now, reason, out);
            }
            _ => self.enter_primary(now, out),
        }
    }

    /// The reason shown in PRIM (`prim`) or ALONE.
    fn primary_reason(&self, prim: bool) -> String {
        let peer = &self.cfg.peer;
        if prim {
            let mut r = format!("primary; {peer} is in sync: every write is on both nodes");
            if let Some(h) = &self.health_block {
                r.push_str(&format!(
                    ". WARNING: this node's own check fails ({h}); the application stays here because {peer} cannot take over now"
                ));
            }
            return r;
        }
        let mut r = format!(
            "primary without {peer} in sync: the application runs here, changes are recorded, and {peer} is brought up to date when it returns as secondary"
        );
        if let Some(p) = self.progress {
            r.push_str(&format!(" (resync of {peer}: {}%)", p.percent()));
        }
        if let Some(h) = &self.health_block {
            r.push_str(&format!(
                ". WARNING: this node's own check fails ({h}); the application stays here because {peer} cannot take over (it is not a secondary in sync with passing checks)"
            ));
        }
        if self.split_brain {
            r.push_str(&format!(
                ". SPLIT BRAIN: {peer} also wrote as primary and keeps its data, waiting. `prim` here keeps this node's data; to keep {peer}'s, stop the module here, then `prim` on {peer}."
            ));
        }
        r
    }

    fn enter_primary(&mut self, now: u64, out: &mut Vec<Action>) {
        let phase = if self.in_sync {
            Phase::Prim
        } else {
            Phase::Alone
        };
        let reason = self.primary_reason(self.in_sync);
        self.enter(now, phase, reason, out);
        self.maybe_failback(now, out);
    }

    /// Give up a promotion that holds nothing yet (its generation may be persisted).
    fn abort_promotion(&mut self, now: u64, reason: String, out: &mut Vec<Action>) {
        debug_assert!(!self.held.any());
        self.release_witness(out);
        self.hold_off = Some((now + self.cfg.retry_ms, reason));
        self.retry_at_ms = None;
        self.phase = Phase::Wait;
        self.decide(now, out);
    }

    // ---- primary: restart in place, demotion ----

    /// Virtual IPs removed, `stop_prim`, `start_prim`, virtual IPs added; the data stays.
    fn restart_in_place(&mut self, now: u64, why: String, out: &mut Vec<Action>) {
        let op = self.op();
        let (step, action) = if self.held.vip {
            (Step::ReleaseVip, Action::ReleaseVip { op })
        } else {
            (
                Step::StopScripts,
                Action::RunScripts {
                    op,
                    scripts: vec![Script::StopPrim],
                },
            )
        };
        let phase = Phase::Restarting(Awaiting { step, op });
        self.enter(
            now,
            phase,
            format!("restarting the application: {why}"),
            out,
        );
        self.start_step(now, step, op, action, out);
    }

    fn restart_step_done(
        &mut self,
        now: u64,
        step: Step,
        result: Result<(), Failure>,
        out: &mut Vec<Action>,
    ) {
        match (step, result) {
            (Step::ReleaseVip, result) => {
                self.held.vip = false;
                if let Err(f) = result {
                    let text =
                        format!("releasing the virtual IP failed while restarting: {f}; going on");
                    self.log(out, Level::Warn, text);
                }
                self.script_step(now, Step::StopScripts, vec![Script::StopPrim], out);
            }
            (Step::StopScripts, result) => {
                self.held.app = false;
                if let Err(f) = result {
                    let text =
                        format!("stop scripts failed while restarting: {f}; starting again anyway");
                    self.log(out, Level::Warn, text);
                }
                self.held.app = true;
                self.script_step(now, Step::StartScripts, vec![Script::StartPrim], out);
            }
            (Step::StartScripts, Ok(())) => {
                self.held.vip = true;
                let op = self.op();
                self.start_step(now, Step::Vip, op, Action::TakeVip { op }, out);
            }
            (_, Ok(())) => self.enter_primary(now, out),
            (_, Err(f)) => {
                let reason = format!(
                    "the application did not restart: the start scripts failed: {f}. Fix the cause, then `start`; {} takes over if it can.",
                    self.cfg.peer
                );
                self.start_demotion(now, Goal::Failed(reason.clone()), false, reason, out);
            }
        }
    }

    fn start_demotion(
        &mut self,
        now: u64,
        goal: Goal,
        barrier: bool,
        why: String,
        out: &mut Vec<Action>,
    ) {
        self.handover = false;
        // Its Done, if it comes, is stale: the shell runs the stop scripts after it.
        self.node_step = None;
        self.deferred = false;
        let d = Demotion {
            goal,
            barrier: if barrier {
                Barrier::Wanted
            } else {
                Barrier::NotWanted
            },
            awaiting: None,
        };
        let what = if self.held.any() {
            "leaving the primary role"
        } else {
            "stopping"
        };
        self.enter(now, Phase::Demoting(d), format!("{what}: {why}"), out);
        self.next_demote_step(now, out);
    }

    fn next_demote_step(&mut self, now: u64, out: &mut Vec<Action>) {
        let Phase::Demoting(d) = &self.phase else {
            return;
        };
        let barrier = d.barrier;
        // Stopping the module here (not only leaving the primary role) also undoes the node's
        // own scripts and its data role.
        let releasing = matches!(d.goal, Goal::Stop(_) | Goal::Failed(_));
        // An op number is drawn even when no step follows: unused numbers cost nothing.
        let op = self.op();
        let script = |script| Action::RunScripts {
            op,
            scripts: vec![script],
        };
        let (step, action) = if self.held.vip {
            (Step::ReleaseVip, Action::ReleaseVip { op })
        } else if self.held.app {
            (Step::StopScripts, script(Script::StopPrim))
        } else if releasing && self.held.both {
            (Step::StopBoth, script(Script::StopBoth))
        } else if barrier == Barrier::Wanted && self.held.mount && self.in_sync {
            (Step::Barrier, Action::Barrier { op })
        } else if self.held.mount {
            (Step::Unmount, Action::Unmount { op })
        } else if releasing && self.held.pre {
            self.stop_receiver(out);
            (Step::Poststop, script(Script::Poststop))
        } else {
            if releasing {
                self.stop_receiver(out);
            }
            return self.finish_demotion(now, out);
        };
        self.start_step(now, step, op, action, out);
    }

    fn demote_step_done(
        &mut self,
        now: u64,
        step: Step,
        result: Result<(), Failure>,
        out: &mut Vec<Action>,
    ) {
        if let Phase::Demoting(d) = &mut self.phase {
            d.awaiting = None;
        }
        match step {
            Step::StopScripts => {
                self.held.app = false;
                if let Err(f) = result {
                    let text = format!(
                        "stop scripts failed: {f}; going on (the unmount, or the fence if it fails, stops what still writes)"
                    );
                    self.log(out, Level::Warn, text);
                }
            }
            Step::StopBoth | Step::Poststop => {
                let name = if step == Step::StopBoth {
                    self.held.both = false;
                    "stop_both"
                } else {
                    self.held.pre = false;
                    "poststop"
                };
                if let Err(f) = result {
                    let text = format!("the {name} script failed: {f}; going on");
                    self.log(out, Level::Warn, text);
                }
            }
            Step::Barrier => {
                let passed = result.is_ok();
                if let Err(f) = result {
                    let text = format!(
                        "{} could not confirm it holds every write: {f}; no handover",
                        self.cfg.peer
                    );
                    self.log(out, Level::Warn, text);
                }
                if let Phase::Demoting(d) = &mut self.phase {
                    d.barrier = if passed {
                        Barrier::Passed
                    } else {
                        Barrier::Failed
                    };
                }
            }
            Step::Unmount => {
                self.held.mount = false;
                if let Err(f) = result {
                    out.push(Action::Fence);
                    self.fenced = true;
                    self.held.vip = false;
                    let text = format!(
                        "unmount failed: {f}; fenced the mount (writes fail, virtual IP dropped) so that {} can take over safely",
                        self.cfg.peer
                    );
                    self.log(out, Level::Error, text);
                }
            }
            _ => {
                self.held.vip = false;
                if let Err(f) = result {
                    let text = format!("releasing the virtual IP failed: {f}; check the interface");
                    self.log(out, Level::Error, text);
                }
            }
        }
        self.next_demote_step(now, out);
    }

    fn finish_demotion(&mut self, now: u64, out: &mut Vec<Action>) {
        let Phase::Demoting(d) = self.phase.clone() else {
            return;
        };
        self.release_witness(out);
        self.gate = Gate::Open;
        let handed = d.barrier == Barrier::Passed && self.data.peer_in_sync;
        if handed {
            let mut nd = self.data.clone();
            nd.handed_over();
            self.persist(out, nd);
        }
        self.in_sync = false;
        self.progress = None;
        let peer = self.cfg.peer.clone();
        match d.goal {
            Goal::Stop(reason) => {
                let reason = if handed {
                    format!("{reason}; {peer} holds every write and takes over")
                } else {
                    reason
                };
                self.enter(now, Phase::Stop, reason, out);
            }
            Goal::Handover if handed => {
                out.push(Action::StartReceiver);
                self.receiver = true;
                self.synced = false;
                self.handover = true;
                let at = now + self.cfg.swap_timeout_ms;
                self.swap_deadline_ms = Some(at);
                self.arm(out, Timer::Swap, at);
                let reason = format!(
                    "handed the application over to {peer} (it holds every write); waiting for it to become primary"
                );
                self.enter(now, Phase::Second, reason, out);
            }
            Goal::Handover => {
                let msg = format!(
                    "the handover failed: {peer} did not confirm that it holds every write (barrier failed, or the link dropped); this node keeps its data and decides again"
                );
                self.log(out, Level::Warn, msg.clone());
                if self.swap_side() == Some(SwapSide::Giving)
                    || self
                        .pending
                        .as_ref()
                        .is_some_and(|p| p.verb == Verb::Second)
                {
                    self.finish_verb(out, Err(msg));
                }
                self.phase = Phase::Wait;
                self.decide(now, out);
            }
            Goal::Wait(reason) => self.enter(now, Phase::Wait, reason, out),
            Goal::Decide => {
                self.phase = Phase::Wait;
                self.decide(now, out);
            }
            Goal::Failed(reason) => self.enter(now, Phase::Stop, reason, out),
        }
    }

    fn maybe_failback(&mut self, now: u64, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Prim)
            || !self.cfg.failback
            || !self.failback_ok
            || self.pending.is_some()
        {
            return;
        }
        if self.cfg.default_primary.as_deref() != Some(self.cfg.peer.as_str())
            || !self.peer_can_take_over()
        {
            return;
        }
        let why = format!(
            "failback: {} is the default primary and is in sync again",
            self.cfg.peer
        );
        self.log(out, Level::Info, why.clone());
        self.start_demotion(now, Goal::Handover, true, why, out);
    }

    /// A primary whose node checks fail hands the application to a peer that can take over.
    fn maybe_give_away(&mut self, now: u64, out: &mut Vec<Action>) {
        let Some(h) = self.health_block.clone() else {
            return;
        };
        if !matches!(self.phase, Phase::Prim)
            || self.pending.is_some()
            || !self.peer_can_take_over()
        {
            return;
        }
        let why = format!(
            "this node's own check fails ({h}): handing the application over to {}",
            self.cfg.peer
        );
        self.log(out, Level::Warn, why.clone());
        self.start_demotion(now, Goal::Handover, true, why, out);
    }
}
