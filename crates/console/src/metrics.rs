//! `/metrics`: this node's status in the Prometheus text format (version 0.0.4). Pure: a
//! `NodeStatus` in, text out. Each node exports what it knows first-hand (its own modules,
//! heartbeat networks and checkers) with a `node` label; scrape both nodes for the cluster.

use std::fmt::Write;

use mirrorkit_cluster::machine::StateKind;
use mirrorkit_node::api::{ModuleStatus, NetStatus, NodeStatus};

/// Every state a module can be in, for the 0/1 series of `mirrorkit_module_state`.
pub const STATES: [StateKind; 9] = [
    StateKind::Stop,
    StateKind::Starting,
    StateKind::Wait,
    StateKind::Promoting,
    StateKind::Alone,
    StateKind::Prim,
    StateKind::Restarting,
    StateKind::Demoting,
    StateKind::Second,
];

/// Replication link modes of a mounted primary (`ModuleStatus::mirror` starts with one).
pub const LINK_MODES: [&str; 3] = ["alone", "syncing", "in-sync"];

/// Checker states (`CheckState`).
pub const CHECK_STATES: [&str; 4] = ["ok", "failing", "failed", "off"];

/// A label value escaped as the format says: backslash, double quote and newline.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A family with one sample per module of this node (labels `module`, `node`), for the
    /// modules `value` gives a value for.
    fn per_module(
        &mut self,
        s: &NodeStatus,
        (name, kind, help): (&str, &str, &str),
        value: impl Fn(&ModuleStatus) -> Option<String>,
    ) {
        self.family(name, kind, help);
        for m in &s.modules {
            if let Some(v) = value(m) {
                self.sample(name, &[("module", &m.name), ("node", &s.node)], v);
            }
        }
    }

    /// A family with one sample per heartbeat network (labels `node`, `network`).
    fn per_network(
        &mut self,
        s: &NodeStatus,
        (name, kind, help): (&str, &str, &str),
        value: impl Fn(&NetStatus) -> Option<String>,
    ) {
        self.family(name, kind, help);
        for h in &s.heartbeats {
            if let Some(v) = value(h) {
                self.sample(name, &[("node", &s.node), ("network", &h.name)], v);
            }
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(self.text, "{name}{{{}}} {value}", labels.join(","));
    }
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

fn seconds(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// One figure of a checker's status.
type CheckerFigure = fn(&mirrorkit_checkers::CheckerStatus) -> u32;

/// One figure of a primary's replication status.
type Figure = fn(&mirrorkit_engine::status::Status) -> u64;

/// The metrics text of one node's status.
pub fn render(s: &NodeStatus) -> String {
    let node = s.node.as_str();
    let mut o = Out {
        text: String::new(),
    };
    o.family(
        "mirrorkit_module_state",
        "gauge",
        "1 for the state the module is in on this node, 0 for the others.",
    );
    for m in &s.modules {
        for k in STATES {
            o.sample(
                "mirrorkit_module_state",
                &[("module", &m.name), ("node", node), ("state", k.name())],
                flag(m.state == Some(k)),
            );
        }
    }
    o.per_module(
        s,
        (
            "mirrorkit_module_problems",
            "gauge",
            "Problems that keep the module from running on this node (invalid module.toml...).",
        ),
        |m| Some(m.problems.len().to_string()),
    );
    o.per_module(
        s,
        (
            "mirrorkit_module_state_age_seconds",
            "gauge",
            "How long ago the module entered its state on this node.",
        ),
        |m| Some(seconds(m.since_ms_ago)),
    );
    o.per_module(
        s,
        (
            "mirrorkit_module_split_brain",
            "gauge",
            "1 when the nodes' data diverged and an operator must choose the survivor.",
        ),
        |m| Some(flag(m.split_brain).to_string()),
    );
    o.family(
        "mirrorkit_peer_module_state",
        "gauge",
        "1 for the module's state on the peer as the peer last told this node.",
    );
    for m in &s.modules {
        if let Some(p) = m.peer_state {
            o.sample(
                "mirrorkit_peer_module_state",
                &[
                    ("module", &m.name),
                    ("node", node),
                    ("peer", &s.peer),
                    ("state", p.name()),
                ],
                1,
            );
        }
    }
    o.family(
        "mirrorkit_peer_in_sync",
        "gauge",
        "1 when the peer's copy of the module is in sync, as the peer last said.",
    );
    for m in &s.modules {
        if let Some(b) = m.peer_in_sync {
            o.sample(
                "mirrorkit_peer_in_sync",
                &[("module", &m.name), ("node", node), ("peer", &s.peer)],
                flag(b),
            );
        }
    }
    o.family(
        "mirrorkit_replication_link_mode",
        "gauge",
        "1 for the mode of the replication link of a module this node holds as primary.",
    );
    for m in &s.modules {
        let Some(mirror) = &m.mirror else { continue };
        let mode = mirror.split(':').next().unwrap_or("").trim();
        for known in LINK_MODES {
            o.sample(
                "mirrorkit_replication_link_mode",
                &[("module", &m.name), ("node", node), ("mode", known)],
                flag(mode == known),
            );
        }
    }
    o.per_module(
        s,
        (
            "mirrorkit_resync_done_bytes",
            "gauge",
            "Bytes of file data compared or sent by the running resync.",
        ),
        |m| m.progress.map(|p| p.done_bytes.to_string()),
    );
    o.per_module(
        s,
        (
            "mirrorkit_resync_total_bytes",
            "gauge",
            "Bytes of file data the running resync plans to compare or send.",
        ),
        |m| m.progress.map(|p| p.total_bytes.to_string()),
    );
    // Replication figures of the modules this node holds as primary, and of those it
    // receives as secondary.
    let primaries: Vec<(&str, &mirrorkit_engine::status::Status)> = s
        .modules
        .iter()
        .filter_map(|m| {
            m.replication
                .as_ref()
                .filter(|r| r.role == "primary")
                .map(|r| (m.name.as_str(), r))
        })
        .collect();
    let simple: [(&str, &str, &str, Figure); 5] = [
        (
            "mirrorkit_resync_rate_bytes_per_second",
            "gauge",
            "Average rate of the running (or last) resync since it started.",
            |r| r.sync_rate,
        ),
        (
            "mirrorkit_replication_operations_total",
            "counter",
            "Operations sent to the peer by this mount (writes, namespace and metadata changes, barriers).",
            |r| r.ops_sent,
        ),
        (
            "mirrorkit_replication_data_bytes_total",
            "counter",
            "Bytes of application writes sent to the peer by this mount.",
            |r| r.data_bytes_sent,
        ),
        (
            "mirrorkit_resync_data_bytes_total",
            "counter",
            "Bytes of file data sent by resyncs of this mount.",
            |r| r.sync_data_bytes_sent,
        ),
        (
            "mirrorkit_replication_peer_losses_total",
            "counter",
            "Times this mount went on alone (the peer lost or out of sync).",
            |r| r.times_alone,
        ),
    ];
    for (name, kind, help, get) in simple {
        o.family(name, kind, help);
        for (module, r) in &primaries {
            o.sample(name, &[("module", module), ("node", node)], get(r));
        }
    }
    o.family(
        "mirrorkit_resync_eta_seconds",
        "gauge",
        "Seconds left in the running resync at its average rate (absent while unknown).",
    );
    for m in &s.modules {
        let eta = m.replication.as_ref().and_then(|r| r.sync_eta_secs);
        if let (Some(_), Some(eta)) = (m.progress, eta) {
            o.sample(
                "mirrorkit_resync_eta_seconds",
                &[("module", &m.name), ("node", node)],
                eta,
            );
        }
    }
    o.per_module(
        s,
        (
            "mirrorkit_replication_write_rate_bytes_per_second",
            "gauge",
            "Application writes replicated per second over the last two seconds.",
        ),
        |m| m.write_rate.map(|rate| rate.to_string()),
    );
    const LATENCY: &str = "mirrorkit_replication_latency_seconds";
    o.family(
        LATENCY,
        "histogram",
        "From sending an operation to the peer's acknowledgement (applied there; on disk for barriers).",
    );
    for (module, r) in &primaries {
        let mut cumulative = 0u64;
        for (i, bound) in mirrorkit_engine::link::LATENCY_BUCKETS_US
            .iter()
            .enumerate()
        {
            cumulative += r.ack_latency_buckets.get(i).copied().unwrap_or(0);
            let le = format!("{}", *bound as f64 / 1e6);
            o.sample(
                &format!("{LATENCY}_bucket"),
                &[("module", module), ("node", node), ("le", &le)],
                cumulative,
            );
        }
        o.sample(
            &format!("{LATENCY}_bucket"),
            &[("module", module), ("node", node), ("le", "+Inf")],
            r.acks,
        );
        o.sample(
            &format!("{LATENCY}_sum"),
            &[("module", module), ("node", node)],
            format!("{:.6}", r.ack_latency_us_sum as f64 / 1e6),
        );
        o.sample(
            &format!("{LATENCY}_count"),
            &[("module", module), ("node", node)],
            r.acks,
        );
    }
    o.per_module(
        s,
        (
            "mirrorkit_replication_operations_applied_total",
            "counter",
            "Operations this node applied as secondary of the module.",
        ),
        |m| {
            m.replication
                .as_ref()
                .filter(|r| r.role == "secondary")
                .map(|r| r.ops_applied.to_string())
        },
    );
    o.per_network(
        s,
        (
            "mirrorkit_heartbeat_rtt_seconds",
            "gauge",
            "Round-trip time on the heartbeat network's current connection.",
        ),
        |h| h.rtt_us.map(|us| format!("{:.6}", us as f64 / 1e6)),
    );
    o.per_network(
        s,
        (
            "mirrorkit_heartbeat_received_total",
            "counter",
            "Heartbeats heard from the peer on this network.",
        ),
        |h| Some(h.received.to_string()),
    );
    o.per_network(
        s,
        (
            "mirrorkit_heartbeat_missed_total",
            "counter",
            "Heartbeats the peer sent on this network that never arrived.",
        ),
        |h| Some(h.missed.to_string()),
    );
    o.per_network(
        s,
        (
            "mirrorkit_heartbeat_up",
            "gauge",
            "1 when the peer is heard on this heartbeat network.",
        ),
        |h| Some(flag(h.up).to_string()),
    );
    o.per_network(
        s,
        (
            "mirrorkit_heartbeat_last_heard_seconds",
            "gauge",
            "How long ago the peer was last heard on this heartbeat network.",
        ),
        |h| h.last_heard_ms_ago.map(seconds),
    );
    o.family(
        "mirrorkit_checker_state",
        "gauge",
        "1 for the state of the checker on this node.",
    );
    for m in &s.modules {
        for c in &m.checkers {
            for k in CHECK_STATES {
                o.sample(
                    "mirrorkit_checker_state",
                    &[
                        ("module", &m.name),
                        ("node", node),
                        ("checker", &c.name),
                        ("state", k),
                    ],
                    flag(c.state.as_str() == k),
                );
            }
        }
    }
    let per_checker: [(&str, &str, CheckerFigure); 2] = [
        (
            "mirrorkit_checker_consecutive_failures",
            "Failures of the checker in a row.",
            |c| c.consecutive_failures,
        ),
        (
            "mirrorkit_checker_restarts_in_window",
            "Restarts the checker asked for within its restart window.",
            |c| c.restarts_in_window,
        ),
    ];
    for (name, help, get) in per_checker {
        o.family(name, "gauge", help);
        for m in &s.modules {
            for c in &m.checkers {
                o.sample(
                    name,
                    &[("module", &m.name), ("node", node), ("checker", &c.name)],
                    get(c),
                );
            }
        }
    }
    o.family(
        "mirrorkit_witness_configured",
        "gauge",
        "1 when the cluster has a witness (without one, a cut link can make two primaries).",
    );
    o.sample(
        "mirrorkit_witness_configured",
        &[("node", node)],
        flag(s.witness.is_some()),
    );
    o.text
}
