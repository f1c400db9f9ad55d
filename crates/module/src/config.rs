//! The schema of `module.toml`: the typed, validated settings of one module.
//!
//! Values of these types come out of [`crate::check_module_dir`] (or
//! [`crate::check_module_source`]) only after every rule of `docs/modules.md` passed; the serde
//! derives exist so that the daemon can show a module's settings (console, REST API) and so that a
//! test can prove that the checker and the serde view of the schema agree. They are not the way to
//! read an operator's file: serde stops at the first error, the checker reports them all.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Name of the file that declares a module, at the top of its folder.
pub const MODULE_FILE: &str = "module.toml";
/// A larger `module.toml` is refused before parsing: a module file is a page, not a data set.
pub const MODULE_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// Longest module or checker name. Names appear in paths (`/run/mirrorkit/<name>`), URLs and logs.
pub const NAME_MAX_BYTES: usize = 32;
/// Longest node name; the same rule as `mirrorkit_net::pki::validate_node_name` (one DNS label).
pub const NODE_NAME_MAX_BYTES: usize = 63;
/// Longest description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 200;
/// Linux `IFNAMSIZ` (16) less the terminating NUL.
pub const INTERFACE_NAME_MAX_BYTES: usize = 15;
/// Linux `TASK_COMM_LEN` (16) less the NUL: `/proc/PID/comm` never holds more.
pub const PROCESS_NAME_MAX_BYTES: usize = 15;
/// Longest absolute path Linux accepts (`PATH_MAX` less the NUL).
pub const PATH_MAX_BYTES: usize = 4095;

/// Bounds on the number of entries of each list (a module file is read whole into memory).
pub const MAX_MIRRORS: usize = 16;
pub const MAX_PATTERNS: usize = 256;
pub const MAX_VIPS: usize = 16;
pub const MAX_CHECKERS: usize = 32;
pub const MAX_ENV_VARS: usize = 64;
pub const ENV_NAME_MAX_BYTES: usize = 128;
pub const ENV_VALUE_MAX_BYTES: usize = 4096;
/// Prefix of the variables the daemon sets for scripts; `[env]` may not use it.
pub const RESERVED_ENV_PREFIX: &str = "MIRRORKIT_";

/// Longest a script may run before the daemon stops it, unless `timeout_ms` says otherwise.
pub const DEFAULT_SCRIPT_TIMEOUT_MS: u64 = 60_000;
pub const SCRIPT_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 100..=86_400_000;

/// After a script's timeout, the daemon sends SIGTERM to its process group, then SIGKILL after
/// this long.
pub const SCRIPT_KILL_GRACE_MS: u64 = 5_000;

/// The variables the daemon sets for every script and script checker (docs/modules.md, "Script
/// environment"), on top of `PATH` and the module's `[env]`.
pub const SCRIPT_ENV_VARS: &[&str] = &[
    "MIRRORKIT_MODULE",
    "MIRRORKIT_NODE",
    "MIRRORKIT_ROLE",
    "MIRRORKIT_SCRIPT",
    "MIRRORKIT_RUN_DIR",
    "MIRRORKIT_VIP",
    "MIRRORKIT_MIRROR_DIR",
    "MIRRORKIT_MIRROR_DIRS",
    "MIRRORKIT_MODULE_DIR",
    "MIRRORKIT_CHECKER",
];
/// `PATH` of scripts, unless `[env]` sets one.
pub const SCRIPT_DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub const DEFAULT_CHECK_INTERVAL_MS: u64 = 5_000;
pub const CHECK_INTERVAL_MS_RANGE: RangeInclusive<u64> = 100..=86_400_000;
/// Default timeout of one check; capped at the checker's interval when that is shorter.
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 2_000;
/// A check's timeout is at least this and at most the checker's `interval_ms`.
pub const CHECK_TIMEOUT_MS_MIN: u64 = 10;
pub const DEFAULT_CHECK_RETRIES: u32 = 2;
pub const CHECK_RETRIES_MAX: u32 = 100;
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
pub const MAX_RESTARTS_MAX: u32 = 100;
pub const DEFAULT_RESTART_WINDOW_MS: u64 = 600_000;
pub const RESTART_WINDOW_MS_RANGE: RangeInclusive<u64> = 1_000..=604_800_000;

/// `[replication]`: how long the primary waits for its peer, and how fast a resync may go.
pub const DEFAULT_PEER_TIMEOUT_MS: u64 = 3_000;
pub const PEER_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 500..=600_000;
pub const RESYNC_LIMIT_MIB_PER_S_RANGE: RangeInclusive<u64> = 1..=1_000_000;

/// Longest a notification (its command, or its webhook request) may take, unless `timeout_ms`
/// says otherwise.
pub const DEFAULT_NOTIFY_TIMEOUT_MS: u64 = 10_000;
pub const NOTIFY_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 100..=120_000;
/// Notifications of one module waiting to be delivered; past this, the oldest are dropped (and
/// that is logged).
pub const NOTIFY_QUEUE_MAX: usize = 100;
/// Longest webhook URL.
pub const WEBHOOK_URL_MAX_BYTES: usize = 2048;
/// The variables a notification command gets (docs/modules.md, "`[notify]`"), on top of the
/// module's `[env]`. The same values, as JSON, are on its standard input.
pub const NOTIFY_ENV_VARS: &[&str] = &[
    "MIRRORKIT_NOTIFY_CLUSTER",
    "MIRRORKIT_NOTIFY_MODULE",
    "MIRRORKIT_NOTIFY_NODE",
    "MIRRORKIT_NOTIFY_OLD_STATE",
    "MIRRORKIT_NOTIFY_NEW_STATE",
    "MIRRORKIT_NOTIFY_REASON",
    "MIRRORKIT_NOTIFY_TIME",
    "MIRRORKIT_NOTIFY_TIME_MS",
];

/// Everything one `module.toml` declares, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    /// Identifier of the module, unique in the cluster.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Node preferred as primary when both may be; `None`: no preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_primary: Option<String>,
    /// Move the module back to `default_primary` when that node returns in sync.
    #[serde(default)]
    pub failback: bool,
    /// Start the module when the daemon starts.
    #[serde(default = "yes")]
    pub autostart: bool,
    #[serde(default)]
    pub heartbeat: HeartbeatProfile,
    #[serde(default, rename = "mirror", skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    #[serde(default, rename = "vip", skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<Vip>,
    #[serde(default)]
    pub scripts: Scripts,
    /// Extra environment variables for every script and script checker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, rename = "checker", skip_serializing_if = "Vec::is_empty")]
    pub checkers: Vec<Checker>,
    /// `[notify]`: what to tell, and how, when the module's state changes on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// `[replication]`: the primary's patience with its peer and the resync's speed limit.
    #[serde(default, skip_serializing_if = "Replication::is_default")]
    pub replication: Replication,
}

/// `[replication]` (docs/modules.md): applied when the module is next mounted as primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// Longest an application write waits for the peer's acknowledgement before the primary
    /// goes on alone (recording what the peer lacks). The heartbeats usually notice a dead
    /// peer sooner; this bounds the wait when only the replication path is broken.
    #[serde(default = "default_peer_timeout_ms")]
    pub peer_timeout_ms: u64,
    /// Most MiB of file data per second a resync sends (`None`: as fast as disks and network
    /// go). The application's own writes are never limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_limit_mib_per_s: Option<u64>,
}

fn default_peer_timeout_ms() -> u64 {
    DEFAULT_PEER_TIMEOUT_MS
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            peer_timeout_ms: DEFAULT_PEER_TIMEOUT_MS,
            resync_limit_mib_per_s: None,
        }
    }
}

impl Replication {
    pub fn is_default(&self) -> bool {
        *self == Replication::default()
    }

    /// The resync limit in bytes per second.
    pub fn resync_bytes_per_sec(&self) -> Option<u64> {
        self.resync_limit_mib_per_s
            .map(|m| m.saturating_mul(1 << 20))
    }
}

fn yes() -> bool {
    true
}

/// How fast the cluster manager declares the peer lost. The values live here so that the
/// documentation, the checker and the cluster manager read one definition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatProfile {
    /// Heartbeat every 250 ms, peer lost after 1500 ms of silence.
    #[default]
    Default,
    /// Heartbeat every 100 ms, peer lost after 500 ms: for dedicated, quiet links only.
    Fast,
}

impl HeartbeatProfile {
    pub const NAMES: &'static [&'static str] = &["default", "fast"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::Default),
            "fast" => Some(Self::Fast),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Fast => "fast",
        }
    }

    pub fn interval_ms(self) -> u64 {
        match self {
            Self::Default => 250,
            Self::Fast => 100,
        }
    }

    pub fn peer_lost_after_ms(self) -> u64 {
        match self {
            Self::Default => 1_500,
            Self::Fast => 500,
        }
    }
}

/// One replicated directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Absolute, normalised (no `.`, `..`, repeated or trailing `/`).
    pub dir: PathBuf,
    /// Glob patterns relative to `dir` selecting what is replicated; default: everything.
    #[serde(default = "include_all")]
    pub include: Vec<String>,
    /// Glob patterns relative to `dir` taken out of the selection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// The default `include`: every path under the directory.
pub const INCLUDE_ALL: &str = "**";

fn include_all() -> Vec<String> {
    vec![INCLUDE_ALL.to_owned()]
}

/// An IP address with the prefix length of its subnet, written `ADDRESS/PREFIX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for IpPrefix {
    type Err = String;

    /// Parses and checks the address as a virtual IP (see `crate::rules::parse_vip_address`).
    fn from_str(s: &str) -> Result<Self, String> {
        crate::rules::parse_vip_address(s)
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A virtual IP: added to `interface` on the node where the module is primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub address: IpPrefix,
    pub interface: String,
}

/// The six script slots, in the order of their fields in `[scripts]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScriptKind {
    Prestart,
    StartBoth,
    StartPrim,
    StopPrim,
    StopBoth,
    Poststop,
}

impl ScriptKind {
    pub const ALL: [ScriptKind; 6] = [
        ScriptKind::Prestart,
        ScriptKind::StartBoth,
        ScriptKind::StartPrim,
        ScriptKind::StopPrim,
        ScriptKind::StopBoth,
        ScriptKind::Poststop,
    ];

    /// Scripts run when the module starts on a node that becomes primary, in this order. A node
    /// that starts as secondary runs the first two; a secondary that becomes primary runs
    /// `start_prim`.
    pub const START_ORDER: [ScriptKind; 3] = [
        ScriptKind::Prestart,
        ScriptKind::StartBoth,
        ScriptKind::StartPrim,
    ];

    /// Scripts run when the module stops on its primary, in this order: the reverse of
    /// [`Self::START_ORDER`]. A secondary runs the last two; a primary that becomes secondary runs
    /// `stop_prim`.
    pub const STOP_ORDER: [ScriptKind; 3] = [
        ScriptKind::StopPrim,
        ScriptKind::StopBoth,
        ScriptKind::Poststop,
    ];

    /// The key of this slot in `[scripts]`.
    pub fn key(self) -> &'static str {
        match self {
            ScriptKind::Prestart => "prestart",
            ScriptKind::StartBoth => "start_both",
            ScriptKind::StartPrim => "start_prim",
            ScriptKind::StopPrim => "stop_prim",
            ScriptKind::StopBoth => "stop_both",
            ScriptKind::Poststop => "poststop",
        }
    }

    /// The slot that undoes this one, for the pairs that must be declared together.
    pub fn counterpart(self) -> Option<ScriptKind> {
        match self {
            ScriptKind::StartPrim => Some(ScriptKind::StopPrim),
            ScriptKind::StopPrim => Some(ScriptKind::StartPrim),
            ScriptKind::StartBoth => Some(ScriptKind::StopBoth),
            ScriptKind::StopBoth => Some(ScriptKind::StartBoth),
            ScriptKind::Prestart | ScriptKind::Poststop => None,
        }
    }
}

impl fmt::Display for ScriptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The module's scripts; each slot is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scripts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prestart: Option<Script>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_both: Option<Script>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_prim: Option<Script>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_prim: Option<Script>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_both: Option<Script>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poststop: Option<Script>,
}

impl Scripts {
    pub fn get(&self, kind: ScriptKind) -> Option<&Script> {
        self.slot(kind).as_ref()
    }

    pub(crate) fn set(&mut self, kind: ScriptKind, script: Script) {
        *self.slot_mut(kind) = Some(script);
    }

    fn slot(&self, kind: ScriptKind) -> &Option<Script> {
        match kind {
            ScriptKind::Prestart => &self.prestart,
            ScriptKind::StartBoth => &self.start_both,
            ScriptKind::StartPrim => &self.start_prim,
            ScriptKind::StopPrim => &self.stop_prim,
            ScriptKind::StopBoth => &self.stop_both,
            ScriptKind::Poststop => &self.poststop,
        }
    }

    fn slot_mut(&mut self, kind: ScriptKind) -> &mut Option<Script> {
        match kind {
            ScriptKind::Prestart => &mut self.prestart,
            ScriptKind::StartBoth => &mut self.start_both,
            ScriptKind::StartPrim => &mut self.start_prim,
            ScriptKind::StopPrim => &mut self.stop_prim,
            ScriptKind::StopBoth => &mut self.stop_both,
            ScriptKind::Poststop => &mut self.poststop,
        }
    }

    /// The declared scripts, in [`ScriptKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ScriptKind, &Script)> {
        ScriptKind::ALL
            .into_iter()
            .filter_map(|k| self.get(k).map(|s| (k, s)))
    }
}

/// One script: a file of the module folder and the longest it may run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ScriptSpec")]
pub struct Script {
    /// Relative to the module folder, inside it.
    pub path: PathBuf,
    pub timeout_ms: u64,
}

/// The two ways to write a script in `module.toml`: `start_prim = "start_prim"`, or
/// `start_prim = { path = "start_prim", timeout_ms = 120000 }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScriptSpec {
    Path(PathBuf),
    Table(ScriptTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptTable {
    path: PathBuf,
    #[serde(default = "default_script_timeout_ms")]
    timeout_ms: u64,
}

fn default_script_timeout_ms() -> u64 {
    DEFAULT_SCRIPT_TIMEOUT_MS
}

impl From<ScriptSpec> for Script {
    fn from(spec: ScriptSpec) -> Self {
        match spec {
            ScriptSpec::Path(path) => Script {
                path,
                timeout_ms: DEFAULT_SCRIPT_TIMEOUT_MS,
            },
            ScriptSpec::Table(t) => Script {
                path: t.path,
                timeout_ms: t.timeout_ms,
            },
        }
    }
}

/// What a checker does when a check failed `retries + 1` times in a row.
///
/// The default depends on the checker's [`CheckerScope`] ([`default_check_action`]):
/// `Restart` for application checkers, `Failover` for node checkers (which may not restart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckAction {
    /// Restart the module on this node (stop then start), up to `max_restarts` times within
    /// `restart_window_ms`; the next failure fails over. Application checkers only.
    #[default]
    Restart,
    /// Fail over to the other node at once.
    Failover,
}

impl CheckAction {
    pub const NAMES: &'static [&'static str] = &["restart", "failover"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "restart" => Some(Self::Restart),
            "failover" => Some(Self::Failover),
            _ => None,
        }
    }
}

/// What a checker probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A process is alive: found by name, or by the PID its pid file holds.
    Process(ProcessTarget),
    /// A TCP connection to `address` is accepted within the timeout.
    Tcp { address: SocketAddr },
    /// A script of the module folder exits 0 within the timeout.
    Script { path: PathBuf },
    /// An ICMP echo reply comes back from `target` within the timeout (a node checker).
    Ping { target: IpAddr },
    /// The network interface exists, is up and has a carrier (a node checker).
    Interface { interface: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessTarget {
    /// Some process whose `/proc/PID/comm` equals this name.
    Name(String),
    /// The process whose PID this file holds; relative paths are in `MIRRORKIT_RUN_DIR`.
    PidFile(PathBuf),
}

impl Probe {
    pub const KIND_NAMES: &'static [&'static str] =
        &["process", "tcp", "script", "ping", "interface"];
    /// The kinds of node checkers, which watch the node's own network.
    pub const NODE_KIND_NAMES: &'static [&'static str] = &["ping", "interface"];

    pub fn kind_name(&self) -> &'static str {
        match self {
            Probe::Process(_) => "process",
            Probe::Tcp { .. } => "tcp",
            Probe::Script { .. } => "script",
            Probe::Ping { .. } => "ping",
            Probe::Interface { .. } => "interface",
        }
    }

    pub fn scope(&self) -> CheckerScope {
        CheckerScope::of_kind(self.kind_name())
    }
}

/// What a checker watches, which decides where it runs and what its failures lead to
/// (docs/modules.md, "`[[checker]]`").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckerScope {
    /// `process`, `tcp`, `script`: the application; runs on the primary only, while the
    /// application runs; restarts it or fails over.
    Application,
    /// `ping`, `interface`: the node's own network; runs on every node where the module is
    /// started; on the primary it gives the role away, elsewhere it makes the node ineligible.
    Node,
}

impl CheckerScope {
    /// The scope of a checker kind (`"ping"` → `Node`); unknown kinds are `Application`.
    pub fn of_kind(kind: &str) -> CheckerScope {
        if Probe::NODE_KIND_NAMES.contains(&kind) {
            CheckerScope::Node
        } else {
            CheckerScope::Application
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CheckerScope::Application => "application",
            CheckerScope::Node => "node",
        }
    }
}

impl fmt::Display for CheckerScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The action of a checker that does not say: application checkers restart, node checkers fail
/// over (restarting the application does not bring a network back).
pub fn default_check_action(scope: CheckerScope) -> CheckAction {
    match scope {
        CheckerScope::Application => CheckAction::Restart,
        CheckerScope::Node => CheckAction::Failover,
    }
}

/// One `[[checker]]`, run by `mirrorkit-checkers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawChecker", into = "RawChecker")]
pub struct Checker {
    pub name: String,
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Failed checks tolerated in a row; the action runs on failure number `retries + 1`.
    pub retries: u32,
    /// Always [`CheckAction::Failover`] for node checkers.
    pub action: CheckAction,
    /// With `action = "restart"`: local restarts within `restart_window_ms` before failing over.
    /// (The defaults, unused, otherwise.)
    pub max_restarts: u32,
    pub restart_window_ms: u64,
}

impl Checker {
    pub fn scope(&self) -> CheckerScope {
        self.probe.scope()
    }
}

/// A checker as written in TOML: one flat table whose `kind` says which other fields apply.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChecker {
    name: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    script: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<CheckAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_restarts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restart_window_ms: Option<u64>,
}

impl TryFrom<RawChecker> for Checker {
    type Error = String;

    fn try_from(r: RawChecker) -> Result<Self, String> {
        let probe = match (
            r.kind.as_str(),
            r.process_name,
            r.pid_file,
            r.address,
            r.script,
            r.target,
            r.interface,
        ) {
            ("process", Some(name), None, None, None, None, None) => {
                Probe::Process(ProcessTarget::Name(name))
            }
            ("process", None, Some(file), None, None, None, None) => {
                Probe::Process(ProcessTarget::PidFile(file))
            }
            ("tcp", None, None, Some(address), None, None, None) => Probe::Tcp { address },
            ("script", None, None, None, Some(path), None, None) => Probe::Script { path },
            ("ping", None, None, None, None, Some(target), None) => Probe::Ping { target },
            ("interface", None, None, None, None, None, Some(interface)) => {
                Probe::Interface { interface }
            }
            (kind, ..) => {
                return Err(format!(
                    "checker {:?}: kind {kind:?} with the wrong kind-specific fields \
                     (process: process_name or pid_file; tcp: address; script: script; \
                     ping: target; interface: interface)",
                    r.name
                ))
            }
        };
        let scope = probe.scope();
        let action = r.action.unwrap_or(default_check_action(scope));
        if scope == CheckerScope::Node
            && (action == CheckAction::Restart
                || r.max_restarts.is_some()
                || r.restart_window_ms.is_some())
        {
            return Err(format!(
                "checker {:?}: a {} checker never restarts the application: no action = \
                 \"restart\", max_restarts or restart_window_ms",
                r.name,
                probe.kind_name()
            ));
        }
        let interval_ms = r.interval_ms.unwrap_or(DEFAULT_CHECK_INTERVAL_MS);
        Ok(Checker {
            name: r.name,
            probe,
            interval_ms,
            timeout_ms: r
                .timeout_ms
                .unwrap_or_else(|| default_check_timeout_ms(interval_ms)),
            retries: r.retries.unwrap_or(DEFAULT_CHECK_RETRIES),
            action,
            max_restarts: r.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS),
            restart_window_ms: r.restart_window_ms.unwrap_or(DEFAULT_RESTART_WINDOW_MS),
        })
    }
}

impl From<Checker> for RawChecker {
    fn from(c: Checker) -> Self {
        let mut raw = RawChecker {
            name: c.name,
            kind: c.probe.kind_name().to_owned(),
            process_name: None,
            pid_file: None,
            address: None,
            script: None,
            target: None,
            interface: None,
            interval_ms: Some(c.interval_ms),
            timeout_ms: Some(c.timeout_ms),
            retries: Some(c.retries),
            action: Some(c.action),
            max_restarts: None,
            restart_window_ms: None,
        };
        if c.action == CheckAction::Restart {
            raw.max_restarts = Some(c.max_restarts);
            raw.restart_window_ms = Some(c.restart_window_ms);
        }
        match c.probe {
            Probe::Process(ProcessTarget::Name(n)) => raw.process_name = Some(n),
            Probe::Process(ProcessTarget::PidFile(p)) => raw.pid_file = Some(p),
            Probe::Tcp { address } => raw.address = Some(address),
            Probe::Script { path } => raw.script = Some(path),
            Probe::Ping { target } => raw.target = Some(target),
            Probe::Interface { interface } => raw.interface = Some(interface),
        }
        raw
    }
}

/// A check may not outlast its interval, so the default timeout shrinks with short intervals.
pub fn default_check_timeout_ms(interval_ms: u64) -> u64 {
    DEFAULT_CHECK_TIMEOUT_MS.min(interval_ms)
}

/// `[notify]`: a command and/or a webhook told of every state change of the module on this node
/// (docs/modules.md, "`[notify]`"). At least one of the two is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawNotify", into = "RawNotify")]
pub struct Notify {
    /// A file of the module folder, relative to it (checked like a script).
    pub command: Option<PathBuf>,
    /// Receives an HTTP POST of the notification as JSON.
    pub webhook: Option<WebhookUrl>,
    /// Longest one delivery (the command's run, or the webhook's request) may take.
    pub timeout_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    webhook: Option<WebhookUrl>,
    #[serde(default = "default_notify_timeout_ms")]
    timeout_ms: u64,
}

fn default_notify_timeout_ms() -> u64 {
    DEFAULT_NOTIFY_TIMEOUT_MS
}

impl TryFrom<RawNotify> for Notify {
    type Error = String;

    fn try_from(r: RawNotify) -> Result<Self, String> {
        if r.command.is_none() && r.webhook.is_none() {
            return Err("[notify] needs a command, a webhook, or both".to_owned());
        }
        Ok(Notify {
            command: r.command,
            webhook: r.webhook,
            timeout_ms: r.timeout_ms,
        })
    }
}

impl From<Notify> for RawNotify {
    fn from(n: Notify) -> Self {
        RawNotify {
            command: n.command,
            webhook: n.webhook,
            timeout_ms: n.timeout_ms,
        }
    }
}

/// A validated `http://` or `https://` URL for a webhook (see
/// [`crate::rules::parse_webhook_url`]): `SCHEME://[USERINFO@]HOST[:PORT][/PATH][?QUERY]`,
/// ASCII, without white space, control characters or fragment. The host may be a name (it is
/// resolved when a notification is sent), an IPv4 address or a bracketed IPv6 address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WebhookUrl {
    pub(crate) text: String,
    pub(crate) https: bool,
    pub(crate) userinfo: Option<String>,
    /// Without brackets for IPv6.
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    /// Starts with `/`; `/` when the URL has no path.
    pub(crate) path_and_query: String,
}

impl WebhookUrl {
    /// The URL as written in `module.toml`. It may hold credentials: log [`Self::redacted`].
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_https(&self) -> bool {
        self.https
    }

    /// `user` or `user:password` before the `@`, as written (percent-encoded).
    pub fn userinfo(&self) -> Option<&str> {
        self.userinfo.as_deref()
    }

    /// The host: a name, an IPv4 address, or an IPv6 address without its brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port: written, or 443 for https and 80 for http.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.https { 443 } else { 80 })
    }

    /// The path and query to request: starts with `/`.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The URL with the password of its userinfo, if any, replaced by `***`: for logs.
    pub fn redacted(&self) -> String {
        let scheme = if self.https { "https://" } else { "http://" };
        match (&self.userinfo, self.text.get(scheme.len()..)) {
            (Some(info), Some(rest)) if info.contains(':') => {
                let user = info.split(':').next().unwrap_or_default();
                let after = rest.get(info.len()..).unwrap_or_default();
                format!("{scheme}{user}:***{after}")
            }
            _ => self.text.clone(),
        }
    }
}

impl fmt::Display for WebhookUrl {
    /// The redacted form: a password never reaches a log through `Display`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for WebhookUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        crate::rules::parse_webhook_url(s)
    }
}

impl Serialize for WebhookUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
