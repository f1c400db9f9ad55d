//! `mirrorkit-scripts`: running a module's scripts on a node, and the module's event log.
//!
//! A [`Runner`] (one per module per node) runs the scripts of `[scripts]` the way
//! `docs/modules.md` ("Scripts", "Script environment") promises operators:
//!
//! - the environment is built from nothing: `PATH`, the module's `[env]`, the `MIRRORKIT_*`
//!   variables; standard input is `/dev/null`; the module folder is the working directory;
//! - each script runs in a session and process group of its own, and in the module's cgroup v2
//!   when one can be made, so that [`Runner::kill_all`] (`forcestop`, self-fencing) finds the
//!   application a script left running in the background (see `tracker` for the two
//!   mechanisms);
//! - output is read line by line into the [`EventLog`] (bounded per run) and `tracing`, until the
//!   script exits: a background process holding the pipes never delays the run;
//! - past its `timeout_ms`, a script's process group gets SIGTERM, then SIGKILL after a grace;
//! - a failure is a [`ScriptFailure`] whose `detail` says which script, what happened, and its
//!   last lines of output: the reason the cluster manager shows (state WAIT, the log, the CLI);
//! - a script checker runs through [`Runner::run_checker`]: the same environment with
//!   `MIRRORKIT_SCRIPT=checker` and `MIRRORKIT_CHECKER`, SIGKILL to its process group at its
//!   timeout or when the check is dropped, and its output kept only when the check fails.
//!
//! The [`EventLog`] is the module's history for operators: JSON lines under the state
//! directory, rotated at a bound, readable by the CLI without the daemon. Writing to it never
//! fails a caller: an event log failure never blocks a failover.
//!
//! This crate decides nothing: which scripts run, in which order and role, and what a failure
//! leads to, are the cluster manager's. It never touches replicated data or virtual IPs.

mod event_log;
mod output;
mod runner;
mod tracker;

pub use event_log::{
    civil_from_days, rotated_path, utc_text, Entry, EventLog, Kind, Level, ENTRY_TEXT_MAX_BYTES,
    ROTATE_BYTES,
};
pub use output::{FAILURE_TAIL_LINES, KEPT_BYTES_MAX, KEPT_LINES_MAX, LINE_MAX_BYTES};
pub use runner::{
    Runner, RunnerError, RunnerOptions, ScriptEnv, ScriptFailure, ScriptRole, KILL_REAP_WAIT_MS,
    OUTPUT_DRAIN_MS,
};
pub use tracker::{KillMechanism, CGROUP_PARENT, KILL_ALL_WAIT_MS};
