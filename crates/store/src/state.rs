//! Persisted per-node state of one mirror: what this node knows about its copy and its peer.
//! Written atomically (temporary file, fsync, rename, fsync of the directory), so that after a
//! crash at any instant the file holds either the old or the new state, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What a node records about one mirror: its data generations and flags (see
/// `mirrorkit_cluster::generation`).
pub use mirrorkit_cluster::generation::DataState as MirrorState;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read mirror state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mirror state file {path} is corrupt ({source}); move it aside to start from an unknown state (a full resync)")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write mirror state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The state file of one mirror on one node.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> Self {
        StateFile {
            path: state_dir.join("mirror-state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded state; a missing file means a node that knows nothing (not consistent,
    /// peer not in sync).
    pub fn load(&self) -> Result<MirrorState, StateError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MirrorState::default()),
            Err(source) => Err(StateError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Replace the state durably.
    pub fn store(&self, state: &MirrorState) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
        replace_durably(&self.path, &bytes).map_err(err)
    }
}

/// Replace the file `path` with `bytes` durably and atomically (a temporary file, fsync,
/// rename, fsync of the directory): after a crash at any instant it holds either the old or
/// the new bytes. Each call writes its own temporary file: two writers may replace the same
/// file at once (the cluster manager and an engine, for a module with several mirrors), and a
/// shared temporary file could be truncated by one while the other renames it into place.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_stores_never_leave_a_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let f = StateFile::new(&path);
                    for i in 0..100u64 {
                        let s = MirrorState {
                            consistent: i % 2 == 0,
                            history: (0..(t * 7 + i % 13))
                                .map(mirrorkit_cluster::generation::GenId)
                                .collect(),
                            ..MirrorState::default()
                        };
                        f.store(&s).unwrap();
                    }
                })
            })
            .collect();
        let f = StateFile::new(&path);
        while !writers.iter().all(|w| w.is_finished()) {
            if let Err(e) = f.load() {
                panic!("a reader saw a torn state file: {e}");
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        f.load().unwrap();
        let left: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "temporary files left: {left:?}");
    }

    #[test]
    fn missing_means_unknown_and_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert_eq!(f.load().unwrap(), MirrorState::default());
        let s = MirrorState {
            consistent: true,
            peer_in_sync: false,
            current: Some(mirrorkit_cluster::generation::GenId(7)),
            ..MirrorState::default()
        };
        f.store(&s).unwrap();
        assert_eq!(f.load().unwrap(), s);
    }

    #[test]
    fn corrupt_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        std::fs::write(f.path(), b"{not json").unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(
            e.contains("mirror-state.json") && e.contains("corrupt"),
            "{e}"
        );
    }
}
