//! The cluster view as text, for `mirrorkit status` through the console: both nodes side by
//! side, each module's state on each node with each node's reason, as the console's page shows
//! them. A node that could not be asked is said so, with why; its column then shows what the
//! other node last heard from it, in parentheses.

use mirrorkit_node::api::{self, NodeStatus};

use crate::backend::ClusterView;

/// Width of a node's state column: the longest state name in parentheses, and a margin.
const STATE_WIDTH: usize = 13;
/// Width of the module column.
const MODULE_WIDTH: usize = 16;

/// The module's state on `node` in a column: its own word if it answered, else what the
/// other node last heard from it, in parentheses (`?` if nothing).
fn state_cell(view: &ClusterView, node: &str, module: &str) -> String {
    let answered = view.nodes.iter().find(|n| n.node == node);
    if let Some(s) = answered.and_then(|n| n.status.as_ref()) {
        return match s.modules.iter().find(|m| m.name == module) {
            Some(m) => m
                .state
                .map_or("INVALID".to_owned(), |k| k.name().to_owned()),
            None => "-".to_owned(),
        };
    }
    let heard = view
        .nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .filter(|s| s.peer == node)
        .flat_map(|s| s.modules.iter())
        .find(|m| m.name == module)
        .and_then(|m| m.peer_state);
    heard.map_or("?".to_owned(), |k| format!("({})", k.name()))
}

/// The statuses that came, in the view's (name) order.
fn statuses(view: &ClusterView) -> impl Iterator<Item = &NodeStatus> {
    view.nodes.iter().filter_map(|n| n.status.as_ref())
}

/// `mirrorkit status` for the whole cluster.
pub fn table(view: &ClusterView) -> String {
    let names: Vec<&str> = view.nodes.iter().map(|n| n.node.as_str()).collect();
    let name_width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut out = format!(
        "cluster {} (nodes {}), from node {}\n",
        view.cluster,
        names.join(", "),
        view.local
    );
    for n in &view.nodes {
        match (&n.status, &n.error) {
            (Some(s), _) => {
                for h in &s.heartbeats {
                    out.push_str(&format!(
                        "{:<name_width$} {}\n",
                        n.node,
                        api::heartbeat_line(h)
                    ));
                }
            }
            (None, error) => out.push_str(&format!(
                "{:<name_width$} NO STATUS: {}; in parentheses below: what the other node last heard from it\n",
                n.node,
                error.as_deref().unwrap_or("no status")
            )),
        }
    }

    let mut modules: Vec<&str> = Vec::new();
    for s in statuses(view) {
        for m in &s.modules {
            if !modules.contains(&m.name.as_str()) {
                modules.push(&m.name);
            }
        }
    }
    out.push_str(&format!("\n{:<MODULE_WIDTH$}", "MODULE"));
    for n in &names {
        out.push_str(&format!(" {:<STATE_WIDTH$}", n.to_uppercase()));
    }
    out.push_str(" REASON\n");
    let reason_indent = MODULE_WIDTH + names.len() * (STATE_WIDTH + 1) + 1;
    for module in &modules {
        out.push_str(&format!("{module:<MODULE_WIDTH$}"));
        for n in &names {
            out.push_str(&format!(" {:<STATE_WIDTH$}", state_cell(view, n, module)));
        }
        let mut first = true;
        let mut figures = Vec::new();
        for s in statuses(view) {
            let Some(m) = s.modules.iter().find(|m| m.name == *module) else {
                continue;
            };
            let reason = format!("{}: {}", s.node, api::module_reason(m));
            if first {
                out.push_str(&format!(" {reason}\n"));
                first = false;
            } else {
                out.push_str(&format!("{:reason_indent$}{reason}\n", ""));
            }
            if let Some(line) = api::replication_line(m) {
                figures.push(format!("{}: {line}", s.node));
            }
        }
        if first {
            out.push('\n');
        }
        for line in figures {
            out.push_str(&format!("{:MODULE_WIDTH$} {line}\n", ""));
        }
    }

    let checkers: Vec<_> = statuses(view)
        .flat_map(|s| {
            s.modules
                .iter()
                .flat_map(move |m| m.checkers.iter().map(move |c| (&s.node, &m.name, c)))
        })
        .collect();
    if !checkers.is_empty() {
        out.push_str(&format!(
            "\n{:<MODULE_WIDTH$} {:<name_width$} {:<16} {:<11} {:<8} LAST RESULT\n",
            "MODULE", "NODE", "CHECKER", "SCOPE", "STATE"
        ));
        for (node, module, c) in checkers {
            out.push_str(&format!(
                "{module:<MODULE_WIDTH$} {node:<name_width$} {}\n",
                api::checker_line(c)
            ));
        }
    }
    match statuses(view).next() {
        Some(s) => out.push_str(&api::witness_line(s.witness.as_deref())),
        None => out.push_str("\nno node answered: see the reasons above\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NodeView;
    use serde_json::json;

    fn status(node: &str, peer: &str, state: &str, peer_state: &str, reason: &str) -> NodeStatus {
        serde_json::from_value(json!({
            "cluster": "shop", "node": node, "peer": peer, "witness": null,
            "heartbeats": [{"name": "lan", "up": true, "last_heard_ms_ago": 12, "rtt_us": 350,
                            "received": 1000, "missed": 3}],
            "modules": [{
                "name": "db", "problems": [], "state": state, "colour": null,
                "reason": reason, "since_ms_ago": 0, "progress": null, "split_brain": false,
                "mirror": null, "peer_state": peer_state, "peer_reason": null,
                "peer_in_sync": true,
                "replication": if state == "PRIM" {
                    json!({"role": "primary", "mode": "in-sync", "ops_sent": 1234,
                           "data_bytes_sent": 4096, "ack_latency_recent_us": 410})
                } else { json!(null) },
                "write_rate": null,
            }]
        }))
        .expect("a NodeStatus")
    }

    fn view(alpha: Option<NodeStatus>, beta: Option<NodeStatus>) -> ClusterView {
        let node = |name: &str, s: Option<NodeStatus>| NodeView {
            node: name.into(),
            error: s.is_none().then(|| {
                format!("cannot reach node {name}'s console at 10.0.0.2:9010: connection refused")
            }),
            status: s,
        };
        ClusterView {
            cluster: "shop".into(),
            local: "alpha".into(),
            nodes: vec![node("alpha", alpha), node("beta", beta)],
            generated_unix_ms: 0,
        }
    }

    #[test]
    fn both_nodes_side_by_side_with_each_ones_reason() {
        let t = table(&view(
            Some(status(
                "alpha",
                "beta",
                "PRIM",
                "SECOND",
                "in sync with beta",
            )),
            Some(status(
                "beta",
                "alpha",
                "SECOND",
                "PRIM",
                "receiving from alpha",
            )),
        ));
        assert!(
            t.starts_with("cluster shop (nodes alpha, beta), from node alpha\n"),
            "{t}"
        );
        assert!(
            t.contains("alpha heartbeat lan: up, peer heard 12 ms ago, rtt 350 µs"),
            "{t}"
        );
        assert!(t.contains("beta  heartbeat lan: up"), "{t}");
        let row = t
            .lines()
            .find(|l| l.starts_with("db "))
            .unwrap_or_else(|| panic!("no module row: {t}"));
        assert_eq!(
            row.split_whitespace().take(4).collect::<Vec<_>>(),
            ["db", "PRIM", "SECOND", "alpha:"],
            "{t}"
        );
        assert!(row.ends_with("alpha: in sync with beta"), "{t}");
        let next = t.lines().skip_while(|l| *l != row).nth(1).unwrap_or("");
        assert_eq!(next.trim_start(), "beta: receiving from alpha", "{t}");
        assert_eq!(
            next.find("beta:"),
            row.find("alpha:"),
            "reasons aligned: {t}"
        );
        assert!(
            t.contains(
                "alpha: replication in-sync, latency 410 µs (recent average), 1234 operations"
            ),
            "{t}"
        );
        assert!(
            t.contains("no witness: if the link between the nodes is cut"),
            "{t}"
        );
    }

    #[test]
    fn a_node_not_answering_shows_what_its_peer_last_heard() {
        let t = table(&view(
            Some(status("alpha", "beta", "ALONE", "SECOND", "beta lost")),
            None,
        ));
        assert!(
            t.contains("beta  NO STATUS: cannot reach node beta's console at 10.0.0.2:9010: connection refused"),
            "{t}"
        );
        let row = t
            .lines()
            .find(|l| l.starts_with("db "))
            .unwrap_or_else(|| panic!("no module row: {t}"));
        assert_eq!(
            row.split_whitespace().take(3).collect::<Vec<_>>(),
            ["db", "ALONE", "(SECOND)"],
            "{t}"
        );
        let none = table(&view(None, None));
        assert!(none.contains("no node answered"), "{none}");
    }
}
