//! mirrorkit-witness: a third party that grants the primary role of each module to one node at a
//! time, with leases, so that a cut link between the two nodes cannot make both primary.
//!
//! This crate owns
//! - the protocol between the nodes and the witness ([`protocol`]: frames, messages, bounds;
//!   pure);
//! - the witness's decision per module ([`arbiter`]: pure, time passed in);
//! - the witness process ([`Server`], [`serve`]): QUIC with the cluster's certificates, one
//!   request per stream, claims held while another node's lease runs, every change made
//!   durable ([`state`]) before it is answered, configuration file [`ServerConfig`];
//! - the nodes' client ([`WitnessClient`]): claims, renewals, releases, and the
//!   [`mirrorkit_cluster::machine::WitnessEvent`]s of the module state machine, with the
//!   guarantee that a node learns it lost its grant no later than the witness may grant it to
//!   the other node.
//!
//! It decides nothing about modules beyond the witness's rule: the node's state machine
//! (`mirrorkit-cluster`) decides when to claim, and what to do with the answer.

pub mod arbiter;
mod client;
mod config;
mod error;
pub mod protocol;
mod server;
pub mod state;

pub use client::{margin, WitnessClient, CLAIM_GRACE, MIN_MARGIN, RECONNECT_DELAY};
pub use config::ServerConfig;
pub use error::WitnessError;
pub use server::{serve, Server};
