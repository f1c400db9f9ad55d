//! `mirrorkit-checkers`: the checkers of a module on a node (docs/modules.md, "`[[checker]]`").
//!
//! - [`probe`]: one check of each kind, giving `Ok(())` or a detail an operator understands:
//!   `process` (`/proc`), `tcp`, `script` (through `mirrorkit_scripts::Runner::run_checker`),
//!   `ping` ([`ping()`]: ICMP echo over a raw socket, or an unprivileged one), `interface`
//!   (`/sys/class/net`).
//! - [`policy`]: pure, with the time passed in: failures in a row, and the [`Verdict`] they lead
//!   to (`Restart` up to `max_restarts` within the window, then `Failover`; `NodeProblem` and
//!   `NodeRecovered` for node checkers).
//! - [`CheckerSet`]: the checkers of one module as tokio tasks, which the daemon turns on and off
//!   ([`CheckerSet::set_mode`]: application checkers on the primary while the application runs,
//!   node checkers wherever the module is started), reporting verdicts on a channel
//!   ([`CheckerReport`]) and their state on demand ([`CheckerSet::status`]).
//!
//! This crate decides nothing about the cluster: what a verdict leads to (a restart, a
//! switchover, staying put because the peer cannot take over) is the daemon's.

pub mod ping;
pub mod policy;
pub mod probe;
mod set;

pub use ping::{ping, ping_with, PingSocket};
pub use policy::{CheckState, Policy, Verdict};
pub use set::{CheckerReport, CheckerSet, CheckerStatus};
