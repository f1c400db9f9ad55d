//! Failure detection, without I/O or clock: given when the peer was last heard and the time now,
//! decide what a watcher reports and when to look again. The watcher tasks in `lib.rs` feed it.

use std::time::Duration;

use tokio::time::Instant;

/// A change a watcher reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Seen,
    /// No heartbeat for `silent_for` (at least the watcher's threshold).
    Lost {
        silent_for: Duration,
    },
}

/// One watcher's detector: its threshold and what it reported last.
#[derive(Debug)]
pub struct Detector {
    lost_after: Duration,
    /// Silence before the first heartbeat counts from here (the start of the heartbeats), so
    /// that a peer never heard is reported lost after the threshold too.
    started: Instant,
    reported: Option<Transition>,
}

impl Detector {
    pub fn new(lost_after: Duration, started: Instant) -> Self {
        assert!(!lost_after.is_zero(), "a zero threshold would flap");
        Self {
            lost_after,
            started,
            reported: None,
        }
    }

    /// What to report now, if anything, and when the verdict may next change without a new
    /// heartbeat (`None`: only a heartbeat can change it).
    ///
    /// Lost is reported only once the peer has been silent for at least the threshold (the
    /// lower bound the state machines rely on), Seen only once a heartbeat was heard within it.
    pub fn step(
        &mut self,
        last_heard: Option<Instant>,
        now: Instant,
    ) -> (Option<Transition>, Option<Instant>) {
        let silent_since = last_heard.map_or(self.started, |t| t.max(self.started));
        let silent_for = now.saturating_duration_since(silent_since);
        let (verdict, recheck_at) = if silent_for >= self.lost_after {
            (Some(Transition::Lost { silent_for }), None)
        } else if last_heard.is_some() {
            (Some(Transition::Seen), Some(silent_since + self.lost_after))
        } else {
            (None, Some(silent_since + self.lost_after))
        };
        let repeated = matches!(
            (verdict, self.reported),
            (Some(Transition::Seen), Some(Transition::Seen))
                | (Some(Transition::Lost { .. }), Some(Transition::Lost { .. }))
        );
        let changed = verdict.is_some() && !repeated;
        if changed {
            self.reported = verdict;
            (verdict, recheck_at)
        } else {
            (None, recheck_at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_peer_never_heard_is_lost_exactly_at_the_threshold() {
        let t0 = Instant::now();
        let mut d = Detector::new(500 * MS, t0);
        assert_eq!(d.step(None, t0), (None, Some(t0 + 500 * MS)));
        assert_eq!(d.step(None, t0 + 499 * MS), (None, Some(t0 + 500 * MS)));
        assert_eq!(
            d.step(None, t0 + 500 * MS),
            (
                Some(Transition::Lost {
                    silent_for: 500 * MS
                }),
                None
            )
        );
        // Reported once.
        assert_eq!(d.step(None, t0 + 900 * MS), (None, None));
    }

    #[test]
    fn seen_then_lost_then_seen_again() {
        let t0 = Instant::now();
        let mut d = Detector::new(500 * MS, t0);
        let heard = t0 + 100 * MS;
        assert_eq!(
            d.step(Some(heard), heard),
            (Some(Transition::Seen), Some(heard + 500 * MS))
        );
        // More heartbeats: no new report, the deadline moves.
        let heard2 = t0 + 200 * MS;
        assert_eq!(
            d.step(Some(heard2), heard2 + MS),
            (None, Some(heard2 + 500 * MS))
        );
        // Just before the threshold: still seen.
        assert_eq!(
            d.step(Some(heard2), heard2 + 499 * MS),
            (None, Some(heard2 + 500 * MS))
        );
        let (lost, recheck) = d.step(Some(heard2), heard2 + 500 * MS);
        assert_eq!(
            lost,
            Some(Transition::Lost {
                silent_for: 500 * MS
            })
        );
        assert_eq!(recheck, None);
        let heard3 = heard2 + 2000 * MS;
        assert_eq!(
            d.step(Some(heard3), heard3),
            (Some(Transition::Seen), Some(heard3 + 500 * MS))
        );
    }

    #[test]
    fn a_stale_heartbeat_seen_late_reports_lost_not_seen() {
        let t0 = Instant::now();
        let mut d = Detector::new(500 * MS, t0);
        let heard = t0 + 10 * MS;
        assert_eq!(
            d.step(Some(heard), heard + 800 * MS).0,
            Some(Transition::Lost {
                silent_for: 800 * MS
            })
        );
    }

    #[test]
    fn silence_before_the_start_does_not_count() {
        // A heartbeat time before `started` cannot happen in practice, but it must not shorten
        // the grace given to a fresh watcher.
        let t0 = Instant::now() + 1000 * MS;
        let mut d = Detector::new(500 * MS, t0);
        let before = t0 - 900 * MS;
        assert_eq!(
            d.step(Some(before), t0 + 100 * MS),
            (Some(Transition::Seen), Some(t0 + 500 * MS))
        );
    }

    #[test]
    fn two_thresholds_report_in_order() {
        let t0 = Instant::now();
        let mut fast = Detector::new(500 * MS, t0);
        let mut slow = Detector::new(1500 * MS, t0);
        let heard = t0 + 50 * MS;
        assert_eq!(fast.step(Some(heard), heard).0, Some(Transition::Seen));
        assert_eq!(slow.step(Some(heard), heard).0, Some(Transition::Seen));
        let mut fast_lost = None;
        let mut slow_lost = None;
        for ms in (0..3000).step_by(10) {
            let now = heard + ms * MS;
            if fast.step(Some(heard), now).0.is_some() {
                fast_lost.get_or_insert(ms);
            }
            if slow.step(Some(heard), now).0.is_some() {
                slow_lost.get_or_insert(ms);
            }
        }
        assert_eq!((fast_lost, slow_lost), (Some(500), Some(1500)));
    }
}
