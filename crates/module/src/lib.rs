//! `mirrorkit-module`: modules, the unit an operator declares. A module is a folder holding
//! `module.toml` (replicated directories, virtual IPs, scripts, checkers, notifications,
//! preferences) and the scripts it names. The full reference is `docs/modules.md`.
//!
//! This crate owns the schema ([`ModuleConfig`]), its validation, and watching a module folder
//! for changes. Validation reports every problem of a folder at once, each with file, line,
//! column and field ([`Problem`]): a daemon starts a module only from a [`LoadedModule`], which
//! exists only for a folder without problems.
//!
//! Layout: `parse`, `walk` and `rules` are pure (text in, configuration or problems out); `load`
//! is the I/O edge (reads the folder, checks the files the module names); `watch` wraps `load`
//! in an inotify watch. The crate never runs scripts, touches interfaces or replicates anything:
//! the cluster manager does, from what this crate returns.

mod config;
mod filter;
mod load;
mod parse;
mod problem;
pub mod rules;
mod set;
mod walk;
mod watch;

use std::path::Path;

pub use config::*;
pub use filter::MirrorFilter;
pub use load::{load_module, LoadedModule};
pub use problem::{Position, Positions, Problem};
pub use set::check_module_set;
pub use watch::{ModuleWatcher, WatchError, WatchUpdate, DEFAULT_QUIET_MS, MAX_SETTLE_MS};

/// Check the module folder `dir` (its `module.toml` and the files it names) and return its
/// configuration, or every problem found, in file order. `nodes`: the cluster's node names when
/// known; `default_primary` must then be one of them.
pub fn check_module_dir(
    dir: &Path,
    nodes: Option<&[String]>,
) -> Result<ModuleConfig, Vec<Problem>> {
    load_module(dir, nodes).map(|m| m.config)
}

/// Check the text of a `module.toml` without looking at the disk (scripts are not looked for).
/// `file` is only used to name the file in problems.
pub fn check_module_source(
    src: &str,
    file: &Path,
    nodes: Option<&[String]>,
) -> Result<(ModuleConfig, Positions), Vec<Problem>> {
    let parsed = parse::parse(src, file, nodes);
    match parsed.config {
        Some(config) => Ok((config, parsed.positions)),
        None => Err(parsed.problems),
    }
}

#[cfg(test)]
mod tests;
