//! Delivery with real processes and a real HTTP server on 127.0.0.1: the command's environment
//! and input, failures, timeouts (the process group killed), order, the queue bound, and the
//! webhook's request, error answers, silence and refused connections.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorkit_notify::{Notification, Notifier, NotifyConfig, QUEUE_MAX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const FLUSH: Duration = Duration::from_secs(10);

/// An executable `#!/bin/sh` script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write the test script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod the test script");
    path
}

/// The texts given to `failures`, and the callback that collects them.
fn collector() -> (
    Arc<Mutex<Vec<String>>>,
    impl Fn(String) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    (seen, move |text| {
        sink.lock().expect("failures lock").push(text)
    })
}

fn texts(seen: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    seen.lock().expect("failures lock").clone()
}

fn change(reason: &str) -> Notification {
    Notification::new("prod", "shop", "node-a", "SECOND", "ALONE", reason)
}

fn command_config(command: PathBuf, timeout_ms: u64, dir: &Path) -> NotifyConfig {
    NotifyConfig {
        command: Some(command),
        webhook: None,
        timeout_ms,
        working_dir: Some(dir.to_owned()),
        env: vec![("TEST_DIR".into(), dir.display().to_string())],
    }
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: dead all the same).
fn dead(pid: &str) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn command_gets_every_variable_the_json_and_the_extra_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = script(
        dir.path(),
        "notify",
        r#"env | grep -e '^MIRRORKIT_NOTIFY_' -e '^TEST_DIR=' -e '^PATH=' > "$TEST_DIR/env"
cat > "$TEST_DIR/stdin"
pwd > "$TEST_DIR/pwd""#,
    );
    let (seen, failures) = collector();
    let notifier = Notifier::start(command_config(cmd, 5_000, dir.path()), failures);
    let n = change("peer lost: no heartbeat for 3000 ms; 'quoted' $HOME").at(1_795_971_600_123);
    notifier.notify(n.clone());
    assert!(notifier.flush(FLUSH).await);
    assert_eq!(texts(&seen), Vec::<String>::new());

    let env = fs::read_to_string(dir.path().join("env")).expect("env written");
    let mut vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    vars.sort();
    let expected = [
        ("MIRRORKIT_NOTIFY_CLUSTER", "prod"),
        ("MIRRORKIT_NOTIFY_MODULE", "shop"),
        ("MIRRORKIT_NOTIFY_NEW_STATE", "ALONE"),
        ("MIRRORKIT_NOTIFY_NODE", "node-a"),
        ("MIRRORKIT_NOTIFY_OLD_STATE", "SECOND"),
        (
            "MIRRORKIT_NOTIFY_REASON",
            "peer lost: no heartbeat for 3000 ms; 'quoted' $HOME",
        ),
        ("MIRRORKIT_NOTIFY_TIME", "2026-11-29T17:00:00.123Z"),
        ("MIRRORKIT_NOTIFY_TIME_MS", "1795971600123"),
    ];
    for (name, value) in expected {
        assert!(
            vars.contains(&(name.to_owned(), value.to_owned())),
            "{name}={value} missing from {vars:?}"
        );
    }
    let test_dir = dir.path().display().to_string();
    assert!(vars.contains(&("TEST_DIR".to_owned(), test_dir)));
    // The daemon's own environment is kept.
    let path = std::env::var("PATH").unwrap_or_default();
    assert!(vars.contains(&("PATH".to_owned(), path)));

    let pwd = fs::read_to_string(dir.path().join("pwd")).expect("pwd written");
    let real_dir = dir.path().canonicalize().expect("canonical tempdir");
    assert_eq!(Path::new(pwd.trim()), real_dir, "the working directory");

    let stdin = fs::read(dir.path().join("stdin")).expect("stdin written");
    assert_eq!(stdin, serde_json::to_vec(&n).expect("encode"));
    let back: Notification = serde_json::from_slice(&stdin).expect("stdin is the JSON body");
    assert_eq!(back, n);
}

#[tokio::test]
async fn failing_and_missing_commands_are_reported_with_their_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = script(
        dir.path(),
        "notify",
        "echo 'sending the page' ; echo 'pager gateway refused: 403' >&2; exit 3",
    );
    let (seen, failures) = collector();
    let notifier = Notifier::start(command_config(cmd.clone(), 5_000, dir.path()), failures);
    notifier.notify(change("a"));
    assert!(notifier.flush(FLUSH).await);
    assert_eq!(
        texts(&seen),
        [format!(
            "notify command {} exited with status 3: pager gateway refused: 403 [stdout: sending the page]",
            cmd.display()
        )]
    );

    let missing = dir.path().join("no-such-command");
    let (seen, failures) = collector();
    let notifier = Notifier::start(command_config(missing.clone(), 5_000, dir.path()), failures);
    notifier.notify(change("b"));
    assert!(notifier.flush(FLUSH).await);
    let got = texts(&seen);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(&format!(
            "notify command {} could not be started: ",
            missing.display()
        )),
        "{got:?}"
    );
}

#[tokio::test]
async fn hanging_command_is_killed_at_its_timeout_with_its_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = script(
        dir.path(),
        "notify",
        r#"sleep 30 &
echo $! > "$TEST_DIR/child.pid"
echo 'waiting for the gateway' >&2
wait"#,
    );
    let (seen, failures) = collector();
    let notifier = Notifier::start(command_config(cmd.clone(), 500, dir.path()), failures);
    let started = Instant::now();
    notifier.notify(change("hang"));
    assert!(notifier.flush(FLUSH).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(
        texts(&seen),
        [format!(
            "notify command {} killed after 500 ms: waiting for the gateway",
            cmd.display()
        )]
    );
    let child = fs::read_to_string(dir.path().join("child.pid")).expect("child pid written");
    let child = child.trim();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead(child) {
        assert!(
            Instant::now() < deadline,
            "the command's child {child} survived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn notify_returns_at_once_and_a_stopped_runtime_kills_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = script(
        dir.path(),
        "notify",
        r#"echo $$ >> "$TEST_DIR/pids"
exec sleep 30"#,
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (seen, failures) = collector();
    runtime.block_on(async {
        let notifier = Notifier::start(command_config(cmd, 20_000, dir.path()), failures);
        let started = Instant::now();
        for i in 0..10 {
            notifier.notify(change(&format!("change {i}")));
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(50),
            "10 notify() took {took:?}"
        );
        wait_for_file(&dir.path().join("pids")).await;
        assert!(!notifier.flush(Duration::from_millis(100)).await);
    });
    // The daemon stops: the worker is cancelled, and the command it was waiting for goes too.
    drop(runtime);
    let pids = fs::read_to_string(dir.path().join("pids")).expect("pids written");
    assert_eq!(pids.lines().count(), 1, "one command at a time: {pids}");
    let pid = pids.trim();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead(pid) {
        assert!(Instant::now() < deadline, "the command {pid} survived");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(texts(&seen), Vec::<String>::new());
}

#[tokio::test]
async fn notifications_arrive_in_order_and_overflow_drops_the_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The first notification holds the worker until the test has queued the others.
    let cmd = script(
        dir.path(),
        "notify",
        r#"echo "$MIRRORKIT_NOTIFY_REASON" >> "$TEST_DIR/log"
if [ "$MIRRORKIT_NOTIFY_REASON" = first ]; then
    : > "$TEST_DIR/started"
    while [ ! -e "$TEST_DIR/go" ]; do sleep 0.02; done
fi"#,
    );
    let (seen, failures) = collector();
    let notifier = Notifier::start(command_config(cmd, 5_000, dir.path()), failures);
    notifier.notify(change("first"));
    wait_for_file(&dir.path().join("started")).await;
    let extra = 5;
    for i in 0..QUEUE_MAX + extra {
        notifier.notify(change(&format!("r{i}")));
    }
    fs::write(dir.path().join("go"), b"").expect("release the first command");
    assert!(notifier.flush(Duration::from_secs(20)).await);

    let log = fs::read_to_string(dir.path().join("log")).expect("log written");
    let expected: Vec<String> = std::iter::once("first".to_owned())
        .chain((extra..QUEUE_MAX + extra).map(|i| format!("r{i}")))
        .collect();
    assert_eq!(log.lines().collect::<Vec<_>>(), expected);
    assert_eq!(
        texts(&seen),
        ["5 notifications dropped: the notifier is slower than the state changes"]
    );
}

/// What the test server saw of one request.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the marker file existed when the request arrived.
    marker_existed: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A one-purpose HTTP/1.1 server on 127.0.0.1: it reads each request, reports it, and answers
/// `answer` (or holds the connection without a word when None).
async fn server(
    answer: Option<&'static str>,
    marker: PathBuf,
) -> (String, mpsc::UnboundedReceiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, marker) = (tx.clone(), marker.clone());
            tokio::spawn(async move {
                if let Some(mut stream) = read_request(stream, &marker, &tx).await {
                    match answer {
                        Some(answer) => {
                            let _ = stream.write_all(answer.as_bytes()).await;
                            let _ = stream.shutdown().await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), rx)
}

async fn read_request(
    mut stream: TcpStream,
    marker: &Path,
    tx: &mpsc::UnboundedSender<Request>,
) -> Option<TcpStream> {
    let marker_existed = marker.exists();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        body.extend_from_slice(&buf[..n]);
    }
    let _ = tx.send(Request {
        method,
        path,
        headers,
        body,
        marker_existed,
    });
    Some(stream)
}

fn webhook_config(url: String, timeout_ms: u64) -> NotifyConfig {
    NotifyConfig {
        command: None,
        webhook: Some(url),
        timeout_ms,
        working_dir: None,
        env: Vec::new(),
    }
}

#[tokio::test]
async fn webhook_posts_the_json_after_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("command-ran");
    let (base, mut requests) = server(
        Some("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"),
        marker,
    )
    .await;
    let cmd = script(dir.path(), "notify", r#": > "$TEST_DIR/command-ran""#);
    let mut cfg = command_config(cmd, 5_000, dir.path());
    cfg.webhook = Some(format!("{base}/hooks/mirrorkit?source=test"));
    let (seen, failures) = collector();
    let notifier = Notifier::start(cfg, failures);
    let n = change("manual switch");
    notifier.notify(n.clone());
    assert!(notifier.flush(FLUSH).await);
    assert_eq!(texts(&seen), Vec::<String>::new());

    let request = requests.try_recv().expect("one request");
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/mirrorkit?source=test");
    assert_eq!(request.header("content-type"), Some("application/json"));
    let agent = format!("mirrorkit/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(request.header("user-agent"), Some(agent.as_str()));
    assert_eq!(request.body, serde_json::to_vec(&n).expect("encode"));
    assert!(
        request.marker_existed,
        "the command runs before the webhook"
    );
    assert!(requests.try_recv().is_err(), "exactly one request");
}

#[tokio::test]
async fn webhook_error_answer_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, mut requests) = server(
        Some("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 10\r\nConnection: close\r\n\r\ndisk full\n"),
        dir.path().join("unused"),
    )
    .await;
    let (seen, failures) = collector();
    let notifier = Notifier::start(webhook_config(format!("{base}/hook"), 5_000), failures);
    notifier.notify(change("x"));
    assert!(notifier.flush(FLUSH).await);
    assert_eq!(
        texts(&seen),
        [format!(
            "webhook {base}/hook answered 500 Internal Server Error: disk full"
        )]
    );
    assert!(requests.try_recv().is_ok());
    assert!(
        requests.try_recv().is_err(),
        "an error answer is not retried"
    );
}

#[tokio::test]
async fn silent_webhook_is_reported_after_its_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, mut requests) = server(None, dir.path().join("unused")).await;
    let (seen, failures) = collector();
    let notifier = Notifier::start(webhook_config(format!("{base}/hook"), 500), failures);
    let started = Instant::now();
    notifier.notify(change("x"));
    assert!(notifier.flush(FLUSH).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        texts(&seen),
        [format!("webhook {base}/hook did not answer within 500 ms")]
    );
    assert!(requests.try_recv().is_ok());
    assert!(requests.try_recv().is_err(), "a timeout is not retried");
}

#[tokio::test]
async fn refused_connection_is_retried_once_then_reported() {
    // A port that was just free: nothing listens there any more.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let url = format!("http://{addr}/hook");
    let (seen, failures) = collector();
    let notifier = Notifier::start(webhook_config(url.clone(), 2_000), failures);
    let started = Instant::now();
    notifier.notify(change("x"));
    assert!(notifier.flush(FLUSH).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1_000), "no retry: {took:?}");
    let got = texts(&seen);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(&format!(
            "webhook {url} could not be reached (tried twice, 1000 ms apart): "
        )),
        "{got:?}"
    );
    assert!(got[0].contains("refused"), "{got:?}");
}
