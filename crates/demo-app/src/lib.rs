//! `mirrorkit-demo-app`: the application of the demo module. A small HTTP notes service that
//! keeps its data in one directory (the module's replicated directory) and acknowledges a note
//! only once it is fsynced, so that a failover keeps every acknowledged note.
//!
//! Standard library only: one thread per connection, at most [`MAX_CONNECTIONS`] at a time,
//! one request per connection.

pub mod http;
pub mod notes;

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{escape_html, form_field, read_request, Response};
use notes::{AppendError, Notes, NOTE_MAX_BYTES};

/// Connections served at once; more are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A client that sends nothing (or stops reading) for this long is dropped.
pub const IO_TIMEOUT_MS: u64 = 10_000;
/// After answering, input still arriving is read and dropped for at most this long...
pub const LINGER_MS: u64 = 1_000;
/// ...and at most this much.
pub const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// Notes shown on the HTML page (the newest); `GET /notes` returns them all.
pub const PAGE_NOTES_MAX: usize = 100;

/// The service: its store and the name it shows.
pub struct App {
    pub notes: Notes,
    /// Node name shown on the page: `MIRRORKIT_NODE`, else the host name.
    pub node: String,
    pub data_dir: PathBuf,
}

impl App {
    /// Answer one request.
    pub fn handle(&self, req: &http::Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => self.page(),
            ("GET", "/health") => {
                if self.notes.failed() {
                    Response::text(503, "the notes store failed: restart the application\n")
                } else {
                    Response::text(200, "ok\n")
                }
            }
            ("GET", "/notes") => match self.notes.list() {
                Ok(list) => Response::text(
                    200,
                    list.iter().map(|n| format!("{n}\n")).collect::<String>(),
                ),
                Err(e) => Response::text(500, format!("cannot read the notes: {e}\n")),
            },
            ("POST", "/notes") => self.post_note(req),
            (_, "/" | "/health") => Response::text(405, "use GET\n").with_header("Allow", "GET"),
            (_, "/notes") => {
                Response::text(405, "use GET or POST\n").with_header("Allow", "GET, POST")
            }
            _ => Response::text(404, "not found: try /, /notes or /health\n"),
        }
    }

    fn post_note(&self, req: &http::Request) -> Response {
        let Ok(body) = std::str::from_utf8(&req.body) else {
            return Response::text(400, "the note is not UTF-8 text\n");
        };
        let from_form = req
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
        let note = if from_form {
            match form_field(body, "note") {
                Some(n) => n,
                None => return Response::text(400, "the form has no valid \"note\" field\n"),
            }
        } else {
            body.to_owned()
        };
        match self.notes.append(&note) {
            Ok(()) if from_form => Response::text(303, "stored\n").with_header("Location", "/"),
            Ok(()) => Response::text(201, "stored\n"),
            Err(AppendError::Empty) => Response::text(400, "the note is empty\n"),
            Err(AppendError::TooLarge) => Response::text(
                413,
                format!("a note holds at most {NOTE_MAX_BYTES} bytes\n"),
            ),
            Err(AppendError::StoreFull) => Response::text(507, "the notes store is full\n"),
            Err(AppendError::Failed) => {
                Response::text(503, "the notes store failed: restart the application\n")
            }
            Err(AppendError::Io(e)) => {
                eprintln!(
                    "mirrorkit-demo-app: cannot store a note in {}: {e}",
                    self.notes.path().display()
                );
                Response::text(500, format!("the note was not stored durably: {e}\n"))
            }
        }
    }

    fn page(&self) -> Response {
        let notes = match self.notes.list() {
            Ok(n) => n,
            Err(e) => return Response::text(500, format!("cannot read the notes: {e}\n")),
        };
        let shown: String = notes
            .iter()
            .rev()
            .take(PAGE_NOTES_MAX)
            .map(|n| format!("<li><pre>{}</pre></li>\n", escape_html(n)))
            .collect();
        let node = escape_html(&self.node);
        Response::html(format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>mirrorkit demo on {node}</title></head>\n\
             <body>\n<h1>mirrorkit demo</h1>\n<p>Served by node <b id=\"node\">{node}</b>; data in <code>{}</code>; \
             {} notes (newest first).</p>\n\
             <form method=\"post\" action=\"/notes\"><input name=\"note\" size=\"60\" autofocus> \
             <button>Add note</button></form>\n<ul>\n{shown}</ul>\n</body></html>\n",
            escape_html(&self.data_dir.display().to_string()),
            notes.len(),
        ))
    }
}

/// Serve connections from `listener` until it fails.
pub fn serve(listener: TcpListener, app: Arc<App>) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(c) => c,
            // A client that gave up before accept, or a transient lack of descriptors.
            Err(e) => {
                eprintln!("mirrorkit-demo-app: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = conn.set_write_timeout(Some(Duration::from_millis(500)));
            let _ = Response::text(503, "too many connections\n").write_to(&mut conn);
            continue;
        }
        let app = app.clone();
        let active_in_thread = active.clone();
        let spawned = std::thread::Builder::new()
            .name("demo-conn".into())
            .spawn(move || {
                serve_one(conn, &app);
                active_in_thread.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            eprintln!("mirrorkit-demo-app: cannot start a connection thread: {e}");
        }
    }
    Ok(())
}

fn serve_one(mut conn: TcpStream, app: &App) {
    let timeout = Some(Duration::from_millis(IO_TIMEOUT_MS));
    if conn.set_read_timeout(timeout).is_err() || conn.set_write_timeout(timeout).is_err() {
        return;
    }
    let response = match read_request(&mut conn, NOTE_MAX_BYTES * 3) {
        Ok(req) => app.handle(&req),
        Err(e) => match e.status() {
            Some((status, body)) => Response::text(status, body),
            None => return,
        },
    };
    // The client may be gone; nothing more to do for it then.
    if response.write_to(&mut conn).is_ok() {
        linger(&mut conn);
    }
}

/// Close after the client has read the answer. Closing a socket with unread input makes the
/// kernel send a reset, which can destroy the answer before the client reads it (a refused large
/// body, say): so stop writing, then read and drop what the client still sends, within bounds.
fn linger(conn: &mut TcpStream) {
    if conn.shutdown(std::net::Shutdown::Write).is_err()
        || conn
            .set_read_timeout(Some(Duration::from_millis(LINGER_MS)))
            .is_err()
    {
        return;
    }
    let mut sink = [0u8; 8192];
    let mut left = LINGER_MAX_BYTES;
    while left > 0 {
        match std::io::Read::read(conn, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The node name to show: `MIRRORKIT_NODE` if set, else the kernel's host name.
pub fn node_name() -> String {
    if let Ok(n) = std::env::var("MIRRORKIT_NODE") {
        if !n.is_empty() {
            return n;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
