//! The demo application over real TCP sockets on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mirrorkit_demo_app::notes::{Notes, NOTES_FILE, NOTE_MAX_BYTES};
use mirrorkit_demo_app::{serve, App};

/// Start a server on a free port of 127.0.0.1, in this process.
fn start(dir: &Path, node: &str) -> SocketAddr {
    let (notes, _) = Notes::open(dir).expect("open the notes");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = Arc::new(App {
        notes,
        node: node.to_owned(),
        data_dir: dir.to_path_buf(),
    });
    std::thread::spawn(move || serve(listener, app));
    addr
}

/// Send `raw` as is, then read the whole answer: (status, headers and body as text).
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(raw).expect("send");
    let _ = c.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).expect("read the answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
}

fn post(addr: SocketAddr, body: &[u8], content_type: &str) -> (u16, String) {
    let mut raw = format!(
        "POST /notes HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    exchange(addr, &raw)
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn notes_are_stored_listed_and_shown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let addr = start(tmp.path(), "alpha");
    assert_eq!(get(addr, "/health").0, 200);

    let (status, _) = post(addr, b"first note", "text/plain");
    assert_eq!(status, 201);
    let (status, _) = post(addr, "two\nlines <b>é</b>".as_bytes(), "text/plain");
    assert_eq!(status, 201);
    let (status, answer) = post(
        addr,
        b"note=from+a%20form",
        "application/x-www-form-urlencoded",
    );
    assert_eq!(status, 303);
    assert!(answer.contains("Location: /"), "{answer}");

    let (status, answer) = get(addr, "/notes");
    assert_eq!(status, 200);
    assert_eq!(
        body(&answer),
        "first note\ntwo\nlines <b>é</b>\nfrom a form\n"
    );
    // On disk once acknowledged.
    let on_disk = std::fs::read_to_string(tmp.path().join(NOTES_FILE)).expect("read");
    assert_eq!(on_disk, "first note\ntwo\\nlines <b>é</b>\nfrom a form\n");

    let (status, page) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<b id=\"node\">alpha</b>"), "{page}");
    assert!(page.contains("3 notes"), "{page}");
    assert!(page.contains("lines &lt;b&gt;é&lt;/b&gt;"), "{page}");
    assert!(!page.contains("<b>é</b>"), "notes must be escaped: {page}");

    // Another process (here: another server) on the same directory sees them.
    let again = start(tmp.path(), "beta");
    assert_eq!(body(&get(again, "/notes").1).lines().count(), 4);
}

#[test]
fn bad_requests_get_an_error_never_a_crash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let addr = start(tmp.path(), "alpha");
    assert_eq!(exchange(addr, b"HELLO\r\n\r\n").0, 400);
    assert_eq!(exchange(addr, b"\x00\x01\x02\xff\r\n\r\n").0, 400);
    assert_eq!(exchange(addr, b"GET / HTTP/1.1\r\nHost").0, 400);
    assert_eq!(get(addr, "/nowhere").0, 404);
    assert_eq!(exchange(addr, b"DELETE /notes HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(exchange(addr, b"POST /notes HTTP/1.1\r\n\r\n").0, 411);
    assert_eq!(
        exchange(
            addr,
            b"POST /notes HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        .0,
        411
    );
    assert_eq!(post(addr, b"", "text/plain").0, 400);
    assert_eq!(post(addr, b"\xff\xfe", "text/plain").0, 400);
    assert_eq!(
        post(addr, b"x=1", "application/x-www-form-urlencoded").0,
        400
    );
    let big = vec![b'x'; NOTE_MAX_BYTES + 1];
    assert_eq!(post(addr, &big, "text/plain").0, 413);
    // A body announced larger than it is, then the client stops sending.
    assert_eq!(
        exchange(
            addr,
            b"POST /notes HTTP/1.1\r\nContent-Length: 100\r\n\r\nshort"
        )
        .0,
        400
    );
    // Refused requests stored nothing, and the server still serves.
    assert_eq!(body(&get(addr, "/notes").1), "");
    assert_eq!(post(addr, &vec![b'y'; NOTE_MAX_BYTES], "text/plain").0, 201);
    assert_eq!(get(addr, "/health").0, 200);
}

#[test]
fn a_client_waiting_for_100_continue_gets_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let addr = start(tmp.path(), "alpha");
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(b"POST /notes HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .expect("send");
    let mut interim = [0u8; 25];
    c.read_exact(&mut interim).expect("interim answer");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"late").expect("send the body");
    let mut answer = String::new();
    c.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

#[test]
fn concurrent_notes_are_all_kept_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let addr = start(tmp.path(), "alpha");
    let writers: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || post(addr, format!("note {i}").as_bytes(), "text/plain").0)
        })
        .collect();
    for w in writers {
        assert_eq!(w.join().expect("writer"), 201);
    }
    let listed = get(addr, "/notes").1;
    let mut notes: Vec<&str> = body(&listed).lines().collect();
    notes.sort_unstable();
    let mut expected: Vec<String> = (0..16).map(|i| format!("note {i}")).collect();
    expected.sort_unstable();
    assert_eq!(notes, expected);
}

#[test]
fn the_binary_serves_and_probes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = env!("CARGO_BIN_EXE_mirrorkit-demo-app");
    let mut child = std::process::Command::new(exe)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(tmp.path())
        .env("MIRRORKIT_NODE", "node-x")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the demo app");
    let mut line = String::new();
    let mut out = child.stdout.take().expect("stdout");
    let mut byte = [0u8; 1];
    while !line.ends_with('\n') && out.read(&mut byte).expect("read stdout") == 1 {
        line.push(byte[0] as char);
    }
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let probe = |addr: SocketAddr| {
        std::process::Command::new(exe)
            .args(["--probe", &addr.to_string()])
            .output()
            .expect("run the probe")
    };
    assert!(probe(addr).status.success());
    assert!(get(addr, "/").1.contains("node-x"));
    let _ = child.kill();
    let _ = child.wait();
    let dead = probe(addr);
    assert!(!dead.status.success());
    assert!(String::from_utf8_lossy(&dead.stderr).contains("no answer"));

    // Bad arguments: usage, exit 2; a missing data directory: a clear error, exit 1.
    let usage = std::process::Command::new(exe)
        .arg("--bogus")
        .output()
        .expect("run");
    assert_eq!(usage.status.code(), Some(2));
    let missing = std::process::Command::new(exe)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(tmp.path().join("missing"))
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}
