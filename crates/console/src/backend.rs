//! Where the console's answers come from: this node's daemon, over its control socket (the
//! same requests and the same handler as the CLI), and the peer node's daemon, through the
//! peer's console over HTTPS authenticated by both nodes' cluster certificates
//! (`POST /api/v1/node/request`, which carries a control-socket request and its reply).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mirrorkit_node::api::{self, NodeStatus, Reply, Request};
use serde::{Deserialize, Serialize};

use crate::tls;

/// Longest wait for a node's status (local daemon or peer console).
pub const STATUS_TIMEOUT_MS: u64 = 2_000;
/// Longest wait for a module's event log.
pub const LOG_TIMEOUT_MS: u64 = 5_000;
/// Longest wait for a verb: above the machine's longest step (a swap, 300 s by default).
pub const VERB_TIMEOUT_MS: u64 = 330_000;
/// The node-to-node path on every console.
pub const NODE_REQUEST_PATH: &str = "/api/v1/node/request";

/// The whole cluster as one console sees it: both nodes, in name order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster: String,
    /// The node whose console built this view.
    pub local: String,
    pub nodes: Vec<NodeView>,
    pub generated_unix_ms: u64,
}

/// One node of a [`ClusterView`]: its full status, or why it could not be had (then the
/// other node's `peer_state`/`peer_reason` tell what it last heard).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeView {
    pub node: String,
    pub status: Option<NodeStatus>,
    pub error: Option<String>,
}

/// This node's daemon and the peer's console.
pub struct Backend {
    pub node: String,
    pub peer: String,
    pub cluster: String,
    socket: PathBuf,
    peer_addr: SocketAddr,
    peer_tls: Arc<rustls::ClientConfig>,
}

/// Now, in milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Backend {
    pub fn new(
        cluster: &str,
        node: &str,
        peer: &str,
        socket: PathBuf,
        peer_addr: SocketAddr,
        peer_tls: Arc<rustls::ClientConfig>,
    ) -> Backend {
        Backend {
            node: node.to_owned(),
            peer: peer.to_owned(),
            cluster: cluster.to_owned(),
            socket,
            peer_addr,
            peer_tls,
        }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Ask this node's daemon.
    pub async fn local(&self, req: &Request, timeout: Duration) -> Result<Reply, String> {
        tokio::time::timeout(timeout, api::call(&self.socket, req))
            .await
            .map_err(|_| {
                format!(
                    "node {}: the daemon did not answer within {timeout:?} (see its log: journalctl -u mirrorkit)",
                    self.node
                )
            })?
    }

    /// Ask the peer's daemon, through the peer's console.
    pub async fn remote(&self, req: &Request, timeout: Duration) -> Result<Reply, String> {
        let body =
            serde_json::to_vec(req).map_err(|e| format!("cannot encode the request: {e}"))?;
        let r = tls::Req::post(NODE_REQUEST_PATH, body).header("content-type", "application/json");
        let unreachable = |e: String| {
            format!(
                "cannot reach node {}'s console at {}: {e}",
                self.peer, self.peer_addr
            )
        };
        let resp = tls::request(
            self.peer_tls.clone(),
            self.peer_addr,
            &self.peer,
            &r,
            timeout,
        )
        .await
        .map_err(unreachable)?;
        if resp.status != 200 {
            return Err(unreachable(format!(
                "HTTP {}: {}",
                resp.status,
                resp.text().chars().take(300).collect::<String>()
            )));
        }
        serde_json::from_slice(&resp.body)
            .map_err(|e| unreachable(format!("unreadable answer: {e}")))
    }

    /// Ask node `node` (this one or the peer).
    pub async fn on(&self, node: &str, req: &Request, timeout: Duration) -> Result<Reply, String> {
        if node == self.node {
            self.local(req, timeout).await
        } else if node == self.peer {
            self.remote(req, timeout).await
        } else {
            Err(format!(
                "no node {node:?} in cluster {} (nodes: {}, {})",
                self.cluster, self.node, self.peer
            ))
        }
    }

    async fn status_of(&self, node: &str) -> NodeView {
        let timeout = Duration::from_millis(STATUS_TIMEOUT_MS);
        let (status, error) = match self.on(node, &Request::Status, timeout).await {
            Ok(Reply::Status(s)) => (Some(s), None),
            Ok(Reply::Error(e)) => (None, Some(e)),
            Ok(other) => (None, Some(format!("unexpected answer: {other:?}"))),
            Err(e) => (None, Some(e)),
        };
        NodeView {
            node: node.to_owned(),
            status,
            error,
        }
    }

    /// Both nodes' statuses, asked at the same time.
    pub async fn view(&self) -> ClusterView {
        let (here, there) = tokio::join!(self.status_of(&self.node), self.status_of(&self.peer));
        let mut nodes = vec![here, there];
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        ClusterView {
            cluster: self.cluster.clone(),
            local: self.node.clone(),
            nodes,
            generated_unix_ms: unix_ms(),
        }
    }
}

/// The view without what changes on every poll (ages, times of the last check), to tell
/// whether something an operator cares about changed.
pub fn essence(v: &ClusterView) -> serde_json::Value {
    let mut v = v.clone();
    v.generated_unix_ms = 0;
    for n in &mut v.nodes {
        if let Some(s) = &mut n.status {
            for h in &mut s.heartbeats {
                // Heard or not matters; how many milliseconds ago, to the nearest second.
                h.last_heard_ms_ago = h.last_heard_ms_ago.map(|ms| ms / 1000);
                // Counters that move with every heartbeat: only a real change of the
                // round-trip time matters.
                h.received = 0;
                h.rtt_us = h.rtt_us.map(two_digits);
            }
            for m in &mut s.modules {
                m.since_ms_ago = 0;
                m.write_rate = m.write_rate.map(two_digits);
                if let Some(r) = &mut m.replication {
                    // The mode, the resync's progress and pace, and the latency matter; the
                    // running totals move with every write.
                    *r = mirrorkit_engine::status::Status {
                        mirror: std::mem::take(&mut r.mirror),
                        role: std::mem::take(&mut r.role),
                        mode: std::mem::take(&mut r.mode),
                        reason: std::mem::take(&mut r.reason),
                        sync_done_bytes: r.sync_done_bytes,
                        sync_total_bytes: r.sync_total_bytes,
                        sync_rate: two_digits(r.sync_rate),
                        sync_eta_secs: r.sync_eta_secs,
                        verify_running: r.verify_running,
                        verify_differences: r.verify_differences,
                        ack_latency_recent_us: two_digits(r.ack_latency_recent_us),
                        ..Default::default()
                    };
                }
                for c in &mut m.checkers {
                    c.last_check_unix_ms = None;
                }
            }
        }
    }
    serde_json::to_value(&v).unwrap_or(serde_json::Value::Null)
}

/// `n` to two significant digits (1234 -> 1200), so that small fluctuations compare equal.
fn two_digits(n: u64) -> u64 {
    let mut scale = 1;
    while n / scale >= 100 {
        scale *= 10;
    }
    n / scale * scale
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_significant_digits() {
        assert_eq!(super::two_digits(0), 0);
        assert_eq!(super::two_digits(99), 99);
        assert_eq!(super::two_digits(1234), 1200);
        assert_eq!(super::two_digits(u64::MAX), 18_000_000_000_000_000_000);
    }
}
