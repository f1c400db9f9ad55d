//! Helpers of the heartbeat tests: clusters in temporary directories, free loopback ports,
//! nodes started on them, a UDP relay whose link can be cut, and log capture.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorkit_heartbeat::{Config, Heartbeat, HeartbeatError, Liveness, Message, Network};
use mirrorkit_net::pki::{generate_cluster, NodeIdentity};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Heartbeat period of the tests: the fast profile's.
pub const INTERVAL_MS: u64 = 100;

/// Upper bounds are wide: the tests must pass on a loaded two-core machine.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A cluster's certificates in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new(cluster: &str, nodes: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_cluster(dir.path(), cluster, nodes, false).expect("generate cluster");
        Self { dir }
    }

    pub fn identity(&self, node: &str) -> NodeIdentity {
        NodeIdentity::load(self.dir.path(), node).expect("load identity")
    }
}

/// A loopback address whose UDP port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("local addr")
}

pub fn net(name: &str, local: SocketAddr, peer: SocketAddr) -> Network {
    Network {
        name: name.to_owned(),
        local,
        peer,
    }
}

/// Start `node`'s heartbeats, retrying while a previous instance still holds the ports.
pub async fn start(
    pki: &Pki,
    node: &str,
    peer: &str,
    networks: Vec<Network>,
) -> (Heartbeat, mpsc::Receiver<Message>) {
    let cfg = Config {
        node: node.to_owned(),
        peer: peer.to_owned(),
        networks,
        interval_ms: INTERVAL_MS,
    };
    let since = Instant::now();
    loop {
        match Heartbeat::start(pki.identity(node), cfg.clone()).await {
            Ok(started) => return started,
            Err(HeartbeatError::Endpoint { .. }) if since.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot start {node}: {e}"),
        }
    }
}

/// The next report of a watcher, within `within`.
pub async fn next(watcher: &mut mpsc::Receiver<Liveness>, within: Duration) -> Liveness {
    tokio::time::timeout(within, watcher.recv())
        .await
        .unwrap_or_else(|_| panic!("no liveness report within {within:?}"))
        .expect("watcher ended")
}

/// The next message, within `within`.
pub async fn message(inbox: &mut mpsc::Receiver<Message>, within: Duration) -> Message {
    tokio::time::timeout(within, inbox.recv())
        .await
        .unwrap_or_else(|_| panic!("no message within {within:?}"))
        .expect("message channel ended")
}

/// Poll `cond` every 10 ms until it holds; the time it took.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let since = Instant::now();
    loop {
        if cond() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A UDP relay standing for the link of one network: node A talks to `a_facing` as if it were
/// B, and B to `b_facing` as if it were A. Cutting it drops every packet both ways, as a pulled
/// cable or a frozen machine would.
pub struct Relay {
    pub a_facing: SocketAddr,
    pub b_facing: SocketAddr,
    cut: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    pub async fn start(a: SocketAddr, b: SocketAddr) -> Self {
        let a_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let b_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let cut = Arc::new(AtomicBool::new(false));
        let tasks = vec![
            tokio::spawn(forward(
                Arc::clone(&a_side),
                Arc::clone(&b_side),
                b,
                Arc::clone(&cut),
            )),
            tokio::spawn(forward(
                Arc::clone(&b_side),
                Arc::clone(&a_side),
                a,
                Arc::clone(&cut),
            )),
        ];
        Self {
            a_facing: a_side.local_addr().expect("addr"),
            b_facing: b_side.local_addr().expect("addr"),
            cut,
            tasks,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn forward(from: Arc<UdpSocket>, to: Arc<UdpSocket>, dest: SocketAddr, cut: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((len, _)) = from.recv_from(&mut buf).await else {
            continue;
        };
        if !cut.load(Ordering::SeqCst) {
            let _ = to.send_to(&buf[..len], dest).await;
        }
    }
}

/// Log lines written while the returned guard lives, on this thread (use a current-thread
/// runtime so that the nodes' tasks log here too).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }

    /// A line holding every one of `parts`.
    pub fn has_line(&self, parts: &[&str]) -> bool {
        self.text()
            .lines()
            .any(|line| parts.iter().all(|p| line.contains(p)))
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Log to the test's output (shown for failing tests), filtered by `RUST_LOG` (default: info).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
