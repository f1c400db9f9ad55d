//! The module event log: `<state>/<module>/events.log`, one JSON object per line, appended.
//!
//! What an operator reads to learn what happened to a module (state changes, verbs, script runs
//! and their output), in the CLI and the console. Rules:
//!
//! - an event log failure never blocks a failover: [`EventLog::append`] never fails and never
//!   panics; a write error is reported once to `tracing` and the entry is dropped;
//! - the file is bounded: once the next entry would take it past [`ROTATE_BYTES`], it becomes
//!   `events.log.1` (replacing an older one) and a new file starts, so the log holds at most
//!   twice that;
//! - reading skips a line that does not parse (a partial write cut short by a crash): such a
//!   line is never an error.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file is rotated before an entry would make it larger than this.
pub const ROTATE_BYTES: u64 = 8 * 1024 * 1024;
/// Longest `text` kept in one entry; a longer one is cut (on a character boundary) and marked.
pub const ENTRY_TEXT_MAX_BYTES: usize = 16 * 1024;
/// How much of the file a tail read takes at a time, from the end.
const TAIL_CHUNK_BYTES: usize = 64 * 1024;
/// Appended to a text cut at [`ENTRY_TEXT_MAX_BYTES`].
const CUT_MARK: &str = " [cut]";

/// One event, as stored (one JSON line) and as returned by [`EventLog::tail`].
///
/// `level` and `kind` are strings rather than enums so that a reader never fails on a value a
/// newer daemon wrote; [`Level`] and [`Kind`] list the ones written today.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix time, in milliseconds.
    pub time_ms: u64,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// `state`, `verb`, `script` or `log`.
    pub kind: String,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A state change of the module on this node, with its reason.
    State,
    /// A verb asked by an operator (CLI, console) or by the daemon itself.
    Verb,
    /// A script run: its start, end, and output lines.
    Script,
    /// Anything else worth an operator's attention.
    Log,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::State => "state",
            Kind::Verb => "verb",
            Kind::Script => "script",
            Kind::Log => "log",
        }
    }
}

/// The path of the rotated file next to `path`: `events.log` → `events.log.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The event log of one module, open for appending. Cheap to clone (the clones share the file);
/// safe to use from several threads.
#[derive(Clone, Debug)]
pub struct EventLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// [`ROTATE_BYTES`], but for tests.
    rotate_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// `None` after a failed reopen (rotation); retried on the next append.
    file: Option<File>,
    size_bytes: u64,
    /// Whether the current run of write errors was reported already.
    failing: bool,
}

impl EventLog {
    /// Open (creating it and its parent directories if needed) the event log at `path`.
    pub fn open(path: &Path) -> io::Result<EventLog> {
        Self::open_rotating_at(path, ROTATE_BYTES)
    }

    fn open_rotating_at(path: &Path, rotate_bytes: u64) -> io::Result<EventLog> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file = open_append(path)?;
        let mut size_bytes = file.metadata()?.len();
        // A crash in the middle of a write leaves a line without its newline: end it, so that the
        // next entry does not glue onto it (the partial line is then skipped by readers).
        if size_bytes > 0 && last_byte(path)? != Some(b'\n') {
            file.write_all(b"\n")?;
            size_bytes += 1;
        }
        Ok(EventLog {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                rotate_bytes,
                state: Mutex::new(State {
                    file: Some(file),
                    size_bytes,
                    failing: false,
                }),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Append one entry, stamped with the current time. Written with one `write` to the kernel
    /// before this returns, and made durable (`fdatasync`) unless it is a script's output line
    /// at level info (those come in bursts; the next durable entry carries them to disk).
    /// Never fails: a write error is logged to `tracing` once per run of failures.
    pub fn append(&self, level: Level, kind: Kind, text: &str) {
        let entry = Entry {
            time_ms: now_ms(),
            level: level.as_str().to_owned(),
            kind: kind.as_str().to_owned(),
            text: cut_text(text),
        };
        let sync = !(level == Level::Info && kind == Kind::Script);
        let mut state = self.lock();
        match write_entry(&self.inner, &mut state, &entry, sync) {
            Ok(()) => {
                if state.failing {
                    state.failing = false;
                    tracing::info!(path = %self.inner.path.display(), "event log writable again");
                }
            }
            Err(e) => {
                if !state.failing {
                    state.failing = true;
                    tracing::error!(
                        path = %self.inner.path.display(),
                        error = %e,
                        "cannot write the module event log; entries are dropped until it works again"
                    );
                }
            }
        }
    }

    /// The last `n` entries, oldest first, from the rotated file too when the current one holds
    /// fewer than `n`.
    pub fn tail(&self, n: usize) -> io::Result<Vec<Entry>> {
        // Hold the lock so that a rotation cannot happen between the two reads.
        let _state = self.lock();
        Self::read_tail(&self.inner.path, n)
    }

    /// [`Self::tail`] of the event log at `path`, without opening it for appending (for the CLI).
    /// A missing file holds no entries.
    pub fn read_tail(path: &Path, n: usize) -> io::Result<Vec<Entry>> {
        let mut entries = tail_of_file(path, n)?;
        if entries.len() < n {
            let mut older = tail_of_file(&rotated_path(path), n - entries.len())?;
            older.append(&mut entries);
            entries = older;
        }
        Ok(entries)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` inconsistent in a way that matters
        // (at worst a stale size): keep logging.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn last_byte(path: &Path) -> io::Result<Option<u8>> {
    let mut file = File::open(path)?;
    if file.seek(SeekFrom::End(0))? == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut byte = [0u8; 1];
    file.read_exact(&mut byte)?;
    Ok(Some(byte[0]))
}

fn write_entry(inner: &Inner, state: &mut State, entry: &Entry, sync: bool) -> io::Result<()> {
    let path = &inner.path;
    let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
    line.push(b'\n');
    let len = line.len() as u64;
    if state.size_bytes > 0 && state.size_bytes + len > inner.rotate_bytes {
        // Drop the handle first: whatever happens next, the old file is not written again.
        state.file = None;
        fs::rename(path, rotated_path(path))?;
        state.size_bytes = 0;
    }
    if state.file.is_none() {
        let file = open_append(path)?;
        state.size_bytes = file.metadata()?.len();
        state.file = Some(file);
    }
    let Some(file) = state.file.as_mut() else {
        return Err(io::Error::other("event log file not open"));
    };
    let written = file
        .write_all(&line)
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
    match written {
        Ok(()) => {
            state.size_bytes += len;
            Ok(())
        }
        Err(e) => {
            // A short write leaves a partial line: learn the real size, and reopen next time.
            state.size_bytes = fs::metadata(path)
                .map(|m| m.len())
                .unwrap_or(state.size_bytes);
            state.file = None;
            Err(e)
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn cut_text(text: &str) -> String {
    if text.len() <= ENTRY_TEXT_MAX_BYTES {
        return text.to_owned();
    }
    let mut end = ENTRY_TEXT_MAX_BYTES - CUT_MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARK}", &text[..end])
}

/// The last `n` entries of one file (oldest first), read backwards in chunks so that a long file
/// is not read whole. Lines that do not parse are skipped.
fn tail_of_file(path: &Path, n: usize) -> io::Result<Vec<Entry>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut pos = file.seek(SeekFrom::End(0))?;
    let mut newest_first = Vec::new();
    // The beginning of the earliest line read so far, whose start is in a chunk not read yet.
    let mut head: Vec<u8> = Vec::new();
    while pos > 0 && newest_first.len() < n {
        let chunk_len = pos.min(TAIL_CHUNK_BYTES as u64);
        pos -= chunk_len;
        file.seek(SeekFrom::Start(pos))?;
        let mut data = vec![0u8; chunk_len as usize];
        file.read_exact(&mut data)?;
        data.append(&mut head);
        // Everything before the first newline may continue in the previous chunk, unless this
        // chunk starts the file.
        let complete_from = if pos == 0 {
            0
        } else {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => {
                    head = data;
                    continue;
                }
            }
        };
        for line in data[complete_from..].rsplit(|&b| b == b'\n') {
            if newest_first.len() == n {
                break;
            }
            if let Some(entry) = parse_line(line) {
                newest_first.push(entry);
            }
        }
        data.truncate(complete_from);
        head = data;
    }
    newest_first.reverse();
    Ok(newest_first)
}

fn parse_line(line: &[u8]) -> Option<Entry> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    serde_json::from_slice(line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.text.as_str()).collect()
    }

    #[test]
    fn round_trip_and_tail_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/demo/events.log");
        let log = EventLog::open(&path).unwrap();
        log.append(Level::Info, Kind::State, "STOP -> WAIT: peer unknown");
        log.append(Level::Warn, Kind::Verb, "prim forced by operator");
        log.append(
            Level::Error,
            Kind::Script,
            "line with \"quotes\"\nand a newline",
        );
        let all = log.tail(10).unwrap();
        assert_eq!(
            texts(&all),
            [
                "STOP -> WAIT: peer unknown",
                "prim forced by operator",
                "line with \"quotes\"\nand a newline"
            ]
        );
        assert_eq!(all[1].level, "warn");
        assert_eq!(all[1].kind, "verb");
        assert!(all[0].time_ms > 1_600_000_000_000);
        assert_eq!(
            texts(&log.tail(2).unwrap()),
            [all[1].text.as_str(), &all[2].text]
        );
        assert!(log.tail(0).unwrap().is_empty());
        // The CLI's read, and a clone, see the same.
        assert_eq!(EventLog::read_tail(&path, 10).unwrap(), all);
        log.clone().append(Level::Info, Kind::Log, "from a clone");
        assert_eq!(log.tail(1).unwrap()[0].text, "from a clone");
        // Reopening appends.
        drop(log);
        let log = EventLog::open(&path).unwrap();
        log.append(Level::Info, Kind::Log, "after reopen");
        assert_eq!(log.tail(10).unwrap().len(), 5);
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(EventLog::read_tail(&dir.path().join("events.log"), 5)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn corrupt_and_truncated_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::open(&path).unwrap();
        log.append(Level::Info, Kind::Log, "one");
        log.append(Level::Info, Kind::Log, "two");
        drop(log);
        // Garbage in the middle, and a last line cut short by a crash.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"not json\n\n{\"time_ms\":1,\"level\":\"info\"}\n")
            .unwrap();
        file.write_all(b"{\"time_ms\":1,\"level\":\"info\",\"kind\":\"log\",\"te")
            .unwrap();
        drop(file);
        assert_eq!(
            texts(&EventLog::read_tail(&path, 10).unwrap()),
            ["one", "two"]
        );
        // Reopening ends the partial line, so the next entry is whole.
        let log = EventLog::open(&path).unwrap();
        log.append(Level::Info, Kind::Log, "three");
        assert_eq!(texts(&log.tail(10).unwrap()), ["one", "two", "three"]);
        assert_eq!(texts(&log.tail(1).unwrap()), ["three"]);
    }

    #[test]
    fn rotation_and_tail_across_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        // 64 entries of about 1 KiB per file.
        let rotate_bytes = 64 * 1024;
        let log = EventLog::open_rotating_at(&path, rotate_bytes).unwrap();
        let filler = "x".repeat(1000);
        let per_file = (rotate_bytes as usize) / (filler.len() + 80);
        // Enough to rotate twice: the first rotated file is replaced by the second.
        let total = per_file * 2 + per_file / 2;
        for i in 0..total {
            log.append(Level::Info, Kind::Script, &format!("{i:06} {filler}"));
        }
        let current = fs::metadata(&path).unwrap().len();
        let rotated = fs::metadata(rotated_path(&path)).unwrap().len();
        assert!(current <= rotate_bytes && rotated <= rotate_bytes);
        assert!(rotated > rotate_bytes - 2 * 1100);
        let in_current = tail_of_file(&path, usize::MAX).unwrap().len();
        assert!(in_current > 0 && in_current < total);
        // A tail longer than the current file reaches into the rotated one, in order.
        let want = in_current + 3;
        let tail = log.tail(want).unwrap();
        assert_eq!(tail.len(), want);
        let numbers: Vec<usize> = tail.iter().map(|e| e.text[..6].parse().unwrap()).collect();
        let expected: Vec<usize> = (total - want..total).collect();
        assert_eq!(numbers, expected);
        // Everything still stored: the current file and the last rotated one, nothing older.
        let all = log.tail(usize::MAX).unwrap();
        assert!(all.len() < total);
        assert_eq!(
            all.last().unwrap().text[..6].parse::<usize>().unwrap(),
            total - 1
        );
    }

    #[test]
    fn long_text_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::open(&path).unwrap();
        let long = "é".repeat(ENTRY_TEXT_MAX_BYTES);
        log.append(Level::Info, Kind::Log, &long);
        let text = &log.tail(1).unwrap()[0].text;
        assert!(text.len() <= ENTRY_TEXT_MAX_BYTES);
        assert!(text.ends_with(CUT_MARK));
    }

    #[test]
    fn write_errors_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::open_rotating_at(&path, 1024).unwrap();
        // A full file, and a directory where it would be rotated to: rotation fails.
        fs::write(&path, vec![b'x'; 1024]).unwrap();
        fs::create_dir(rotated_path(&path)).unwrap();
        log.lock().size_bytes = 1024;
        log.append(Level::Error, Kind::State, "dropped");
        log.append(Level::Error, Kind::State, "dropped too");
        assert!(tail_of_file(&path, 5).unwrap().is_empty());
        // Once the obstacle is gone, entries are written again.
        fs::remove_dir(rotated_path(&path)).unwrap();
        log.append(Level::Info, Kind::State, "back");
        assert_eq!(texts(&log.tail(5).unwrap()), ["back"]);
    }
}

/// An entry's time (Unix milliseconds) as `YYYY-MM-DD HH:MM:SS.mmm UTC`, for people.
pub fn utc_text(time_ms: u64) -> String {
    let secs = i64::try_from(time_ms / 1000).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        time_ms % 1000
    )
}

/// The (year, month, day) of a day counted from 1970-01-01, proleptic Gregorian (Howard
/// Hinnant's civil_from_days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod date_tests {
    #[test]
    fn dates_and_times() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(super::civil_from_days(20_786), (2026, 11, 29));
        assert_eq!(
            super::utc_text(1_700_000_000_123),
            "2023-11-14 22:13:20.123 UTC"
        );
    }
}
