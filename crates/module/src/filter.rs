//! Which paths of a replicated directory are replicated, from its `include` and `exclude`
//! patterns: the one definition the replication engine and the documentation follow.

use std::path::{Component, Path};

use globset::{GlobSet, GlobSetBuilder};

use crate::config::Mirror;
use crate::rules;

/// The compiled patterns of one [`Mirror`].
///
/// Directories and files are selected differently, so that every replicated file has its
/// directory on the peer:
///
/// - a **directory** is replicated (made, removed, renamed, with its attributes) unless it, or
///   one of its parent directories, matches an `exclude` pattern;
/// - any **other entry** (file, symbolic link, special file) is replicated when it, or one of
///   its parent directories, matches an `include` pattern, and neither it nor any of its parent
///   directories matches an `exclude` pattern.
///
/// So `exclude = ["cache"]` leaves out the directory `cache` and everything below it, and
/// `include = ["db"]` selects `db` and everything below it (other directories are replicated
/// empty of files). The root of the mirror is always replicated.
#[derive(Clone, Debug)]
pub struct MirrorFilter {
    include: GlobSet,
    exclude: GlobSet,
    patterns: (Vec<String>, Vec<String>),
    everything: bool,
}

impl MirrorFilter {
    /// Compile the patterns of `mirror` (which a checked [`Mirror`] always has valid).
    pub fn new(mirror: &Mirror) -> Result<Self, String> {
        Self::from_patterns(&mirror.include, &mirror.exclude)
    }

    /// Compile `include` and `exclude` patterns (as in `module.toml`).
    pub fn from_patterns(include: &[String], exclude: &[String]) -> Result<Self, String> {
        if include.is_empty() {
            return Err("no include pattern: write \"**\" for everything".into());
        }
        Ok(MirrorFilter {
            include: compile(include)?,
            exclude: compile(exclude)?,
            everything: exclude.is_empty() && include.iter().any(|p| p == crate::INCLUDE_ALL),
            patterns: (include.to_vec(), exclude.to_vec()),
        })
    }

    /// The filter that replicates everything (the default patterns).
    pub fn everything() -> Self {
        Self::from_patterns(&[crate::INCLUDE_ALL.to_owned()], &[])
            .unwrap_or_else(|_| unreachable!("the default pattern is valid"))
    }

    /// Whether every path is replicated (nothing to check).
    pub fn selects_everything(&self) -> bool {
        self.everything
    }

    /// The `include` and `exclude` patterns it was made from.
    pub fn patterns(&self) -> (&[String], &[String]) {
        (&self.patterns.0, &self.patterns.1)
    }

    /// Whether `rel`, a path relative to the mirror's directory, is replicated as a file
    /// (anything but a directory). The directory itself (the empty path) always is.
    pub fn is_replicated(&self, rel: &Path) -> bool {
        self.replicates(rel, false)
    }

    /// Whether `rel` is replicated, as a directory (`dir`) or as any other entry.
    pub fn replicates(&self, rel: &Path, dir: bool) -> bool {
        if self.everything {
            return true;
        }
        let mut prefix = std::path::PathBuf::new();
        let mut included = dir;
        for c in rel.components() {
            let Component::Normal(part) = c else {
                continue;
            };
            prefix.push(part);
            if self.exclude.is_match(&prefix) {
                return false;
            }
            included = included || self.include.is_match(&prefix);
        }
        included || prefix.as_os_str().is_empty()
    }

    /// As [`replicates`](Self::replicates), for a path given as bytes (`a/b/c`, empty for
    /// the root), as the replication engine holds them.
    pub fn replicates_bytes(&self, rel: &[u8], dir: bool) -> bool {
        use std::os::unix::ffi::OsStrExt;
        self.everything || self.replicates(Path::new(std::ffi::OsStr::from_bytes(rel)), dir)
    }
}

fn compile(patterns: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(rules::parse_pattern(p)?);
    }
    b.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> MirrorFilter {
        let m = Mirror {
            dir: "/srv/data".into(),
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        };
        MirrorFilter::new(&m).expect("valid patterns")
    }

    #[test]
    fn include_everything_except_excluded_trees() {
        let f = filter(&["**"], &["cache", "**/*.tmp"]);
        assert!(f.is_replicated(Path::new("")));
        assert!(f.is_replicated(Path::new("db/base/1")));
        assert!(!f.is_replicated(Path::new("cache")));
        assert!(!f.is_replicated(Path::new("cache/a/b")));
        assert!(f.is_replicated(Path::new("db/cache")));
        assert!(!f.is_replicated(Path::new("x.tmp")));
        assert!(!f.is_replicated(Path::new("a/b/x.tmp")));
        assert!(!f.is_replicated(Path::new("a/x.tmp/inner")));
    }

    #[test]
    fn directories_follow_only_the_exclude_patterns() {
        let f = filter(&["db"], &["db/tmp", "**/cache"]);
        assert!(f.replicates(Path::new("logs"), true));
        assert!(!f.replicates(Path::new("logs"), false));
        assert!(!f.replicates(Path::new("logs/x"), false));
        assert!(f.replicates(Path::new("db/x"), false));
        assert!(f.replicates(Path::new("db/sub"), true));
        assert!(!f.replicates(Path::new("db/tmp"), true));
        assert!(!f.replicates(Path::new("db/tmp/x"), false));
        assert!(!f.replicates(Path::new("a/cache"), true));
        assert!(!f.replicates(Path::new("a/cache/x"), true));
        assert!(f.replicates_bytes(b"db/a", false));
        assert!(!f.replicates_bytes(b"a/cache/b", false));
        assert!(f.replicates_bytes(b"", false));
        assert!(!f.selects_everything());
        let all = MirrorFilter::everything();
        assert!(all.selects_everything());
        assert!(all.replicates_bytes(b"anything/at/all", false));
        assert!(!filter(&["**"], &["x"]).selects_everything());
    }

    #[test]
    fn star_does_not_cross_directories() {
        let f = filter(&["*.db", "wal"], &[]);
        assert!(f.is_replicated(Path::new("main.db")));
        assert!(!f.is_replicated(Path::new("sub/main.db")));
        assert!(f.is_replicated(Path::new("wal/0001")));
        assert!(!f.is_replicated(Path::new("log/0001")));
    }
}
