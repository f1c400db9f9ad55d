//! What failed checks lead to: pure, with the time passed in (milliseconds of any monotonic
//! clock), so that every rule is tested with simulated time.
//!
//! Per checker: failures in a row are counted; failure number `retries + 1` gives a [`Verdict`],
//! and the count starts again from 0.
//!
//! - An application checker with `action = "restart"` gives [`Verdict::Restart`] while it asked
//!   for fewer than `max_restarts` restarts within the last `restart_window_ms`, else
//!   [`Verdict::Failover`]; with `action = "failover"`, always [`Verdict::Failover`]. A checker
//!   that keeps failing gives a verdict again after `retries + 1` more failures.
//! - A node checker gives [`Verdict::NodeProblem`] when it reaches the threshold, once, and
//!   [`Verdict::NodeRecovered`] at its first passing check after that: an edge each way, the
//!   daemon keeps the level.
//!
//! A restart is counted **when the `Restart` verdict is issued**, not when the daemon reports
//! that it restarted the application: the checker's limit then holds whatever the daemon does
//! with the verdict (a verdict it could not follow counts too, which can only make the module
//! fail over sooner, never restart without end). The history lives as long as the [`Policy`]:
//! stopping and starting the checker (the daemon pauses application checkers while it restarts
//! the application) keeps it; only the failures in a row start again.

use std::collections::VecDeque;

use mirrorkit_module::{CheckAction, Checker, CheckerScope};
use serde::{Deserialize, Serialize};

/// What a checker asks the daemon to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Restart the application on this node (application checkers with `action = "restart"`).
    Restart,
    /// Give the module to the peer (or, without a peer able to take it, restart it here).
    Failover,
    /// This node's network fails this check (node checkers): on the primary, give the role
    /// away if the peer can take it; elsewhere, do not take the module over. With the detail.
    NodeProblem(String),
    /// A node checker that gave `NodeProblem` passes again.
    NodeRecovered,
}

/// Where a checker stands, for the CLI and the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    /// The last check passed (or none ran yet).
    Ok,
    /// Some failures in a row, fewer than `retries + 1`.
    Failing,
    /// A verdict was issued and the checker has not passed since.
    Failed,
    /// Not running on this node.
    Off,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ok => "ok",
            CheckState::Failing => "failing",
            CheckState::Failed => "failed",
            CheckState::Off => "off",
        }
    }
}

/// The counting of one checker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    scope: CheckerScope,
    retries: u32,
    action: CheckAction,
    max_restarts: u32,
    restart_window_ms: u64,
    failures: u32,
    failed: bool,
    /// When each restart still in the window was asked for, oldest first.
    restarts: VecDeque<u64>,
}

impl Policy {
    pub fn new(checker: &Checker) -> Policy {
        Policy {
            scope: checker.scope(),
            retries: checker.retries,
            action: checker.action,
            max_restarts: checker.max_restarts,
            restart_window_ms: checker.restart_window_ms,
            failures: 0,
            failed: false,
            restarts: VecDeque::new(),
        }
    }

    /// Count the result of one check made at `now_ms`; the verdict it leads to, if any.
    pub fn record(&mut self, now_ms: u64, result: &Result<(), String>) -> Option<Verdict> {
        self.forget_old_restarts(now_ms);
        let detail = match result {
            Ok(()) => {
                let recovered = self.failed && self.scope == CheckerScope::Node;
                self.failures = 0;
                self.failed = false;
                return recovered.then_some(Verdict::NodeRecovered);
            }
            Err(detail) => detail,
        };
        self.failures = self.failures.saturating_add(1);
        if self.failures <= self.retries {
            return None;
        }
        self.failures = 0;
        let already_failed = std::mem::replace(&mut self.failed, true);
        match (self.scope, self.action) {
            (CheckerScope::Node, _) if already_failed => None,
            (CheckerScope::Node, _) => Some(Verdict::NodeProblem(detail.clone())),
            (CheckerScope::Application, CheckAction::Failover) => Some(Verdict::Failover),
            (CheckerScope::Application, CheckAction::Restart) => {
                if self.restarts.len() < self.max_restarts as usize {
                    self.restarts.push_back(now_ms);
                    Some(Verdict::Restart)
                } else {
                    Some(Verdict::Failover)
                }
            }
        }
    }

    /// The checker stopped: failures in a row and the failed state are forgotten (a node checker
    /// that is started again reports a problem afresh); the restart history is kept.
    pub fn stop(&mut self) {
        self.failures = 0;
        self.failed = false;
    }

    /// The state, as if running (the caller knows whether it is).
    pub fn state(&self) -> CheckState {
        if self.failed {
            CheckState::Failed
        } else if self.failures > 0 {
            CheckState::Failing
        } else {
            CheckState::Ok
        }
    }

    /// Failures in a row since the last pass or the last verdict.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Restarts this checker asked for within the window ending at `now_ms`.
    pub fn restarts_in_window(&self, now_ms: u64) -> u32 {
        let n = self
            .restarts
            .iter()
            .filter(|t| now_ms.saturating_sub(**t) < self.restart_window_ms)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The failure number that gives a verdict.
    pub fn threshold(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    fn forget_old_restarts(&mut self, now_ms: u64) {
        while self
            .restarts
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= self.restart_window_ms)
        {
            self.restarts.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorkit_module::{Probe, ProcessTarget};

    fn checker(probe: Probe, retries: u32, action: CheckAction) -> Checker {
        Checker {
            name: "c".into(),
            probe,
            interval_ms: 1_000,
            timeout_ms: 500,
            retries,
            action,
            max_restarts: 2,
            restart_window_ms: 60_000,
        }
    }

    fn app(retries: u32, action: CheckAction) -> Policy {
        let probe = Probe::Process(ProcessTarget::Name("app".into()));
        Policy::new(&checker(probe, retries, action))
    }

    fn node(retries: u32) -> Policy {
        let probe = Probe::Interface {
            interface: "eth0".into(),
        };
        Policy::new(&checker(probe, retries, CheckAction::Failover))
    }

    fn fail() -> Result<(), String> {
        Err("down".into())
    }

    const PASS: Result<(), String> = Ok(());

    #[test]
    fn retries_are_tolerated_and_a_pass_resets_the_count() {
        let mut p = app(2, CheckAction::Failover);
        assert_eq!(p.record(0, &fail()), None);
        assert_eq!(p.record(1_000, &fail()), None);
        assert_eq!(p.state(), CheckState::Failing);
        assert_eq!(p.consecutive_failures(), 2);
        assert_eq!(p.record(2_000, &PASS), None);
        assert_eq!(p.state(), CheckState::Ok);
        assert_eq!(p.record(3_000, &fail()), None);
        assert_eq!(p.record(4_000, &fail()), None);
        assert_eq!(p.record(5_000, &fail()), Some(Verdict::Failover));
        assert_eq!(p.state(), CheckState::Failed);
        // The count starts again after a verdict; still failed until a pass.
        assert_eq!(p.consecutive_failures(), 0);
        assert_eq!(p.record(6_000, &fail()), None);
        assert_eq!(p.state(), CheckState::Failed);
        assert_eq!(p.record(7_000, &fail()), None);
        assert_eq!(p.record(8_000, &fail()), Some(Verdict::Failover));
        assert_eq!(p.record(9_000, &PASS), None);
        assert_eq!(p.state(), CheckState::Ok);
    }

    #[test]
    fn retries_zero_acts_at_the_first_failure() {
        let mut p = app(0, CheckAction::Failover);
        assert_eq!(p.record(0, &fail()), Some(Verdict::Failover));
        assert_eq!(p.threshold(), 1);
    }

    #[test]
    fn restarts_up_to_the_limit_within_the_window_then_failover() {
        let mut p = app(1, CheckAction::Restart);
        let mut t = 0;
        let mut verdicts = Vec::new();
        for _ in 0..4 {
            for _ in 0..2 {
                t += 1_000;
                if let Some(v) = p.record(t, &fail()) {
                    verdicts.push(v);
                }
            }
        }
        assert_eq!(
            verdicts,
            [
                Verdict::Restart,
                Verdict::Restart,
                Verdict::Failover,
                Verdict::Failover
            ]
        );
        assert_eq!(p.restarts_in_window(t), 2);
        // Passing does not forget the restarts: the window does.
        assert_eq!(p.record(t + 1_000, &PASS), None);
        assert_eq!(p.record(t + 2_000, &fail()), None);
        assert_eq!(p.record(t + 3_000, &fail()), Some(Verdict::Failover));
        // The first restart (at 2 s) leaves the window at 62 s: one restart is allowed again.
        assert_eq!(p.restarts_in_window(61_999), 2);
        assert_eq!(p.restarts_in_window(62_000), 1);
        assert_eq!(p.record(62_000, &fail()), None);
        assert_eq!(p.record(63_000, &fail()), Some(Verdict::Restart));
        assert_eq!(p.restarts_in_window(63_000), 2);
        // The second (at 4 s) has left the window at 64 s too.
        assert_eq!(p.record(64_000, &fail()), None);
        assert_eq!(p.record(65_000, &fail()), Some(Verdict::Restart));
        assert_eq!(p.record(66_000, &fail()), None);
        assert_eq!(p.record(67_000, &fail()), Some(Verdict::Failover));
        // Long after, both have left the window.
        assert_eq!(p.restarts_in_window(200_000), 0);
        assert_eq!(p.record(200_000, &fail()), None);
        assert_eq!(p.record(201_000, &fail()), Some(Verdict::Restart));
    }

    #[test]
    fn restart_history_survives_a_stop() {
        let mut p = app(0, CheckAction::Restart);
        assert_eq!(p.record(0, &fail()), Some(Verdict::Restart));
        // Paused while the daemon restarts the application, then started again.
        p.stop();
        assert_eq!(p.state(), CheckState::Ok);
        assert_eq!(p.restarts_in_window(5_000), 1);
        assert_eq!(p.record(5_000, &fail()), Some(Verdict::Restart));
        p.stop();
        assert_eq!(p.record(10_000, &fail()), Some(Verdict::Failover));
    }

    #[test]
    fn max_restarts_zero_fails_over_at_once() {
        let probe = Probe::Tcp {
            address: "127.0.0.1:1".parse().expect("addr"),
        };
        let mut c = checker(probe, 0, CheckAction::Restart);
        c.max_restarts = 0;
        let mut p = Policy::new(&c);
        assert_eq!(p.record(0, &fail()), Some(Verdict::Failover));
        assert_eq!(p.restarts_in_window(0), 0);
    }

    #[test]
    fn node_checkers_report_a_problem_once_and_its_recovery() {
        let mut p = node(1);
        assert_eq!(p.record(0, &fail()), None);
        assert_eq!(
            p.record(1_000, &fail()),
            Some(Verdict::NodeProblem("down".into()))
        );
        assert_eq!(p.state(), CheckState::Failed);
        // Still failing: the problem stands, no second report.
        for t in 2..10 {
            assert_eq!(p.record(t * 1_000, &fail()), None);
        }
        assert_eq!(p.state(), CheckState::Failed);
        assert_eq!(p.record(10_000, &PASS), Some(Verdict::NodeRecovered));
        assert_eq!(p.state(), CheckState::Ok);
        assert_eq!(p.record(11_000, &PASS), None);
        // A pass before the threshold is no recovery: nothing was reported.
        assert_eq!(p.record(12_000, &fail()), None);
        assert_eq!(p.record(13_000, &PASS), None);
        // Stopped while failed: started again, the problem is reported afresh.
        assert_eq!(p.record(14_000, &fail()), None);
        assert!(p.record(15_000, &fail()).is_some());
        p.stop();
        assert_eq!(p.record(16_000, &fail()), None);
        assert_eq!(
            p.record(17_000, &fail()),
            Some(Verdict::NodeProblem("down".into()))
        );
        assert_eq!(p.restarts_in_window(17_000), 0);
    }
}
