//! The CLI's client of its own node's console: HTTPS to the console's address from the cluster
//! file, authenticated by the node's cluster certificate (mutual TLS, as the peer's console
//! is). The CLI then asks the same routes as any API client and shows what the console and
//! the API show: `mirrorkit status` the whole cluster, the verbs and `mirrorkit log` through
//! the same handlers.
//!
//! Errors say whether the control socket may be used instead ([`ClientError::fall_back`]):
//! only when the console certainly did not handle the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mirrorkit_cluster::machine::{StateKind, Verb};
use mirrorkit_net::pki::NodeIdentity;
use mirrorkit_node::config::ClusterFile;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::backend::{self, ClusterView};
use crate::server::{LOG_LINES_MAX, OPERATOR_HEADER};
use crate::tls::{self, Req, RequestError};

/// Longest wait for `/api/v1/status`: the console's own wait for each node, and a margin.
pub const STATUS_WAIT_MS: u64 = backend::STATUS_TIMEOUT_MS + 3_000;
/// Longest wait for a module's event log.
pub const LOG_WAIT_MS: u64 = backend::LOG_TIMEOUT_MS + 3_000;
/// Longest wait for a verb: the console's own wait for the daemon, and a margin.
pub const VERB_WAIT_MS: u64 = backend::VERB_TIMEOUT_MS + 10_000;
/// Most characters of a non-JSON error body quoted in an error.
const BODY_QUOTE_MAX_CHARS: usize = 300;

/// Why the console did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node's certificate cannot be used (not root? files moved?): nothing was sent.
    #[error("cannot use node {node}'s certificate to reach its console at {addr}: {reason}")]
    Identity {
        node: String,
        addr: SocketAddr,
        reason: String,
    },
    /// No connection to the console, or it refused this node's certificate during the
    /// handshake: nothing was handled.
    #[error("node {node}'s console at {addr} did not answer: {reason}")]
    Unreachable {
        node: String,
        addr: SocketAddr,
        reason: String,
    },
    /// The console refused this node's certificate (HTTP 401 or 403): nothing was handled.
    #[error(
        "node {node}'s console at {addr} refused this node's certificate: HTTP {status}: {message}"
    )]
    Refused {
        node: String,
        addr: SocketAddr,
        status: u16,
        message: String,
    },
    /// The request went out and no complete answer came: a verb may have run.
    #[error("no answer from node {node}'s console at {addr}: {reason}")]
    NoAnswer {
        node: String,
        addr: SocketAddr,
        reason: String,
    },
    /// The console answered with an error that is not the daemon's.
    #[error("node {node}'s console at {addr} answered HTTP {status}: {message}")]
    Http {
        node: String,
        addr: SocketAddr,
        status: u16,
        message: String,
    },
    /// The daemon refused or could not do what was asked: its reason, as the control socket
    /// gives it.
    #[error("{0}")]
    Daemon(String),
}

impl ClientError {
    /// True when the console handled nothing, so that asking the control socket instead
    /// cannot run a verb twice.
    pub fn fall_back(&self) -> bool {
        matches!(
            self,
            ClientError::Identity { .. }
                | ClientError::Unreachable { .. }
                | ClientError::Refused { .. }
        )
    }
}

/// Where the CLI of the node whose cluster file is `cf` reaches its console: the console's
/// listen address; when it listens on every address, the node's own address from the cluster
/// file (local on the node itself, and reachable from outside a network namespace the node
/// runs in, as in `mirrorkit demo`), else loopback. `None` when the node runs no console (no
/// `[console]`, or no admin password: the daemon does not start it then).
pub fn console_address(cf: &ClusterFile) -> Option<SocketAddr> {
    let console = cf.console.as_ref()?;
    console.admin_password_hash.as_ref()?;
    let listen = console.listen;
    let own = cf.replication(&cf.node).map(|a| a.ip());
    let ip = match (listen.ip(), own) {
        (IpAddr::V4(ip), Some(own @ IpAddr::V4(_))) if ip.is_unspecified() => own,
        (IpAddr::V6(ip), Some(own)) if ip.is_unspecified() => own,
        (IpAddr::V4(ip), _) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V6(ip), _) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (ip, _) => ip,
    };
    Some(SocketAddr::new(ip, listen.port()))
}

/// A module's name in a URL path: unreserved characters as they are, the rest
/// percent-encoded.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `error` of a JSON error body, else the body's start.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(BODY_QUOTE_MAX_CHARS)
            .collect(),
    }
}

/// The answer of a verb.
#[derive(Deserialize)]
struct VerbAnswer {
    state: StateKind,
}

/// The answer of the log route.
#[derive(Deserialize)]
struct LogAnswer {
    entries: Vec<mirrorkit_scripts::Entry>,
}

/// A node's console, asked with a node's certificate (the CLI: its own node's).
pub struct NodeClient {
    node: String,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl NodeClient {
    /// The client of the console at `addr` of the node whose cluster file is `cf`.
    pub fn new(cf: &ClusterFile, addr: SocketAddr) -> Result<NodeClient, ClientError> {
        let identity_error = |reason: String| ClientError::Identity {
            node: cf.node.clone(),
            addr,
            reason,
        };
        let identity = NodeIdentity::load(&cf.certs, &cf.node)
            .map_err(|e| identity_error(format!("{e} (run as root)")))?;
        NodeClient::with_identity(&identity, &cf.node, addr).map_err(identity_error)
    }

    /// The client of node `node`'s console at `addr`, presenting `identity`'s certificate.
    pub fn with_identity(
        identity: &NodeIdentity,
        node: &str,
        addr: SocketAddr,
    ) -> Result<NodeClient, String> {
        Ok(NodeClient {
            node: node.to_owned(),
            addr,
            tls: tls::client_config(identity, true)?,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn send(&self, r: &Req, wait_ms: u64) -> Result<tls::Response, ClientError> {
        let resp = tls::send(
            self.tls.clone(),
            self.addr,
            &self.node,
            r,
            Duration::from_millis(wait_ms),
        )
        .await
        .map_err(|e| match e {
            RequestError::NotConnected(reason) => ClientError::Unreachable {
                node: self.node.clone(),
                addr: self.addr,
                reason,
            },
            RequestError::NoAnswer(reason) => ClientError::NoAnswer {
                node: self.node.clone(),
                addr: self.addr,
                reason,
            },
        })?;
        if matches!(resp.status, 401 | 403) {
            return Err(ClientError::Refused {
                node: self.node.clone(),
                addr: self.addr,
                status: resp.status,
                message: error_message(&resp.body),
            });
        }
        Ok(resp)
    }

    fn http_error(&self, resp: &tls::Response) -> ClientError {
        ClientError::Http {
            node: self.node.clone(),
            addr: self.addr,
            status: resp.status,
            message: error_message(&resp.body),
        }
    }

    fn decode<T: DeserializeOwned>(&self, resp: &tls::Response) -> Result<T, ClientError> {
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Http {
            node: self.node.clone(),
            addr: self.addr,
            status: resp.status,
            message: format!("unreadable answer: {e}"),
        })
    }

    /// `GET /api/v1/status`: both nodes, as the console shows them.
    pub async fn status(&self) -> Result<ClusterView, ClientError> {
        let resp = self
            .send(&Req::get("/api/v1/status"), STATUS_WAIT_MS)
            .await?;
        match resp.status {
            200 => self.decode(&resp),
            _ => Err(self.http_error(&resp)),
        }
    }

    /// `POST /api/v1/modules/{module}/{verb}` on this node, recorded as asked by `operator`
    /// with the CLI on this node: the state the verb ended in, or the daemon's refusal.
    pub async fn verb(
        &self,
        module: &str,
        verb: Verb,
        operator: &str,
    ) -> Result<StateKind, ClientError> {
        let path = format!("/api/v1/modules/{}/{verb}", path_segment(module));
        let r = Req::post(&path, "").header(OPERATOR_HEADER, operator);
        let resp = self.send(&r, VERB_WAIT_MS).await?;
        match resp.status {
            200 => Ok(self.decode::<VerbAnswer>(&resp)?.state),
            409 => Err(ClientError::Daemon(error_message(&resp.body))),
            _ => Err(self.http_error(&resp)),
        }
    }

    /// `GET /api/v1/modules/{module}/log`: the module's last `lines` event-log entries on
    /// this node (at most [`LOG_LINES_MAX`]).
    pub async fn log(
        &self,
        module: &str,
        lines: usize,
    ) -> Result<Vec<mirrorkit_scripts::Entry>, ClientError> {
        let path = format!(
            "/api/v1/modules/{}/log?lines={}",
            path_segment(module),
            lines.min(LOG_LINES_MAX)
        );
        let resp = self.send(&Req::get(&path), LOG_WAIT_MS).await?;
        match resp.status {
            200 => Ok(self.decode::<LogAnswer>(&resp)?.entries),
            404 => Err(ClientError::Daemon(error_message(&resp.body))),
            _ => Err(self.http_error(&resp)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_safe_in_paths() {
        assert_eq!(path_segment("shop-db_1.x"), "shop-db_1.x");
        assert_eq!(path_segment("a/../b?c"), "a%2F..%2Fb%3Fc");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn errors_quote_the_consoles_reason() {
        assert_eq!(error_message(br#"{"error": "no module x"}"#), "no module x");
        assert_eq!(error_message(b"  plain text\n"), "plain text");
    }

    #[test]
    fn the_cli_reaches_a_console_listening_everywhere_at_the_nodes_address() {
        let mut cf = ClusterFile::on_one_machine(
            "c",
            "alpha",
            &[
                ("alpha", "10.0.0.1".parse().expect("ip")),
                ("beta", "10.0.0.2".parse().expect("ip")),
            ],
            std::path::Path::new("/tmp/c"),
            std::path::Path::new("/tmp/c/certs"),
            std::path::Path::new("/tmp/c/modules"),
        );
        assert_eq!(console_address(&cf), None, "no [console]");
        let section = |listen: &str, hash: Option<&str>| {
            Some(mirrorkit_node::config::ConsoleSection {
                listen: listen.parse().expect("addr"),
                admin_password_hash: hash.map(str::to_owned),
            })
        };
        cf.console = section("0.0.0.0:9010", None);
        assert_eq!(console_address(&cf), None, "no password: no console runs");
        cf.console = section("0.0.0.0:9010", Some("$argon2id$..."));
        assert_eq!(console_address(&cf), "10.0.0.1:9010".parse().ok());
        // A dual-stack listener takes the IPv4 address too.
        cf.console = section("[::]:9011", Some("$argon2id$..."));
        assert_eq!(console_address(&cf), "10.0.0.1:9011".parse().ok());
        cf.console = section("10.0.0.1:9010", Some("$argon2id$..."));
        assert_eq!(console_address(&cf), "10.0.0.1:9010".parse().ok());
    }
}
