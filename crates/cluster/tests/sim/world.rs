//! A deterministic world for the module state machine: two nodes, each a real `Machine` plus
//! a model of its shell (scripts, mirror, virtual IP, witness client); a network with delays,
//! cuts and heals; crashes (kill -9: volatile state lost, persisted data state and files kept)
//! and restarts; an optional witness; and the ground truth of every acknowledged write.
//! Everything is driven by one seeded RNG and one event queue ordered by (time, sequence), so
//! a seed replays exactly. Invariants are checked after every event (`check`) and at every
//! promotion (`on_mount`); the first violation is kept in `violation`.

use mirrorkit_cluster::generation::{compare, DataState, GenId, Role};
use mirrorkit_cluster::machine::{
    Action, CheckerPolicy, Config, Event, Failure, Level, Machine, MirrorEvent, OpId, PeerMsg,
    Progress, Script, StateKind, Timer, Verb, WitnessEvent,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod mirror;
mod witness;

pub const NAMES: [&str; 2] = ["alpha", "beta"];
/// Every verb gets its outcome within this much simulated time (unless its node crashes).
pub const VERB_BOUND_MS: u64 = 60_000;
/// Without a witness, two primaries that hear each other are down to one within this time.
pub const DUAL_BOUND_MS: u64 = 15_000;
/// Lines of trace kept for a failure report (`MIRRORKIT_SIM_TRACE_LINES` overrides).
const TRACE_LINES: usize = 400;

fn trace_lines() -> usize {
    std::env::var("MIRRORKIT_SIM_TRACE_LINES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TRACE_LINES)
}

/// Heartbeat layer: loss detected after this (plus up to `HB_JITTER_MS`), return after less.
const HB_LOST_MS: u64 = 1_000;
const HB_SEEN_MS: u64 = 200;
const HB_JITTER_MS: u64 = 300;
/// The early warning (`PeerFading`): always before the peer can have declared this node lost.
const HB_FADE_MS: u64 = 600;
/// Witness: lease length, renewal period, how long a claim may go unanswered.
const LEASE_MS: u64 = 2_000;
const RENEW_MS: u64 = 400;
const CLAIM_TIMEOUT_MS: u64 = 500;

/// Deliberate faults in the world's model, to prove that the checks catch what they claim to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// The mirror reports a resync done without copying anything.
    ResyncCopiesNothing,
    /// The witness grants whoever asks, ignoring the holder's lease.
    WitnessIgnoresLeases,
}

#[derive(Clone, Debug)]
pub struct Setup {
    pub witness: bool,
    pub failback: bool,
    pub default_primary: Option<usize>,
    /// How long the mirror takes to notice a silent peer (ack timeout).
    pub peer_timeout_ms: u64,
    pub p_script_fail: f64,
    pub p_script_hang: f64,
    pub sabotage: Sabotage,
}

impl Setup {
    /// No witness, no failback, `alpha` preferred, scripts that always work.
    pub fn plain() -> Setup {
        Setup {
            witness: false,
            failback: false,
            default_primary: Some(0),
            peer_timeout_ms: 1_500,
            p_script_fail: 0.0,
            p_script_hang: 0.0,
            sabotage: Sabotage::None,
        }
    }

    pub fn random(rng: &mut StdRng) -> Setup {
        Setup {
            witness: rng.gen_bool(0.5),
            failback: rng.gen_bool(0.3),
            default_primary: [None, Some(0), Some(1)][rng.gen_range(0..3)],
            peer_timeout_ms: rng.gen_range(300..3_000),
            p_script_fail: [0.0, 0.02, 0.1][rng.gen_range(0..3)],
            p_script_hang: [0.0, 0.01][rng.gen_range(0..2)],
            sabotage: Sabotage::None,
        }
    }
}

/// The machine configuration the simulated nodes use: short timeouts, simulated time is free
/// but seeds should cover many events.
pub fn machine_config(setup: &Setup, i: usize) -> Config {
    let mut c = Config::new("app", NAMES[i], NAMES[1 - i]);
    c.witness = setup.witness;
    c.failback = setup.failback;
    c.default_primary = setup.default_primary.map(|d| NAMES[d].to_owned());
    c.peer_wait_ms = 3_000;
    c.script_timeout_ms = 2_000;
    c.step_timeout_ms = 1_000;
    c.swap_timeout_ms = 10_000;
    c.retry_ms = 1_000;
    c.status_resend_ms = 500;
    c
}

/// Counts of what happened, across a run: proof that the runs explore what they should.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub writes_acked: u64,
    pub mounts: u64,
    pub forced_mounts: u64,
    pub failovers: u64,
    pub resyncs: u64,
    pub keep_aside: u64,
    pub fences: u64,
    pub split_brains_seen: u64,
    pub dual_primaries: u64,
    pub witness_refusals: u64,
    pub verbs_ok: BTreeMap<String, u64>,
    pub verbs_err: BTreeMap<String, u64>,
    pub crashes: u64,
    pub cuts: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.events += o.events;
        self.writes_acked += o.writes_acked;
        self.mounts += o.mounts;
        self.forced_mounts += o.forced_mounts;
        self.failovers += o.failovers;
        self.resyncs += o.resyncs;
        self.keep_aside += o.keep_aside;
        self.fences += o.fences;
        self.split_brains_seen += o.split_brains_seen;
        self.dual_primaries += o.dual_primaries;
        self.witness_refusals += o.witness_refusals;
        self.crashes += o.crashes;
        self.cuts += o.cuts;
        for (k, v) in &o.verbs_ok {
            *self.verbs_ok.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.verbs_err {
            *self.verbs_err.entry(k.clone()).or_default() += v;
        }
    }
}

#[derive(Debug)]
enum Payload {
    /// An event for a node's machine (dropped if the node restarted since).
    Deliver {
        node: usize,
        inc: u32,
        ev: Event,
    },
    /// A batch of scripts finished: the application runs after successful start scripts and
    /// is gone after stop scripts. `epoch`: batches killed by `ForceStop` have no effect.
    Scripts {
        node: usize,
        inc: u32,
        epoch: u64,
        op: OpId,
        ok: bool,
        starts: bool,
        stops: bool,
    },
    Msg {
        to: usize,
        inc: u32,
        msg: PeerMsg,
    },
    Heartbeat {
        node: usize,
        inc: u32,
        epoch: u64,
    },
    Fading {
        node: usize,
        inc: u32,
        epoch: u64,
    },
    Timer {
        node: usize,
        inc: u32,
        timer: Timer,
        at: u64,
    },
    Connect {
        epoch: u64,
    },
    SessionStart {
        epoch: u64,
    },
    ResyncEnd {
        epoch: u64,
    },
    SessionInSync {
        epoch: u64,
    },
    /// The primary's mirror learns that the secondary confirmed the end of the resync (lost
    /// with the session if it ends first).
    PeerInSync {
        epoch: u64,
    },
    WitnessReq {
        from: usize,
        inc: u32,
        req: Option<Claim>,
        sent_at: u64,
    },
    WitnessReply {
        to: usize,
        inc: u32,
        op: OpId,
        sent_at: u64,
        result: Result<(), String>,
    },
    Renew {
        node: usize,
        inc: u32,
    },
    Expiry {
        node: usize,
        inc: u32,
    },
    ClaimTimeout {
        node: usize,
        inc: u32,
        op: OpId,
    },
}

#[derive(Clone, Debug)]
struct Claim {
    op: OpId,
    current: Option<GenId>,
    history: Vec<GenId>,
    force: bool,
}

/// The witness client of one node: renews a granted claim, reports a lost lease.
#[derive(Clone, Debug, Default)]
struct Client {
    claim: Option<Claim>,
    awaiting: bool,
    holding: bool,
    deadline: u64,
    renew_armed: bool,
}

#[derive(Debug, Default)]
struct WitnessModel {
    holder: Option<usize>,
    expires_at: u64,
    recorded: Option<GenId>,
    link: [bool; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    AwaitStart,
    Resyncing,
    AwaitInSync,
    InSync,
}

#[derive(Debug)]
struct Session {
    primary: usize,
    epoch: u64,
    mode: Mode,
}

#[derive(Debug)]
struct Acked {
    /// Acknowledged during a split brain that no witness prevents: not owed to the other
    /// branch.
    exempt: bool,
}

pub struct Node {
    pub alive: bool,
    pub inc: u32,
    pub m: Option<Machine>,
    pub persisted: DataState,
    /// The module is meant to run (started by a verb): it starts again at boot.
    pub intent: bool,
    /// Write ids on this node's disk.
    pub data: BTreeSet<u64>,
    /// The copy is mid-resync (a mix).
    pub partial: bool,
    pub mounted: bool,
    pub fenced: bool,
    pub vip: bool,
    pub app: bool,
    pub receiver: bool,
    pub alone_allowed: bool,
    /// Mounted by `prim` (may be stale by the operator's choice).
    pub forced_term: bool,
    believes_peer: bool,
    /// The machine's status shows a split brain (counted once per report).
    reports_split: bool,
    timers: BTreeMap<Timer, u64>,
    wc: Client,
    pub verbs: VecDeque<(Verb, u64)>,
    /// Scripts fail while set.
    pub script_trouble: bool,
    /// This node's own checks (network) fail.
    pub health_trouble: bool,
    last_mirror_at: u64,
    last_msg_at: u64,
    /// The module's scripts run one batch at a time: the next batch starts then.
    scripts_free_at: u64,
    scripts_epoch: u64,
}

impl Node {
    fn new() -> Node {
        Node {
            alive: false,
            inc: 0,
            m: None,
            persisted: DataState {
                consistent: true,
                ..DataState::default()
            },
            intent: false,
            data: BTreeSet::new(),
            partial: false,
            mounted: false,
            fenced: false,
            vip: false,
            app: false,
            receiver: false,
            alone_allowed: false,
            forced_term: false,
            believes_peer: false,
            reports_split: false,
            timers: BTreeMap::new(),
            wc: Client::default(),
            verbs: VecDeque::new(),
            script_trouble: false,
            health_trouble: false,
            last_mirror_at: 0,
            last_msg_at: 0,
            scripts_free_at: 0,
            scripts_epoch: 0,
        }
    }

    fn acting_primary(&self) -> bool {
        self.alive && self.mounted && !self.fenced
    }

    pub fn state(&self) -> Option<StateKind> {
        self.m.as_ref().map(|m| m.state())
    }
}

pub struct World {
    pub now: u64,
    pub rng: StdRng,
    pub setup: Setup,
    pub nodes: [Node; 2],
    pub link_up: bool,
    /// The mirror cannot open a session (every attempt fails at once), link up or not.
    pub mirror_broken: bool,
    witness: WitnessModel,
    queue: BTreeMap<(u64, u64), Payload>,
    qseq: u64,
    session: Option<Session>,
    session_epoch: u64,
    hb_epoch: [u64; 2],
    next_write: u64,
    acked: BTreeMap<u64, Acked>,
    forgiven: BTreeSet<u64>,
    /// No witness, and the data forked: a node began a primary generation while the other
    /// was alive behind a cut link or primary itself, or an operator forced one. Until a
    /// mirror session joins the copies again, writes belong to one branch only.
    split: bool,
    dual_since: Option<u64>,
    pub stats: Stats,
    trace: Option<VecDeque<String>>,
    pub violation: Option<String>,
    /// Log lines of the machines, for scenario assertions.
    pub logs: Vec<(usize, Level, String)>,
    keep_logs: bool,
}

impl World {
    pub fn new(seed: u64, setup: Setup, trace: bool) -> World {
        let mut w = World {
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            setup,
            nodes: [Node::new(), Node::new()],
            link_up: true,
            mirror_broken: false,
            witness: WitnessModel {
                link: [true, true],
                ..WitnessModel::default()
            },
            queue: BTreeMap::new(),
            qseq: 0,
            session: None,
            session_epoch: 0,
            hb_epoch: [0, 0],
            next_write: 1,
            acked: BTreeMap::new(),
            forgiven: BTreeSet::new(),
            split: false,
            dual_since: None,
            stats: Stats::default(),
            trace: trace.then(VecDeque::new),
            violation: None,
            logs: Vec::new(),
            keep_logs: false,
        };
        w.boot(0);
        w.boot(1);
        w
    }

    /// Keep the machines' log lines in `logs` (scenario tests).
    pub fn keep_logs(&mut self) {
        self.keep_logs = true;
    }

    pub fn trace_text(&self) -> String {
        self.trace
            .as_ref()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    fn note(&mut self, text: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            if t.len() >= trace_lines() {
                t.pop_front();
            }
            t.push_back(format!("{:>8} {}", self.now, text()));
        }
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.note(|| format!("VIOLATION: {what}"));
            self.violation = Some(format!("t={} ms: {what}", self.now));
        }
    }

    fn schedule(&mut self, at: u64, p: Payload) {
        self.qseq += 1;
        self.queue.insert((at, self.qseq), p);
    }

    /// Mirror reports reach a node in the order they were produced.
    fn schedule_mirror(&mut self, node: usize, delay: u64, ev: Event) {
        let at = (self.now + delay).max(self.nodes[node].last_mirror_at);
        self.nodes[node].last_mirror_at = at;
        let inc = self.nodes[node].inc;
        self.schedule(at, Payload::Deliver { node, inc, ev });
    }

    fn delay(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.gen_range(lo..=hi)
    }

    // ---- the clock ----

    /// Process the next event; false when nothing is queued.
    pub fn step_event(&mut self) -> bool {
        let Some(((at, _), p)) = self.queue.pop_first() else {
            return false;
        };
        self.now = self.now.max(at);
        self.stats.events += 1;
        self.process(p);
        self.check();
        true
    }

    /// Process every event up to `now + ms`.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now + ms;
        while let Some((&(at, _), _)) = self.queue.first_key_value() {
            if at > until || self.violation.is_some() {
                break;
            }
            self.step_event();
        }
        self.now = self.now.max(until);
    }

    // ---- nodes ----

    fn boot(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.alive = true;
        n.inc += 1;
        let seed = self.rng.gen();
        let n = &mut self.nodes[i];
        n.m = Some(Machine::new(
            machine_config(&self.setup, i),
            n.persisted.clone(),
            seed,
        ));
        n.believes_peer = false;
        self.deliver(i, Event::Booted);
        if self.nodes[i].intent {
            self.verb(i, Verb::Start, "boot");
        }
        self.heartbeats_changed();
    }

    /// kill -9: the machine and every volatile thing go; the data state and the files stay.
    pub fn crash(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        self.note(|| format!("{} CRASH", NAMES[i]));
        self.stats.crashes += 1;
        let n = &mut self.nodes[i];
        n.alive = false;
        n.inc += 1;
        n.m = None;
        n.mounted = false;
        n.fenced = false;
        n.vip = false;
        n.app = false;
        n.receiver = false;
        n.alone_allowed = false;
        n.forced_term = false;
        n.timers.clear();
        n.wc = Client::default();
        n.verbs.clear();
        self.break_session("a node crashed", false);
        self.heartbeats_changed();
    }

    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].alive {
            return;
        }
        self.note(|| format!("{} RESTART", NAMES[i]));
        self.boot(i);
        if self.nodes[i].health_trouble {
            self.set_health(i, true);
        }
    }

    /// This node's own checks start or stop failing (the shell reports it at once, and again
    /// after a restart while they still fail).
    pub fn set_health(&mut self, i: usize, failing: bool) {
        self.nodes[i].health_trouble = failing;
        if !self.nodes[i].alive {
            return;
        }
        self.note(|| {
            format!(
                "{} own check {}",
                NAMES[i],
                if failing { "FAILS" } else { "passes" }
            )
        });
        let problem = failing.then(|| "checker gw (ping 10.0.0.1): no reply".to_owned());
        self.deliver(i, Event::NodeHealth { problem });
    }

    pub fn cut(&mut self) {
        if !self.link_up {
            return;
        }
        self.note(|| "LINK CUT".to_owned());
        self.stats.cuts += 1;
        self.link_up = false;
        self.break_session("link cut", false);
        self.heartbeats_changed();
    }

    pub fn heal(&mut self) {
        if self.link_up {
            return;
        }
        self.note(|| "LINK HEALED".to_owned());
        self.link_up = true;
        self.heartbeats_changed();
        self.maybe_connect();
    }

    pub fn set_witness_link(&mut self, i: usize, up: bool) {
        self.note(|| {
            format!(
                "witness link of {} {}",
                NAMES[i],
                if up { "up" } else { "down" }
            )
        });
        self.witness.link[i] = up;
    }

    pub fn verb(&mut self, i: usize, verb: Verb, who: &str) {
        if !self.nodes[i].alive {
            return;
        }
        match verb {
            Verb::Start | Verb::Restart | Verb::Prim | Verb::Second => self.nodes[i].intent = true,
            Verb::Stop | Verb::Forcestop => self.nodes[i].intent = false,
            Verb::Swap => {}
        }
        self.nodes[i].verbs.push_back((verb, self.now));
        self.deliver(
            i,
            Event::Verb {
                verb,
                who: who.to_owned(),
            },
        );
    }

    pub fn checker_failed(&mut self, i: usize, policy: CheckerPolicy) {
        self.deliver(
            i,
            Event::CheckerFailed {
                checker: "app-port".to_owned(),
                policy,
            },
        );
    }

    pub fn state(&self, i: usize) -> Option<StateKind> {
        self.nodes[i].state()
    }

    pub fn reason(&self, i: usize) -> String {
        self.nodes[i]
            .m
            .as_ref()
            .map(|m| m.status().reason)
            .unwrap_or_default()
    }

    /// The application writes once on node `i`; returns whether the write was acknowledged.
    pub fn write(&mut self, i: usize) -> bool {
        let n = &self.nodes[i];
        if !(n.acting_primary() && n.app) {
            return false;
        }
        let id = self.next_write;
        self.next_write += 1;
        self.nodes[i].data.insert(id);
        let replicated = self
            .session
            .as_ref()
            .is_some_and(|s| s.primary == i && s.mode == Mode::InSync);
        if replicated {
            self.nodes[1 - i].data.insert(id);
        } else if !self.nodes[i].alone_allowed {
            self.note(|| format!("{} write {id} held (peer out of sync)", NAMES[i]));
            return false;
        }
        if !replicated && self.may_fork(i) {
            self.split = true;
        }
        let exempt = !self.setup.witness && !replicated && self.split;
        let gen = self.nodes[i].persisted.current;
        self.acked.insert(id, Acked { exempt });
        self.stats.writes_acked += 1;
        self.note(|| {
            format!(
                "{} write {id} acked{} in {}{}",
                NAMES[i],
                if replicated { " on both" } else { " alone" },
                gen_text(gen),
                if exempt { " (split brain)" } else { "" }
            )
        });
        true
    }

    // ---- event processing ----

    fn process(&mut self, p: Payload) {
        match p {
            Payload::Deliver { node, inc, ev } => {
                if self.nodes[node].inc == inc {
                    self.deliver(node, ev);
                }
            }
            Payload::Scripts {
                node,
                inc,
                epoch,
                op,
                ok,
                starts,
                stops,
            } => {
                let n = &mut self.nodes[node];
                if n.inc != inc {
                    return;
                }
                if n.scripts_epoch == epoch {
                    if stops {
                        n.app = false;
                    } else if ok && starts {
                        n.app = true;
                    }
                }
                let result = if ok {
                    Ok(())
                } else {
                    Err(Failure {
                        detail: "script failed".to_owned(),
                        exit_status: Some(1),
                    })
                };
                self.deliver(node, Event::Done { op, result });
            }
            Payload::Msg { to, inc, msg } => {
                if self.nodes[to].inc == inc && self.link_up {
                    self.deliver(to, Event::Peer(msg));
                }
            }
            Payload::Heartbeat { node, inc, epoch } => {
                if self.nodes[node].inc != inc || self.hb_epoch[node] != epoch {
                    return;
                }
                let visible = self.link_up && self.nodes[1 - node].alive;
                if visible != self.nodes[node].believes_peer {
                    self.nodes[node].believes_peer = visible;
                    self.deliver(
                        node,
                        if visible {
                            Event::PeerSeen
                        } else {
                            Event::PeerLost
                        },
                    );
                }
            }
            Payload::Fading { node, inc, epoch } => {
                if self.nodes[node].inc == inc
                    && self.hb_epoch[node] == epoch
                    && self.nodes[node].believes_peer
                {
                    self.deliver(node, Event::PeerFading);
                }
            }
            Payload::Timer {
                node,
                inc,
                timer,
                at,
            } => {
                if self.nodes[node].inc == inc && self.nodes[node].timers.get(&timer) == Some(&at) {
                    self.nodes[node].timers.remove(&timer);
                    self.deliver(node, Event::Timer(timer));
                }
            }
            Payload::Connect { epoch } => self.connect(epoch),
            Payload::SessionStart { epoch } => self.session_start(epoch),
            Payload::ResyncEnd { epoch } => self.resync_end(epoch),
            Payload::SessionInSync { epoch } => self.session_in_sync(epoch),
            Payload::PeerInSync { epoch } => {
                if let Some(p) = self.live_session(epoch, Mode::InSync) {
                    let inc = self.nodes[p].inc;
                    self.deliver_checked(p, inc, Event::Mirror(MirrorEvent::PeerInSync));
                }
            }
            Payload::WitnessReq {
                from,
                inc,
                req,
                sent_at,
            } => self.witness_request(from, inc, req, sent_at),
            Payload::WitnessReply {
                to,
                inc,
                op,
                sent_at,
                result,
            } => {
                if self.nodes[to].inc == inc && self.witness.link[to] {
                    self.client_reply(to, op, sent_at, result);
                }
            }
            Payload::Renew { node, inc } => {
                if self.nodes[node].inc != inc {
                    return;
                }
                self.nodes[node].wc.renew_armed = false;
                if self.nodes[node].wc.holding {
                    self.send_claim(node);
                    self.arm_renew(node);
                }
            }
            Payload::Expiry { node, inc } => {
                let n = &mut self.nodes[node];
                if n.inc != inc || !n.wc.holding || self.now < n.wc.deadline {
                    return;
                }
                n.wc.holding = false;
                if let Some(op) = n.wc.claim.as_ref().map(|c| c.op) {
                    self.note(|| format!("{} witness lease expired", NAMES[node]));
                    self.deliver(node, Event::Witness(WitnessEvent::Unreachable { op }));
                }
            }
            Payload::ClaimTimeout { node, inc, op } => {
                let n = &mut self.nodes[node];
                if n.inc != inc || !n.wc.awaiting || n.wc.claim.as_ref().map(|c| c.op) != Some(op) {
                    return;
                }
                n.wc.awaiting = false;
                self.deliver(node, Event::Witness(WitnessEvent::Unreachable { op }));
            }
        }
    }

    fn deliver_checked(&mut self, i: usize, inc: u32, ev: Event) {
        if self.nodes[i].inc == inc {
            self.deliver(i, ev);
        }
    }

    /// Process events until `done` holds (or `ms` pass); returns whether it held.
    pub fn run_until(&mut self, ms: u64, done: impl Fn(&World) -> bool) -> bool {
        let until = self.now + ms;
        while !done(self) {
            match self.queue.first_key_value() {
                Some((&(at, _), _)) if at <= until && self.violation.is_none() => {
                    self.step_event();
                }
                _ => return false,
            }
        }
        true
    }

    fn deliver(&mut self, i: usize, ev: Event) {
        if !self.nodes[i].alive {
            return;
        }
        let Some(m) = self.nodes[i].m.as_mut() else {
            return;
        };
        let now = self.now;
        let acts = m.handle(now, ev.clone());
        if self.trace.is_some() {
            let quiet = matches!(ev, Event::Timer(Timer::Status))
                || matches!(&ev, Event::Peer(PeerMsg::Status(_)));
            if !quiet {
                self.note(|| format!("{} <- {}", NAMES[i], short_event(&ev)));
            }
        }
        self.execute(i, acts);
        let n = &self.nodes[i];
        let (unpersisted, split) = match &n.m {
            Some(m) => (m.data() != &n.persisted, m.status().split_brain),
            None => (false, false),
        };
        let split = split && !std::mem::replace(&mut self.nodes[i].reports_split, split);
        if unpersisted {
            let what = format!(
                "{}: the machine relies on a data state it did not persist",
                NAMES[i]
            );
            self.violate(what);
        }
        if split {
            self.stats.split_brains_seen += 1;
        }
    }

    fn execute(&mut self, i: usize, acts: Vec<Action>) {
        for a in acts {
            if !self.nodes[i].alive {
                return;
            }
            if self.trace.is_some()
                && !matches!(
                    a,
                    Action::Send(PeerMsg::Status(_)) | Action::ArmTimer { .. }
                )
            {
                self.note(|| format!("{} -> {}", NAMES[i], short_action(&a)));
            }
            self.perform(i, a);
        }
    }

    fn perform(&mut self, i: usize, a: Action) {
        let inc = self.nodes[i].inc;
        match a {
            Action::Persist(d) => {
                let before = self.nodes[i].persisted.current;
                let new_term = d.current != before && d.role == Role::Primary;
                if new_term && (d.forced || self.may_fork(i)) {
                    self.split = true;
                }
                if d.forced && d.current != before {
                    // `prim`: the operator made this copy, mixed or stale, the reference.
                    self.forgive_missing(i);
                    self.nodes[i].partial = false;
                }
                self.nodes[i].persisted = d;
            }
            Action::Log { level, text } => {
                if self.keep_logs {
                    self.logs.push((i, level, text));
                }
            }
            Action::Send(msg) => {
                if !self.link_up {
                    return;
                }
                let at = (self.now + self.rng.gen_range(1..=20)).max(self.nodes[i].last_msg_at);
                self.nodes[i].last_msg_at = at;
                let to = 1 - i;
                let inc_to = self.nodes[to].inc;
                self.schedule(
                    at,
                    Payload::Msg {
                        to,
                        inc: inc_to,
                        msg,
                    },
                );
            }
            Action::ArmTimer { timer, at_ms } => {
                self.nodes[i].timers.insert(timer, at_ms);
                self.schedule(
                    at_ms,
                    Payload::Timer {
                        node: i,
                        inc,
                        timer,
                        at: at_ms,
                    },
                );
            }
            Action::RunScripts { op, scripts } => {
                let starts = scripts.contains(&Script::StartPrim);
                let stops = scripts.contains(&Script::StopPrim);
                let begin = self.now.max(self.nodes[i].scripts_free_at);
                if self.rng.gen_bool(self.setup.p_script_hang) {
                    // Hangs until the shell kills it at the script timeout, and never answers:
                    // the machine's own deadline must act.
                    self.nodes[i].scripts_free_at = begin + 2_000;
                    return;
                }
                let ok =
                    !self.nodes[i].script_trouble && !self.rng.gen_bool(self.setup.p_script_fail);
                let at = begin + self.delay(10, 300);
                self.nodes[i].scripts_free_at = at;
                let epoch = self.nodes[i].scripts_epoch;
                self.schedule(
                    at,
                    Payload::Scripts {
                        node: i,
                        inc,
                        epoch,
                        op,
                        ok,
                        starts,
                        stops,
                    },
                );
            }
            Action::MountPrimary { op, forced } => {
                self.on_mount(i, forced);
                let n = &mut self.nodes[i];
                n.mounted = true;
                n.fenced = false;
                n.alone_allowed = true;
                n.forced_term = forced;
                let d = self.delay(1, 50);
                self.schedule(
                    self.now + d,
                    Payload::Deliver {
                        node: i,
                        inc,
                        ev: Event::Done { op, result: Ok(()) },
                    },
                );
                self.maybe_connect();
            }
            Action::AllowAlone => self.nodes[i].alone_allowed = true,
            Action::Barrier { op } => {
                let ok = self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.primary == i && s.mode == Mode::InSync);
                let result = if ok {
                    Ok(())
                } else {
                    Err(Failure {
                        detail: "the peer is not in sync".to_owned(),
                        exit_status: None,
                    })
                };
                self.schedule_mirror(i, 5, Event::Done { op, result });
            }
            Action::Unmount { op } => {
                self.nodes[i].mounted = false;
                if self.session.as_ref().is_some_and(|s| s.primary == i) {
                    self.break_session("primary unmounted", true);
                }
                let n = &mut self.nodes[i];
                n.fenced = false;
                n.app = false;
                n.alone_allowed = false;
                n.forced_term = false;
                let d = self.delay(1, 50);
                self.schedule_mirror(i, d, Event::Done { op, result: Ok(()) });
            }
            Action::TakeVip { op } => {
                self.nodes[i].vip = true;
                let d = self.delay(1, 20);
                self.schedule_done(i, d, op);
            }
            Action::ReleaseVip { op } => {
                self.nodes[i].vip = false;
                let d = self.delay(1, 20);
                self.schedule_done(i, d, op);
            }
            Action::Fence => {
                self.stats.fences += 1;
                self.nodes[i].fenced = true;
                self.nodes[i].vip = false;
                if self.session.as_ref().is_some_and(|s| s.primary == i) {
                    self.break_session("primary fenced", true);
                }
            }
            Action::ForceStop => {
                self.nodes[i].mounted = false;
                if self.session.is_some() {
                    self.break_session("force-stopped", true);
                }
                let n = &mut self.nodes[i];
                n.scripts_epoch += 1; // running scripts are killed
                n.scripts_free_at = self.now;
                n.fenced = false;
                n.app = false;
                n.vip = false;
                n.receiver = false;
                n.alone_allowed = false;
                n.forced_term = false;
            }
            Action::StartReceiver => {
                self.nodes[i].receiver = true;
                self.maybe_connect();
            }
            Action::StopReceiver => {
                self.nodes[i].receiver = false;
                if self.session.as_ref().is_some_and(|s| s.primary == 1 - i) {
                    self.break_session("secondary stopped its receiver", true);
                }
            }
            Action::ProceedResync { keep_aside } => {
                let Some(s) = &mut self.session else { return };
                if s.primary != 1 - i || s.mode != Mode::AwaitStart {
                    return;
                }
                s.mode = Mode::Resyncing;
                let epoch = s.epoch;
                self.stats.resyncs += 1;
                if keep_aside {
                    self.stats.keep_aside += 1;
                }
                let p = 1 - i;
                // A mix: what it held that the source also holds; the rest comes at the end.
                let source = self.nodes[p].data.clone();
                let n = &mut self.nodes[i];
                n.partial = true;
                n.data.retain(|id| source.contains(id));
                let d = self.delay(50, 3_000);
                self.schedule_mirror(
                    i,
                    d / 2,
                    Event::Mirror(MirrorEvent::ResyncProgress(Progress {
                        done_bytes: 50,
                        total_bytes: 100,
                    })),
                );
                self.schedule(self.now + d, Payload::ResyncEnd { epoch });
            }
            Action::RefuseResync { .. } => {
                if self.session.as_ref().is_some_and(|s| s.primary == 1 - i) {
                    self.break_session("secondary refused", true);
                }
            }
            Action::WitnessClaim {
                op,
                current,
                history,
                force,
            } => {
                let c = &mut self.nodes[i].wc;
                c.claim = Some(Claim {
                    op,
                    current,
                    history,
                    force,
                });
                c.awaiting = true;
                self.send_claim(i);
                self.schedule(
                    self.now + CLAIM_TIMEOUT_MS,
                    Payload::ClaimTimeout { node: i, inc, op },
                );
            }
            Action::WitnessRelease => {
                self.nodes[i].wc = Client::default();
                if self.witness.link[i] {
                    let at = self.now + self.delay(1, 10);
                    self.schedule(
                        at,
                        Payload::WitnessReq {
                            from: i,
                            inc,
                            req: None,
                            sent_at: self.now,
                        },
                    );
                }
            }
            Action::VerbDone { verb, result, .. } => self.on_verb_done(i, verb, result),
        }
    }

    fn schedule_done(&mut self, i: usize, delay: u64, op: OpId) {
        let inc = self.nodes[i].inc;
        self.schedule(
            self.now + delay,
            Payload::Deliver {
                node: i,
                inc,
                ev: Event::Done { op, result: Ok(()) },
            },
        );
    }

    // ---- invariants ----

    /// A node is about to mount as primary: it must hold every write ever acknowledged (unless
    /// an operator forced it, or the write belongs to an allowed split brain) and must not be
    /// mid-resync.
    fn on_mount(&mut self, i: usize, forced: bool) {
        self.stats.mounts += 1;
        let p = self.nodes[i].persisted.clone();
        if p.role != Role::Primary || !p.consistent || p.peer_in_sync {
            let what = format!("{} mounts as primary with the data state {p:?}", NAMES[i]);
            self.violate(what);
        }
        if forced {
            self.stats.forced_mounts += 1;
            return;
        }
        if self.nodes[1 - i].m.is_some() && self.nodes[1 - i].alive && !self.nodes[i].believes_peer
        {
            self.stats.failovers += 1;
        }
        if self.nodes[i].partial {
            let what = format!("{} becomes primary on a copy that is mid-resync", NAMES[i]);
            self.violate(what);
        }
        let missing = self.missing_on(i);
        if !missing.is_empty() {
            let what = format!(
                "{} becomes primary on stale data: acknowledged writes {missing:?} are not on it",
                NAMES[i]
            );
            self.violate(what);
        }
    }

    /// Without a witness, what node `i` does as primary now may fork the data: the other
    /// node is alive behind a cut link (it may fail over), or primary itself.
    fn may_fork(&self, i: usize) -> bool {
        let other = &self.nodes[1 - i];
        !self.setup.witness && (!self.link_up && other.alive || other.acting_primary())
    }

    /// An operator chose node `i`'s data: what it lacks is given up.
    fn forgive_missing(&mut self, i: usize) {
        let missing: Vec<u64> = self
            .acked
            .keys()
            .filter(|id| !self.nodes[i].data.contains(id))
            .copied()
            .collect();
        self.forgiven.extend(missing);
    }

    fn on_verb_done(&mut self, i: usize, verb: Verb, result: Result<StateKind, String>) {
        let Some(pos) = self.nodes[i].verbs.iter().position(|(v, _)| *v == verb) else {
            return self.violate(format!(
                "{}: an outcome for `{verb}` that nobody asked for",
                NAMES[i]
            ));
        };
        self.nodes[i].verbs.remove(pos);
        let name = verb.to_string();
        match result {
            Ok(state) => {
                *self.stats.verbs_ok.entry(name).or_default() += 1;
                use StateKind as S;
                let documented: &[StateKind] = match verb {
                    Verb::Start | Verb::Restart => &[S::Alone, S::Prim, S::Second, S::Wait],
                    Verb::Stop | Verb::Forcestop => &[S::Stop],
                    Verb::Prim => &[S::Alone, S::Prim, S::Restarting],
                    Verb::Second => &[S::Second, S::Wait],
                    Verb::Swap => &[S::Second, S::Alone, S::Prim],
                };
                if !documented.contains(&state) {
                    self.violate(format!(
                        "{}: `{verb}` ended in {state}, not a documented end",
                        NAMES[i]
                    ));
                }
                if verb == Verb::Prim {
                    self.forgive_missing(i);
                }
            }
            Err(e) => {
                *self.stats.verbs_err.entry(name).or_default() += 1;
                if e.is_empty() {
                    self.violate(format!("{}: `{verb}` failed without saying why", NAMES[i]));
                }
            }
        }
    }

    /// Acknowledged writes owed to node `i` (not forgiven by an operator, not of another
    /// branch of an allowed split brain) that it lacks.
    pub fn missing_on(&self, i: usize) -> Vec<u64> {
        self.acked
            .iter()
            .filter(|(id, a)| {
                !a.exempt && !self.forgiven.contains(id) && !self.nodes[i].data.contains(id)
            })
            .map(|(id, _)| *id)
            .take(5)
            .collect()
    }

    /// The invariants, checked now (the world checks them after every event itself).
    pub fn check_now(&mut self) {
        self.check();
    }

    /// Checked after every event.
    fn check(&mut self) {
        let acting: Vec<usize> = (0..2).filter(|&i| self.nodes[i].acting_primary()).collect();
        if acting.len() == 2 {
            if self.setup.witness {
                self.violate("two primaries although a witness is configured".to_owned());
            }
            let hear = self.link_up && self.nodes[0].believes_peer && self.nodes[1].believes_peer;
            match self.dual_since {
                None if hear => {
                    self.stats.dual_primaries += 1;
                    self.dual_since = Some(self.now);
                }
                Some(t) if hear && self.now - t > DUAL_BOUND_MS => {
                    self.violate(format!(
                        "two primaries that hear each other for more than {DUAL_BOUND_MS} ms"
                    ));
                }
                Some(_) if !hear => self.dual_since = None,
                _ => {}
            }
        } else {
            self.dual_since = None;
        }
        for (i, name) in NAMES.iter().enumerate() {
            let n = &self.nodes[i];
            if !n.alive {
                continue;
            }
            let state = n.state();
            if n.acting_primary() && n.partial && !n.forced_term {
                self.violate(format!("{} is primary on a copy that is mid-resync", name));
            }
            let n = &self.nodes[i];
            let holds = n.mounted || n.vip || n.app;
            if holds
                && matches!(
                    state,
                    Some(
                        StateKind::Stop | StateKind::Starting | StateKind::Wait | StateKind::Second
                    )
                )
            {
                let what = format!(
                    "{} is {:?} but still holds mount={} vip={} app={}",
                    name, state, n.mounted, n.vip, n.app
                );
                self.violate(what);
            }
            if let Some((verb, at)) = self.nodes[i].verbs.front() {
                if self.now - at > VERB_BOUND_MS {
                    let what = format!(
                        "{}: `{verb}` issued at {at} ms has no outcome after {VERB_BOUND_MS} ms",
                        name
                    );
                    self.violate(what);
                }
            }
        }
    }

    // ---- heartbeats ----

    fn heartbeats_changed(&mut self) {
        for i in 0..2 {
            if !self.nodes[i].alive {
                continue;
            }
            self.hb_epoch[i] += 1;
            let visible = self.link_up && self.nodes[1 - i].alive;
            let base = if visible { HB_SEEN_MS } else { HB_LOST_MS };
            let at = self.now + base + self.rng.gen_range(0..HB_JITTER_MS);
            let (inc, epoch) = (self.nodes[i].inc, self.hb_epoch[i]);
            self.schedule(
                at,
                Payload::Heartbeat {
                    node: i,
                    inc,
                    epoch,
                },
            );
            if !visible {
                let at = self.now + HB_FADE_MS + self.rng.gen_range(0..HB_JITTER_MS);
                self.schedule(
                    at,
                    Payload::Fading {
                        node: i,
                        inc,
                        epoch,
                    },
                );
            }
        }
    }
}

pub fn short_event(ev: &Event) -> String {
    match ev {
        Event::Peer(PeerMsg::Status(s)) => format!("status {} {}", s.node, s.state),
        Event::Mirror(MirrorEvent::ResyncStarting { source, full }) => {
            format!("ResyncStarting(gen {:?}, full {full})", source.current)
        }
        Event::Mirror(MirrorEvent::InSync { source }) => {
            format!("InSync(gen {:?})", source.current)
        }
        other => format!("{other:?}"),
    }
}

fn gen_text(g: Option<GenId>) -> String {
    g.map_or_else(|| "-".to_owned(), |g| format!("{:04x}", g.0 >> 48))
}

pub fn short_action(a: &Action) -> String {
    match a {
        Action::Persist(d) => format!(
            "Persist(gen {} bitmap {} history {:?} {:?} consistent {} peer_in_sync {} outdated {} forced {})",
            gen_text(d.current),
            gen_text(d.bitmap),
            d.history.iter().map(|g| gen_text(Some(*g))).collect::<Vec<_>>(),
            d.role,
            d.consistent,
            d.peer_in_sync,
            d.outdated,
            d.forced
        ),
        Action::Log { level, text } => format!("{level:?}: {text}"),
        Action::Send(PeerMsg::Status(s)) => format!("status {}", s.state),
        other => format!("{other:?}"),
    }
}
