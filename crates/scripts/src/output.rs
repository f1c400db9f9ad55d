//! A script's output: split into lines, sent to the event log (up to a bound per run) and to
//! `tracing`, with the last lines kept for the failure message.

use std::collections::VecDeque;

use crate::event_log::{EventLog, Kind, Level};

/// A longer line is cut there (and the rest of it, up to its newline, dropped).
pub const LINE_MAX_BYTES: usize = 4096;
/// Lines of one script run stored in the event log; the rest are counted, not stored.
pub const KEPT_LINES_MAX: usize = 200;
/// Bytes of one script run stored in the event log.
pub const KEPT_BYTES_MAX: usize = 64 * 1024;
/// Last lines of a stream quoted in a failure's detail.
pub const FAILURE_TAIL_LINES: usize = 5;

const LINE_CUT_MARK: &str = " [line cut]";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Bytes in, lines out: a line ends at `\n` (a trailing `\r` is dropped) or at
/// [`LINE_MAX_BYTES`].
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
    /// Inside a line already cut: drop bytes until its end.
    discarding: bool,
}

impl LineSplitter {
    fn push(&mut self, mut data: &[u8], lines: &mut Vec<String>) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (part, rest, ends_line) = match newline {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if self.discarding {
                self.discarding = !ends_line;
                continue;
            }
            let room = LINE_MAX_BYTES - self.pending.len();
            if part.len() > room || (part.len() == room && !ends_line) {
                self.pending.extend_from_slice(&part[..room]);
                let mut line = take_line(&mut self.pending);
                line.push_str(LINE_CUT_MARK);
                lines.push(line);
                self.discarding = !ends_line;
                continue;
            }
            self.pending.extend_from_slice(part);
            if ends_line {
                lines.push(take_line(&mut self.pending));
            }
        }
    }

    /// The last line, when the stream ended without a newline.
    fn finish(&mut self, lines: &mut Vec<String>) {
        if !self.pending.is_empty() {
            lines.push(take_line(&mut self.pending));
        }
        self.discarding = false;
    }
}

fn take_line(pending: &mut Vec<u8>) -> String {
    if pending.last() == Some(&b'\r') {
        pending.pop();
    }
    let line = String::from_utf8_lossy(pending).into_owned();
    pending.clear();
    line
}

/// The output of one script run.
pub(crate) struct Output<'a> {
    log: &'a EventLog,
    module: &'a str,
    /// What ran, at the start of each stored line: the slot (`start_prim`), or `checker NAME`.
    label: &'a str,
    /// `Some`: the lines to store are held here, and reach the event log only through
    /// [`Self::release`] (a checker script's output is kept when its check fails).
    held: Option<Vec<String>>,
    stdout: LineSplitter,
    stderr: LineSplitter,
    kept_lines: usize,
    kept_bytes: usize,
    /// Set once a bound was reached: no more lines go to the event log for this run.
    full: bool,
    not_kept_lines: usize,
    stdout_tail: VecDeque<String>,
    stderr_tail: VecDeque<String>,
}

impl<'a> Output<'a> {
    pub(crate) fn new(log: &'a EventLog, module: &'a str, label: &'a str) -> Self {
        Output {
            log,
            module,
            label,
            held: None,
            stdout: LineSplitter::default(),
            stderr: LineSplitter::default(),
            kept_lines: 0,
            kept_bytes: 0,
            full: false,
            not_kept_lines: 0,
            stdout_tail: VecDeque::new(),
            stderr_tail: VecDeque::new(),
        }
    }

    /// Like [`Self::new`], but the lines are stored only if [`Self::release`] is called.
    pub(crate) fn held(log: &'a EventLog, module: &'a str, label: &'a str) -> Self {
        Output {
            held: Some(Vec::new()),
            ..Self::new(log, module, label)
        }
    }

    /// Store the held lines in the event log (once; later lines are stored directly).
    pub(crate) fn release(&mut self) {
        for text in self.held.take().unwrap_or_default() {
            self.log.append(Level::Info, Kind::Script, &text);
        }
    }

    fn store(&mut self, text: String) {
        match &mut self.held {
            Some(held) => held.push(text),
            None => self.log.append(Level::Info, Kind::Script, &text),
        }
    }

    pub(crate) fn feed(&mut self, stream: Stream, data: &[u8]) {
        let mut lines = Vec::new();
        self.splitter(stream).push(data, &mut lines);
        for line in lines {
            self.line(stream, line);
        }
    }

    /// The stream ended (or is no longer read): flush its last, unterminated line.
    pub(crate) fn close(&mut self, stream: Stream) {
        let mut lines = Vec::new();
        self.splitter(stream).finish(&mut lines);
        for line in lines {
            self.line(stream, line);
        }
    }

    /// End of the run: flush both streams and say how many lines were not stored.
    pub(crate) fn finish(&mut self) {
        self.close(Stream::Stdout);
        self.close(Stream::Stderr);
        if self.not_kept_lines > 0 {
            let text = format!(
                "{} ... {} more lines not kept (at most {KEPT_LINES_MAX} lines or {} KiB per run)",
                self.label,
                self.not_kept_lines,
                KEPT_BYTES_MAX / 1024
            );
            self.store(text);
            self.not_kept_lines = 0;
        }
    }

    /// The last lines of standard error, or of standard output when there were none, joined
    /// with ` | `; `None` when the script printed nothing.
    pub(crate) fn failure_tail(&self) -> Option<String> {
        let tail = if self.stderr_tail.is_empty() {
            &self.stdout_tail
        } else {
            &self.stderr_tail
        };
        if tail.is_empty() {
            return None;
        }
        Some(
            tail.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" | "),
        )
    }

    fn splitter(&mut self, stream: Stream) -> &mut LineSplitter {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    fn line(&mut self, stream: Stream, line: String) {
        tracing::debug!(
            module = self.module,
            script = self.label,
            stream = stream.as_str(),
            "{line}"
        );
        if !self.full
            && (self.kept_lines >= KEPT_LINES_MAX || self.kept_bytes + line.len() > KEPT_BYTES_MAX)
        {
            self.full = true;
        }
        if self.full {
            self.not_kept_lines += 1;
        } else {
            self.kept_lines += 1;
            self.kept_bytes += line.len();
            let text = format!("{} {}: {line}", self.label, stream.as_str());
            self.store(text);
        }
        let tail = match stream {
            Stream::Stdout => &mut self.stdout_tail,
            Stream::Stderr => &mut self.stderr_tail,
        };
        if tail.len() == FAILURE_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, &mut lines);
        }
        splitter.finish(&mut lines);
        lines
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(
            split(&[b"one\ntw", b"o\r\n", b"\nthree"]),
            ["one", "two", "", "three"]
        );
        assert!(split(&[b""]).is_empty());
        assert_eq!(split(&[b"bad \xff utf8\n"]), ["bad \u{fffd} utf8"]);
    }

    #[test]
    fn long_lines_are_cut() {
        let long = vec![b'a'; LINE_MAX_BYTES * 3];
        let lines = split(&[&long[..LINE_MAX_BYTES + 10], &long[..100], b"\nnext\n"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), LINE_MAX_BYTES + LINE_CUT_MARK.len());
        assert_eq!(lines[1], "next");
        // Exactly LINE_MAX_BYTES followed by its newline is whole.
        let mut exact = vec![b'b'; LINE_MAX_BYTES];
        exact.push(b'\n');
        assert_eq!(split(&[&exact]), ["b".repeat(LINE_MAX_BYTES)]);
    }

    #[test]
    fn bounded_storage_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("events.log")).unwrap();
        let mut output = Output::new(&log, "demo", "start_prim");
        let text: String = (0..KEPT_LINES_MAX + 50)
            .map(|i| format!("l{i}\n"))
            .collect();
        output.feed(Stream::Stdout, text.as_bytes());
        assert_eq!(
            output.failure_tail().unwrap(),
            "l245 | l246 | l247 | l248 | l249"
        );
        output.feed(Stream::Stderr, b"oops");
        output.finish();
        assert_eq!(output.failure_tail().unwrap(), "oops");
        let entries = log.tail(1000).unwrap();
        assert_eq!(entries.len(), KEPT_LINES_MAX + 1);
        assert_eq!(entries[0].text, "start_prim stdout: l0");
        assert!(entries[KEPT_LINES_MAX]
            .text
            .starts_with("start_prim ... 51 more lines not kept"));
    }

    #[test]
    fn held_output_is_stored_only_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("events.log")).unwrap();
        let mut output = Output::held(&log, "demo", "checker http");
        output.feed(Stream::Stdout, b"fine\n");
        output.finish();
        drop(output);
        assert!(log.tail(10).unwrap().is_empty());
        let mut output = Output::held(&log, "demo", "checker http");
        output.feed(Stream::Stderr, b"refused\n");
        output.finish();
        output.release();
        let texts: Vec<String> = log.tail(10).unwrap().into_iter().map(|e| e.text).collect();
        assert_eq!(texts, ["checker http stderr: refused"]);
    }
}
