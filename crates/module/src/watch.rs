//! Watching a module folder (inotify, through `notify`): once a burst of changes has settled, the
//! folder is checked again, and the watcher yields the new valid module or the problems that make
//! the folder invalid. The caller keeps running its last valid module in the second case.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::load::{load_module, LoadedModule};
use crate::problem::Problem;

/// A change is checked once the folder has had no event for this long: an editor's save is
/// several events (write a temporary file, rename it over the old one, change its mode).
pub const DEFAULT_QUIET_MS: u64 = 300;
/// A folder that never stays quiet is still checked this long after its first change.
pub const MAX_SETTLE_MS: u64 = 3_000;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "cannot watch the module folder {}: {source} (if the limit of inotify watches is \
         reached, raise fs.inotify.max_user_watches)",
        dir.display()
    )]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("the watcher of the module folder {} stopped", dir.display())]
    Stopped { dir: PathBuf },
}

/// What a settled change of the folder amounts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchUpdate {
    /// The folder is valid and its module differs from the one last yielded: apply it.
    Valid(Box<LoadedModule>),
    /// The folder is invalid: report these, and keep running the last valid module.
    Invalid(Vec<Problem>),
}

/// Watches one module folder, its subfolders included.
///
/// A change that leaves the module as it was (a comment edited, a file touched) yields nothing;
/// nor does an invalid folder whose problems are the ones already yielded. If the folder itself
/// is removed, the next update is [`WatchUpdate::Invalid`]; the watch does not follow a folder
/// created again at the same path (make a new watcher).
pub struct ModuleWatcher {
    dir: PathBuf,
    nodes: Option<Vec<String>>,
    quiet: Duration,
    events: mpsc::Receiver<notify::Result<notify::Event>>,
    // Dropping the watcher ends the watch; it is held only for that.
    _watcher: RecommendedWatcher,
    last: Result<LoadedModule, Vec<Problem>>,
}

impl ModuleWatcher {
    /// Start watching `dir`, then check it once: [`Self::current`] holds that first result, so
    /// that no change made between the caller's own check and the watch is missed.
    pub fn new(dir: &Path, nodes: Option<Vec<String>>) -> Result<Self, WatchError> {
        let watch_error = |source| WatchError::Watch {
            dir: dir.to_path_buf(),
            source,
        };
        let (tx, events) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |ev| {
            // The receiver is gone only when the ModuleWatcher is being dropped.
            let _ = tx.send(ev);
        })
        .map_err(watch_error)?;
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(watch_error)?;
        let last = load_module(dir, nodes.as_deref());
        Ok(ModuleWatcher {
            dir: dir.to_path_buf(),
            nodes,
            quiet: Duration::from_millis(DEFAULT_QUIET_MS),
            events,
            _watcher: watcher,
            last,
        })
    }

    /// Change how long the folder must stay quiet before it is checked.
    pub fn with_quiet_period(mut self, quiet: Duration) -> Self {
        self.quiet = quiet;
        self
    }

    /// The last result: the initial check, or the last update yielded.
    pub fn current(&self) -> &Result<LoadedModule, Vec<Problem>> {
        &self.last
    }

    /// Wait up to `timeout` for the next change that matters; `Ok(None)` when there was none.
    pub fn next_update(&mut self, timeout: Duration) -> Result<Option<WatchUpdate>, WatchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.wait_event(deadline)? {
                return Ok(None);
            }
            let settle_by = Instant::now() + Duration::from_millis(MAX_SETTLE_MS);
            while self.wait_event((Instant::now() + self.quiet).min(settle_by))? {}
            let result = load_module(&self.dir, self.nodes.as_deref());
            if !same(&result, &self.last) {
                self.last = result.clone();
                return Ok(Some(match result {
                    Ok(m) => WatchUpdate::Valid(Box::new(m)),
                    Err(p) => WatchUpdate::Invalid(p),
                }));
            }
        }
    }

    /// Wait until `deadline` for an event that may change the module: `true` if one came.
    fn wait_event(&self, deadline: Instant) -> Result<bool, WatchError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(ev)) if !may_change(&ev.kind) => continue,
                // An error of the watcher (an overflowed event queue, say) may hide a change.
                Ok(_) => return Ok(true),
                Err(RecvTimeoutError::Timeout) => return Ok(false),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(WatchError::Stopped {
                        dir: self.dir.clone(),
                    })
                }
            }
        }
    }
}

/// Opening and reading files (the checker's own reads among them) change nothing.
fn may_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Two results that the caller would act on in the same way: the same module (wherever its
/// fields were written), or the same problems.
fn same(a: &Result<LoadedModule, Vec<Problem>>, b: &Result<LoadedModule, Vec<Problem>>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a.config == b.config && a.dir == b.dir,
        (Err(a), Err(b)) => a == b,
        _ => false,
    }
}
