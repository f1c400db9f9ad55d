//! Progress of a synchronisation as operators see it: bytes done, bytes in total, rate, ETA.
//! Pure arithmetic (no clock): the caller passes the elapsed time.

use std::time::Duration;

/// What `mirrorkit status` shows of a running synchronisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Bytes of file data compared or sent so far.
    pub done: u64,
    /// Bytes of file data this synchronisation will compare or send, as far as known: the
    /// planned bulk pass plus what the catch-up passes found since (never below `done`).
    pub total: u64,
    /// Average rate since the synchronisation started, bytes per second (0 until measurable).
    pub rate: u64,
    /// Seconds left at that rate; `None` while no rate is known.
    pub eta_secs: Option<u64>,
}

/// Progress after `elapsed`, with `done` of `total` bytes.
pub fn progress(done: u64, total: u64, elapsed: Duration) -> Progress {
    let total = total.max(done);
    let secs = elapsed.as_secs_f64();
    // Below a tenth of a second the rate means nothing.
    let rate = if secs >= 0.1 {
        (done as f64 / secs) as u64
    } else {
        0
    };
    let eta_secs = if done == total {
        Some(0)
    } else if rate > 0 {
        Some((total - done).div_ceil(rate))
    } else {
        None
    };
    Progress {
        done,
        total,
        rate,
        eta_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta() {
        let p = progress(50 << 20, 200 << 20, Duration::from_secs(5));
        assert_eq!(p.rate, 10 << 20);
        assert_eq!(p.eta_secs, Some(15));
        // Nothing measurable yet.
        let p = progress(0, 1 << 30, Duration::from_millis(50));
        assert_eq!((p.rate, p.eta_secs), (0, None));
        // Nothing sent after a while: no ETA rather than infinity.
        let p = progress(0, 1 << 30, Duration::from_secs(10));
        assert_eq!(p.eta_secs, None);
        // Found more than planned (the application wrote meanwhile): total follows.
        let p = progress(300, 200, Duration::from_secs(1));
        assert_eq!((p.total, p.eta_secs), (300, Some(0)));
        // Done.
        let p = progress(0, 0, Duration::ZERO);
        assert_eq!(p.eta_secs, Some(0));
    }
}
