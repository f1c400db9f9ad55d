//! The notes store: one append-only file, `notes.log`, in the data directory. A note is
//! acknowledged only after its record is written and fsynced, so an acknowledged note survives a
//! crash of this node and, on a mirrorkit mirror, a failover.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub const NOTES_FILE: &str = "notes.log";
/// Longest note, in bytes of UTF-8.
pub const NOTE_MAX_BYTES: usize = 64 * 1024;
/// The store refuses new notes beyond this size, so that reading it whole stays cheap.
pub const NOTES_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug)]
pub enum AppendError {
    Empty,
    TooLarge,
    StoreFull,
    /// A write or fsync failed earlier: whether that note reached the disk is unknown, so the
    /// store accepts nothing more until the application restarts and recovers the file.
    Failed,
    Io(io::Error),
}

/// One line per note: `\` and newlines escaped, `\n` at the end. A last line without its `\n`
/// is a record whose write was cut short (never acknowledged) and is dropped on open.
pub struct Notes {
    path: PathBuf,
    file: Mutex<File>,
    failed: AtomicBool,
}

impl Notes {
    /// Open the store in `dir`, which must exist (it is the replicated directory: creating it
    /// here would put the data beside the mirror if it were not mounted). Returns the store and
    /// the number of bytes of a cut-short last record that were dropped.
    pub fn open(dir: &Path) -> io::Result<(Notes, u64)> {
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "data directory {} does not exist or is not a directory",
                    dir.display()
                ),
            ));
        }
        let path = dir.join(NOTES_FILE);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        if !existed {
            // The new file's name must be durable before any note in it is acknowledged.
            File::open(dir)?.sync_all()?;
        }
        let dropped = drop_torn_tail(&mut file)?;
        Ok((
            Notes {
                path,
                file: Mutex::new(file),
                failed: AtomicBool::new(false),
            },
            dropped,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an earlier write or fsync failed (see [`AppendError::Failed`]).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Append `note` and fsync; returns once the note is durable.
    pub fn append(&self, note: &str) -> Result<(), AppendError> {
        if note.is_empty() {
            return Err(AppendError::Empty);
        }
        if note.len() > NOTE_MAX_BYTES {
            return Err(AppendError::TooLarge);
        }
        let record = encode(note);
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if self.failed() {
            return Err(AppendError::Failed);
        }
        let len = file.metadata().map_err(AppendError::Io)?.len();
        if len + record.len() as u64 > NOTES_FILE_MAX_BYTES {
            return Err(AppendError::StoreFull);
        }
        let result = (&*file)
            .write_all(record.as_bytes())
            .and_then(|()| file.sync_all());
        result.map_err(|e| {
            self.failed.store(true, Ordering::SeqCst);
            AppendError::Io(e)
        })
    }

    /// Every complete note, oldest first.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut text = String::new();
        File::open(&self.path)?
            .take(NOTES_FILE_MAX_BYTES)
            .read_to_string(&mut text)?;
        // An append may be under way: its line is complete only once its '\n' is there.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        Ok(complete.lines().map(decode).collect())
    }
}

/// Truncate the file after its last '\n' (fsynced), returning how many bytes were dropped.
fn drop_torn_tail(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut bytes = Vec::new();
    (&*file)
        .take(NOTES_FILE_MAX_BYTES + 1)
        .read_to_end(&mut bytes)?;
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) as u64;
    if keep < len {
        file.set_len(keep)?;
        file.sync_all()?;
    }
    Ok(len - keep)
}

fn encode(note: &str) -> String {
    let mut out = String::with_capacity(note.len() + 1);
    for c in note.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

fn decode(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn notes_survive_reopening_with_their_newlines() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (notes, dropped) = Notes::open(tmp.path()).expect("open");
        assert_eq!(dropped, 0);
        notes.append("first").expect("append");
        notes
            .append("two\nlines \\ and a backslash\r")
            .expect("append");
        drop(notes);
        let (notes, _) = Notes::open(tmp.path()).expect("reopen");
        assert_eq!(
            notes.list().expect("list"),
            vec!["first", "two\nlines \\ and a backslash\r"]
        );
    }

    #[test]
    fn a_cut_short_last_record_is_dropped_on_open() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join(NOTES_FILE), "kept\nhalf a no").expect("write");
        let (notes, dropped) = Notes::open(tmp.path()).expect("open");
        assert_eq!(dropped, 9);
        assert_eq!(notes.list().expect("list"), vec!["kept"]);
        notes.append("next").expect("append");
        assert_eq!(
            fs::read_to_string(tmp.path().join(NOTES_FILE)).expect("read"),
            "kept\nnext\n"
        );
    }

    #[test]
    fn bad_notes_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (notes, _) = Notes::open(tmp.path()).expect("open");
        assert!(matches!(notes.append(""), Err(AppendError::Empty)));
        let big = "x".repeat(NOTE_MAX_BYTES + 1);
        assert!(matches!(notes.append(&big), Err(AppendError::TooLarge)));
        assert!(Notes::open(&tmp.path().join("missing")).is_err());
    }
}
