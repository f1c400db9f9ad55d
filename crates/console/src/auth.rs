//! Who may use the console: the admin password (argon2id), browser sessions with their CSRF
//! tokens, the rate limit on failed logins, and the API tokens of scripts.
//!
//! Pure bookkeeping with the clock passed in (`Instant`s), except the token file
//! ([`TokenStore`]), which is read on every bearer request so that a token created or revoked
//! by `mirrorkit console token` takes effect at once.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// A session ends this long after its login, whatever its use.
pub const SESSION_MAX_AGE_SECS: u64 = 12 * 3600;
/// A session unused for this long ends.
pub const SESSION_IDLE_SECS: u64 = 30 * 60;
/// Most sessions held at once; a new login beyond it ends the least recently used one.
pub const MAX_SESSIONS: usize = 256;
/// Failed logins allowed per client address within [`LOGIN_WINDOW_SECS`]; the next attempts
/// are refused without checking the password until the window has room again.
pub const LOGIN_FAILURES_MAX: usize = 5;
pub const LOGIN_WINDOW_SECS: u64 = 60;
/// Most client addresses whose failures are remembered (the oldest are forgotten first).
pub const LOGIN_LIMITER_MAX_CLIENTS: usize = 4096;
/// Longest password accepted (argon2 itself takes any length; this bounds the work).
pub const PASSWORD_MAX_BYTES: usize = 1024;
/// The one user of the console.
pub const ADMIN_USER: &str = "admin";
/// What every API token starts with (so that a leaked one is recognisable).
pub const TOKEN_PREFIX: &str = "mkt_";
/// Longest token name.
pub const TOKEN_NAME_MAX_BYTES: usize = 64;
/// The token file, in the node's state directory.
pub const TOKENS_FILE: &str = "console-tokens.json";

/// 32 random bytes from the operating system, as 64 hex digits: session ids, CSRF tokens and
/// API tokens (256 bits each).
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The argon2id hash (PHC string) of `password`, with a new random salt and the argon2
/// crate's default parameters (19 MiB, 2 passes, 1 lane: OWASP's recommendation).
pub fn hash_password(password: &str) -> Result<String, String> {
    check_password(password)?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether a password is acceptable as a new admin password.
pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < 8 {
        return Err("the password must have at least 8 characters".into());
    }
    if password.len() > PASSWORD_MAX_BYTES {
        return Err(format!(
            "the password must have at most {PASSWORD_MAX_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Whether `password` matches the argon2id `hash` (PHC string). A malformed hash matches
/// nothing (and is logged).
pub fn verify_password(hash: &str, password: &str) -> bool {
    if password.len() > PASSWORD_MAX_BYTES {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(
                "the console's admin_password_hash is not a valid PHC string ({e}): nobody can log in; set it again with `mirrorkit console set-password`"
            );
            false
        }
    }
}

/// One logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    /// Sent by the page in `X-CSRF-Token` with every state-changing request.
    pub csrf: String,
    pub ip: IpAddr,
    pub created: Instant,
    pub last_seen: Instant,
}

/// The sessions of this console (in memory: a daemon restart logs everyone out).
#[derive(Default)]
pub struct Sessions {
    map: HashMap<String, Session>,
}

impl Sessions {
    /// A new session for `user` from `ip`: its id (the cookie) and CSRF token.
    pub fn create(&mut self, user: &str, ip: IpAddr, now: Instant) -> (String, Session) {
        self.expire(now);
        while self.map.len() >= MAX_SESSIONS {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            self.map.remove(&oldest);
        }
        let id = random_hex();
        let s = Session {
            user: user.to_owned(),
            csrf: random_hex(),
            ip,
            created: now,
            last_seen: now,
        };
        self.map.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session with this id, marked as used now.
    pub fn get(&mut self, id: &str, now: Instant) -> Option<Session> {
        self.expire(now);
        let s = self.map.get_mut(id)?;
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn remove(&mut self, id: &str) {
        self.map.remove(id);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        self.map.retain(|_, s| {
            now.duration_since(s.created) < Duration::from_secs(SESSION_MAX_AGE_SECS)
                && now.duration_since(s.last_seen) < Duration::from_secs(SESSION_IDLE_SECS)
        });
    }
}

/// Failed logins per client address, in a sliding window.
#[derive(Default)]
pub struct LoginLimiter {
    failures: HashMap<IpAddr, VecDeque<Instant>>,
}

impl LoginLimiter {
    /// `Some(wait)` when `ip` may not try now: how long until it may.
    pub fn blocked(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let window = Duration::from_secs(LOGIN_WINDOW_SECS);
        let q = self.failures.get_mut(&ip)?;
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.is_empty() {
            self.failures.remove(&ip);
            return None;
        }
        if q.len() < LOGIN_FAILURES_MAX {
            return None;
        }
        q.front()
            .map(|first| window.saturating_sub(now.duration_since(*first)))
    }

    /// Record a failure; returns how many `ip` has within the window.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> usize {
        if !self.failures.contains_key(&ip) && self.failures.len() >= LOGIN_LIMITER_MAX_CLIENTS {
            let window = Duration::from_secs(LOGIN_WINDOW_SECS);
            self.failures
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
            if self.failures.len() >= LOGIN_LIMITER_MAX_CLIENTS {
                // Under a flood from many addresses: forget one rather than grow without bound.
                if let Some(k) = self.failures.keys().next().copied() {
                    self.failures.remove(&k);
                }
            }
        }
        let q = self.failures.entry(ip).or_default();
        q.push_back(now);
        while q.len() > LOGIN_FAILURES_MAX {
            q.pop_front();
        }
        q.len()
    }

    pub fn succeeded(&mut self, ip: IpAddr) {
        self.failures.remove(&ip);
    }
}

/// One API token as stored: its name and the blake3 hash of its secret (tokens are 256 random
/// bits, so a fast hash suffices; the secret itself is shown once, at creation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub name: String,
    pub blake3: String,
    pub created_unix_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<StoredToken>,
}

/// The API tokens of a node: `<state>/console-tokens.json`, mode 0600.
#[derive(Clone, Debug)]
pub struct TokenStore {
    path: PathBuf,
}

/// Check a token name: 1 to 64 of a-z, A-Z, 0-9, '.', '_', '-'.
pub fn validate_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOKEN_NAME_MAX_BYTES {
        return Err(format!(
            "token name {name:?}: give 1 to {TOKEN_NAME_MAX_BYTES} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "token name {name:?}: use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl TokenStore {
    pub fn new(path: PathBuf) -> TokenStore {
        TokenStore { path }
    }

    /// The token file of a node whose state directory is `state`.
    pub fn in_state_dir(state: &Path) -> TokenStore {
        TokenStore::new(state.join(TOKENS_FILE))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<TokenFile, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("token file {} is unreadable: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
        }
    }

    fn write(&self, file: &TokenFile) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_json::to_string_pretty(file)
            .map_err(|e| format!("cannot encode the token file: {e}"))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let tmp = self.path.with_extension("json.new");
        let result = (|| -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", self.path.display())
        })
    }

    /// Create a token named `name`; returns its secret (shown once, never stored).
    pub fn create(&self, name: &str) -> Result<String, String> {
        validate_token_name(name)?;
        let mut file = self.read()?;
        if file.tokens.iter().any(|t| t.name == name) {
            return Err(format!(
                "a token named {name:?} exists: revoke it first (`mirrorkit console token revoke {name}`) or choose another name"
            ));
        }
        let secret = format!("{TOKEN_PREFIX}{}", random_hex());
        file.tokens.push(StoredToken {
            name: name.to_owned(),
            blake3: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            created_unix_ms: now_unix_ms(),
        });
        self.write(&file)?;
        Ok(secret)
    }

    /// Remove the token named `name`.
    pub fn revoke(&self, name: &str) -> Result<(), String> {
        let mut file = self.read()?;
        let before = file.tokens.len();
        file.tokens.retain(|t| t.name != name);
        if file.tokens.len() == before {
            return Err(format!(
                "no token named {name:?} in {}",
                self.path.display()
            ));
        }
        self.write(&file)
    }

    pub fn list(&self) -> Result<Vec<StoredToken>, String> {
        Ok(self.read()?.tokens)
    }

    /// The name of the token whose secret is `secret`, if any.
    pub fn verify(&self, secret: &str) -> Result<Option<String>, String> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let hash = blake3::hash(secret.as_bytes()).to_hex().to_string();
        Ok(self
            .read()?
            .tokens
            .into_iter()
            .find(|t| same_secret(&t.blake3, &hash))
            .map(|t| t.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct hors"));
        assert!(!verify_password("$argon2id$garbage", "correct horse"));
        assert!(hash_password("short").is_err());
    }

    #[test]
    fn sessions_expire_when_idle_and_when_old() {
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        let mut s = Sessions::default();
        let (id, sess) = s.create("admin", ip, t0);
        assert_eq!(id.len(), 64);
        assert_ne!(id, sess.csrf);
        let idle = Duration::from_secs(SESSION_IDLE_SECS);
        // Used every idle/2: lives until the maximum age.
        let mut t = t0;
        while t.duration_since(t0) + idle / 2 < Duration::from_secs(SESSION_MAX_AGE_SECS) {
            t += idle / 2;
            assert!(s.get(&id, t).is_some(), "{:?}", t.duration_since(t0));
        }
        assert!(s
            .get(&id, t0 + Duration::from_secs(SESSION_MAX_AGE_SECS))
            .is_none());
        let (id, _) = s.create("admin", ip, t0);
        assert!(s.get(&id, t0 + idle).is_none());
        assert!(s.get("nope", t0).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        let mut s = Sessions::default();
        let (first, _) = s.create("admin", ip, t0);
        for i in 0..MAX_SESSIONS {
            s.create("admin", ip, t0 + Duration::from_millis(1 + i as u64));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get(&first, t0 + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn failed_logins_are_limited_per_address_within_the_window() {
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let mut l = LoginLimiter::default();
        for i in 0..LOGIN_FAILURES_MAX {
            assert_eq!(l.blocked(a, t0), None);
            assert_eq!(l.failed(a, t0 + Duration::from_secs(i as u64)), i + 1);
        }
        let wait = l.blocked(a, t0 + Duration::from_secs(10)).expect("blocked");
        assert_eq!(wait, Duration::from_secs(LOGIN_WINDOW_SECS - 10));
        assert_eq!(l.blocked(b, t0), None);
        // The first failure leaves the window: one more try.
        assert_eq!(
            l.blocked(a, t0 + Duration::from_secs(LOGIN_WINDOW_SECS)),
            None
        );
        l.succeeded(a);
        assert_eq!(l.blocked(a, t0), None);
    }

    #[test]
    fn tokens_are_stored_hashed_and_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TokenStore::in_state_dir(dir.path());
        assert_eq!(store.verify("mkt_00").expect("verify"), None);
        let secret = store.create("backup-script").expect("create");
        assert!(secret.starts_with(TOKEN_PREFIX));
        let text = std::fs::read_to_string(store.path()).expect("file");
        assert!(!text.contains(&secret[TOKEN_PREFIX.len()..]), "{text}");
        let mode = std::fs::metadata(store.path()).expect("meta").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(
            store.verify(&secret).expect("verify").as_deref(),
            Some("backup-script")
        );
        assert_eq!(store.verify(&format!("{secret}0")).expect("verify"), None);
        assert!(store.create("backup-script").is_err());
        assert!(store.create("bad name").is_err());
        store.revoke("backup-script").expect("revoke");
        assert_eq!(store.verify(&secret).expect("verify"), None);
        assert!(store.revoke("backup-script").is_err());
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
