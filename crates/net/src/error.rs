//! The one error type of this crate. Each variant names the file, node or address concerned so
//! that the CLI and the logs can tell an operator what to fix without reading code.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong while generating or loading the cluster PKI, or while setting up,
/// dialling or accepting authenticated QUIC connections.
#[derive(thiserror::Error, Debug)]
pub enum NetError {
    #[error(
        "invalid node name {name:?}: {reason} (a node name is 1 to 63 characters of a-z, 0-9 and \
         '-', not starting or ending with '-')"
    )]
    InvalidNodeName { name: String, reason: &'static str },

    #[error("invalid cluster name {name:?}: {reason}")]
    InvalidClusterName { name: String, reason: &'static str },

    #[error("no node names given: a cluster needs at least one node certificate")]
    NoNodes,

    #[error("node name {name:?} is given twice: each node needs its own certificate")]
    DuplicateNode { name: String },

    #[error(
        "refusing to overwrite existing {}: remove the old cluster PKI first or ask for overwrite",
        path.display()
    )]
    AlreadyExists { path: PathBuf },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot generate the {what}: {source}")]
    CertGeneration {
        what: String,
        #[source]
        source: rcgen::Error,
    },

    #[error("cannot parse {}: {reason}", path.display())]
    InvalidPem { path: PathBuf, reason: String },

    #[error(
        "credentials of node {node:?} in {} are not usable: {reason} (regenerate them with the \
         cluster CA, or check that the right node name was given)",
        dir.display()
    )]
    IdentityMismatch {
        node: String,
        dir: PathBuf,
        reason: String,
    },

    #[error("invalid transport parameters: {reason}")]
    InvalidTransportParams { reason: String },

    #[error("cannot build the TLS configuration of node {node:?}: {reason}")]
    TlsConfig { node: String, reason: String },

    #[error("cannot bind the QUIC endpoint to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot start connecting to node {node:?} at {addr}: {source}")]
    Connect {
        node: String,
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },

    #[error(
        "connection to node {node:?} at {addr} failed: {source} (check that the peer runs, is \
         reachable, and holds a certificate for {node:?} from this cluster's CA)"
    )]
    Handshake {
        node: String,
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
}
