//! Two-node connections over loopback: who gets in, who is refused, and what each side learns
//! about the other.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{addr, cluster, node, LOOPBACK_V4, LOOPBACK_V6};
use mirrorkit_net::{accept, connect, peer_node_name, NetError, ALPN};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// Accept connections on `server` until it closes, handing each one to the returned receiver.
fn accept_loop(
    server: &quinn::Endpoint,
) -> (mpsc::UnboundedReceiver<quinn::Connection>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = server.clone();
    let task = tokio::spawn(async move {
        while let Some(conn) = accept(&server).await {
            if tx.send(conn).is_err() {
                break;
            }
        }
    });
    (rx, task)
}

async fn next_accepted(rx: &mut mpsc::UnboundedReceiver<quinn::Connection>) -> quinn::Connection {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("accept timed out")
        .expect("accept loop ended")
}

/// Client sends `ping`, server answers `pong`; both streams finished.
async fn ping_pong(client: &quinn::Connection, server: &quinn::Connection) {
    let (mut send, mut recv) = client.open_bi().await.expect("open_bi");
    send.write_all(b"ping").await.expect("client write");
    send.finish().expect("client finish");

    let (mut s_send, mut s_recv) = tokio::time::timeout(WAIT, server.accept_bi())
        .await
        .expect("accept_bi timed out")
        .expect("accept_bi");
    let got = s_recv.read_to_end(64).await.expect("server read");
    assert_eq!(got, b"ping");
    s_send.write_all(b"pong").await.expect("server write");
    s_send.finish().expect("server finish");

    let got = tokio::time::timeout(WAIT, recv.read_to_end(64))
        .await
        .expect("client read timed out")
        .expect("client read");
    assert_eq!(got, b"pong");
}

async fn two_nodes_exchange_bytes(bind: &str) {
    let pki = cluster("test", &["alpha", "beta"]);
    let alpha = node(pki.path(), "alpha", bind);
    let beta = node(pki.path(), "beta", bind);
    let (mut accepted, acceptor) = accept_loop(&beta);

    let client = connect(&alpha, addr(&beta), "beta")
        .await
        .expect("alpha connects to beta");
    let server = next_accepted(&mut accepted).await;

    assert_eq!(peer_node_name(&client).as_deref(), Some("beta"));
    assert_eq!(peer_node_name(&server).as_deref(), Some("alpha"));
    assert_eq!(
        client.handshake_data().and_then(|d| d
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .ok()
            .and_then(|d| d.protocol)),
        Some(ALPN.to_vec())
    );
    ping_pong(&client, &server).await;

    client.close(0u32.into(), b"done");
    beta.close(0u32.into(), b"done");
    tokio::time::timeout(WAIT, acceptor)
        .await
        .expect("accept loop ends once the endpoint is closed")
        .expect("accept task");
}

#[tokio::test]
async fn same_cluster_nodes_exchange_bytes_over_ipv4() {
    two_nodes_exchange_bytes(LOOPBACK_V4).await;
}

#[tokio::test]
async fn same_cluster_nodes_exchange_bytes_over_ipv6() {
    if std::net::UdpSocket::bind(LOOPBACK_V6).is_err() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    two_nodes_exchange_bytes(LOOPBACK_V6).await;
}

/// Log lines written while the guard lives, on this thread (tests here run a current-thread
/// runtime, so the accept loop's task logs here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
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

/// A bare QUIC client that trusts the CA in `trusted_ca_dir` and presents no certificate, which
/// `mirrorkit_net::endpoint` cannot build.
fn client_without_certificate(trusted_ca_dir: &Path) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trusted_ca_dir.join("ca.pem")).expect("ca.pem") {
        roots.add(cert.expect("ca cert")).expect("add root");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic client");
    let mut endpoint =
        quinn::Endpoint::client(LOOPBACK_V4.parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// A PKI directory for `node` of the `foreign` cluster whose ca.pem trusts both the foreign CA
/// and `trusted`'s: the node accepts servers of both clusters, so only the server's check of the
/// client certificate can refuse it.
fn bundle_trusting_both(foreign: &Path, trusted: &Path, node: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bundle = std::fs::read(foreign.join("ca.pem")).expect("foreign ca");
    bundle.extend(std::fs::read(trusted.join("ca.pem")).expect("trusted ca"));
    std::fs::write(dir.path().join("ca.pem"), bundle).expect("write bundle");
    for ext in ["pem", "key"] {
        let file = format!("{node}.{ext}");
        std::fs::copy(foreign.join(&file), dir.path().join(&file)).expect("copy credentials");
    }
    dir
}

/// The server must refuse this client. In TLS 1.3 a client finishes its side of the handshake
/// before the server has checked the client's certificate, so the refusal may come either as a
/// failed handshake or as the server closing the connection right after it.
async fn assert_refused(client: &quinn::Endpoint, server: SocketAddr, server_name: &str) {
    let connecting = client.connect(server, server_name).expect("connect");
    let conn = match tokio::time::timeout(WAIT, connecting)
        .await
        .expect("handshake timed out")
    {
        Err(_) => return,
        Ok(conn) => conn,
    };
    let reason = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("server should close a connection with a refused client certificate");
    assert!(
        matches!(
            reason,
            quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::ConnectionClosed(_)
        ),
        "unexpected close reason: {reason}"
    );
}

#[tokio::test]
async fn foreign_certificates_are_refused_and_accept_goes_on() {
    let logs = Logs::default();
    let _guard = logs.capture();

    let ours = cluster("ours", &["alpha", "beta"]);
    let theirs = cluster("theirs", &["alpha", "mallory"]);
    let server = node(ours.path(), "alpha", LOOPBACK_V4);
    let server_addr = addr(&server);
    let (mut accepted, acceptor) = accept_loop(&server);

    // A node of another cluster: neither side trusts the other's CA.
    let intruder = node(theirs.path(), "mallory", LOOPBACK_V4);
    let err = connect(&intruder, server_addr, "alpha")
        .await
        .expect_err("a node of another cluster must not connect");
    assert!(matches!(err, NetError::Handshake { .. }), "{err}");

    // Same node name, other cluster: the name alone must not be enough.
    let namesake = node(theirs.path(), "alpha", LOOPBACK_V4);
    let err = connect(&namesake, server_addr, "alpha")
        .await
        .expect_err("a namesake from another cluster must not connect");
    assert!(matches!(err, NetError::Handshake { .. }), "{err}");

    // A node that trusts our CA but presents another CA's certificate: only the server's
    // client-certificate check stands in its way, and connect() must report it.
    let bundle = bundle_trusting_both(theirs.path(), ours.path(), "mallory");
    let impostor = node(bundle.path(), "mallory", LOOPBACK_V4);
    let err = connect(&impostor, server_addr, "alpha")
        .await
        .expect_err("a certificate from another CA must be refused by the server");
    assert!(matches!(err, NetError::Handshake { .. }), "{err}");

    // A client without any certificate.
    let anonymous = client_without_certificate(ours.path());
    assert_refused(&anonymous, server_addr, "alpha").await;

    // The accept loop is still running and lets a cluster member in.
    let beta = node(ours.path(), "beta", LOOPBACK_V4);
    let client = connect(&beta, server_addr, "alpha")
        .await
        .expect("beta connects after the refusals");
    let conn = next_accepted(&mut accepted).await;
    assert_eq!(peer_node_name(&conn).as_deref(), Some("beta"));
    ping_pong(&client, &conn).await;
    assert!(
        accepted.try_recv().is_err(),
        "only the cluster member may have been accepted"
    );

    let text = logs.text();
    for refused in [&intruder, &namesake, &impostor, &anonymous] {
        let refused_addr = addr(refused).to_string();
        assert!(
            text.lines()
                .any(|l| l.contains("refused incoming connection") && l.contains(&refused_addr)),
            "no refusal logged for {refused_addr}:\n{text}"
        );
    }

    server.close(0u32.into(), b"done");
    tokio::time::timeout(WAIT, acceptor)
        .await
        .expect("accept loop ends")
        .expect("accept task");
}

#[tokio::test]
async fn wrong_expected_peer_name_fails() {
    let pki = cluster("test", &["alpha", "beta", "gamma"]);
    let alpha = node(pki.path(), "alpha", LOOPBACK_V4);
    let beta = node(pki.path(), "beta", LOOPBACK_V4);
    let (mut accepted, _acceptor) = accept_loop(&beta);

    let err = connect(&alpha, addr(&beta), "gamma")
        .await
        .expect_err("beta's certificate does not name gamma");
    match &err {
        NetError::Handshake { node, addr: a, .. } => {
            assert_eq!(node, "gamma");
            assert_eq!(*a, addr(&beta));
        }
        other => panic!("expected a handshake error, got {other}"),
    }
    assert!(err.to_string().contains("gamma"), "{err}");

    let err = connect(&alpha, addr(&beta), "Not A Node")
        .await
        .expect_err("invalid names are refused before dialling");
    assert!(matches!(err, NetError::InvalidNodeName { .. }), "{err}");

    let client = connect(&alpha, addr(&beta), "beta")
        .await
        .expect("right name connects");
    let conn = next_accepted(&mut accepted).await;
    assert_eq!(peer_node_name(&conn).as_deref(), Some("alpha"));
    ping_pong(&client, &conn).await;
}
