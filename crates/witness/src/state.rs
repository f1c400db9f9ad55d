//! The witness's durable state: one file per module, `<state_dir>/<module>.state` (JSON),
//! written atomically (temporary file, fsync, rename, fsync of the directory), and a lock file
//! that keeps two witnesses off one state directory.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use mirrorkit_cluster::generation::GenId;
use serde::{Deserialize, Serialize};

use crate::arbiter::Durable;
use crate::protocol::check_module_name;
use crate::WitnessError;

/// Version of the state file format.
const FORMAT: u32 = 1;

const SUFFIX: &str = ".state";
const TMP_SUFFIX: &str = ".state.tmp";
const LOCK_FILE: &str = "witness.lock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: u32,
    cluster: String,
    module: String,
    /// The node that holds (or last held and did not release) the role, if any.
    holder: Option<String>,
    lease_ms: u32,
    /// The recorded generation, in hexadecimal as in the logs.
    recorded: Option<String>,
}

/// The path of `module`'s state file.
pub fn state_path(dir: &Path, module: &str) -> PathBuf {
    dir.join(format!("{module}{SUFFIX}"))
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> WitnessError + 'a {
    move |source| WitnessError::StateIo {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The state directory, locked for this process while the value lives.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    cluster: String,
    _lock: File,
}

impl StateDir {
    /// Create `dir` if missing, take its lock, remove leftover temporary files and load every
    /// module's state. Any file that cannot be read or understood is an error naming it: a
    /// recorded generation is never forgotten silently.
    pub fn open(
        dir: &Path,
        cluster: &str,
    ) -> Result<(Self, BTreeMap<String, Durable>), WitnessError> {
        std::fs::create_dir_all(dir).map_err(io_err("create the state directory", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open the lock file", &lock_path))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() == std::io::ErrorKind::WouldBlock {
                return Err(WitnessError::StateLocked { path: lock_path });
            }
            return Err(io_err("lock", &lock_path)(source));
        }
        let mut modules = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(io_err("list the state directory", dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list the state directory", dir))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.ends_with(TMP_SUFFIX) {
                // A write interrupted before its rename: the previous file is the state.
                tracing::info!(path = %path.display(), "removing an interrupted state write");
                std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            let Some(module) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            let durable = read_state(&path, cluster, module)?;
            modules.insert(module.to_owned(), durable);
        }
        Ok((
            Self {
                dir: dir.to_owned(),
                cluster: cluster.to_owned(),
                _lock: lock,
            },
            modules,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Make `durable` the state of `module`, durably, before returning.
    pub fn persist(&self, module: &str, durable: &Durable) -> Result<(), WitnessError> {
        let path = state_path(&self.dir, module);
        let tmp = self.dir.join(format!("{module}{TMP_SUFFIX}"));
        let file = StateFile {
            format: FORMAT,
            cluster: self.cluster.clone(),
            module: module.to_owned(),
            holder: durable.holder.clone(),
            lease_ms: durable.lease_ms,
            recorded: durable.recorded.map(|g| g.to_string()),
        };
        let mut text =
            serde_json::to_string_pretty(&file).map_err(|e| WitnessError::StateFile {
                path: path.clone(),
                reason: format!("cannot encode: {e}"),
            })?;
        text.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(text.as_bytes())
            .map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync the state directory", &self.dir))
    }
}

fn read_state(path: &Path, cluster: &str, module: &str) -> Result<Durable, WitnessError> {
    let bad = |reason: String| WitnessError::StateFile {
        path: path.to_owned(),
        reason,
    };
    check_module_name(module).map_err(|r| bad(format!("not a module's state file: {r}")))?;
    let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
    let file: StateFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if file.format != FORMAT {
        return Err(bad(format!(
            "format {} is not supported (this witness reads format {FORMAT})",
            file.format
        )));
    }
    if file.cluster != cluster {
        return Err(bad(format!(
            "it belongs to cluster {:?}, this witness serves cluster {cluster:?}",
            file.cluster
        )));
    }
    if file.module != module {
        return Err(bad(format!(
            "it holds the state of module {:?}, its name says {module:?}",
            file.module
        )));
    }
    if let Some(holder) = &file.holder {
        crate::protocol::check_lease(file.lease_ms)
            .map_err(|r| bad(format!("lease_ms of holder {holder}: {r}")))?;
    }
    let recorded = match &file.recorded {
        None => None,
        Some(hex) => Some(GenId(u64::from_str_radix(hex, 16).map_err(|e| {
            bad(format!(
                "recorded: {hex:?} is not a generation (16 hexadecimal digits): {e}"
            ))
        })?)),
    };
    Ok(Durable {
        holder: file.holder,
        lease_ms: file.lease_ms,
        recorded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let (sd, loaded) = StateDir::open(&dir, "shop").unwrap();
        assert!(loaded.is_empty());
        let d = Durable {
            holder: Some("alpha".into()),
            lease_ms: 600,
            recorded: Some(GenId(u64::MAX)),
        };
        sd.persist("web", &d).unwrap();
        // Locked while open.
        assert!(matches!(
            StateDir::open(&dir, "shop"),
            Err(WitnessError::StateLocked { .. })
        ));
        drop(sd);
        std::fs::write(dir.join("x.state.tmp"), "partial").unwrap();
        let (sd, loaded) = StateDir::open(&dir, "shop").unwrap();
        assert_eq!(loaded.get("web"), Some(&d));
        assert!(!dir.join("x.state.tmp").exists());
        drop(sd);

        assert!(StateDir::open(&dir, "other").is_err());
        std::fs::write(state_path(&dir, "db"), "{ not json").unwrap();
        let e = StateDir::open(&dir, "shop").unwrap_err().to_string();
        assert!(e.contains("db.state"), "{e}");
    }
}
