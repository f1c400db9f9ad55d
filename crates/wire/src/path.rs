//! `RelPath`: a path strictly beneath the replicated root, validated on construction and on decode.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest path accepted on the wire (as Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest name of one component (as ext4).
pub const MAX_NAME_BYTES: usize = 255;

/// A relative path of one or more normal components separated by `/`: no leading or trailing
/// slash, no empty, `.` or `..` component, no NUL. The empty path names the replicated root
/// itself. A `RelPath` can only be built valid, so a receiver never resolves anything else.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// The replicated root.
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, String> {
        let bytes = bytes.into();
        check_path(&bytes)?;
        Ok(RelPath(bytes))
    }

    /// `self/name`, with `name` a single valid component.
    pub fn join(&self, name: &[u8]) -> Result<Self, String> {
        check_name(name)?;
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        if v.len() > MAX_PATH_BYTES {
            return Err(format!(
                "path of {} bytes exceeds {MAX_PATH_BYTES}",
                v.len()
            ));
        }
        Ok(RelPath(v))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Parent path and last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => Some((RelPath(self.0[..i].to_vec()), &self.0[i + 1..])),
            None => Some((RelPath::root(), &self.0[..])),
        }
    }

    /// Whether `self` is `other` or lies beneath it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        other.0.is_empty()
            || (self.0.starts_with(&other.0)
                && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/'))
    }

    /// Components, in order.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }
}

impl std::fmt::Debug for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&String::from_utf8_lossy(&self.0))
        }
    }
}

/// Check one path component.
pub fn check_name(name: &[u8]) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty path component".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "path component of {} bytes exceeds {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if name == b"." || name == b".." {
        return Err(format!(
            "path component {:?} is not allowed",
            String::from_utf8_lossy(name)
        ));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(format!(
            "path component {:?} contains '/' or NUL",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(())
}

fn check_path(p: &[u8]) -> Result<(), String> {
    if p.len() > MAX_PATH_BYTES {
        return Err(format!(
            "path of {} bytes exceeds {MAX_PATH_BYTES}",
            p.len()
        ));
    }
    if p.is_empty() {
        return Ok(());
    }
    p.split(|&b| b == b'/').try_for_each(check_name)
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

thread_local! {
    /// Why the last path decoded on this thread was refused. postcard reports a custom error
    /// without its message, and the receiver must say which path it refused and why.
    static REFUSAL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Most bytes of a refused path quoted in the reason.
const REFUSED_PATH_SHOWN_BYTES: usize = 256;

/// Take the reason the last path decoded on this thread was refused, if one was.
pub(crate) fn take_refusal() -> Option<String> {
    REFUSAL.with(|r| r.borrow_mut().take())
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        if let Err(e) = check_path(&bytes) {
            let shown = &bytes[..bytes.len().min(REFUSED_PATH_SHOWN_BYTES)];
            let reason = format!("path {:?}: {e}", String::from_utf8_lossy(shown));
            REFUSAL.with(|r| *r.borrow_mut() = Some(reason.clone()));
            return Err(serde::de::Error::custom(reason));
        }
        Ok(RelPath(bytes))
    }
}
