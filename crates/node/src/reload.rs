//! Module files watched while the daemon runs (docs/modules.md, "Changing a running module").
//!
//! Each module folder has a watcher thread (`mirrorkit_module::ModuleWatcher`: a burst of
//! changes is checked once it settled). What a change does:
//!
//! - **invalid**: refused; every problem goes to the log and the module's event log, and shows
//!   in `mirrorkit status` (`config_problems`); the module keeps running with its last valid
//!   configuration.
//! - **valid, scripts, `[env]`, checkers, `[notify]`, preferences, timeouts**: applied at once.
//!   The next script run uses the new scripts and environment; checkers restart (their restart
//!   history starts again); the machine decides with the new preferences from its next decision.
//! - **valid, `[[mirror]]` or `[[vip]]`**: applied at once when the module is stopped on this
//!   node; otherwise kept pending (status says so) and applied when it stops, so that no
//!   directory or address changes under a running application.
//! - **the module's `name` or its heartbeat profile**: applied when the daemon restarts.
//! - **a module that could not run** (invalid, or refused, at the daemon's start) and is now
//!   valid: it is set up and, with `autostart`, started.
//!
//! A module folder added or removed while the daemon runs is taken into account at its restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mirrorkit_cluster::machine::{Event, StateKind, Verb};
use mirrorkit_module::{LoadedModule, ModuleWatcher, WatchUpdate};
use mirrorkit_scripts::{Kind, Level as LogLevel};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::daemon::{Daemon, Input};
use crate::module_rt::{machine_config, module_rt, parts, unsupported, vips_of};

/// Watch `folder` in a thread of its own; each settled change goes to the daemon's loop.
pub(crate) fn watch(folder: PathBuf, nodes: Vec<String>, tx: mpsc::UnboundedSender<Input>) {
    let spawned = std::thread::Builder::new()
        .name("module-watch".into())
        .spawn(move || {
            let mut w = match ModuleWatcher::new(&folder, Some(nodes)) {
                Ok(w) => w,
                Err(e) => {
                    error!(folder = %folder.display(), "module changes will not be applied until the daemon restarts: {e}");
                    return;
                }
            };
            loop {
                match w.next_update(Duration::from_secs(1)) {
                    Ok(Some(u)) => {
                        if tx.send(Input::ModuleFile(folder.clone(), u)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        if tx.is_closed() {
                            return;
                        }
                    }
                    Err(e) => {
                        error!(folder = %folder.display(), "module changes will not be applied until the daemon restarts: {e}");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        error!("cannot start a module watcher thread: {e}");
    }
}

/// What differs between two valid configurations of one module, as far as applying goes.
fn structural(old: &LoadedModule, new: &LoadedModule) -> Vec<&'static str> {
    let (o, n) = (&old.config, &new.config);
    let mut v = Vec::new();
    if o.mirrors != n.mirrors {
        v.push("[[mirror]]");
    }
    if o.vips != n.vips {
        v.push("[[vip]]");
    }
    v
}

impl Daemon {
    fn module_log(&self, key: &str, level: LogLevel, text: &str) {
        if let Some(log) = self.modules.get(key).and_then(|m| m.log.as_ref()) {
            log.append(level, Kind::Log, text);
        }
    }

    pub(crate) async fn module_file(&mut self, folder: &Path, update: WatchUpdate) {
        let Some(key) = self
            .modules
            .iter()
            .find(|(_, m)| m.folder == folder)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        match update {
            WatchUpdate::Invalid(problems) => {
                let texts: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                for p in &texts {
                    error!(module = %key, "module file changed but is invalid, not applied (the module keeps its last valid configuration): {p}");
                    self.module_log(
                        &key,
                        LogLevel::Error,
                        &format!("module file changed but is invalid, not applied: {p}"),
                    );
                }
                if let Some(m) = self.modules.get_mut(&key) {
                    m.config_problems = texts;
                    m.pending = None;
                }
            }
            WatchUpdate::Valid(loaded) => self.apply(&key, *loaded).await,
        }
    }

    /// Refuse a valid change for `why`: logged, and shown in the status until the next change.
    fn refuse_change(&mut self, key: &str, why: String) {
        warn!(module = %key, "module file changed: {why}");
        self.module_log(key, LogLevel::Warn, &format!("module file changed: {why}"));
        if let Some(m) = self.modules.get_mut(key) {
            m.config_problems = vec![why];
            m.pending = None;
        }
    }

    async fn apply(&mut self, key: &str, loaded: LoadedModule) {
        let Some(m) = self.modules.get(key) else {
            return;
        };
        if m.machine.is_none() {
            return self.set_up_late(key).await;
        }
        let Some(old) = m.loaded.clone() else {
            return;
        };
        let new_name = loaded.config.name.clone();
        if new_name != key {
            return self.refuse_change(
                key,
                format!("renaming module {key} to {new_name} is applied when the daemon restarts (on both nodes)"),
            );
        }
        if old.config.heartbeat != loaded.config.heartbeat {
            return self.refuse_change(
                key,
                "a new heartbeat profile is applied when the daemon restarts (on both nodes)"
                    .to_owned(),
            );
        }
        let refused = unsupported(&loaded);
        if !refused.is_empty() {
            return self.refuse_change(key, format!("not applied: {}", refused.join("; ")));
        }
        let changed = structural(&old, &loaded);
        let stopped = m
            .machine
            .as_ref()
            .is_none_or(|mc| mc.state() == StateKind::Stop);
        if !changed.is_empty() && !stopped {
            let why = format!(
                "the change of {} waits until the module is stopped on this node (`mirrorkit stop {key}`, then `start`): until then it runs with its previous configuration",
                changed.join(" and ")
            );
            warn!(module = %key, "module file changed: {why}");
            self.module_log(key, LogLevel::Warn, &format!("module file changed: {why}"));
            if let Some(m) = self.modules.get_mut(key) {
                m.config_problems = vec![format!("pending: {why}")];
                m.pending = Some(loaded);
            }
            return;
        }
        self.apply_now(key, loaded);
        self.checker_modes(key);
    }

    /// Apply a valid change of a module that runs (scripts, env, checkers, notify, preferences;
    /// directories and virtual IPs only when stopped: the caller checks).
    fn apply_now(&mut self, key: &str, loaded: LoadedModule) {
        let vips = vips_of(&loaded);
        let Some(state_dir) = self.modules.get(key).map(|m| m.state_dir.clone()) else {
            return;
        };
        let mirrors = crate::module_rt::mirrors_of(&self.cf, &loaded, &state_dir);
        let dirs: Vec<std::path::PathBuf> = mirrors.iter().map(|mr| mr.dir.clone()).collect();
        let Some(log) = self.modules.get(key).and_then(|m| m.log.clone()) else {
            return;
        };
        let built = parts(&self.cf, &loaded, &vips, &dirs, &log, &self.tx);
        let mc = machine_config(&self.cf, &loaded);
        let Some(m) = self.modules.get_mut(key) else {
            return;
        };
        match built {
            Ok(p) => {
                m.runner = Some(p.runner);
                m.checkers = p.checkers;
                m.notifier = p.notifier;
                m.health = None;
            }
            Err(e) => {
                let why = format!("not applied: {e}");
                return self.refuse_change(key, why);
            }
        }
        self.guard.set_module(key, m.profile, &vips);
        m.vips = vips;
        // Directories change only while the module is stopped here (the caller checks); a
        // module that runs keeps its engines.
        if !m.is_mounted() && !m.has_receiver() {
            m.mirrors = mirrors;
        }
        if let Some(machine) = m.machine.as_mut() {
            machine.reconfigure(&mc);
        }
        m.loaded = Some(loaded);
        m.config_problems.clear();
        m.pending = None;
        info!(module = %key, "module file changed: applied");
        self.module_log(key, LogLevel::Info, "module file changed: applied");
    }

    /// The module reached STOP on this node: a change that waited for it applies now.
    pub(crate) async fn apply_pending(&mut self, key: &str) {
        let Some(loaded) = self.modules.get_mut(key).and_then(|m| m.pending.take()) else {
            return;
        };
        self.apply_now(key, loaded);
        self.checker_modes(key);
    }

    /// A module that could not run at the daemon's start has a valid file now: set it up and,
    /// with autostart, start it.
    async fn set_up_late(&mut self, key: &str) {
        let Some(folder) = self.modules.get(key).map(|m| m.folder.clone()) else {
            return;
        };
        let names = self.cf.names();
        let (name, rt) = module_rt(&self.cf, &folder, &names, &self.tx);
        if rt.machine.is_none() {
            let why = rt.problems.join("; ");
            if let Some(m) = self.modules.get_mut(key) {
                m.problems = rt.problems;
            }
            warn!(module = %key, "module file changed, still not runnable: {why}");
            return;
        }
        if name != key && self.modules.contains_key(&name) {
            let why = format!(
                "module folder {} now names module {name}, which another folder already runs",
                folder.display()
            );
            error!("{why}");
            if let Some(m) = self.modules.get_mut(key) {
                m.problems = vec![why];
            }
            return;
        }
        self.modules.remove(key);
        self.guard.set_module(&name, rt.profile, &rt.vips);
        let autostart = rt.loaded.as_ref().is_some_and(|l| l.config.autostart);
        self.modules.insert(name.clone(), rt);
        info!(module = %name, "module file fixed: the module is set up on this node");
        self.module_log(
            &name,
            LogLevel::Info,
            "module file fixed: the module is set up on this node",
        );
        self.clean_slate(&name);
        self.feed(&name, Event::Booted).await;
        if autostart {
            self.feed(
                &name,
                Event::Verb {
                    verb: Verb::Start,
                    who: "module file fixed (autostart)".into(),
                },
            )
            .await;
        }
    }
}
