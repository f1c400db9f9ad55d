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
