//! The decisions of mirrorkit, kept free of I/O and clocks so that tests can drive them with
//! simulated time, networks and crashes.
//!
//! - [`generation`]: which node holds the newest data, and how to bring the other up to date.

pub mod generation;
