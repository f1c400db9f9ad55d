//! The witness and its client over real QUIC on 127.0.0.1, with certificates from a test
//! cluster CA. Short leases (600 ms) keep the tests fast.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirrorkit_cluster::generation::GenId;
use mirrorkit_cluster::machine::WitnessEvent;
use mirrorkit_net::pki::{generate_cluster, NodeIdentity};
use mirrorkit_net::TransportParams;
use mirrorkit_witness::protocol::{
    decode_reply, encode_request, Reply, Request, RequestBody, MAGIC, MAX_FRAME_BYTES,
};
use mirrorkit_witness::{Server, ServerConfig, WitnessClient};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

const LEASE_MS: u32 = 600;
const LEASE: Duration = Duration::from_millis(LEASE_MS as u64);
const G1: GenId = GenId(0x1111);
const G2: GenId = GenId(0x2222);
const G3: GenId = GenId(0x3333);
const MODULE: &str = "shop";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "mirrorkit_witness=debug".into()),
        )
        .try_init();
}

struct Cluster {
    _tmp: tempfile::TempDir,
    pki: PathBuf,
    state: PathBuf,
}

impl Cluster {
    fn new() -> Self {
        init_tracing();
        let tmp = tempfile::tempdir().unwrap();
        let pki = tmp.path().join("pki");
        generate_cluster(&pki, "test", &["alpha", "beta", "witness", "gamma"], false).unwrap();
        let state = tmp.path().join("state");
        Cluster {
            _tmp: tmp,
            pki,
            state,
        }
    }

    fn config(&self) -> ServerConfig {
        ServerConfig {
            cluster: "test".to_owned(),
            name: "witness".to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            certs: self.pki.clone(),
            state_dir: self.state.clone(),
            nodes: vec!["alpha".to_owned(), "beta".to_owned()],
        }
    }

    fn server(&self) -> Server {
        Server::start(self.config()).unwrap()
    }

    fn identity(&self, node: &str) -> NodeIdentity {
        NodeIdentity::load(&self.pki, node).unwrap()
    }

    fn client(&self, node: &str, addr: SocketAddr) -> (WitnessClient, Events) {
        client_with(self.identity(node), addr)
    }
}

fn client_with(identity: NodeIdentity, addr: SocketAddr) -> (WitnessClient, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = WitnessClient::start(identity, addr, "witness".to_owned(), tx);
    (client, Events::spawn(rx))
}

/// A client's events, stamped with the instant they were emitted (received by a task of their
/// own, so that a test busy elsewhere does not delay the stamp).
struct Events {
    rx: mpsc::UnboundedReceiver<(Instant, String, WitnessEvent)>,
}

impl Events {
    fn spawn(mut raw: mpsc::UnboundedReceiver<(String, WitnessEvent)>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((m, ev)) = raw.recv().await {
                if tx.send((Instant::now(), m, ev)).is_err() {
                    break;
                }
            }
        });
        Events { rx }
    }

    async fn next(&mut self, within: Duration) -> (Instant, WitnessEvent) {
        match timeout(within, self.rx.recv()).await {
            Ok(Some((at, module, ev))) => {
                assert_eq!(module, MODULE);
                (at, ev)
            }
            Ok(None) => panic!("the client stopped"),
            Err(_) => panic!("no witness event within {within:?}"),
        }
    }

    async fn none_within(&mut self, d: Duration) {
        if let Ok(Some(ev)) = timeout(d, self.rx.recv()).await {
            panic!("unexpected event {ev:?}");
        }
    }
}

/// A UDP relay between one client and the witness, which the test can cut.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(target).await.unwrap();
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = Arc::clone(&cut);
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut up = vec![0u8; 65536];
            let mut down = vec![0u8; 65536];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut up) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        if !cut2.load(Ordering::SeqCst) {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    r = back.recv(&mut down) => {
                        let Ok(n) = r else { continue };
                        if let (Some(c), false) = (client, cut2.load(Ordering::SeqCst)) {
                            let _ = front.send_to(&down[..n], c).await;
                        }
                    }
                }
            }
        });
        Proxy { addr, cut, task }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    fn uncut(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection of `node` to the witness, for raw requests.
async fn raw_conn(pki: &Path, node: &str, addr: SocketAddr) -> quinn::Connection {
    let identity = NodeIdentity::load(pki, node).unwrap();
    let ep = mirrorkit_net::endpoint(
        &identity,
        "127.0.0.1:0".parse().unwrap(),
        &TransportParams::default(),
    )
    .unwrap();
    mirrorkit_net::connect(&ep, addr, "witness").await.unwrap()
}

static INCARNATION: AtomicU64 = AtomicU64::new(1000);

fn claim(op: u64, current: GenId, history: &[GenId]) -> RequestBody {
    RequestBody {
        incarnation: INCARNATION.fetch_add(1, Ordering::SeqCst),
        seq: 1,
        request: Request::Claim {
            module: MODULE.to_owned(),
            op,
            current: Some(current),
            history: history.to_vec(),
            force: false,
            lease_ms: LEASE_MS,
        },
    }
}

/// Send raw bytes on a new stream, finish it, and read whatever comes back (bounded in time).
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    match timeout(Duration::from_secs(5), recv.read_to_end(MAX_FRAME_BYTES)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => panic!("no answer nor reset within 5 s"),
    }
}

async fn request(conn: &quinn::Connection, body: &RequestBody) -> Reply {
    let bytes = raw_exchange(conn, &encode_request(body).unwrap())
        .await
        .unwrap();
    decode_reply(&bytes).unwrap()
}

/// A raw request on a fresh connection; returns the reply and when it came.
async fn request_once(
    pki: &Path,
    node: &str,
    addr: SocketAddr,
    body: &RequestBody,
) -> (Reply, Instant) {
    let conn = raw_conn(pki, node, addr).await;
    let reply = request(&conn, body).await;
    let at = Instant::now();
    conn.close(0u32.into(), b"done");
    (reply, at)
}

fn assert_granted(reply: &Reply, op: u64) {
    assert!(
        matches!(reply, Reply::Granted { op: o, .. } if *o == op),
        "expected Granted for op {op}, got {reply:?}"
    );
}

fn assert_refused(reply: &Reply, op: u64, needle: &str) {
    match reply {
        Reply::Refused { op: o, reason } if *o == op => {
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
        }
        other => panic!("expected Refused for op {op}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_holder_keeps_its_grant_and_a_failover_waits_for_its_deadline() {
    let c = Cluster::new();
    let server = c.server();
    let proxy = Proxy::start(server.local_addr()).await;
    let (alpha, mut alpha_ev) = c.client("alpha", proxy.addr);
    let (beta, mut beta_ev) = c.client("beta", server.local_addr());

    alpha.claim(MODULE, 1, Some(G1), vec![], false, LEASE_MS);
    let (_, ev) = alpha_ev.next(Duration::from_secs(3)).await;
    assert_eq!(ev, WitnessEvent::Granted { op: 1 });
    // Renewals keep the grant well beyond its lease.
    alpha_ev.none_within(LEASE * 3).await;

    // Beta's claim is held while alpha's lease runs, then refused: alpha renewed.
    let sent = Instant::now();
    beta.claim(MODULE, 1, Some(G1), vec![], false, LEASE_MS);
    let (at, ev) = beta_ev.next(LEASE + Duration::from_secs(2)).await;
    match ev {
        WitnessEvent::Refused { op: 1, reason } => {
            assert!(reason.contains("alpha holds module shop"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        at - sent >= LEASE / 2,
        "beta's claim was answered after {:?}, before alpha's lease could run out",
        at - sent
    );

    // Alpha loses the witness; beta claims again.
    proxy.cut();
    let cut_at = Instant::now();
    beta.claim(MODULE, 2, Some(G1), vec![], false, LEASE_MS);
    let (lost_at, ev) = alpha_ev.next(LEASE * 2).await;
    assert_eq!(ev, WitnessEvent::Unreachable { op: 1 });
    // A renewal of alpha's sent just before the cut may still reach the witness while beta's
    // claim waits: then beta is refused once more, and claims again (as its machine would).
    let mut op = 2;
    let granted_at = loop {
        match beta_ev.next(LEASE + Duration::from_secs(2)).await {
            (at, WitnessEvent::Granted { op: o }) if o == op => break at,
            (_, WitnessEvent::Refused { op: o, reason }) if o == op && op < 4 => {
                assert!(reason.contains("alpha holds"), "{reason}");
                op += 1;
                beta.claim(MODULE, op, Some(G1), vec![], false, LEASE_MS);
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(
        lost_at - cut_at <= LEASE,
        "alpha learnt its loss {:?} after the cut, later than its lease",
        lost_at - cut_at
    );
    assert!(
        granted_at >= lost_at,
        "beta was granted {:?} before alpha knew it had lost its grant",
        lost_at - granted_at
    );
    alpha_ev.none_within(Duration::from_millis(200)).await;
    alpha.shutdown();
    beta.shutdown();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_holder_keeps_its_grant_across_a_witness_crash_and_restart() {
    const LONG_MS: u32 = 3000;
    let c = Cluster::new();
    let s1 = c.server();
    let port = s1.local_addr().port();
    let proxy = Proxy::start(s1.local_addr()).await;
    let (alpha, mut alpha_ev) = c.client("alpha", proxy.addr);
    alpha.claim(MODULE, 1, Some(G1), vec![], false, LONG_MS);
    assert_eq!(
        alpha_ev.next(Duration::from_secs(3)).await.1,
        WitnessEvent::Granted { op: 1 }
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A crash: alpha never hears the old witness close; a new one starts on the same port.
    proxy.cut();
    let crashed = Instant::now();
    s1.shutdown().await;
    let mut cfg = c.config();
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], port));
    let s2 = loop {
        match Server::start(cfg.clone()) {
            Ok(s) => break s,
            Err(e) if crashed.elapsed() < Duration::from_secs(2) => {
                eprintln!("restart: {e}; again");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    proxy.uncut();
    // Alpha dials the new witness and renews there: no loss, well beyond its lease.
    alpha_ev
        .none_within(Duration::from_millis(u64::from(LONG_MS) + 500))
        .await;
    // And the new witness knows alpha as the holder.
    let (reply, _) = request_once(&c.pki, "beta", s2.local_addr(), &claim(1, G1, &[])).await;
    assert_refused(&reply, 1, "alpha holds");
    alpha.shutdown();
    s2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_claim_replaces_the_old_and_a_release_frees_the_module() {
    let c = Cluster::new();
    let server = c.server();
    let addr = server.local_addr();
    let (alpha, mut alpha_ev) = c.client("alpha", addr);
    let (beta, mut beta_ev) = c.client("beta", addr);

    alpha.claim(MODULE, 1, Some(G1), vec![], false, LEASE_MS);
    assert_eq!(
        alpha_ev.next(Duration::from_secs(3)).await.1,
        WitnessEvent::Granted { op: 1 }
    );
    // A new generation: confirmed under a new op; nothing more for op 1.
    alpha.claim(MODULE, 2, Some(G2), vec![G1], false, LEASE_MS);
    assert_eq!(
        alpha_ev.next(Duration::from_secs(3)).await.1,
        WitnessEvent::Granted { op: 2 }
    );
    alpha_ev.none_within(LEASE * 2).await;

    // Beta waits for alpha's lease, which alpha renews: refused.
    beta.claim(MODULE, 1, Some(G1), vec![], false, LEASE_MS);
    match beta_ev.next(LEASE + Duration::from_secs(2)).await.1 {
        WitnessEvent::Refused { op: 1, reason } => {
            assert!(reason.contains("alpha holds"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // Alpha releases: beta, on the same data, gets the role without waiting for the lease.
    alpha.release(MODULE);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = Instant::now();
    beta.claim(MODULE, 2, Some(G2), vec![G1], false, LEASE_MS);
    let (at, ev) = beta_ev.next(Duration::from_secs(3)).await;
    assert_eq!(ev, WitnessEvent::Granted { op: 2 });
    assert!(at - sent < LEASE / 2, "granted after {:?}", at - sent);
    // Released: no event for alpha's old op, ever.
    alpha_ev.none_within(LEASE * 2).await;

    // Alpha, back on data beta's generation does not descend from, is refused as outdated.
    beta.release(MODULE);
    tokio::time::sleep(Duration::from_millis(100)).await;
    alpha.claim(MODULE, 3, Some(G1), vec![], false, LEASE_MS);
    match alpha_ev.next(Duration::from_secs(3)).await.1 {
        WitnessEvent::Refused { op: 3, reason } => {
            assert!(reason.starts_with("outdated"), "{reason}");
            assert!(reason.contains(&G2.to_string()), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    alpha.shutdown();
    beta.shutdown();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_witness_keeps_the_holder_lease_and_the_recorded_generation() {
    let c = Cluster::new();
    let s1 = c.server();
    let (reply, _) = request_once(&c.pki, "alpha", s1.local_addr(), &claim(1, G2, &[G1])).await;
    assert_granted(&reply, 1);
    s1.shutdown().await;

    // Restart: alpha may renew at once; beta's outdated claim waits for alpha's lease, then is
    // refused as outdated.
    let s2 = c.server();
    let sent = Instant::now();
    let (reply, at) = request_once(&c.pki, "alpha", s2.local_addr(), &claim(1, G2, &[G1])).await;
    assert_granted(&reply, 1);
    assert!(at - sent < LEASE / 2, "the holder waited {:?}", at - sent);
    let sent = Instant::now();
    let (reply, at) = request_once(&c.pki, "beta", s2.local_addr(), &claim(1, G1, &[])).await;
    assert_refused(&reply, 1, "outdated");
    assert!(at - sent >= LEASE / 2, "answered after {:?}", at - sent);
    // Beta on data descending from generation 2 takes over (alpha's lease ran out).
    let (reply, _) = request_once(&c.pki, "beta", s2.local_addr(), &claim(2, G3, &[G2, G1])).await;
    assert_granted(&reply, 2);
    s2.shutdown().await;

    // Restart: beta's lease is honoured from the restart; then alpha is outdated.
    let before = Instant::now();
    let s3 = c.server();
    let (reply, at) = request_once(&c.pki, "alpha", s3.local_addr(), &claim(3, G2, &[G1])).await;
    assert_refused(&reply, 3, "outdated");
    assert!(
        at >= before + LEASE,
        "alpha was answered {:?} after the restart, within beta's lease",
        at - before
    );
    s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_state_file_keeps_the_witness_from_starting() {
    let c = Cluster::new();
    let s1 = c.server();
    let (reply, _) = request_once(&c.pki, "alpha", s1.local_addr(), &claim(1, G2, &[G1])).await;
    assert_granted(&reply, 1);
    s1.shutdown().await;
    let file = c.state.join("shop.state");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&G2.to_string()), "{text}");
    std::fs::write(&file, &text[..text.len() / 2]).unwrap();
    let err = match Server::start(c.config()) {
        Ok(_) => panic!("started on a corrupt state file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_certificates_and_unknown_nodes_are_refused() {
    let c = Cluster::new();
    let server = c.server();
    let addr = server.local_addr();

    // A certificate from another CA: no connection at all.
    let other = tempfile::tempdir().unwrap();
    generate_cluster(other.path(), "other", &["alpha"], false).unwrap();
    let foreign = NodeIdentity::load(other.path(), "alpha").unwrap();
    let ep = mirrorkit_net::endpoint(
        &foreign,
        "127.0.0.1:0".parse().unwrap(),
        &TransportParams::default(),
    )
    .unwrap();
    assert!(mirrorkit_net::connect(&ep, addr, "witness").await.is_err());
    let (foreign_client, mut foreign_ev) = client_with(foreign, addr);
    foreign_client.claim(MODULE, 1, Some(G1), vec![], false, 200);
    assert_eq!(
        foreign_ev.next(Duration::from_secs(4)).await.1,
        WitnessEvent::Unreachable { op: 1 }
    );

    // A certificate of the cluster CA, but not a configured node.
    let (gamma, mut gamma_ev) = c.client("gamma", addr);
    gamma.claim(MODULE, 1, Some(G1), vec![], false, LEASE_MS);
    match gamma_ev.next(Duration::from_secs(3)).await.1 {
        WitnessEvent::Refused { op: 1, reason } => {
            assert!(reason.contains("gamma is not one of the nodes"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // The witness still serves its nodes.
    let (reply, _) = request_once(&c.pki, "alpha", addr, &claim(1, G1, &[])).await;
    assert_granted(&reply, 1);
    foreign_client.shutdown();
    gamma.shutdown();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_is_answered_with_an_error_and_the_witness_keeps_serving() {
    let c = Cluster::new();
    let server = c.server();
    let addr = server.local_addr();
    let conn = raw_conn(&c.pki, "alpha", addr).await;

    // A stream left incomplete does not block the others.
    let (mut stuck, _stuck_recv) = conn.open_bi().await.unwrap();
    stuck.write_all(&[0, 0]).await.unwrap();

    let valid = encode_request(&claim(1, G1, &[])).unwrap();
    let mut wrong_version = valid.clone();
    wrong_version[8] = 99;
    let mut wrong_magic = valid.clone();
    wrong_magic[4..8].copy_from_slice(b"HTTP");
    let mut truncated = valid.clone();
    truncated.truncate(valid.len() - 3);
    let mut random = vec![0u8; 300];
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for b in random.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut plausible = (296u32).to_be_bytes().to_vec();
    plausible.extend_from_slice(&MAGIC);
    plausible.push(1);
    plausible.extend_from_slice(&random[..291]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("zero length", vec![0, 0, 0, 0]),
        ("huge length", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        ("oversized", vec![7u8; MAX_FRAME_BYTES + 100]),
        ("wrong version", wrong_version),
        ("wrong magic", wrong_magic),
        ("truncated", truncated),
        ("random", random),
        ("random body", plausible),
    ];
    for (what, bytes) in cases {
        match raw_exchange(&conn, &bytes).await {
            Ok(answer) => match decode_reply(&answer) {
                Ok(Reply::Error { reason }) => {
                    if what == "wrong version" {
                        assert!(reason.contains("version 99"), "{what}: {reason}");
                    }
                }
                other => panic!("{what}: unexpected answer {other:?}"),
            },
            // The stream was reset: acceptable, as long as the witness goes on.
            Err(e) => eprintln!("{what}: stream ended: {e}"),
        }
    }
    // The same connection, and others, are still served.
    assert_granted(&request(&conn, &claim(1, G1, &[])).await, 1);
    let (reply, _) = request_once(&c.pki, "alpha", addr, &claim(2, G1, &[])).await;
    assert_granted(&reply, 2);
    conn.close(0u32.into(), b"done");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_witness_is_reported_within_the_claim_timeout() {
    init_tracing();
    let c = Cluster::new();
    // Nobody listens there.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let (alpha, mut ev) = c.client("alpha", addr);
    let sent = Instant::now();
    alpha.claim(MODULE, 7, Some(G1), vec![], false, 200);
    let (at, e) = ev.next(Duration::from_secs(4)).await;
    assert_eq!(e, WitnessEvent::Unreachable { op: 7 });
    let took = at - sent;
    assert!(
        took >= Duration::from_millis(2150) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    // A claim out of bounds is refused at once, without asking.
    alpha.claim(MODULE, 8, Some(G1), vec![], false, 10);
    match ev.next(Duration::from_millis(500)).await.1 {
        WitnessEvent::Refused { op: 8, reason } => assert!(reason.contains("lease"), "{reason}"),
        other => panic!("{other:?}"),
    }
    alpha.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_given_up_while_held_is_never_granted() {
    let c = Cluster::new();
    let server = c.server();
    let addr = server.local_addr();
    // Alpha is granted once and does not renew.
    let (reply, granted_at) = request_once(&c.pki, "alpha", addr, &claim(1, G1, &[])).await;
    assert_granted(&reply, 1);
    // Beta's claim is held; beta gives up on it (drops the stream) before alpha's lease ends.
    let conn = raw_conn(&c.pki, "beta", addr).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_request(&claim(1, G1, &[])).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop((send, recv));
    tokio::time::sleep_until(granted_at + LEASE + Duration::from_millis(100)).await;
    // Had beta been granted, alpha would now wait for beta's lease.
    let sent = Instant::now();
    let (reply, at) = request_once(&c.pki, "alpha", addr, &claim(2, G1, &[])).await;
    assert_granted(&reply, 2);
    assert!(at - sent < LEASE / 2, "alpha waited {:?}", at - sent);
    conn.close(0u32.into(), b"done");
    server.shutdown().await;
}
