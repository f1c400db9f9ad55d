//! The checkers of one module on this node, as tokio tasks: started and stopped by the daemon,
//! reporting verdicts on a channel.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mirrorkit_module::{Checker, CheckerScope};
use mirrorkit_scripts::{Kind, Level, Runner};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::policy::{CheckState, Policy, Verdict};
use crate::probe;

/// A verdict of one checker, for the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckerReport {
    /// The checker's `name`.
    pub checker: String,
    pub verdict: Verdict,
    /// What the check that led to the verdict found (`"ok"` for `NodeRecovered`), for the
    /// module's state reason.
    pub detail: String,
}

/// One checker as the CLI and the console show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckerStatus {
    pub name: String,
    /// `process`, `tcp`, `script`, `ping`, `interface`.
    pub kind: String,
    pub scope: CheckerScope,
    /// Its task runs on this node.
    pub running: bool,
    /// `off` when not running.
    pub state: CheckState,
    /// `"ok"`, the detail of the last failure, or `"not checked yet"`.
    pub last_result: String,
    /// Unix time of the start of the last check, in milliseconds; `None` before the first.
    pub last_check_unix_ms: Option<u64>,
    pub consecutive_failures: u32,
    /// Restarts this checker asked for within its `restart_window_ms`.
    pub restarts_in_window: u32,
}

/// The checkers of one module on this node. Cheap to clone (the clones share the checkers); the
/// checkers' tasks stop when the last clone is dropped. Create and use it inside a tokio runtime
/// (it spawns tasks).
#[derive(Clone)]
pub struct CheckerSet {
    inner: Arc<Inner>,
}

/// Owned by the [`CheckerSet`] handles only; its drop stops the tasks.
struct Inner {
    shared: Arc<Shared>,
}

/// Shared with the tasks.
struct Shared {
    module: String,
    runner: Arc<Runner>,
    reports: UnboundedSender<CheckerReport>,
    /// The clock of the policies (monotonic).
    epoch: Instant,
    slots: Vec<Slot>,
}

struct Slot {
    checker: Checker,
    state: Mutex<SlotState>,
}

struct SlotState {
    policy: Policy,
    task: Option<JoinHandle<()>>,
    /// Bumped at each start and stop: a result from an older task is not counted.
    generation: u64,
    last_result: Option<Result<(), String>>,
    last_check_unix_ms: Option<u64>,
}

impl CheckerSet {
    /// The checkers of a module (`checkers`: its `[[checker]]` list), all stopped. `runner`
    /// gives the module's name, run directory and event log, and runs script checkers;
    /// verdicts go to `reports`.
    pub fn new(
        checkers: Vec<Checker>,
        runner: Arc<Runner>,
        reports: UnboundedSender<CheckerReport>,
    ) -> CheckerSet {
        let slots = checkers
            .into_iter()
            .map(|checker| Slot {
                state: Mutex::new(SlotState {
                    policy: Policy::new(&checker),
                    task: None,
                    generation: 0,
                    last_result: None,
                    last_check_unix_ms: None,
                }),
                checker,
            })
            .collect();
        CheckerSet {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    module: runner.env().module.clone(),
                    runner,
                    reports,
                    epoch: Instant::now(),
                    slots,
                }),
            }),
        }
    }

    /// Run the application checkers when `app`, the node checkers when `node`; stop the others.
    /// Starting a running checker, or stopping a stopped one, does nothing.
    ///
    /// A started application checker makes its first check one interval later; a node checker
    /// at once. Stopping aborts a check in progress (a checker script's process group is
    /// killed) and forgets the failures in a row and the failed state, but not the restarts in
    /// the window; no report of a stopped checker arrives after this returns. Must be called
    /// within the tokio runtime.
    pub fn set_mode(&self, app: bool, node: bool) {
        let shared = &self.inner.shared;
        for (index, slot) in shared.slots.iter().enumerate() {
            let scope = slot.checker.scope();
            let want = match scope {
                CheckerScope::Application => app,
                CheckerScope::Node => node,
            };
            let mut st = lock(&slot.state);
            match (want, st.task.is_some()) {
                (true, false) => {
                    st.generation += 1;
                    let first = match scope {
                        CheckerScope::Application => {
                            Duration::from_millis(slot.checker.interval_ms)
                        }
                        CheckerScope::Node => Duration::ZERO,
                    };
                    let task = tokio::spawn(run(Arc::clone(shared), index, st.generation, first));
                    st.task = Some(task);
                    tracing::debug!(
                        module = shared.module,
                        checker = slot.checker.name,
                        "checker started"
                    );
                }
                (false, true) => {
                    st.generation += 1;
                    if let Some(task) = st.task.take() {
                        task.abort();
                    }
                    st.policy.stop();
                    tracing::debug!(
                        module = shared.module,
                        checker = slot.checker.name,
                        "checker stopped"
                    );
                }
                _ => {}
            }
        }
    }

    /// Every checker, in the order of the module file.
    pub fn status(&self) -> Vec<CheckerStatus> {
        let shared = &self.inner.shared;
        let now = shared.now_ms();
        shared
            .slots
            .iter()
            .map(|slot| {
                let st = lock(&slot.state);
                let running = st.task.is_some();
                CheckerStatus {
                    name: slot.checker.name.clone(),
                    kind: slot.checker.probe.kind_name().to_owned(),
                    scope: slot.checker.scope(),
                    running,
                    state: if running {
                        st.policy.state()
                    } else {
                        CheckState::Off
                    },
                    last_result: match &st.last_result {
                        None => "not checked yet".to_owned(),
                        Some(Ok(())) => "ok".to_owned(),
                        Some(Err(detail)) => detail.clone(),
                    },
                    last_check_unix_ms: st.last_check_unix_ms,
                    consecutive_failures: st.policy.consecutive_failures(),
                    restarts_in_window: st.policy.restarts_in_window(now),
                }
            })
            .collect()
    }

    /// The running node checkers that reported a problem and have not passed since: `(name,
    /// detail)`, in the order of the module file. Empty: this node's network is fine (as far as
    /// its node checkers tell).
    pub fn node_problems(&self) -> Vec<(String, String)> {
        self.inner
            .shared
            .slots
            .iter()
            .filter(|slot| slot.checker.scope() == CheckerScope::Node)
            .filter_map(|slot| {
                let st = lock(&slot.state);
                let failed = st.task.is_some() && st.policy.state() == CheckState::Failed;
                let detail = match &st.last_result {
                    Some(Err(d)) => d.clone(),
                    _ => "failed".to_owned(),
                };
                failed.then(|| (slot.checker.name.clone(), detail))
            })
            .collect()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for slot in &self.shared.slots {
            let mut st = lock(&slot.state);
            st.generation += 1;
            if let Some(task) = st.task.take() {
                task.abort();
            }
        }
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Count one result of the task of `generation`, log what it changes, report a verdict.
    fn record(
        &self,
        index: usize,
        generation: u64,
        started_unix_ms: u64,
        result: Result<(), String>,
    ) {
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let name = &slot.checker.name;
        let mut st = lock(&slot.state);
        if st.generation != generation || st.task.is_none() {
            return;
        }
        let now = self.now_ms();
        let before = st.policy.state();
        let verdict = st.policy.record(now, &result);
        let after = st.policy.state();
        st.last_check_unix_ms = Some(started_unix_ms);
        let kind = slot.checker.probe.kind_name();
        match (&result, &verdict) {
            (Ok(()), _) => {
                if before != CheckState::Ok {
                    tracing::info!(module = self.module, checker = %name, "{kind} checker passes again");
                    self.log(Level::Info, format!("checker {name} passes again"));
                }
            }
            (Err(detail), Some(verdict)) => {
                let action = match verdict {
                    Verdict::Restart => format!(
                        "asks for a restart of the application (restart {} of at most {} within \
                         {} ms)",
                        st.policy.restarts_in_window(now),
                        slot.checker.max_restarts,
                        slot.checker.restart_window_ms
                    ),
                    Verdict::Failover => "asks for a failover".to_owned(),
                    Verdict::NodeProblem(_) | Verdict::NodeRecovered => {
                        "this node's network has a problem: it gives the primary role away, or \
                         does not take it"
                            .to_owned()
                    }
                };
                let threshold = st.policy.threshold();
                let text = format!(
                    "checker {name} failed {threshold} time{} in a row ({detail}): {action}",
                    if threshold == 1 { "" } else { "s" }
                );
                tracing::warn!(module = self.module, checker = %name, detail = %detail, "{kind} checker acts: {action}");
                self.log(Level::Error, text);
            }
            (Err(detail), None) => {
                tracing::debug!(module = self.module, checker = %name, "check failed: {detail}");
                if before == CheckState::Ok && after == CheckState::Failing {
                    tracing::warn!(module = self.module, checker = %name, detail = %detail, "{kind} check failed");
                    self.log(
                        Level::Warn,
                        format!(
                            "checker {name} failed: {detail} (failure 1 of {} in a row before it \
                             acts)",
                            st.policy.threshold()
                        ),
                    );
                }
            }
        }
        if let Some(verdict) = verdict {
            let detail = match &result {
                Ok(()) => "ok".to_owned(),
                Err(d) => d.clone(),
            };
            let report = CheckerReport {
                checker: name.clone(),
                verdict,
                detail,
            };
            // Sent under the lock: a stop that follows cannot overtake it.
            if self.reports.send(report).is_err() {
                tracing::debug!(module = self.module, checker = %name, "no one receives checker reports any more");
            }
        }
        st.last_result = Some(result);
    }

    fn log(&self, level: Level, text: String) {
        self.runner.log().append(level, Kind::Log, &text);
    }
}

/// The task of one checker: a check every interval, from the start of one to the start of the
/// next, one at a time.
async fn run(shared: Arc<Shared>, index: usize, generation: u64, first: Duration) {
    let Some(slot) = shared.slots.get(index) else {
        return;
    };
    let interval = Duration::from_millis(slot.checker.interval_ms);
    let mut next = Instant::now() + first;
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        next = started + interval;
        let started_unix_ms = unix_ms();
        let result = probe::check(&slot.checker, &shared.runner).await;
        shared.record(index, generation, started_unix_ms, result);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A poisoned lock only means a panic elsewhere while it was held; the state is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
