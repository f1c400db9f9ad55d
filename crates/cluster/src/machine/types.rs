//! The vocabulary of the module state machine: its configuration, the events it takes and
//! the actions it asks for. Everything here is plain data; the shell turns actions into I/O
//! and I/O results into events.

use serde::{Deserialize, Serialize};

use crate::generation::{DataState, GenId};

/// Identifies one asynchronous action, so that its result (or a late, stale one) can be
/// matched. Unique within one machine's life.
pub type OpId = u64;

/// One module's cluster settings, identical on both nodes except `node` and `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The module's name, in every log line.
    pub module: String,
    /// This node's name.
    pub node: String,
    /// The other node's name.
    pub peer: String,
    /// The node that leads when both hold the same data (and the target of failback).
    pub default_primary: Option<String>,
    /// Move the application back to `default_primary` as soon as it is in sync again.
    pub failback: bool,
    /// A witness arbitrates the primary role: a node becomes and stays primary only while the
    /// witness grants it.
    pub witness: bool,
    /// At start, how long to wait to hear from the peer before deciding without it.
    pub peer_wait_ms: u64,
    /// Longest run of one batch of scripts before it counts as failed.
    pub script_timeout_ms: u64,
    /// Longest wait for a mount, unmount, virtual IP change, barrier or witness answer.
    pub step_timeout_ms: u64,
    /// Longest wait for the peer's part of a swap (handing over, or taking over).
    pub swap_timeout_ms: u64,
    /// While waiting (WAIT), how often the decision is taken again (witness retries).
    pub retry_ms: u64,
    /// How often this node's status is sent to the peer even when nothing changed.
    pub status_resend_ms: u64,
}

impl Config {
    /// The defaults: wait 10 s for the peer at start, 120 s for scripts, 30 s for other
    /// steps, 300 s for a swap, retry every 5 s, resend the status every second.
    pub fn new(module: &str, node: &str, peer: &str) -> Config {
        Config {
            module: module.to_owned(),
            node: node.to_owned(),
            peer: peer.to_owned(),
            default_primary: None,
            failback: false,
            witness: false,
            peer_wait_ms: 10_000,
            script_timeout_ms: 120_000,
            step_timeout_ms: 30_000,
            swap_timeout_ms: 300_000,
            retry_ms: 5_000,
            status_resend_ms: 1_000,
        }
    }
}

/// An operator's command on the module (CLI, console, or the node itself at boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Start,
    Stop,
    Restart,
    Swap,
    Prim,
    Second,
    Forcestop,
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Swap => "swap",
            Verb::Prim => "prim",
            Verb::Second => "second",
            Verb::Forcestop => "forcestop",
        })
    }
}

/// The state of a module on a node, as shown to operators and sent to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum StateKind {
    /// Stopped on this node.
    Stop,
    /// Started; choosing a role (waiting, boundedly, to hear from the peer).
    Starting,
    /// Started, but may not become primary now; the reason says why and what to do.
    Wait,
    /// Becoming primary (witness, data generation, mount, virtual IP, start scripts).
    Promoting,
    /// Primary, peer not in sync: changes are recorded for its resync.
    Alone,
    /// Primary, peer in sync.
    Prim,
    /// Primary, restarting the application in place (`restart`, or a checker).
    Restarting,
    /// Leaving the primary role (stop scripts, barrier, unmount, virtual IP).
    Demoting,
    /// Secondary: in sync, or resyncing (with progress), or waiting for the primary's mirror.
    Second,
}

impl StateKind {
    /// The name shown to operators.
    pub fn name(self) -> &'static str {
        match self {
            StateKind::Stop => "STOP",
            StateKind::Starting => "STARTING",
            StateKind::Wait => "WAIT",
            StateKind::Promoting => "PROMOTING",
            StateKind::Alone => "ALONE",
            StateKind::Prim => "PRIM",
            StateKind::Restarting => "RESTARTING",
            StateKind::Demoting => "DEMOTING",
            StateKind::Second => "SECOND",
        }
    }

    /// The console's colour (PRODUCT.md, "States of a module on a node").
    pub fn colour(self) -> &'static str {
        match self {
            StateKind::Stop | StateKind::Wait => "red",
            StateKind::Alone => "orange",
            StateKind::Prim | StateKind::Second => "green",
            StateKind::Starting
            | StateKind::Promoting
            | StateKind::Restarting
            | StateKind::Demoting => "grey",
        }
    }

    /// Holds, or is taking, the primary role (not leaving it): a peer in this state is
    /// followed, never competed with.
    pub fn is_primary(self) -> bool {
        matches!(
            self,
            StateKind::Promoting | StateKind::Alone | StateKind::Prim | StateKind::Restarting
        )
    }
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Progress of a resync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

impl Progress {
    /// Whole percent done (0 when the total is not known yet).
    pub fn percent(self) -> u64 {
        let done = u128::from(self.done_bytes.min(self.total_bytes));
        let pct = (done * 100).checked_div(u128::from(self.total_bytes));
        pct.and_then(|p| u64::try_from(p).ok()).unwrap_or(0)
    }
}

/// What the console and the CLI show for the module on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: StateKind,
    /// What happened and, when something is needed, what to do.
    pub reason: String,
    /// When the node entered `state`.
    pub since_ms: u64,
    /// A resync in progress (as its source or its target).
    pub progress: Option<Progress>,
    /// The nodes' data diverged: an operator must choose the survivor.
    pub split_brain: bool,
}

/// What a node tells its peer about the module, on every change and every
/// `status_resend_ms`. The latest one replaces all earlier ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The sender's node name (checked against `Config::peer`).
    pub node: String,
    /// Random per start of the sender's machine: with `seq`, orders statuses.
    pub boot: u64,
    pub seq: u64,
    pub state: StateKind,
    pub data: DataState,
    /// The sender would become primary if the data and the election allow it (false when
    /// stopped, started with `second`, blocked by a checker, or handing over).
    pub eligible: bool,
    /// As primary: the sender persisted a primary generation for this term, so it may
    /// have acknowledged writes. Decides who yields when both are primary.
    pub committed: bool,
    /// As primary (or claiming): an operator forced it (`prim`). Of two claims, a forced one
    /// beats an automatic one.
    pub forced: bool,
    /// As primary: the peer is in sync. As secondary: this copy holds every acknowledged write.
    pub in_sync: bool,
    /// The sender released the primary role for the receiver to take (swap, failback,
    /// checker failover), after proving the receiver holds every write.
    pub handover: bool,
    /// The latest status of the receiver that the sender had processed (its `boot` and
    /// `seq`): a claim to the primary role is answered once the answer has seen it.
    pub seen_boot: u64,
    pub seen_seq: u64,
    pub reason: String,
}

/// Messages between the two nodes' machines for one module (over the authenticated control
/// channel; in order per direction; any of them may be lost when the link breaks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    Status(PeerStatus),
    /// From the secondary, where an operator ran `swap`: please hand the application over.
    SwapRequest {
        who: String,
    },
    /// The primary cannot swap now.
    SwapRefused {
        reason: String,
    },
}

/// The module's scripts (module folder), run as a batch in the order given. The shell runs
/// the batches of one module one after the other, in the order they were asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    Prestart,
    StartBoth,
    StartPrim,
    StopPrim,
    StopBoth,
    Poststop,
}

/// Why an asynchronous action failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub detail: String,
    /// For scripts: the exit status, or `None` if killed (timeout, signal).
    pub exit_status: Option<i32>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.exit_status {
            Some(code) => write!(f, "{} (exit status {code})", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

/// Reports of the replication engine of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorEvent {
    /// Primary: the peer holds every write this node acknowledged (after a resync or at
    /// connection); writes are acknowledged on both from now on.
    PeerInSync,
    /// Primary: the session with the peer ended or failed (in sync or resyncing). Writes the
    /// peer misses are held (not acknowledged) from then until `Action::AllowAlone`.
    PeerOutOfSync { reason: String },
    /// Either side: a resync advances.
    ResyncProgress(Progress),
    /// Secondary: the primary (whose persisted data state is `source`) is about to resync
    /// this copy. The receiver applies nothing until `ProceedResync` or `RefuseResync`.
    ResyncStarting { source: DataState, full: bool },
    /// Secondary: this copy equals the primary's (`source`) and follows it write by write.
    InSync { source: DataState },
    /// Secondary: the session with the primary ended.
    SyncLost { reason: String },
    /// Secondary: the receiver could not run (port in use, disk error).
    ReceiverFailed { error: String },
}

/// Answers of the witness client. The client renews a granted claim by itself and reports a
/// lost grant as `Unreachable` (its lease ran out) or `Refused`, with the latest claim's op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WitnessEvent {
    Granted { op: OpId },
    Refused { op: OpId, reason: String },
    Unreachable { op: OpId },
}

/// What a checker asks for when it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckerPolicy {
    /// Restart the application in place.
    Restart,
    /// Move the application to the peer.
    Failover,
}

/// Timers the machine arms. Arming a timer again replaces its previous deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    Status,
    PeerWait,
    Retry,
    /// The deadline of one asynchronous action.
    Step(OpId),
    Swap,
}

/// Everything that can happen to the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// First event after `Machine::new`.
    Booted,
    Verb {
        verb: Verb,
        who: String,
    },
    Peer(PeerMsg),
    /// The heartbeat layer hears the peer again.
    PeerSeen,
    /// The heartbeat layer lost the peer (after its profile's detection time).
    PeerLost,
    /// The heartbeat layer has not heard the peer for a while, but for less than the time
    /// after which the peer itself may declare this node lost (its detection time less two
    /// heartbeat intervals): with a witness, a primary that holds no grant must leave now.
    PeerFading,
    /// An asynchronous action finished.
    Done {
        op: OpId,
        result: Result<(), Failure>,
    },
    Mirror(MirrorEvent),
    CheckerFailed {
        checker: String,
        policy: CheckerPolicy,
    },
    /// This node's own checks (its network: gateway, interface): `Some(problem)` while one
    /// fails, `None` once they pass again. A node with a problem is not eligible: it does not
    /// take the primary role, and as primary gives it to a peer that can take over.
    NodeHealth {
        problem: Option<String>,
    },
    Witness(WitnessEvent),
    Timer(Timer),
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// What the machine asks the shell to do. The shell performs the actions of one `handle` call
/// in order; the ones without an `op` are complete before the next action starts (a `Persist`
/// is durable, a `Fence` is in force); the ones with an `op` report an `Event::Done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the module's data state durably (atomic replace, fsync).
    Persist(DataState),
    /// One line of the node's event log.
    Log {
        level: Level,
        text: String,
    },
    Send(PeerMsg),
    ArmTimer {
        timer: Timer,
        at_ms: u64,
    },
    RunScripts {
        op: OpId,
        scripts: Vec<Script>,
    },
    /// Mount the mirror over the module's directories as primary. The data state is already
    /// persisted as primary; writes the peer misses may be acknowledged. `forced`: an
    /// operator forced this node primary (`prim`).
    MountPrimary {
        op: OpId,
        forced: bool,
    },
    /// The persisted data state records that the peer is out of sync: writes held since
    /// `PeerOutOfSync` may be acknowledged.
    AllowAlone,
    /// Prove that the peer holds every write acknowledged so far.
    Barrier {
        op: OpId,
    },
    Unmount {
        op: OpId,
    },
    TakeVip {
        op: OpId,
    },
    ReleaseVip {
        op: OpId,
    },
    /// Stop acknowledging writes on the mount now (fail them) and drop the virtual IP now.
    Fence,
    /// Kill the application's processes, detach the mount, drop the virtual IP and stop the
    /// receiver, without scripts (`forcestop`).
    ForceStop,
    /// Run the mirror receiver as secondary (it waits for the primary to connect).
    StartReceiver,
    StopReceiver,
    /// Answer to `ResyncStarting`: go on. `keep_aside`: files this copy holds that differ
    /// from the source are moved aside (never deleted) before being replaced.
    ProceedResync {
        keep_aside: bool,
    },
    /// Answer to `ResyncStarting` or `InSync`: end the session, change nothing.
    RefuseResync {
        reason: String,
    },
    /// Ask the witness for the primary role, or update the generation of a granted claim.
    /// The witness grants it if no other node holds a valid grant and, unless `force`, the
    /// generation it recorded last is `current` or in `history` (this data descends from the
    /// last data that may have acknowledged writes); it then records `current`. `force`: an
    /// operator forced this node (`prim`); a valid grant of the other node still wins.
    WitnessClaim {
        op: OpId,
        current: Option<GenId>,
        history: Vec<GenId>,
        force: bool,
    },
    /// Give up the primary role at the witness (stop renewing).
    WitnessRelease,
    /// The outcome of an operator's verb: the state it ended in, or why it failed.
    VerbDone {
        verb: Verb,
        who: String,
        result: Result<StateKind, String>,
    },
}
