//! mirrorkit-net: who may talk to whom, and the authenticated QUIC endpoints they talk over.
//!
//! This crate owns
//! - the cluster PKI ([`pki`]): generating a private CA and one certificate per node, and loading
//!   a node's credentials, checked, from its PKI directory;
//! - the node's QUIC endpoint ([`endpoint`], [`connect`], [`accept`]): TLS 1.3 with mutual
//!   certificate authentication against the cluster CA, ALPN [`ALPN`], and the transport bounds of
//!   [`TransportParams`];
//! - naming the peer of a connection from its verified certificate ([`peer_node_name`]).
//!
//! It never does file I/O beyond loading and saving the PKI files, and holds no replication
//! logic: what travels over a connection, and when, is decided by the crates above it.

mod error;
pub mod pki;
mod quic;

pub use error::NetError;
pub use quic::{
    accept, cert_node_name, connect, endpoint, peer_node_name, priority_endpoint, TransportParams,
    ALPN, CONFIRM_POLL_INTERVAL_MS, CONFIRM_TIMEOUT_MS, INITIAL_CONGESTION_WINDOW_BYTES,
};
