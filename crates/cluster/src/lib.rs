//! The decisions of mirrorkit, kept free of I/O and clocks so that tests can drive them with
//! simulated time, networks and crashes.
//!
//! - [`generation`]: which node holds the newest data, and how to bring the other up to date.
//! - [`machine`]: the state machine of one module on one node (STOP, WAIT, ALONE, PRIM,
//!   SECOND and the transitions between them): events in, actions out.
//!
//! Never does: I/O, reading a clock, spawning threads. `tests/sim` runs two machines (and a
//! witness) in a deterministic simulation with crashes and partitions.

pub mod generation;
pub mod machine;
