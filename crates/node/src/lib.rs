//! `mirrorkit-node`: the node daemon. It runs, for each module of the node, the module state
//! machine of `mirrorkit-cluster` and performs what it asks with the real components: the
//! engine's mount (primary) and receiver (secondary), the module's scripts, virtual IPs, and
//! the heartbeat channel to the peer daemon. It also serves the local control socket the CLI
//! uses.
//!
//! Layout: `config` (the cluster file, `cluster init`), `daemon` (the event loop and the
//! actions), `module_rt` (a module's record and how a folder becomes one), `reload` (module files
//! watched and changes applied), `api` (control socket, client and status table), `fence`
//! (cutting the application off a mount at once), `demo_module` (the demo module on a cluster of
//! one machine).
//!
//! Never does: decide anything itself (the machine does), or touch replicated data except
//! through the engine.

pub mod api;
pub mod config;
pub mod daemon;
pub mod demo_module;
pub mod fence;
mod guard;
mod module_rt;
mod reload;

/// What this version of the daemon refuses to run in a valid module, each with the reason
/// (`mirrorkit module check` says it too).
pub use module_rt::unsupported;
