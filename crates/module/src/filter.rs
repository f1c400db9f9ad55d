//! Which paths of a replicated directory are replicated, from its `include` and `exclude`
//! patterns: the one definition the replication engine and the documentation follow.

use std::path::{Component, Path};

use globset::{GlobSet, GlobSetBuilder};

use crate::config::Mirror;
use crate::rules;

/// The compiled patterns of one [`Mirror`].
///
/// A path (relative to the mirror's `dir`) is replicated when it, or one of its parent
/// directories, matches an `include` pattern, and neither it nor any of its parent directories
/// matches an `exclude` pattern. So `exclude = ["cache"]` leaves out the directory `cache` and
/// everything below it, and `include = ["db"]` selects `db` and everything below it.
#[derive(Clone, Debug)]
pub struct MirrorFilter {
    include: GlobSet,
    exclude: GlobSet,
}

impl MirrorFilter {
    /// Compile the patterns of `mirror` (which a checked [`Mirror`] always has valid).
    pub fn new(mirror: &Mirror) -> Result<Self, String> {
        Ok(MirrorFilter {
            include: compile(&mirror.include)?,
            exclude: compile(&mirror.exclude)?,
        })
    }

    /// Whether `rel`, a path relative to the mirror's directory, is replicated. The directory
    /// itself (the empty path) always is.
    pub fn is_replicated(&self, rel: &Path) -> bool {
        let mut prefix = std::path::PathBuf::new();
        let mut included = false;
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
    fn star_does_not_cross_directories() {
        let f = filter(&["*.db", "wal"], &[]);
        assert!(f.is_replicated(Path::new("main.db")));
        assert!(!f.is_replicated(Path::new("sub/main.db")));
        assert!(f.is_replicated(Path::new("wal/0001")));
        assert!(!f.is_replicated(Path::new("log/0001")));
    }
}
