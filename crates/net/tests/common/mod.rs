//! Helpers shared by the network tests: clusters in temporary directories and endpoints on
//! loopback.

use std::net::SocketAddr;
use std::path::Path;

use mirrorkit_net::pki::{generate_cluster, NodeIdentity};
use mirrorkit_net::{endpoint, TransportParams};

pub const LOOPBACK_V4: &str = "127.0.0.1:0";
pub const LOOPBACK_V6: &str = "[::1]:0";

/// Generate a cluster with `nodes` in a fresh temporary directory.
pub fn cluster(name: &str, nodes: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    generate_cluster(dir.path(), name, nodes, false).expect("generate cluster");
    dir
}

/// An endpoint for `node` of the cluster in `dir`, bound to `bind`.
pub fn node(dir: &Path, node: &str, bind: &str) -> quinn::Endpoint {
    let identity = NodeIdentity::load(dir, node).expect("load identity");
    let bind: SocketAddr = bind.parse().expect("bind address");
    endpoint(&identity, bind, &TransportParams::default()).expect("endpoint")
}

pub fn addr(endpoint: &quinn::Endpoint) -> SocketAddr {
    endpoint.local_addr().expect("local addr")
}
