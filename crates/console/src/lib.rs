//! `mirrorkit-console`: the web console and the REST API of a node, served over HTTPS by the
//! `mirrorkit daemon` process (port 9010 by default) with the node's certificate from the
//! cluster CA.
//!
//! Every answer comes from a daemon's control socket (`mirrorkit_node::api`), through the same
//! requests and the same handler as the CLI, so the console, the API and the CLI never
//! disagree: this node's daemon directly, the peer's through the peer's console over HTTPS
//! with both nodes' cluster certificates ([`backend`]). Each console shows the whole cluster.
//!
//! The CLI asks its own node's console too, authenticated by the node's certificate
//! ([`client`]), and prints the same cluster view ([`text`]); it uses the control socket
//! directly only when the node runs no console, when told to (`--socket`), or when the console
//! does not answer.
//!
//! Layout: [`server`] (routes, authentication gate, handlers, the TLS accept loop),
//! [`auth`] (password, sessions, CSRF tokens, login rate limit, API tokens), [`backend`] (the
//! daemons), [`metrics`] (Prometheus text), [`tls`] (rustls configurations and a small HTTPS
//! client), [`client`] (the CLI's client of its node's console), [`text`] (the cluster view
//! as a table), `assets/` (the page, its script and style, embedded in the binary).
//!
//! Never does: decide anything about the cluster (the daemon does), answer without
//! authentication (except the login page and static assets), or load anything from the
//! internet.

pub mod auth;
pub mod backend;
pub mod client;
pub mod metrics;
pub mod server;
pub mod text;
pub mod tls;

pub use server::{run, start, Conn, Console, ConsoleError, Settings};
