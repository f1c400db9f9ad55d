//! One module on this node: what the daemon holds for it (its machine, scripts, checkers,
//! notifier, mount or receiver) and how a module folder becomes that record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use mirrorkit_cluster::machine::{Config as MachineConfig, Machine, Progress, Timer, Verb};
use mirrorkit_engine::mount::Mounted;
use mirrorkit_engine::secondary::Receiver;
use mirrorkit_module::{load_module, HeartbeatProfile, LoadedModule, ScriptKind};
use mirrorkit_scripts::{EventLog, Kind, Level as LogLevel, Runner, ScriptEnv};
use mirrorkit_store::StateFile;
use mirrorkit_vip::VipSpec;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::api::Reply;
use crate::config::ClusterFile;
use crate::daemon::Input;

/// One module on this node.
pub(crate) struct ModuleRt {
    pub(crate) loaded: Option<LoadedModule>,
    pub(crate) problems: Vec<String>,
    pub(crate) machine: Option<Machine>,
    pub(crate) timers: BTreeMap<Timer, u64>,
    pub(crate) runner: Option<Arc<Runner>>,
    pub(crate) log: Option<EventLog>,
    pub(crate) profile: HeartbeatProfile,
    pub(crate) vips: Vec<VipSpec>,
    /// The module's replicated directories (`[[mirror]]`), each with its own engine.
    pub(crate) mirrors: Vec<MirrorRt>,
    /// The mirror whose event the machine is handling: its answer to `ResyncStarting`
    /// (`ProceedResync`, `RefuseResync`) goes to that mirror's receiver.
    pub(crate) answering: Option<usize>,
    pub(crate) state_dir: PathBuf,
    pub(crate) verb_waiters: Vec<(Verb, oneshot::Sender<Reply>)>,
    pub(crate) last_progress: Option<Progress>,
    /// A `Persist` failed (a full or broken state disk): the machine's actions from it on, and
    /// the events that came since, wait until it succeeds.
    pub(crate) stalled: Option<Stall>,
    /// The mounted link could not write its dirty record (its error), so writes are held.
    pub(crate) record_error: Option<String>,
    /// The module's latest batch of scripts (the next waits for it).
    pub(crate) scripts_running: Option<tokio::task::JoinHandle<()>>,
    /// Application data replicated per second, sampled on the daemon's tick.
    pub(crate) write_rate: RateMeter,
    pub(crate) peer: Option<mirrorkit_cluster::machine::PeerStatus>,
    /// The module's folder (watched for changes).
    pub(crate) folder: PathBuf,
    /// A valid change that waits for the module to stop on this node.
    pub(crate) pending: Option<LoadedModule>,
    /// Why the module file's latest change is not applied (invalid, or pending).
    pub(crate) config_problems: Vec<String>,
    pub(crate) checkers: Option<mirrorkit_checkers::CheckerSet>,
    /// The node checkers' problems last told to the machine.
    pub(crate) health: Option<String>,
    pub(crate) notifier: Option<mirrorkit_notify::Notifier>,
}

/// Load one module folder into its runtime record (invalid or unsupported: problems, no machine).
/// `tx` receives its checkers' reports.
pub(crate) fn module_rt(
    cf: &ClusterFile,
    dir: &std::path::Path,
    names: &[String],
    tx: &mpsc::UnboundedSender<Input>,
) -> (String, ModuleRt) {
    let fallback = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rt = ModuleRt {
        loaded: None,
        problems: Vec::new(),
        machine: None,
        timers: BTreeMap::new(),
        runner: None,
        log: None,
        profile: HeartbeatProfile::Default,
        vips: Vec::new(),
        mirrors: Vec::new(),
        answering: None,
        state_dir: cf.module_state(&fallback),
        verb_waiters: Vec::new(),
        last_progress: None,
        scripts_running: None,
        stalled: None,
        record_error: None,
        write_rate: RateMeter::default(),
        peer: None,
        folder: dir.to_owned(),
        pending: None,
        config_problems: Vec::new(),
        checkers: None,
        health: None,
        notifier: None,
    };
    let loaded = match load_module(dir, Some(names)) {
        Ok(l) => l,
        Err(problems) => {
            for p in &problems {
                error!(module_dir = %dir.display(), "invalid module, not started: {p}");
            }
            rt.problems = problems.iter().map(|p| p.to_string()).collect();
            return (fallback, rt);
        }
    };
    let c = &loaded.config;
    let name = c.name.clone();
    rt.state_dir = cf.module_state(&name);
    rt.profile = c.heartbeat;
    rt.problems = unsupported(&loaded);
    rt.vips = vips_of(&loaded);
    rt.mirrors = mirrors_of(cf, &loaded, &rt.state_dir);
    if !rt.problems.is_empty() {
        for p in &rt.problems {
            error!(module = %name, "module not started: {p}");
        }
        rt.loaded = Some(loaded);
        return (name, rt);
    }
    let log = match EventLog::open(&rt.state_dir.join("events.log")) {
        Ok(l) => l,
        Err(e) => {
            rt.problems.push(format!(
                "cannot open the event log in {}: {e}",
                rt.state_dir.display()
            ));
            return (name, rt);
        }
    };
    let dirs: Vec<PathBuf> = rt.mirrors.iter().map(|m| m.dir.clone()).collect();
    match parts(cf, &loaded, &rt.vips, &dirs, &log, tx) {
        Ok(p) => {
            rt.runner = Some(p.runner);
            rt.checkers = p.checkers;
            rt.notifier = p.notifier;
        }
        Err(e) => {
            rt.problems.push(e);
            return (name, rt);
        }
    }
    let data = match StateFile::new(&rt.state_dir).load() {
        Ok(d) => d,
        Err(e) => {
            rt.problems.push(e.to_string());
            return (name, rt);
        }
    };
    let seed = u64::from(std::process::id()) ^ (mirrorkit_engine::link::fresh_gen().0);
    rt.machine = Some(Machine::new(machine_config(cf, &loaded), data, seed));
    rt.log = Some(log);
    rt.loaded = Some(loaded);
    (name, rt)
}

/// One replicated directory of a module on this node: its engine (a mount as primary, a
/// receiver as secondary) and whether that engine is in sync with the peer's.
pub(crate) struct MirrorRt {
    /// The directory as the module declares it.
    pub(crate) declared: PathBuf,
    /// The directory on this node (the cluster file may place data under a root).
    pub(crate) dir: PathBuf,
    /// The engine's name for it, on the wire and in its events: the module's name for a module
    /// with one mirror, else the module's name and a digest of the declared directory (stable
    /// whatever the order of the `[[mirror]]` sections, and the same on both nodes).
    pub(crate) key: String,
    /// The engine's state directory: the module's for a module with one mirror, else a folder
    /// of it per mirror (holding that engine's copy of the module's data state, its dirty
    /// record and control socket).
    pub(crate) state_dir: PathBuf,
    /// What it replicates.
    pub(crate) filter: Result<Arc<mirrorkit_module::MirrorFilter>, String>,
    pub(crate) mounted: Option<Mounted>,
    /// The mount's device, to abort its FUSE connection when fencing.
    pub(crate) fuse_dev: Option<u64>,
    pub(crate) primary_task: Option<tokio::task::JoinHandle<()>>,
    pub(crate) receiver: Option<Arc<Receiver>>,
    pub(crate) pending_resync: Option<oneshot::Sender<Result<(), String>>>,
    /// Its engine said the copies are in sync since it was last mounted or started, or last
    /// lost its session.
    pub(crate) in_sync: bool,
}

/// The module's mirrors on this node (see [`MirrorRt`]).
pub(crate) fn mirrors_of(
    cf: &ClusterFile,
    loaded: &LoadedModule,
    module_state: &std::path::Path,
) -> Vec<MirrorRt> {
    let c = &loaded.config;
    let single = c.mirrors.len() == 1;
    c.mirrors
        .iter()
        .map(|m| {
            let digest = blake3::hash(m.dir.as_os_str().as_encoded_bytes()).to_hex();
            let tag = &digest.as_str()[..16];
            let (key, state_dir) = if single {
                (c.name.clone(), module_state.to_owned())
            } else {
                (
                    format!("{}.{tag}", c.name),
                    module_state.join("mirrors").join(tag),
                )
            };
            MirrorRt {
                declared: m.dir.clone(),
                dir: cf.data_dir(&m.dir),
                key,
                state_dir,
                filter: mirrorkit_module::MirrorFilter::new(m)
                    .map(Arc::new)
                    .map_err(|e| format!("include/exclude patterns of {}: {e}", m.dir.display())),
                mounted: None,
                fuse_dev: None,
                primary_task: None,
                receiver: None,
                pending_resync: None,
                in_sync: false,
            }
        })
        .collect()
}

impl ModuleRt {
    /// Whether any of its mirrors is mounted here (this node may acknowledge writes).
    pub(crate) fn is_mounted(&self) -> bool {
        self.mirrors.iter().any(|m| m.mounted.is_some())
    }

    /// Whether any of its mirrors receives here.
    pub(crate) fn has_receiver(&self) -> bool {
        self.mirrors.iter().any(|m| m.receiver.is_some())
    }

    /// The links of its mounted mirrors.
    pub(crate) fn links(&self) -> impl Iterator<Item = &mirrorkit_engine::link::Link> {
        self.mirrors
            .iter()
            .filter_map(|m| m.mounted.as_ref().map(|mt| &mt.core.link))
    }

    /// A module with several mirrors keeps one data state for all, in its own state
    /// directory; each engine works on a copy in its own.
    pub(crate) fn shares_state(&self) -> bool {
        self.mirrors.len() > 1
    }

    /// The mirror the machine's current answer is for (see `answering`); without one, the
    /// first mirror that waits for an answer, else the first.
    pub(crate) fn answered(&mut self) -> Option<&mut MirrorRt> {
        let k = self
            .answering
            .or_else(|| {
                self.mirrors
                    .iter()
                    .position(|mr| mr.pending_resync.is_some())
            })
            .unwrap_or(0);
        self.mirrors.get_mut(k)
    }

    /// The module's data state for its engines' copies: `Some` only for a module with several
    /// mirrors (one mirror's engine shares the module's file).
    pub(crate) fn shared_state(&self) -> Option<mirrorkit_cluster::generation::DataState> {
        if !self.shares_state() {
            return None;
        }
        self.machine.as_ref().map(|mc| mc.data().clone())
    }

    /// An engine's reason, naming its directory when the module has several.
    pub(crate) fn mirror_reason(&self, k: usize, reason: String) -> String {
        match self.mirrors.get(k) {
            Some(mr) if self.shares_state() => format!("{}: {reason}", mr.declared.display()),
            _ => reason,
        }
    }
}

/// Give the engine of the mirror `dir` (its state in `state_dir`) the module's data state,
/// before it starts.
pub(crate) fn give_state(
    dir: &std::path::Path,
    state_dir: &std::path::Path,
    d: &mirrorkit_cluster::generation::DataState,
) -> Result<(), String> {
    StateFile::new(state_dir).store(d).map_err(|e| {
        format!(
            "cannot give the mirror of {} the module's data state: {e}",
            dir.display()
        )
    })
}

/// What one engine of a module says of its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EngineReport {
    /// The copies are in sync (primary: the peer confirmed the end of the synchronisation;
    /// secondary: this copy's resync ended, durably).
    InSync,
    /// The copies may differ from now on (primary: the session ended; secondary: a resync
    /// starts, or the session ended).
    Lost,
}

/// Record engine `k`'s report in `in_sync` (one flag per mirror of the module) and say whether
/// the module's machine hears it. A loss, always: on the primary each loss starts a new data
/// generation before any write the peer misses is acknowledged, on the secondary the copy is
/// no longer known in sync. Being in sync, only when every mirror is: the module's data is in
/// sync only as a whole. With one mirror, the machine hears every report, as the engine
/// gives it.
pub(crate) fn aggregate(in_sync: &mut [bool], k: usize, report: EngineReport) -> bool {
    let Some(flag) = in_sync.get_mut(k) else {
        return false;
    };
    match report {
        EngineReport::Lost => {
            *flag = false;
            true
        }
        EngineReport::InSync => {
            *flag = true;
            in_sync.iter().all(|&f| f)
        }
    }
}

#[cfg(test)]
mod aggregate_tests {
    use super::{aggregate, EngineReport::*};

    #[test]
    fn one_mirror_passes_every_report() {
        let mut f = [false];
        assert!(aggregate(&mut f, 0, InSync));
        assert!(aggregate(&mut f, 0, Lost));
        assert!(aggregate(&mut f, 0, Lost));
        assert!(aggregate(&mut f, 0, InSync));
        assert_eq!(f, [true]);
    }

    #[test]
    fn several_mirrors_are_in_sync_together_and_lost_alone() {
        let mut f = [false; 3];
        assert!(!aggregate(&mut f, 0, InSync));
        assert!(!aggregate(&mut f, 2, InSync));
        assert!(aggregate(&mut f, 1, InSync), "the last one in sync");
        // One engine's loss is the module's, each time.
        assert!(aggregate(&mut f, 1, Lost));
        assert!(aggregate(&mut f, 2, Lost));
        assert_eq!(f, [true, false, false]);
        // Back in sync only once both lost ones are.
        assert!(!aggregate(&mut f, 2, InSync));
        assert!(aggregate(&mut f, 1, InSync));
        // An index the module does not have changes nothing.
        assert!(!aggregate(&mut f, 3, Lost));
        assert_eq!(f, [true, true, true]);
    }
}

/// What this version of the daemon does not run, for a valid module: it refuses the module
/// rather than run it otherwise than its file says.
pub fn unsupported(loaded: &LoadedModule) -> Vec<String> {
    let c = &loaded.config;
    let mut problems = Vec::new();
    if c.mirrors.is_empty() {
        problems.push(format!(
            "{}: this version of the daemon runs modules with at least one [[mirror]] (this one has none)",
            loaded.file.display(),
        ));
    }
    problems
}

pub(crate) fn vips_of(loaded: &LoadedModule) -> Vec<VipSpec> {
    loaded
        .config
        .vips
        .iter()
        .map(|v| VipSpec {
            addr: v.address.addr,
            prefix_len: v.address.prefix_len,
            interface: v.interface.clone(),
        })
        .collect()
}

/// The module's machine settings from its file and the cluster file.
pub(crate) fn machine_config(cf: &ClusterFile, loaded: &LoadedModule) -> MachineConfig {
    let c = &loaded.config;
    let mut mc = MachineConfig::new(&c.name, &cf.node, cf.peer());
    mc.default_primary = c.default_primary.clone();
    mc.failback = c.failback;
    mc.witness = cf.witness.is_some();
    // A batch runs each script with its own timeout; the machine's bound covers the longest
    // batch with the kill grace.
    let scripts_total: u64 = ScriptKind::ALL
        .iter()
        .filter_map(|k| c.scripts.get(*k).map(|s| s.timeout_ms))
        .sum();
    mc.script_timeout_ms = scripts_total + 2 * mirrorkit_module::SCRIPT_KILL_GRACE_MS + 5_000;
    mc.peer_wait_ms = 3 * c.heartbeat.peer_lost_after_ms();
    mc
}

/// A module's scripts runner, checkers and notifier, built from its file.
pub(crate) struct Parts {
    pub(crate) runner: Arc<Runner>,
    pub(crate) checkers: Option<mirrorkit_checkers::CheckerSet>,
    pub(crate) notifier: Option<mirrorkit_notify::Notifier>,
}

pub(crate) fn parts(
    cf: &ClusterFile,
    loaded: &LoadedModule,
    vips: &[VipSpec],
    data_dirs: &[PathBuf],
    log: &EventLog,
    tx: &mpsc::UnboundedSender<Input>,
) -> Result<Parts, String> {
    let c = &loaded.config;
    let name = c.name.clone();
    let env = ScriptEnv {
        module: name.clone(),
        node: cf.node.clone(),
        module_dir: loaded.dir.clone(),
        run_dir: cf.module_run(&name),
        vips: vips.iter().map(|v| v.addr.to_string()).collect(),
        mirror_dirs: data_dirs.to_vec(),
        env: c.env.clone(),
    };
    let options = mirrorkit_scripts::RunnerOptions {
        cgroup_scope: Some(cf.cluster.clone()),
        ..mirrorkit_scripts::RunnerOptions::default()
    };
    let runner = Runner::with_options(env.clone(), log.clone(), options)
        .map(Arc::new)
        .map_err(|e| format!("cannot prepare the scripts: {e}"))?;
    let mut checkers = None;
    if !c.checkers.is_empty() {
        let (ctx, mut crx) = mpsc::unbounded_channel();
        checkers = Some(mirrorkit_checkers::CheckerSet::new(
            c.checkers.clone(),
            runner.clone(),
            ctx,
        ));
        let (tx, module) = (tx.clone(), name.clone());
        tokio::spawn(async move {
            while let Some(r) = crx.recv().await {
                if tx.send(Input::Checker(module.clone(), r)).is_err() {
                    break;
                }
            }
        });
    }
    let mut notifier = None;
    if let Some(n) = &c.notify {
        let mut vars: Vec<(String, String)> =
            c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.extend([
            ("MIRRORKIT_MODULE".to_owned(), name.clone()),
            ("MIRRORKIT_NODE".to_owned(), cf.node.clone()),
            (
                "MIRRORKIT_MODULE_DIR".to_owned(),
                env.module_dir.display().to_string(),
            ),
            (
                "MIRRORKIT_RUN_DIR".to_owned(),
                env.run_dir.display().to_string(),
            ),
            ("MIRRORKIT_VIP".to_owned(), env.vips.join(" ")),
        ]);
        let ncfg = mirrorkit_notify::NotifyConfig {
            command: loaded.notify_command_path(),
            webhook: n.webhook.as_ref().map(|w| w.as_str().to_owned()),
            timeout_ms: n.timeout_ms,
            working_dir: Some(loaded.dir.clone()),
            env: vars,
        };
        let (log, module) = (log.clone(), name.clone());
        notifier = Some(mirrorkit_notify::Notifier::start(ncfg, move |failure| {
            warn!(module = %module, "notification failed: {failure}");
            log.append(
                LogLevel::Warn,
                Kind::Log,
                &format!("notification failed: {failure}"),
            );
        }));
    }
    Ok(Parts {
        runner,
        checkers,
        notifier,
    })
}

/// A rate over the last [`RateMeter::WINDOW_MS`] of a counter sampled now and then (a counter
/// that goes down, such as a new mount's, starts the measurement again). Pure: the caller gives
/// the time.
#[derive(Debug, Default)]
pub(crate) struct RateMeter {
    samples: std::collections::VecDeque<(u64, u64)>,
}

impl RateMeter {
    pub(crate) const WINDOW_MS: u64 = 2_000;

    /// Record `value` at `now_ms`.
    pub(crate) fn sample(&mut self, now_ms: u64, value: u64) {
        if self
            .samples
            .back()
            .is_some_and(|&(t, v)| v > value || t > now_ms)
        {
            self.samples.clear();
        }
        self.samples.push_back((now_ms, value));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| now_ms - t >= Self::WINDOW_MS)
        {
            self.samples.pop_front();
        }
    }

    /// Forget the counter (nothing mounted).
    pub(crate) fn clear(&mut self) {
        self.samples.clear();
    }

    /// Units per second over the window; `None` until two samples a tenth of a second apart.
    pub(crate) fn rate(&self) -> Option<u64> {
        let (&(t0, v0), &(t1, v1)) = (self.samples.front()?, self.samples.back()?);
        let dt = t1.checked_sub(t0).filter(|&dt| dt >= 100)?;
        Some(u64::try_from(u128::from(v1 - v0) * 1000 / u128::from(dt)).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod rate_tests {
    use super::RateMeter;

    #[test]
    fn rate_over_the_window() {
        let mut r = RateMeter::default();
        assert_eq!(r.rate(), None);
        r.sample(1_000, 0);
        assert_eq!(r.rate(), None, "one sample");
        r.sample(1_050, 10);
        assert_eq!(r.rate(), None, "too short to mean anything");
        for i in 1..=20 {
            r.sample(1_000 + i * 200, i * 2_000);
        }
        // 10 000 units per second throughout; old samples dropped.
        assert_eq!(r.rate(), Some(10_000));
        assert!(r.samples.len() <= 12, "{}", r.samples.len());
        // Writes stop: the rate falls to zero once the window has passed.
        for i in 21..=40 {
            r.sample(1_000 + i * 200, 40_000);
        }
        assert_eq!(r.rate(), Some(0));
        // A new mount: its counter starts again at zero.
        r.sample(20_000, 5);
        assert_eq!(r.rate(), None);
        r.sample(21_000, 1_005);
        assert_eq!(r.rate(), Some(1_000));
    }
}

/// A module whose data state could not be persisted: nothing it asked for after that, and no
/// event since, is acted on before the state is on disk (the machine relies on it).
#[derive(Debug)]
pub(crate) struct Stall {
    pub(crate) actions: std::collections::VecDeque<mirrorkit_cluster::machine::Action>,
    /// With the mirror each answers for (`ModuleRt::answering`).
    pub(crate) events:
        std::collections::VecDeque<(Option<usize>, mirrorkit_cluster::machine::Event)>,
    pub(crate) error: String,
}
