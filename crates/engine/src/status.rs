//! A node's view of one mirror, written to `<state_dir>/status.json` for the CLI, the demo
//! and the tests until the cluster manager's API exists.

use std::path::Path;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::core::Core;
use crate::secondary::SecondaryCounters;

/// File name of the status file in a state directory.
pub const STATUS_FILE: &str = "status.json";
/// How often the daemon rewrites it. Default 100 ms.
pub const STATUS_INTERVAL_MS: u64 = 100;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub mirror: String,
    /// "primary" or "secondary".
    pub role: String,
    /// Primary: "alone", "syncing" or "in-sync". Secondary: "serving".
    pub mode: String,
    pub reason: String,
    pub ops_sent: u64,
    pub data_bytes_sent: u64,
    pub sync_data_bytes_sent: u64,
    /// Bytes of file data the dirty record listed when the last synchronisation started.
    pub sync_recorded_bytes: u64,
    /// Bytes of file data compared by digest in synchronisations.
    pub sync_compared_bytes: u64,
    /// The running (or last) synchronisation: bytes of file data compared or sent, bytes
    /// planned, average rate (bytes/s) and seconds left at that rate (`None`: not known yet).
    pub sync_done_bytes: u64,
    pub sync_total_bytes: u64,
    pub sync_rate: u64,
    pub sync_eta_secs: Option<u64>,
    /// Online verify: running now; bytes compared and differences found by the last one.
    pub verify_running: bool,
    pub verify_done_bytes: u64,
    pub verify_differences: u64,
    pub sessions: u64,
    pub times_alone: u64,
    pub ops_applied: u64,
    pub refused_sessions: u64,
    /// Primary: whether read-only opens pass through to the backing files, and if not why.
    pub read_passthrough: bool,
    pub read_passthrough_reason: String,
    /// Primary: opens passed through; read-only opens that went through the engine; FUSE
    /// READ requests the engine served; opens that waited for passthrough readers to close,
    /// and those refused (ETXTBSY) because they did not.
    pub passthrough_opens: u64,
    pub engine_read_opens: u64,
    pub engine_reads: u64,
    pub passthrough_waits: u64,
    pub passthrough_refusals: u64,
    pub pid: u32,
    /// Primary: replication latency, from sending an operation to the peer's
    /// acknowledgement: operations acknowledged, the sum of their latencies (µs), a moving
    /// average of the recent ones (µs; 0: none yet), and the count in each bucket of
    /// [`crate::link::LATENCY_BUCKETS_US`] (one more slot: above the last bound).
    pub acks: u64,
    pub ack_latency_us_sum: u64,
    pub ack_latency_recent_us: u64,
    pub ack_latency_buckets: Vec<u64>,
}

impl Status {
    pub fn of_primary(core: &Core) -> Self {
        let (mode, reason) = core.link.status();
        let c = core.link.counters();
        let pt = &core.passthrough;
        let pc = &pt.counters;
        let started = c.sync_started_ms.load(Ordering::Relaxed);
        let elapsed = crate::sync::unix_ms().saturating_sub(started);
        let p = crate::progress::progress(
            c.sync_done_bytes.load(Ordering::Relaxed),
            c.sync_total_bytes.load(Ordering::Relaxed),
            std::time::Duration::from_millis(if started == 0 { 0 } else { elapsed }),
        );
        Status {
            mirror: core.mirror.clone(),
            role: "primary".into(),
            mode: mode.as_str().into(),
            reason,
            ops_sent: c.ops_sent.load(Ordering::Relaxed),
            data_bytes_sent: c.data_bytes_sent.load(Ordering::Relaxed),
            sync_data_bytes_sent: c.sync_data_bytes_sent.load(Ordering::Relaxed),
            sync_recorded_bytes: c.sync_recorded_bytes.load(Ordering::Relaxed),
            sync_compared_bytes: c.sync_probe_bytes.load(Ordering::Relaxed),
            sync_done_bytes: p.done,
            sync_total_bytes: p.total,
            sync_rate: p.rate,
            sync_eta_secs: p.eta_secs,
            verify_running: c.verify_running.load(Ordering::Relaxed) != 0,
            verify_done_bytes: c.verify_done_bytes.load(Ordering::Relaxed),
            verify_differences: c.verify_differences.load(Ordering::Relaxed),
            sessions: c.sessions.load(Ordering::Relaxed),
            times_alone: c.times_alone.load(Ordering::Relaxed),
            read_passthrough: pt.active(),
            read_passthrough_reason: pt.reason(),
            passthrough_opens: pc.passthrough_opens.load(Ordering::Relaxed),
            engine_read_opens: pc.read_opens_through_engine.load(Ordering::Relaxed),
            engine_reads: pc.engine_reads.load(Ordering::Relaxed),
            passthrough_waits: pc.opens_waited.load(Ordering::Relaxed),
            passthrough_refusals: pc.opens_refused.load(Ordering::Relaxed),
            pid: std::process::id(),
            acks: c.acks.load(Ordering::Relaxed),
            ack_latency_us_sum: c.ack_latency_us_sum.load(Ordering::Relaxed),
            ack_latency_recent_us: c.ack_latency_recent_us.load(Ordering::Relaxed),
            ack_latency_buckets: c
                .ack_latency_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            ..Default::default()
        }
    }

    pub fn of_secondary(mirror: &str, c: &SecondaryCounters) -> Self {
        Status {
            mirror: mirror.into(),
            role: "secondary".into(),
            mode: "serving".into(),
            ops_applied: c.ops_applied.load(Ordering::Relaxed),
            sessions: c.sessions.load(Ordering::Relaxed),
            refused_sessions: c.refused.load(Ordering::Relaxed),
            pid: std::process::id(),
            ..Default::default()
        }
    }

    /// One status for several mirrors of one module (`mirror` names the module): counters
    /// and progress add up, the mode is the least synchronised one's (alone, then syncing),
    /// and the reasons of the mirrors not in sync are kept, each after its mirror's name.
    pub fn combine(mirror: &str, parts: &[Status]) -> Status {
        let Some(first) = parts.first() else {
            return Status {
                mirror: mirror.into(),
                ..Default::default()
            };
        };
        if parts.len() == 1 {
            return first.clone();
        }
        let rank = |m: &str| match m {
            "alone" => 0,
            "syncing" => 1,
            _ => 2,
        };
        let worst = parts
            .iter()
            .min_by_key(|p| rank(&p.mode))
            .map_or(first.mode.clone(), |p| p.mode.clone());
        let reasons: Vec<String> = parts
            .iter()
            .filter(|p| p.mode != "in-sync" || parts.iter().all(|q| q.mode == "in-sync"))
            .map(|p| format!("{}: {}", p.mirror, p.reason))
            .collect();
        let sum = |f: fn(&Status) -> u64| parts.iter().map(f).fold(0u64, u64::saturating_add);
        let mut buckets = vec![
            0u64;
            parts
                .iter()
                .map(|p| p.ack_latency_buckets.len())
                .max()
                .unwrap_or(0)
        ];
        for p in parts {
            for (b, v) in buckets.iter_mut().zip(&p.ack_latency_buckets) {
                *b = b.saturating_add(*v);
            }
        }
        Status {
            mirror: mirror.into(),
            role: first.role.clone(),
            mode: worst,
            reason: reasons.join("; "),
            ops_sent: sum(|p| p.ops_sent),
            data_bytes_sent: sum(|p| p.data_bytes_sent),
            sync_data_bytes_sent: sum(|p| p.sync_data_bytes_sent),
            sync_recorded_bytes: sum(|p| p.sync_recorded_bytes),
            sync_compared_bytes: sum(|p| p.sync_compared_bytes),
            sync_done_bytes: sum(|p| p.sync_done_bytes),
            sync_total_bytes: sum(|p| p.sync_total_bytes),
            sync_rate: sum(|p| p.sync_rate),
            sync_eta_secs: if parts.iter().any(|p| p.mode == "syncing") {
                parts
                    .iter()
                    .filter(|p| p.mode == "syncing")
                    .map(|p| p.sync_eta_secs)
                    .try_fold(0u64, |acc, e| e.map(|e| acc.max(e)))
            } else {
                None
            },
            verify_running: parts.iter().any(|p| p.verify_running),
            verify_done_bytes: sum(|p| p.verify_done_bytes),
            verify_differences: sum(|p| p.verify_differences),
            sessions: sum(|p| p.sessions),
            times_alone: sum(|p| p.times_alone),
            ops_applied: sum(|p| p.ops_applied),
            refused_sessions: sum(|p| p.refused_sessions),
            read_passthrough: parts.iter().all(|p| p.read_passthrough),
            read_passthrough_reason: first.read_passthrough_reason.clone(),
            passthrough_opens: sum(|p| p.passthrough_opens),
            engine_read_opens: sum(|p| p.engine_read_opens),
            engine_reads: sum(|p| p.engine_reads),
            passthrough_waits: sum(|p| p.passthrough_waits),
            passthrough_refusals: sum(|p| p.passthrough_refusals),
            pid: first.pid,
            acks: sum(|p| p.acks),
            ack_latency_us_sum: sum(|p| p.ack_latency_us_sum),
            ack_latency_recent_us: parts
                .iter()
                .map(|p| p.ack_latency_recent_us)
                .max()
                .unwrap_or(0),
            ack_latency_buckets: buckets,
        }
    }

    /// Replace the status file (atomically: readers never see half a file).
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let tmp = state_dir.join(format!("{STATUS_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, state_dir.join(STATUS_FILE))
    }

    pub fn read(state_dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(state_dir.join(STATUS_FILE))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    fn part(mirror: &str, mode: &str, sent: u64, eta: Option<u64>) -> Status {
        Status {
            mirror: mirror.into(),
            role: "primary".into(),
            mode: mode.into(),
            reason: format!("{mirror} is {mode}"),
            data_bytes_sent: sent,
            sync_eta_secs: eta,
            ack_latency_buckets: vec![1, 2],
            ..Default::default()
        }
    }

    #[test]
    fn several_mirrors_add_up_and_show_the_least_synchronised() {
        let one = part("m", "in-sync", 5, None);
        assert_eq!(Status::combine("m", std::slice::from_ref(&one)), one);
        let all = [
            part("a", "in-sync", 5, None),
            part("b", "syncing", 7, Some(30)),
            part("c", "syncing", 1, Some(90)),
        ];
        let s = Status::combine("m", &all);
        assert_eq!(s.mirror, "m");
        assert_eq!(s.mode, "syncing");
        assert_eq!(s.data_bytes_sent, 13);
        assert_eq!(s.sync_eta_secs, Some(90));
        assert_eq!(s.ack_latency_buckets, vec![3, 6]);
        assert_eq!(s.reason, "b: b is syncing; c: c is syncing");
        let alone = [part("a", "in-sync", 0, None), part("b", "alone", 0, None)];
        assert_eq!(Status::combine("m", &alone).mode, "alone");
        let synced = [part("a", "in-sync", 0, None), part("b", "in-sync", 0, None)];
        let s = Status::combine("m", &synced);
        assert_eq!(s.mode, "in-sync");
        assert_eq!(s.sync_eta_secs, None);
        assert_eq!(s.reason, "a: a is in-sync; b: b is in-sync");
        // A syncing mirror whose time left is not known yet: not known for the module.
        let unknown = [
            part("a", "syncing", 0, None),
            part("b", "syncing", 0, Some(4)),
        ];
        assert_eq!(Status::combine("m", &unknown).sync_eta_secs, None);
    }
}
