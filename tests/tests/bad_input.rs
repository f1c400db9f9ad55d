//! Bad input changes nothing (the contract, clause 5).
//!
//! - An unknown certificate, or a known one that is not the configured peer, is refused at the
//!   secondary's door: logged with the remote address, no change to its copy, the real primary
//!   stays in sync.
//! - Malformed, out-of-sequence, replayed or escaping messages from a peer holding the right
//!   certificate: each is answered with `Failed` or `Bye` (or the connection ends), logged with
//!   the problem named, and neither the secondary's copy nor anything outside it changes.
//! - An application operation that fails through the mount fails with the errno the same
//!   operation gets on a native directory of the same file system, and changes nothing on
//!   either side (nor on the secondary).

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mirrorkit_engine::frames::read_frame;
use mirrorkit_net::pki::{generate_cluster, NodeIdentity};
use mirrorkit_net::TransportParams;
use mirrorkit_tests::{require_root_and_fuse, tree, wait_until, Mirror, MirrorOpts};
use mirrorkit_wire::{
    self as wire, Hello, Message, Meta, Op, RelPath, Role, Target, Timespec, PROTOCOL_VERSION,
};

/// Longest the secondary may take to answer a message of ours.
const REPLY_TIMEOUT_MS: u64 = 5000;
/// Longest the secondary may take to write a log line about what it just did.
const LOG_TIMEOUT_MS: u64 = 5000;

// ---------------------------------------------------------------------------------------------
// A peer that speaks the replication protocol by hand.

/// A QUIC endpoint holding some identity, on loopback, with its own runtime.
struct Rogue {
    rt: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
}

impl Rogue {
    /// An endpoint for `node` whose certificate and CA are read from `certs`.
    fn new(certs: &Path, node: &str) -> Rogue {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let identity = NodeIdentity::load(certs, node).expect("load identity");
        let endpoint = rt.block_on(async {
            mirrorkit_net::endpoint(
                &identity,
                "127.0.0.1:0".parse().expect("address"),
                &TransportParams::default(),
            )
            .expect("endpoint")
        });
        Rogue { rt, endpoint }
    }

    fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("local address")
    }

    fn connect(&self, addr: SocketAddr) -> Result<quinn::Connection, mirrorkit_net::NetError> {
        self.rt
            .block_on(mirrorkit_net::connect(&self.endpoint, addr, "b"))
    }

    /// Connect to the secondary and open the replication stream.
    fn session(&self, addr: SocketAddr) -> Session<'_> {
        let conn = self
            .connect(addr)
            .unwrap_or_else(|e| panic!("the legitimate identity could not connect: {e}"));
        let (send, recv) = self.rt.block_on(conn.open_bi()).expect("open stream");
        Session {
            rogue: self,
            conn,
            send,
            recv,
        }
    }
}

/// What the secondary answered.
#[derive(Debug)]
enum Reply {
    Msg(Message),
    /// The stream or connection ended, with why.
    Closed(String),
}

struct Session<'a> {
    rogue: &'a Rogue,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Session<'_> {
    fn send_raw(&mut self, bytes: &[u8]) {
        // The secondary may already have closed: what it answered tells.
        let _ = self.rogue.rt.block_on(self.send.write_all(bytes));
    }

    fn send_msg(&mut self, msg: &Message, data: &[u8]) {
        self.send_raw(&frame(msg, data));
    }

    fn finish(&mut self) {
        let _rt = self.rogue.rt.enter();
        let _ = self.send.finish();
    }

    fn reply(&mut self) -> Reply {
        let mut buf = Vec::new();
        let read = self.rogue.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(REPLY_TIMEOUT_MS),
                read_frame(&mut self.recv, &mut buf),
            )
            .await
        });
        match read {
            Err(_) => panic!("the secondary did not answer within {REPLY_TIMEOUT_MS} ms"),
            Ok(Ok(true)) => match wire::decode_frame(&buf) {
                Ok((m, _)) => Reply::Msg(m),
                Err(e) => panic!("the secondary sent a malformed frame: {e}"),
            },
            Ok(Ok(false)) => Reply::Closed("stream finished".into()),
            Ok(Err(e)) => Reply::Closed(e.to_string()),
        }
    }

    /// Greet as the primary of mirror "test"; the secondary must greet back.
    fn greet(&mut self) {
        self.send_msg(&hello("a", "test", Role::Primary, PROTOCOL_VERSION), &[]);
        match self.reply() {
            Reply::Msg(Message::Hello(h)) if h.role == Role::Secondary => {}
            other => panic!("the secondary did not accept a valid greeting: {other:?}"),
        }
    }

    fn close(self) {
        let _rt = self.rogue.rt.enter();
        self.conn.close(0u32.into(), b"test done");
    }
}

fn hello(node: &str, mirror: &str, role: Role, version: u16) -> Message {
    Message::Hello(Hello {
        version,
        node: node.into(),
        mirror: mirror.into(),
        role,
        // An operator-forced primary: a secondary accepts its data whatever its own.
        data: wire::DataState {
            current: Some(wire::GenId(0xfeed)),
            consistent: true,
            role: wire::DataRole::Primary,
            forced: true,
            ..wire::DataState::default()
        },
        include: vec!["**".into()],
        exclude: Vec::new(),
    })
}

fn frame(msg: &Message, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_frame(msg, data, &mut out).expect("encode a valid message");
    out
}

fn op(seq: u64, op: Op) -> Message {
    Message::Op {
        seq,
        op,
        fixes: Vec::new(),
    }
}

fn path(p: &str) -> RelPath {
    RelPath::new(p.as_bytes()).expect("valid path")
}

fn meta() -> Meta {
    Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: Timespec { sec: 1, nsec: 0 },
    }
}

/// A frame carrying `evil` where a path goes: `RelPath` refuses to hold such a path, so the
/// frame is encoded with a placeholder of the same length, then patched.
fn escaping_frame(evil: &[u8], make: impl FnOnce(RelPath) -> Op) -> Vec<u8> {
    let placeholder = vec![b'Q'; evil.len()];
    let mut f = frame(
        &op(
            1,
            make(RelPath::new(placeholder.clone()).expect("placeholder")),
        ),
        &[],
    );
    let at = f
        .windows(placeholder.len())
        .position(|w| w == placeholder.as_slice())
        .expect("placeholder in the frame");
    f[at..at + evil.len()].copy_from_slice(evil);
    f
}

// ---------------------------------------------------------------------------------------------
// What must not change.

/// Everything about the secondary's copy, a directory outside it, and the names around it.
#[derive(PartialEq, Eq, Debug)]
struct Snapshot {
    copy: tree::Manifest,
    outside: tree::Manifest,
    around: Vec<String>,
    /// Places an escaping message would reach, and whether something is there.
    probes: Vec<(PathBuf, bool)>,
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn snapshot(m: &Mirror, outside: &Path) -> Snapshot {
    let b_root = m.secondary_dir().parent().expect("b's directory");
    let mut around = names_in(b_root);
    around.extend(
        names_in(m.base.path())
            .into_iter()
            .map(|n| format!("base/{n}")),
    );
    around.extend(
        names_in(Path::new("/"))
            .into_iter()
            .map(|n| format!("/{n}")),
    );
    let probes = ["/tmp/escaped", "/tmp/evil", "/x", "/stolen"]
        .iter()
        .map(PathBuf::from)
        .chain([b_root.join("x"), m.base.path().join("x")])
        .map(|p| {
            let there = p.symlink_metadata().is_ok();
            (p, there)
        })
        .collect();
    Snapshot {
        copy: tree::manifest(m.secondary_dir()).expect("manifest of the copy"),
        outside: tree::manifest(outside).expect("manifest outside"),
        around,
        probes,
    }
}

fn assert_unchanged(case: &str, before: &Snapshot, after: &Snapshot) {
    if before == after {
        return;
    }
    let mut d = tree::diff(&before.copy, &after.copy);
    d.extend(tree::diff(&before.outside, &after.outside));
    if before.probes != after.probes {
        d.push(format!("probes: {:?} -> {:?}", before.probes, after.probes));
    }
    if before.around != after.around {
        d.push(format!(
            "names around the copy: {:?} -> {:?}",
            before.around, after.around
        ));
    }
    panic!("{case}: bad input changed the disk:\n{}", d.join("\n"));
}

/// The secondary's log from byte `from` on.
fn log_since(m: &Mirror, from: usize) -> String {
    let log = m.b.log();
    log.get(from..).unwrap_or_default().to_string()
}

/// Wait until the secondary logged, after byte `from`, an ERROR or WARN line containing every
/// one of `needles`; panic naming the case otherwise.
fn expect_log(m: &Mirror, from: usize, case: &str, needles: &[&str]) {
    let found = |log: &str| {
        log.lines()
            .find(|l| {
                (l.contains("ERROR") || l.contains("WARN")) && needles.iter().all(|n| l.contains(n))
            })
            .map(str::to_string)
    };
    if let Some(line) = mirrorkit_tests::wait_for(Duration::from_millis(LOG_TIMEOUT_MS), || {
        found(&log_since(m, from))
    }) {
        println!("{case}: logged: {line}");
    } else {
        panic!(
            "{case}: the secondary logged no error or warning containing {needles:?}; its log since:\n{}",
            log_since(m, from)
        );
    }
}

fn mirror_state(m: &Mirror) -> mirrorkit_store::MirrorState {
    mirrorkit_store::StateFile::new(&m.b.dirs.state)
        .load()
        .expect("secondary's mirror state")
}

/// The real primary still mirrors a new write, and never lost its session.
fn assert_primary_still_mirrors(m: &Mirror, what: &str) {
    let name = format!("after-{}", what.replace(' ', "-"));
    std::fs::write(m.primary_dir().join(&name), what.as_bytes()).expect("write through the mount");
    let copy = std::fs::read(m.secondary_dir().join(&name));
    // The status file is rewritten every STATUS_INTERVAL_MS: let it catch up.
    std::thread::sleep(Duration::from_millis(
        3 * mirrorkit_engine::status::STATUS_INTERVAL_MS,
    ));
    let s = m.a.status().expect("primary status");
    assert!(
        copy.as_deref().ok() == Some(what.as_bytes())
            && s.mode == "in-sync"
            && s.sessions == 1
            && s.times_alone == 0,
        "after {what}, the real primary no longer mirrors (copy: {copy:?}, status {s:?})\n--- a log\n{}\n--- b log\n{}",
        m.a.log(),
        m.b.log()
    );
    tree::compare(m.primary_dir(), m.secondary_dir(), 20).unwrap_or_else(|e| panic!("{e}"));
}

fn populate(dir: &Path) {
    std::fs::create_dir_all(dir.join("d/e")).expect("mkdir");
    std::fs::write(dir.join("f"), b"precious").expect("write");
    std::fs::write(dir.join("d/e/g"), vec![3u8; 10_000]).expect("write");
}

// ---------------------------------------------------------------------------------------------
// a. Certificates

#[test]
fn foreign_certificates_are_refused() {
    if !require_root_and_fuse("foreign_certificates_are_refused") {
        return;
    }
    let m = Mirror::start(MirrorOpts::default());
    populate(m.primary_dir());
    let outside = m.base.path().join("outside");
    populate(&outside);
    let b_addr = m.b.dirs.addr;

    // An impostor cluster with its own CA and its own "a".
    let foreign = m.base.path().join("foreign");
    generate_cluster(&foreign, "impostors", &["a", "b"], false).expect("foreign cluster");
    // The impostor's "a" certificate, trusting the real CA as well as its own: the impostor
    // accepts the real secondary, so the refusal can only come from the secondary checking it.
    let mixed = m.base.path().join("mixed");
    std::fs::create_dir_all(&mixed).expect("mkdir");
    let mut cas = std::fs::read(foreign.join("ca.pem")).expect("read");
    cas.extend(std::fs::read(m.certs.join("ca.pem")).expect("read"));
    std::fs::write(mixed.join("ca.pem"), cas).expect("write");
    for f in ["a.pem", "a.key"] {
        std::fs::copy(foreign.join(f), mixed.join(f)).expect("copy");
    }

    let cases: [(&str, &Path, &str, &[&str]); 3] = [
        (
            "an impostor from another cluster",
            &foreign,
            "a",
            &["refused incoming connection"],
        ),
        (
            "an impostor certificate of another CA named a",
            &mixed,
            "a",
            &["refused incoming connection", "UnknownIssuer"],
        ),
        (
            "a genuine certificate of a node that is not the primary",
            &m.certs,
            "b",
            &["refused replication session", "only node a"],
        ),
    ];
    for (what, certs, node, needles) in cases {
        let before = snapshot(&m, &outside);
        let from = m.b.log().len();
        let refused_before = m.b.status().map(|s| s.refused_sessions).unwrap_or(0);
        let rogue = Rogue::new(certs, node);
        let me = rogue.local_addr();
        match rogue.connect(b_addr) {
            Err(e) => println!("{what}: connection refused: {e}"),
            Ok(conn) => {
                // The handshake may pass before the secondary looked at the certificate's
                // name: then it must close the connection without greeting back.
                let got: Result<Option<Message>, String> = rogue.rt.block_on(async {
                    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                    let greeting = frame(&hello("a", "test", Role::Primary, PROTOCOL_VERSION), &[]);
                    let _ = send.write_all(&greeting).await;
                    let mut buf = Vec::new();
                    let read = tokio::time::timeout(
                        Duration::from_millis(REPLY_TIMEOUT_MS),
                        read_frame(&mut recv, &mut buf),
                    )
                    .await
                    .map_err(|_| "no answer".to_string())?;
                    match read {
                        Ok(true) => wire::decode_frame(&buf)
                            .map(|(m, _)| Some(m))
                            .map_err(|e| e.to_string()),
                        Ok(false) => Ok(None),
                        Err(e) => Err(e.to_string()),
                    }
                });
                if let Ok(Some(Message::Hello(h))) = got {
                    panic!("{what}: the secondary accepted a session: {h:?}");
                }
                println!("{what}: session refused: {got:?}");
            }
        }
        if certs == m.certs.as_path() {
            assert!(
                wait_until(Duration::from_millis(LOG_TIMEOUT_MS), || {
                    m.b.status().map(|s| s.refused_sessions) == Some(refused_before + 1)
                }),
                "{what}: the secondary's refused-session counter did not move: {:?}",
                m.b.status()
            );
        }
        let mut needles = needles.to_vec();
        let me = me.to_string();
        needles.push(&me);
        expect_log(&m, from, what, &needles);
        assert_unchanged(what, &before, &snapshot(&m, &outside));
        assert_primary_still_mirrors(&m, what);
    }

    // The primary's own certificate, greeting for another mirror (a second daemon configured
    // with the wrong mirror name): refused at the greeting, without disturbing the live session.
    let what = "a greeting for another mirror while the primary is connected";
    let before = snapshot(&m, &outside);
    let from = m.b.log().len();
    let rogue = Rogue::new(&m.certs, "a");
    let me = rogue.local_addr().to_string();
    let mut s = rogue.session(b_addr);
    s.send_msg(&hello("a", "other", Role::Primary, PROTOCOL_VERSION), &[]);
    match s.reply() {
        Reply::Msg(Message::Bye { reason }) => println!("{what}: refused: {reason}"),
        Reply::Closed(why) => println!("{what}: connection ended: {why}"),
        other => panic!("{what}: the secondary answered {other:?}"),
    }
    s.close();
    expect_log(
        &m,
        from,
        what,
        &["refused replication session", "\"other\"", &me],
    );
    assert_unchanged(what, &before, &snapshot(&m, &outside));
    assert_primary_still_mirrors(&m, what);

    // The primary's own certificate, greeting with a pattern that leaves the mirror's
    // directory: refused at the greeting, the live session untouched.
    let what = "a greeting with an invalid exclude pattern";
    let before = snapshot(&m, &outside);
    let from = m.b.log().len();
    let rogue = Rogue::new(&m.certs, "a");
    let mut s = rogue.session(b_addr);
    let mut greeting = hello("a", "test", Role::Primary, PROTOCOL_VERSION);
    if let Message::Hello(h) = &mut greeting {
        h.exclude = vec!["../outside".into()];
    }
    s.send_msg(&greeting, &[]);
    match s.reply() {
        Reply::Msg(Message::Bye { reason }) => assert!(
            reason.contains("invalid pattern") && reason.contains(".."),
            "{what}: refused with {reason:?}"
        ),
        other => panic!("{what}: the secondary answered {other:?}"),
    }
    s.close();
    expect_log(
        &m,
        from,
        what,
        &[
            "refused replication session",
            "invalid pattern",
            "../outside",
        ],
    );
    assert_unchanged(what, &before, &snapshot(&m, &outside));
    assert_primary_still_mirrors(&m, what);
}

// ---------------------------------------------------------------------------------------------
// b. Malformed messages

/// What a case sends and what the secondary must say about it.
struct Bad {
    what: &'static str,
    /// Greet validly first.
    greet: bool,
    /// Frames sent before the bad one, each answered with `Ack`.
    good: Vec<Vec<u8>>,
    bad: Vec<u8>,
    /// Finish the stream right after the bad bytes.
    finish: bool,
    /// The log line must contain all of these.
    log: &'static [&'static str],
    /// Whether the secondary's copy must still be marked consistent afterwards: true when the
    /// message was refused before reaching the store. (A message the store refuses means the
    /// copy no longer matches the primary's: the secondary then stops vouching for it.)
    keeps_consistent: bool,
}

impl Bad {
    fn new(what: &'static str, bad: Vec<u8>, log: &'static [&'static str]) -> Bad {
        Bad {
            what,
            greet: true,
            good: Vec::new(),
            bad,
            finish: false,
            log,
            keeps_consistent: true,
        }
    }

    fn refused_by_store(mut self) -> Bad {
        self.keeps_consistent = false;
        self
    }
}

fn bad_cases() -> Vec<Bad> {
    let mut v = Vec::new();
    let hello_frame = |node: &str, mirror: &str, role: Role, version: u16| {
        frame(&hello(node, mirror, role, version), &[])
    };
    // Greetings.
    for (what, f, log) in [
        (
            "an operation before the greeting",
            frame(
                &op(
                    1,
                    Op::Mkdir {
                        path: path("early"),
                        meta: meta(),
                    },
                ),
                &[],
            ),
            &["expected a greeting"][..],
        ),
        (
            "a greeting for another mirror",
            hello_frame("a", "other", Role::Primary, PROTOCOL_VERSION),
            &["\"other\"", "does not match"][..],
        ),
        (
            "a greeting with another protocol version",
            hello_frame("a", "test", Role::Primary, PROTOCOL_VERSION + 1),
            &["protocol", "does not match"][..],
        ),
        (
            "a greeting as a secondary",
            hello_frame("a", "test", Role::Secondary, PROTOCOL_VERSION),
            &["Secondary", "does not match"][..],
        ),
        (
            "a greeting naming another node than the certificate",
            hello_frame("b", "test", Role::Primary, PROTOCOL_VERSION),
            &["\"b\"", "certificate"][..],
        ),
    ] {
        let mut b = Bad::new(what, f, log);
        b.greet = false;
        v.push(b);
    }

    // A forced primary whose data diverged from the secondary's (the rogue's generation shares
    // no history with the secondary's) must have the secondary keep its copy aside first.
    v.push(Bad::new(
        "a resync over diverged data without keeping it aside",
        frame(
            &op(
                1,
                Op::SyncBegin {
                    mode: wire::SyncMode::Compare,
                    preserve: false,
                },
            ),
            &[],
        ),
        &["without keeping it aside first is refused"],
    ));

    // Paths that leave the root, impossible to build as a RelPath: patched into frames.
    let create = |p: RelPath| Op::Create {
        path: p,
        meta: meta(),
        excl: true,
        truncate: false,
        handle: None,
    };
    let mkdir = |p: RelPath| Op::Mkdir {
        path: p,
        meta: meta(),
    };
    let escapes: Vec<(&'static str, Vec<u8>)> = vec![
        ("mkdir ../x", escaping_frame(b"../x", mkdir)),
        ("create a/../../x", escaping_frame(b"a/../../x", create)),
        (
            "create /tmp/escaped",
            escaping_frame(b"/tmp/escaped", create),
        ),
        (
            "unlink ../outside/f",
            escaping_frame(b"../../outside/f", |p| Op::Unlink { path: p }),
        ),
        (
            "rename f to ../../outside/g",
            escaping_frame(b"../../outside/g", |p| Op::Rename {
                from: path("f"),
                to: p,
                flags: 0,
            }),
        ),
        (
            "symlink at d/./x",
            escaping_frame(b"d/./x", |p| Op::Symlink {
                path: p,
                target: b"/etc/passwd".to_vec(),
                uid: 0,
                gid: 0,
                mtime: Timespec { sec: 1, nsec: 0 },
            }),
        ),
        (
            "truncate ..",
            escaping_frame(b"..", |p| Op::Truncate {
                target: Target::Path(p),
                size: 0,
            }),
        ),
        (
            "sync-dir listing an entry ..",
            escaping_frame(b"..", |p| Op::SyncDir {
                path: RelPath::root(),
                meta: meta(),
                entries: vec![p.as_bytes().to_vec()],
                first: true,
                last: true,
            }),
        ),
    ];
    for (what, f) in escapes {
        v.push(Bad::new(what, f, &["rejected message", "invalid path"]));
    }

    // Broken framing.
    let mut truncated = frame(
        &op(
            1,
            Op::Mkdir {
                path: path("half"),
                meta: meta(),
            },
        ),
        &[],
    );
    truncated.truncate(truncated.len() - 3);
    let mut b = Bad::new(
        "a frame cut short by the end of the stream",
        truncated,
        &["rejected message", "truncated"],
    );
    b.finish = true;
    v.push(b);
    let mut short_header = Vec::new();
    short_header.extend_from_slice(&6u32.to_le_bytes());
    short_header.extend_from_slice(&1000u16.to_le_bytes());
    short_header.extend_from_slice(b"abcd");
    v.push(Bad::new(
        "a header longer than its frame",
        short_header,
        &["rejected message", "header shorter than announced"],
    ));
    v.push(Bad::new(
        "garbage bytes",
        b"\xde\xad\xbe\xef garbage that is not a frame at all".to_vec(),
        &["rejected message", "larger than the limit"],
    ));
    let mut garbage_header = Vec::new();
    garbage_header.extend_from_slice(&34u32.to_le_bytes());
    garbage_header.extend_from_slice(&32u16.to_le_bytes());
    garbage_header.extend_from_slice(&[0xff; 32]);
    v.push(Bad::new(
        "a garbage header",
        garbage_header,
        &["rejected message", "does not decode"],
    ));
    let mut with_data = frame(
        &op(
            1,
            Op::Mkdir {
                path: path("data"),
                meta: meta(),
            },
        ),
        &[],
    );
    let len = u32::from_le_bytes(with_data[..4].try_into().expect("prefix")) + 5;
    with_data[..4].copy_from_slice(&len.to_le_bytes());
    with_data.extend_from_slice(b"extra");
    v.push(Bad::new(
        "data on a message that carries none",
        with_data,
        &["rejected message", "mkdir message carries 5 data bytes"],
    ));

    // Sequence.
    let harmless = |seq| {
        frame(
            &op(
                seq,
                Op::FsyncPath {
                    path: RelPath::root(),
                },
            ),
            &[],
        )
    };
    let mk = |seq, name: &str| {
        frame(
            &op(
                seq,
                Op::Mkdir {
                    path: path(name),
                    meta: meta(),
                },
            ),
            &[],
        )
    };
    v.push(Bad::new(
        "a first operation numbered 2",
        mk(2, "skipped"),
        &["operation 2 out of sequence (expected 1)"],
    ));
    v.push(Bad::new(
        "a first operation numbered 0",
        mk(0, "zero"),
        &["operation 0 out of sequence (expected 1)"],
    ));
    let mut replay = Bad::new(
        "a replayed operation",
        mk(1, "replayed"),
        &["operation 1 out of sequence (expected 2)"],
    );
    replay.good = vec![harmless(1)];
    v.push(replay);

    // Last, the messages the store refuses (after them the copy is no longer vouched for).
    // Symlinks inside the copy that lead outside it: a message that goes through one is refused
    // by the store (the paths themselves are valid).
    let through: Vec<(&'static str, Op)> = vec![
        (
            "create through a symlinked directory",
            create(path("esc/evil")),
        ),
        ("mkdir through a symlink to /", mkdir(path("root/tmp/evil"))),
        (
            "unlink through a symlinked directory",
            Op::Unlink {
                path: path("esc/f"),
            },
        ),
        (
            "rename through a symlinked directory",
            Op::Rename {
                from: path("esc/f"),
                to: path("stolen"),
                flags: 0,
            },
        ),
        (
            "hard link through a symlinked directory",
            Op::Link {
                existing: path("esc/f"),
                new: path("linked"),
            },
        ),
        (
            "open a symlink to a file outside, truncating",
            Op::Open {
                path: path("lnk"),
                handle: 7,
                truncate: true,
            },
        ),
        (
            "truncate a symlink to a file outside",
            Op::Truncate {
                target: Target::Path(path("lnk")),
                size: 0,
            },
        ),
        (
            "sync-file through a symlinked directory",
            Op::SyncFile {
                path: path("esc/f"),
                meta: meta(),
                size: 0,
            },
        ),
        (
            "sync-remove through a symlinked directory",
            Op::SyncRemove {
                path: path("esc/d"),
            },
        ),
    ];
    for (what, o) in through {
        v.push(
            Bad::new(
                what,
                frame(&op(1, o), &[]),
                &["cannot apply", "symbolic links"],
            )
            .refused_by_store(),
        );
    }

    // Handles the secondary does not hold.
    v.push(
        Bad::new(
            "a write on an unknown handle",
            frame(
                &op(
                    1,
                    Op::Write {
                        handle: 4242,
                        offset: 0,
                    },
                ),
                b"evil",
            ),
            &["cannot apply write", "handle 4242 is not open"],
        )
        .refused_by_store(),
    );
    v.push(
        Bad::new(
            "an fsync of an unknown handle",
            frame(
                &op(
                    1,
                    Op::Fsync {
                        handle: 4242,
                        datasync: false,
                    },
                ),
                &[],
            ),
            &["cannot apply fsync", "handle 4242 is not open"],
        )
        .refused_by_store(),
    );
    v.push(
        Bad::new(
            "a truncate of an unknown handle",
            frame(
                &op(
                    1,
                    Op::Truncate {
                        target: Target::Handle(4242),
                        size: 0,
                    },
                ),
                &[],
            ),
            &["cannot apply truncate", "handle 4242"],
        )
        .refused_by_store(),
    );
    let mut reopened = Bad::new(
        "an open of a handle already open",
        frame(
            &op(
                2,
                Op::Open {
                    path: path("d/e/g"),
                    handle: 9,
                    truncate: true,
                },
            ),
            &[],
        ),
        &["cannot apply open", "handle 9 is already open"],
    )
    .refused_by_store();
    reopened.good = vec![frame(
        &op(
            1,
            Op::Open {
                path: path("f"),
                handle: 9,
                truncate: false,
            },
        ),
        &[],
    )];
    v.push(reopened);
    v
}

#[test]
fn malformed_messages_change_nothing() {
    if !require_root_and_fuse("malformed_messages_change_nothing") {
        return;
    }
    let mut m = Mirror::start(MirrorOpts::default());
    populate(m.primary_dir());
    let outside = m.base.path().join("outside");
    populate(&outside);
    m.wait_primary_mode("in-sync", Duration::from_secs(5));
    // Only one primary session at a time: the real one must be gone for ours to be served.
    m.a.stop();
    // Symlinks in the copy that lead out of it.
    let b = m.secondary_dir().to_path_buf();
    std::os::unix::fs::symlink(&outside, b.join("esc")).expect("symlink");
    std::os::unix::fs::symlink("/", b.join("root")).expect("symlink");
    std::os::unix::fs::symlink(outside.join("f"), b.join("lnk")).expect("symlink");

    assert!(
        mirror_state(&m).consistent,
        "the secondary's copy should be consistent after a completed synchronisation"
    );
    let rogue = Rogue::new(&m.certs, "a");
    for case in bad_cases() {
        let before = snapshot(&m, &outside);
        let state_before = mirror_state(&m);
        let from = m.b.log().len();
        let mut s = rogue.session(m.b.dirs.addr);
        if case.greet {
            s.greet();
        }
        for (i, good) in case.good.iter().enumerate() {
            s.send_raw(good);
            match s.reply() {
                Reply::Msg(Message::Ack { seq }) if seq == i as u64 + 1 => {}
                other => panic!(
                    "{}: a valid message was not acknowledged: {other:?}",
                    case.what
                ),
            }
        }
        s.send_raw(&case.bad);
        if case.finish {
            s.finish();
        }
        match s.reply() {
            Reply::Msg(m @ (Message::Failed { .. } | Message::Bye { .. })) => {
                println!("{}: answered {m:?}", case.what)
            }
            Reply::Closed(why) => println!("{}: connection ended: {why}", case.what),
            other => panic!("{}: the secondary answered {other:?}", case.what),
        }
        s.close();
        expect_log(&m, from, case.what, case.log);
        assert_unchanged(case.what, &before, &snapshot(&m, &outside));
        if case.keeps_consistent {
            assert_eq!(
                mirror_state(&m),
                state_before,
                "{}: a message refused before reaching the store changed the secondary's state",
                case.what
            );
        }
    }

    // The real primary comes back, and repairs the copy with a full synchronisation.
    m.start_primary();
    m.wait_primary_mode("in-sync", Duration::from_secs(30));
    tree::compare(m.primary_dir(), m.secondary_dir(), 20).unwrap_or_else(|e| panic!("{e}"));
    assert!(mirror_state(&m).consistent);
}

// ---------------------------------------------------------------------------------------------
// c. Errors through the mount are the file system's own

/// The unprivileged user of the permission cases.
const NOBODY: u32 = 65534;

/// One system call, on paths relative to a root.
#[derive(Clone, Debug)]
enum Call {
    /// `open` with these flags (mode 0644 when creating).
    Open(String, i32),
    Mkdir(String),
    Rmdir(String),
    Unlink(String),
    /// `renameat2` with these flags.
    Rename(String, String, u32),
    Link(String, String),
    /// `symlink(target, path)`: the target is taken as is, not under the root.
    Symlink(String, String),
    Mkfifo(String),
    Chmod(String, u32),
    Chown(String, u32, u32),
    Truncate(String, i64),
    Lstat(String),
    /// `utimensat` to now (true) or to a given time (false).
    Utime(String, bool),
    /// Set an extended attribute (name, flags) to "v".
    Setxattr(String, String, i32),
    Removexattr(String, String),
    /// Write one byte at this offset.
    Pwrite(String, i64),
}

/// A call with its paths made absolute beforehand, so that running it allocates nothing (it
/// may run in a forked child of this multi-threaded process).
struct Prepared {
    call: Call,
    a: CString,
    b: CString,
}

fn prepare(root: &Path, call: &Call) -> Prepared {
    let under =
        |p: &str| CString::new(root.join(p).as_os_str().as_bytes()).expect("path without NUL");
    let raw = |p: &str| CString::new(p).expect("path without NUL");
    let none = CString::default();
    let (a, b) = match call {
        Call::Rename(x, y, _) | Call::Link(x, y) => (under(x), under(y)),
        Call::Symlink(target, p) => (under(p), raw(target)),
        Call::Setxattr(p, name, _) | Call::Removexattr(p, name) => (under(p), raw(name)),
        Call::Open(p, _)
        | Call::Mkdir(p)
        | Call::Rmdir(p)
        | Call::Unlink(p)
        | Call::Mkfifo(p)
        | Call::Chmod(p, _)
        | Call::Chown(p, _, _)
        | Call::Truncate(p, _)
        | Call::Lstat(p)
        | Call::Utime(p, _)
        | Call::Pwrite(p, _) => (under(p), none),
    };
    Prepared {
        call: call.clone(),
        a,
        b,
    }
}

/// Run the call: 0 on success, else its errno.
fn run(p: &Prepared) -> i32 {
    let (a, b) = (p.a.as_ptr(), p.b.as_ptr());
    // SAFETY: valid NUL-terminated paths and buffers; descriptors are closed at once.
    let r = unsafe {
        match &p.call {
            Call::Open(_, flags) => {
                let fd = libc::open(a, flags | libc::O_CLOEXEC, 0o644);
                if fd >= 0 {
                    libc::close(fd);
                }
                fd
            }
            Call::Mkdir(_) => libc::mkdir(a, 0o755),
            Call::Rmdir(_) => libc::rmdir(a),
            Call::Unlink(_) => libc::unlink(a),
            Call::Rename(_, _, flags) => {
                libc::renameat2(libc::AT_FDCWD, a, libc::AT_FDCWD, b, *flags)
            }
            Call::Link(..) => libc::link(a, b),
            Call::Symlink(..) => libc::symlink(b, a),
            Call::Mkfifo(_) => libc::mkfifo(a, 0o644),
            Call::Chmod(_, mode) => libc::chmod(a, *mode),
            Call::Chown(_, uid, gid) => libc::chown(a, *uid, *gid),
            Call::Truncate(_, len) => libc::truncate(a, *len),
            Call::Lstat(_) => {
                let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
                libc::lstat(a, st.as_mut_ptr())
            }
            Call::Utime(_, now) => {
                let t = libc::timespec {
                    tv_sec: 1_000_000,
                    tv_nsec: 0,
                };
                let times = [t, t];
                let ptr = if *now {
                    std::ptr::null()
                } else {
                    times.as_ptr()
                };
                libc::utimensat(libc::AT_FDCWD, a, ptr, 0)
            }
            Call::Setxattr(_, _, flags) => libc::setxattr(a, b, b"v".as_ptr().cast(), 1, *flags),
            Call::Removexattr(..) => libc::removexattr(a, b),
            Call::Pwrite(_, offset) => {
                let fd = libc::open(a, libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    -1
                } else {
                    let r = libc::pwrite(fd, b"w".as_ptr().cast(), 1, *offset);
                    let e = *libc::__errno_location();
                    libc::close(fd);
                    *libc::__errno_location() = e;
                    r as libc::c_int
                }
            }
        }
    };
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

/// Run the call as user and group `NOBODY`, without supplementary groups, in a forked child.
fn run_as_nobody(p: &Prepared) -> i32 {
    // SAFETY: the child only makes system calls and exits; nothing in it allocates or locks.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let id = NOBODY as libc::c_long;
            // Raw system calls: they change this (only) thread's credentials, which is all a
            // forked child has.
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setresgid, id, id, id) < 0
                || libc::syscall(libc::SYS_setresuid, id, id, id) < 0
            {
                libc::_exit(250);
            }
            libc::_exit(run(p));
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid, "waitpid");
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        let code = libc::WEXITSTATUS(status);
        assert_ne!(code, 250, "the child could not become user {NOBODY}");
        code
    }
}

/// The same starting tree on both sides.
fn errno_fixture(root: &Path) {
    let dir = |p: &str, mode: u32| {
        let d = root.join(p);
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let file = |p: &str, mode: u32, content: &[u8]| {
        let f = root.join(p);
        std::fs::write(&f, content).expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    dir("dir", 0o755);
    file("dir/f", 0o644, b"in dir");
    dir("full", 0o755);
    file("full/c", 0o644, b"child");
    dir("empty", 0o755);
    dir("open", 0o777);
    dir("sticky", 0o1777);
    file("sticky/rootfile", 0o666, b"root's");
    file("file", 0o644, b"content");
    file("secret", 0o600, b"secret");
    file("nobodys", 0o644, b"nobody's");
    file("tagged", 0o644, b"with an attribute");
    let tagged = CString::new(root.join("tagged").as_os_str().as_bytes()).expect("path");
    mirrorkit_store::sys::setxattr(&tagged, false, c"user.tag", b"1", 0).expect("setxattr");
    std::os::unix::fs::chown(root.join("nobodys"), Some(NOBODY), Some(NOBODY)).expect("chown");
    std::os::unix::fs::symlink("file", root.join("lnk")).expect("symlink");
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).expect("symlink");
    std::os::unix::fs::symlink("loop", root.join("loop")).expect("symlink");
}

/// A case: what to call, as whom, and the errno ext4 gives (0: success).
struct ErrnoCase {
    call: Call,
    nobody: bool,
    expected: i32,
}

fn errno_cases() -> Vec<ErrnoCase> {
    use libc::*;
    let s = |x: &str| x.to_string();
    let n256 = "n".repeat(256);
    let n1100 = "n".repeat(1100);
    let deep = "d/".repeat(2100) + "x";
    let long_target = "t".repeat(4097);
    let root = |call, expected| ErrnoCase {
        call,
        nobody: false,
        expected,
    };
    let nobody = |call, expected| ErrnoCase {
        call,
        nobody: true,
        expected,
    };
    vec![
        // ENOENT
        root(Call::Open(s("missing"), O_RDONLY), ENOENT),
        root(Call::Open(s("nodir/f"), O_CREAT | O_WRONLY), ENOENT),
        root(Call::Open(s("dangling"), O_RDONLY), ENOENT),
        root(Call::Mkdir(s("nodir/d")), ENOENT),
        root(Call::Unlink(s("missing")), ENOENT),
        root(Call::Rmdir(s("missing")), ENOENT),
        root(Call::Rename(s("missing"), s("x"), 0), ENOENT),
        root(Call::Rename(s("file"), s("nodir/x"), 0), ENOENT),
        root(
            Call::Rename(s("file"), s("missing"), RENAME_EXCHANGE),
            ENOENT,
        ),
        root(Call::Link(s("missing"), s("x")), ENOENT),
        root(Call::Symlink(s("t"), s("nodir/s")), ENOENT),
        root(Call::Chmod(s("missing"), 0o600), ENOENT),
        root(Call::Truncate(s("missing"), 0), ENOENT),
        root(Call::Lstat(s("missing")), ENOENT),
        // EEXIST
        root(Call::Mkdir(s("dir")), EEXIST),
        root(Call::Mkdir(s("file")), EEXIST),
        root(Call::Mkdir(s("lnk")), EEXIST),
        root(Call::Open(s("file"), O_CREAT | O_EXCL | O_WRONLY), EEXIST),
        root(
            Call::Open(s("dangling"), O_CREAT | O_EXCL | O_WRONLY),
            EEXIST,
        ),
        root(Call::Link(s("file"), s("dir/f")), EEXIST),
        root(Call::Symlink(s("x"), s("file")), EEXIST),
        root(Call::Symlink(s("x"), s("dir")), EEXIST),
        root(Call::Mkfifo(s("file")), EEXIST),
        root(
            Call::Rename(s("file"), s("dir/f"), RENAME_NOREPLACE),
            EEXIST,
        ),
        // ENOTEMPTY
        root(Call::Rmdir(s("full")), ENOTEMPTY),
        root(Call::Rename(s("empty"), s("full"), 0), ENOTEMPTY),
        root(Call::Rename(s("dir"), s("full"), 0), ENOTEMPTY),
        // EISDIR
        root(Call::Open(s("dir"), O_WRONLY), EISDIR),
        root(Call::Open(s("dir"), O_RDWR), EISDIR),
        root(Call::Open(s("dir"), O_CREAT | O_WRONLY), EISDIR),
        root(Call::Unlink(s("dir")), EISDIR),
        root(Call::Rename(s("file"), s("empty"), 0), EISDIR),
        root(Call::Truncate(s("dir"), 0), EISDIR),
        // ENOTDIR
        root(Call::Open(s("file/x"), O_RDONLY), ENOTDIR),
        root(Call::Open(s("file/x"), O_CREAT | O_WRONLY), ENOTDIR),
        root(Call::Open(s("file"), O_RDONLY | O_DIRECTORY), ENOTDIR),
        root(Call::Mkdir(s("file/x")), ENOTDIR),
        root(Call::Lstat(s("file/x")), ENOTDIR),
        root(Call::Lstat(s("file/")), ENOTDIR),
        root(Call::Unlink(s("file/x")), ENOTDIR),
        root(Call::Rmdir(s("file")), ENOTDIR),
        root(Call::Rename(s("empty"), s("file"), 0), ENOTDIR),
        // ENAMETOOLONG
        root(Call::Open(n256.clone(), O_CREAT | O_WRONLY), ENAMETOOLONG),
        root(Call::Mkdir(n256.clone()), ENAMETOOLONG),
        root(Call::Symlink(s("x"), n256.clone()), ENAMETOOLONG),
        root(Call::Rename(s("file"), n256.clone(), 0), ENAMETOOLONG),
        root(Call::Link(s("file"), n256.clone()), ENAMETOOLONG),
        root(Call::Lstat(n256), ENAMETOOLONG),
        root(Call::Lstat(n1100), ENAMETOOLONG),
        root(Call::Lstat(deep), ENAMETOOLONG),
        root(Call::Symlink(long_target, s("long")), ENAMETOOLONG),
        // ELOOP, EINVAL, EPERM
        root(Call::Open(s("lnk"), O_RDONLY | O_NOFOLLOW), ELOOP),
        root(Call::Open(s("loop"), O_RDONLY), ELOOP),
        root(Call::Rename(s("dir"), s("dir/sub"), 0), EINVAL),
        root(
            Call::Rename(s("file"), s("dir/f"), RENAME_NOREPLACE | RENAME_EXCHANGE),
            EINVAL,
        ),
        root(Call::Link(s("dir"), s("dirlink")), EPERM),
        root(Call::Rmdir(s("dir/.")), EINVAL),
        // Extended attributes, sizes
        root(
            Call::Setxattr(s("tagged"), s("user.tag"), XATTR_CREATE),
            EEXIST,
        ),
        root(
            Call::Setxattr(s("file"), s("user.none"), XATTR_REPLACE),
            ENODATA,
        ),
        root(Call::Removexattr(s("file"), s("user.none")), ENODATA),
        root(Call::Setxattr(s("file"), s("bogus.ns"), 0), EOPNOTSUPP),
        root(Call::Truncate(s("file"), 1 << 60), EFBIG),
        root(Call::Truncate(s("file"), -1), EINVAL),
        root(Call::Pwrite(s("file"), 1 << 50), EFBIG),
        // EACCES and EPERM for an unprivileged user
        nobody(Call::Open(s("dir/new"), O_CREAT | O_WRONLY), EACCES),
        nobody(Call::Mkdir(s("dir/new")), EACCES),
        nobody(Call::Mkfifo(s("dir/fifo")), EACCES),
        nobody(Call::Symlink(s("x"), s("dir/s")), EACCES),
        nobody(Call::Unlink(s("dir/f")), EACCES),
        nobody(Call::Rename(s("dir/f"), s("open/f"), 0), EACCES),
        nobody(Call::Open(s("secret"), O_RDONLY), EACCES),
        nobody(Call::Open(s("file"), O_WRONLY), EACCES),
        nobody(Call::Open(s("file"), O_WRONLY | O_TRUNC), EACCES),
        nobody(Call::Truncate(s("file"), 0), EACCES),
        nobody(Call::Utime(s("file"), true), EACCES),
        nobody(Call::Setxattr(s("file"), s("user.test"), 0), EACCES),
        nobody(Call::Setxattr(s("nobodys"), s("trusted.test"), 0), EPERM),
        nobody(Call::Removexattr(s("tagged"), s("user.tag")), EACCES),
        nobody(Call::Chown(s("nobodys"), u32::MAX, 0), EPERM),
        nobody(Call::Chmod(s("file"), 0o777), EPERM),
        nobody(Call::Chown(s("nobodys"), 0, 0), EPERM),
        nobody(Call::Chown(s("file"), NOBODY, NOBODY), EPERM),
        nobody(Call::Utime(s("file"), false), EPERM),
        nobody(Call::Link(s("file"), s("open/hard")), EPERM),
        nobody(Call::Unlink(s("sticky/rootfile")), EPERM),
        // What an unprivileged user may do, it does, as itself, on both nodes.
        nobody(Call::Lstat(s("secret")), 0),
        nobody(Call::Open(s("open/mine"), O_CREAT | O_EXCL | O_WRONLY), 0),
        nobody(Call::Mkdir(s("open/mydir")), 0),
        nobody(Call::Chmod(s("nobodys"), 0o600), 0),
        nobody(Call::Utime(s("nobodys"), false), 0),
        nobody(Call::Setxattr(s("nobodys"), s("user.mine"), 0), 0),
        root(Call::Open(s("dangling"), O_CREAT | O_WRONLY), 0),
    ]
}

/// A call for messages, long names shortened.
fn describe(call: &Call, who: &str) -> String {
    let d = format!("{call:?}");
    let d = if d.len() > 100 {
        format!("{}... ({} chars)", &d[..100], d.len())
    } else {
        d
    };
    format!("{d} as {who}")
}

fn errno_name(e: i32) -> String {
    if e == 0 {
        "success".into()
    } else {
        format!("{} ({e})", std::io::Error::from_raw_os_error(e))
    }
}

#[test]
fn failed_operations_fail_as_on_ext4_and_change_nothing() {
    if !require_root_and_fuse("failed_operations_fail_as_on_ext4_and_change_nothing") {
        return;
    }
    let m = Mirror::start(MirrorOpts::default());
    // The unprivileged user must reach both trees.
    std::fs::set_permissions(m.base.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod base");
    let native = m.base.path().join("native");
    std::fs::create_dir(&native).expect("mkdir native");
    errno_fixture(&native);
    errno_fixture(m.primary_dir());
    m.wait_primary_mode("in-sync", Duration::from_secs(5));
    tree::compare(m.primary_dir(), m.secondary_dir(), 20).unwrap_or_else(|e| panic!("{e}"));

    let mut mismatches = Vec::new();
    for case in errno_cases() {
        let sides = [
            ("native", native.as_path()),
            ("mount", m.primary_dir()),
            ("secondary", m.secondary_dir()),
        ];
        let before: Vec<tree::Manifest> = sides
            .iter()
            .map(|(_, p)| tree::manifest(p).expect("manifest"))
            .collect();
        let mut got = Vec::new();
        for (_, root) in &sides[..2] {
            let p = prepare(root, &case.call);
            got.push(if case.nobody {
                run_as_nobody(&p)
            } else {
                run(&p)
            });
        }
        let who = if case.nobody { "nobody" } else { "root" };
        let (native_errno, mount_errno) = (got[0], got[1]);
        let what = describe(&case.call, who);
        println!(
            "{what}: native {}, mount {}",
            errno_name(native_errno),
            errno_name(mount_errno)
        );
        assert_eq!(
            native_errno,
            case.expected,
            "{what}: the native directory gave {}, the test expects {}",
            errno_name(native_errno),
            errno_name(case.expected)
        );
        if mount_errno != native_errno {
            mismatches.push(format!(
                "{what}: mount {} but native {}",
                errno_name(mount_errno),
                errno_name(native_errno)
            ));
        }
        if case.expected != 0 {
            for ((name, root), before) in sides.iter().zip(&before) {
                let after = tree::manifest(root).expect("manifest");
                let d = tree::diff(before, &after);
                assert!(
                    d.is_empty(),
                    "{what} failed but changed the {name} tree:\n{}",
                    d.join("\n")
                );
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "errors through the mount differ from the native directory's:\n{}",
        mismatches.join("\n")
    );
    // The successes did the same on both sides: the trees differ only in their times.
    tree::compare_with(
        &native,
        m.primary_dir(),
        20,
        tree::CompareOpts::ignore_mtimes(),
    )
    .unwrap_or_else(|e| panic!("native directory and mount after the same operations: {e}"));
    // What nobody made is nobody's, on both nodes.
    for p in ["open/mine", "open/mydir"] {
        for root in [native.as_path(), m.primary_dir(), m.secondary_dir()] {
            let md = std::fs::symlink_metadata(root.join(p)).expect("made by nobody");
            assert_eq!(
                (md.uid(), md.gid()),
                (NOBODY, NOBODY),
                "{} is not owned by {NOBODY}",
                root.join(p).display()
            );
        }
    }
    let s = m.a.status().expect("primary status");
    assert!(
        s.mode == "in-sync" && s.sessions == 1 && s.times_alone == 0,
        "failed operations broke the link: {s:?}\n--- a log\n{}",
        m.a.log()
    );
    tree::compare(m.primary_dir(), m.secondary_dir(), 20).unwrap_or_else(|e| panic!("{e}"));
}
