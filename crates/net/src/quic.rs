//! Mutually authenticated QUIC endpoints between the nodes of one cluster.
//!
//! Every node runs one endpoint that both accepts and dials. Both directions use TLS 1.3 with
//! client certificates: a connection exists only between two holders of certificates from the
//! same cluster CA, and the dialler additionally checks that the peer is the node it meant.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;

use crate::pki::{validate_node_name, NodeIdentity};
use crate::NetError;

/// ALPN protocol of mirrorkit's node-to-node traffic; bump the version on incompatible changes
/// so that mismatched nodes fail the handshake instead of misreading each other.
pub const ALPN: &[u8] = b"mirrorkit/3";

/// Congestion window at connection start. The default (about 14 KB) would make every fresh
/// connection crawl through slow start; nodes talk over a LAN or a dedicated link where a burst
/// of this size is harmless.
pub const INITIAL_CONGESTION_WINDOW_BYTES: u64 = 1024 * 1024;

/// QUIC transport settings shared by both directions of a node's endpoint.
///
/// Every connection wait is bounded by `idle_timeout_ms`: a handshake or a connection that hears
/// nothing from its peer for that long fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportParams {
    /// A connection silent for this long is declared dead. Default 5000 ms.
    pub idle_timeout_ms: u64,
    /// Interval of keep-alive packets on an otherwise idle connection; must be shorter than
    /// `idle_timeout_ms`. Default 1000 ms.
    pub keep_alive_ms: u64,
    /// Bytes a peer may send on one stream ahead of our reads. Default 128 MiB: above the
    /// replication link's in-flight window, so that a submitted operation never waits for credit.
    pub stream_window_bytes: u64,
    /// Bytes a peer may send on all streams together ahead of our reads. Default 128 MiB.
    pub connection_window_bytes: u64,
    /// Bytes we buffer for sending ahead of the peer's acknowledgements. Default 128 MiB.
    pub send_window_bytes: u64,
    /// Round-trip time assumed before the first measurement. QUIC's default (333 ms) spaces
    /// the handshake's retransmissions 1, 2, 4 s apart, and a peer that comes back waits for the
    /// next one; the two nodes of a cluster are close. A longer real round trip only costs a few
    /// early retransmissions. Default 25 ms.
    pub initial_rtt_ms: u64,
}

impl Default for TransportParams {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            idle_timeout_ms: 5000,
            keep_alive_ms: 1000,
            stream_window_bytes: 128 * MIB,
            connection_window_bytes: 128 * MIB,
            send_window_bytes: 128 * MIB,
            initial_rtt_ms: 25,
        }
    }
}

impl TransportParams {
    fn to_transport_config(&self) -> Result<TransportConfig, NetError> {
        let invalid = |reason: String| NetError::InvalidTransportParams { reason };
        if self.idle_timeout_ms == 0 {
            return Err(invalid(
                "idle_timeout_ms is 0; a connection needs a finite idle timeout".to_owned(),
            ));
        }
        if self.keep_alive_ms == 0 || self.keep_alive_ms >= self.idle_timeout_ms {
            return Err(invalid(format!(
                "keep_alive_ms ({}) must be above 0 and below idle_timeout_ms ({}), or idle \
                 connections would time out",
                self.keep_alive_ms, self.idle_timeout_ms
            )));
        }
        let window = |name: &str, value: u64| {
            if value == 0 {
                return Err(invalid(format!("{name} is 0")));
            }
            VarInt::from_u64(value).map_err(|_| invalid(format!("{name} ({value}) is too large")))
        };
        let stream_window = window("stream_window_bytes", self.stream_window_bytes)?;
        let connection_window = window("connection_window_bytes", self.connection_window_bytes)?;
        if self.send_window_bytes == 0 {
            return Err(invalid("send_window_bytes is 0".to_owned()));
        }
        let idle_timeout = IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
            .map_err(|_| {
                invalid(format!(
                    "idle_timeout_ms ({}) is too large",
                    self.idle_timeout_ms
                ))
            })?;

        let mut congestion = quinn::congestion::CubicConfig::default();
        congestion.initial_window(INITIAL_CONGESTION_WINDOW_BYTES);

        let mut config = TransportConfig::default();
        config
            .max_idle_timeout(Some(idle_timeout))
            .keep_alive_interval(Some(Duration::from_millis(self.keep_alive_ms)))
            .stream_receive_window(stream_window)
            .receive_window(connection_window)
            .send_window(self.send_window_bytes)
            .initial_rtt(Duration::from_millis(self.initial_rtt_ms.max(1)))
            .congestion_controller_factory(Arc::new(congestion));
        Ok(config)
    }
}

/// Kernel buffer of the UDP socket in each direction. A burst of a 1 MiB write overflows the
/// default (about 200 KiB), which QUIC then treats as loss and answers by slowing down.
pub const SOCKET_BUFFER_BYTES: usize = 16 << 20;

/// Raise the socket's buffers to `SOCKET_BUFFER_BYTES`: beyond the system maximum when
/// privileged (SO_*BUFFORCE), else as far as `net.core.{r,w}mem_max` allow.
fn grow_socket_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = SOCKET_BUFFER_BYTES as libc::c_int;
    for (force, plain, what) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
    ] {
        let set = |opt| {
            // SAFETY: a valid socket and a c_int option value of the right size.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 && set(plain) != 0 {
            tracing::warn!(
                "cannot raise the UDP {what} buffer to {SOCKET_BUFFER_BYTES} bytes: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Create the node's endpoint, bound to `bind` (IPv4 or IPv6; port 0 picks a free port).
///
/// It accepts connections (see [`accept`]) from clients presenting a certificate signed by the
/// cluster CA; clients without a certificate or with one from another CA are refused during the
/// handshake. It dials (see [`connect`]) presenting this node's certificate and verifying the
/// server against the cluster CA and the expected node name.
///
/// Must be called within a tokio runtime.
pub fn endpoint(
    identity: &NodeIdentity,
    bind: SocketAddr,
    params: &TransportParams,
) -> Result<quinn::Endpoint, NetError> {
    let (server_config, client_config) = endpoint_configs(identity, params)?;
    let endpoint_config = quinn::EndpointConfig::default();
    let socket =
        std::net::UdpSocket::bind(bind).map_err(|source| NetError::Bind { addr: bind, source })?;
    grow_socket_buffers(&socket);
    let runtime = quinn::default_runtime().ok_or_else(|| NetError::Bind {
        addr: bind,
        source: std::io::Error::other("no async runtime: call from within tokio"),
    })?;
    let mut endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
        .map_err(|source| NetError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config);
    Ok(endpoint)
}

/// Like [`endpoint`], for traffic that must not queue behind bulk data on a shared link (the
/// heartbeats): every packet leaves with DSCP CS6 (TOS / traffic class 0xc0, "network control",
/// as VRRP uses) and Linux socket priority 6 (the highest an unprivileged process may set; the
/// band `pfifo_fast` serves first).
///
/// quinn's own socket layer sets the TOS byte of every packet to its ECN bits, which would erase
/// the marks: this endpoint's socket sends plain datagrams instead, without ECN, segmentation
/// offload or path MTU discovery, none of which matter at heartbeat rates. A mark the kernel
/// refuses is logged and the endpoint works unmarked.
///
/// Must be called within a tokio runtime.
pub fn priority_endpoint(
    identity: &NodeIdentity,
    bind: SocketAddr,
    params: &TransportParams,
) -> Result<quinn::Endpoint, NetError> {
    let (server_config, client_config) = endpoint_configs(identity, params)?;
    let bind_err = |source| NetError::Bind { addr: bind, source };
    let socket = std::net::UdpSocket::bind(bind).map_err(bind_err)?;
    mark_priority(&socket);
    socket.set_nonblocking(true).map_err(bind_err)?;
    let runtime = quinn::default_runtime().ok_or_else(|| {
        bind_err(std::io::Error::other(
            "no async runtime: call from within tokio",
        ))
    })?;
    let io = tokio::net::UdpSocket::from_std(socket).map_err(bind_err)?;
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server_config),
        Arc::new(MarkedUdpSocket { io }),
        runtime,
    )
    .map_err(bind_err)?;
    endpoint.set_default_client_config(client_config);
    Ok(endpoint)
}

/// DSCP CS6 in the IPv4 TOS / IPv6 traffic class byte, ECN bits clear.
const PRIORITY_TOS: libc::c_int = 0xc0;

/// Linux socket priority (`SO_PRIORITY`) of [`priority_endpoint`]'s packets.
const PRIORITY_SO_PRIORITY: libc::c_int = 6;

fn mark_priority(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let (level, tos_opt) = match socket.local_addr() {
        Ok(SocketAddr::V6(_)) => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
        _ => (libc::IPPROTO_IP, libc::IP_TOS),
    };
    // TOS first: on Linux, setting IP_TOS also resets the socket priority.
    for (level, opt, value, what) in [
        (level, tos_opt, PRIORITY_TOS, "traffic class"),
        (
            libc::SOL_SOCKET,
            libc::SO_PRIORITY,
            PRIORITY_SO_PRIORITY,
            "priority",
        ),
    ] {
        // SAFETY: a valid socket and a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::warn!(
                "cannot set the UDP socket {what} to {value:#x}: {}; its packets go unmarked",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// A UDP socket that sends each datagram with a plain `sendto`, so that the socket's TOS and
/// priority apply to every packet (see [`priority_endpoint`]).
#[derive(Debug)]
struct MarkedUdpSocket {
    io: tokio::net::UdpSocket,
}

impl quinn::AsyncUdpSocket for MarkedUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(WritablePoller {
            socket: self,
            writable: None,
        })
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        let segment_size = transmit.segment_size.unwrap_or(transmit.contents.len());
        for datagram in transmit.contents.chunks(segment_size.max(1)) {
            match self.io.try_send_to(datagram, transmit.destination) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(e),
                // As quinn's own socket layer does: an unreachable network is a lost packet for
                // QUIC to recover from, not the end of every connection on the endpoint.
                Err(e) => tracing::debug!(
                    destination = %transmit.destination,
                    "UDP send failed, packet dropped: {e}"
                ),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let (Some(buf), Some(meta)) = (bufs.first_mut(), meta.first_mut()) else {
            return std::task::Poll::Ready(Ok(0));
        };
        let mut read = tokio::io::ReadBuf::new(buf);
        let addr = std::task::ready!(self.io.poll_recv_from(cx, &mut read))?;
        let len = read.filled().len();
        *meta = quinn::udp::RecvMeta {
            addr,
            len,
            stride: len,
            ecn: None,
            dst_ip: None,
        };
        std::task::Poll::Ready(Ok(1))
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

/// Wakes a connection when the socket becomes writable again. Each connection has its own
/// poller, hence one `writable()` future per poller rather than the socket's single waker slot.
struct WritablePoller {
    socket: Arc<MarkedUdpSocket>,
    writable: Option<
        std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + Sync>>,
    >,
}

impl std::fmt::Debug for WritablePoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritablePoller").finish_non_exhaustive()
    }
}

impl quinn::UdpPoller for WritablePoller {
    fn poll_writable(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let writable = this.writable.get_or_insert_with(|| {
            let socket = Arc::clone(&this.socket);
            Box::pin(async move { socket.io.writable().await })
        });
        let result = writable.as_mut().poll(cx);
        if result.is_ready() {
            this.writable = None;
        }
        result
    }
}

/// The server and client configurations of an endpoint of `identity`.
fn endpoint_configs(
    identity: &NodeIdentity,
    params: &TransportParams,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), NetError> {
    let transport = Arc::new(params.to_transport_config()?);
    let tls_err = |reason: String| NetError::TlsConfig {
        node: identity.node_name().to_owned(),
        reason,
    };
    // Explicit provider: no dependence on a process-wide default that another crate may or may not
    // have installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        identity.roots(),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| tls_err(format!("client certificate verifier: {e}")))?;
    let mut server_tls = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(format!("TLS 1.3 server: {e}")))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.cert_chain().to_vec(), identity.key())
        .map_err(|e| tls_err(format!("server certificate: {e}")))?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    // No session resumption in either direction: every connection proves both certificates
    // afresh, and the peer's certificate is always available to `peer_node_name`. A full handshake
    // costs next to nothing at the rate two nodes reconnect.
    server_tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server_tls.send_tls13_tickets = 0;
    let server_crypto =
        QuicServerConfig::try_from(server_tls).map_err(|e| tls_err(format!("QUIC server: {e}")))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_config.transport_config(Arc::clone(&transport));

    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(format!("TLS 1.3 client: {e}")))?
        .with_root_certificates(identity.roots())
        .with_client_auth_cert(identity.cert_chain().to_vec(), identity.key())
        .map_err(|e| tls_err(format!("client certificate: {e}")))?;
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    client_tls.resumption = rustls::client::Resumption::disabled();
    let client_crypto =
        QuicClientConfig::try_from(client_tls).map_err(|e| tls_err(format!("QUIC client: {e}")))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
    client_config.transport_config(transport);
    Ok((server_config, client_config))
}

/// Interval at which [`connect`] checks whether the server has confirmed the handshake.
pub const CONFIRM_POLL_INTERVAL_MS: u64 = 1;

/// Longest [`connect`] waits for the server to confirm a completed handshake. A compliant server
/// confirms within a round trip; the bound only guards against one that never does.
pub const CONFIRM_TIMEOUT_MS: u64 = 10_000;

/// Connect to the peer node at `addr`, expecting its certificate to name `peer_node`.
///
/// Returns once the server has accepted this node's certificate too, so that an `Ok` means a
/// mutually authenticated connection. The handshake is bounded by the endpoint's idle timeout,
/// the server's confirmation by [`CONFIRM_TIMEOUT_MS`].
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    peer_node: &str,
) -> Result<quinn::Connection, NetError> {
    validate_node_name(peer_node)?;
    let connecting = endpoint
        .connect(addr, peer_node)
        .map_err(|source| NetError::Connect {
            node: peer_node.to_owned(),
            addr,
            source,
        })?;
    let handshake_err = |source| NetError::Handshake {
        node: peer_node.to_owned(),
        addr,
        source,
    };
    let conn = connecting.await.map_err(handshake_err)?;
    server_confirmed(&conn).await.map_err(handshake_err)?;
    Ok(conn)
}

/// Wait until the server confirms the handshake, or the connection closes.
///
/// In TLS 1.3 the client completes its handshake before the server has checked the client's
/// certificate: a client the server refuses would otherwise get a connection that dies a moment
/// later. The server sends HANDSHAKE_DONE only after accepting the client's certificate; quinn
/// signals its arrival only through the frame statistics, hence the polling.
async fn server_confirmed(conn: &quinn::Connection) -> Result<(), quinn::ConnectionError> {
    let wait = async {
        loop {
            if let Some(reason) = conn.close_reason() {
                return Err(reason);
            }
            if conn.stats().frame_rx.handshake_done > 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(CONFIRM_POLL_INTERVAL_MS)).await;
        }
    };
    match tokio::time::timeout(Duration::from_millis(CONFIRM_TIMEOUT_MS), wait).await {
        Ok(result) => result,
        Err(_elapsed) => {
            conn.close(0u32.into(), b"handshake not confirmed");
            Err(quinn::ConnectionError::TimedOut)
        }
    }
}

/// Accept the next authenticated connection.
///
/// A handshake that fails (unknown CA, no client certificate, wrong ALPN...) is logged with
/// `tracing::warn!`, naming the remote address and the reason, and skipped. Handshakes are
/// completed one at a time, each bounded by the idle timeout. Returns `None` once the endpoint is
/// closed.
pub async fn accept(endpoint: &quinn::Endpoint) -> Option<quinn::Connection> {
    loop {
        let incoming = endpoint.accept().await?;
        let remote = incoming.remote_address();
        let result = match incoming.accept() {
            Ok(connecting) => connecting.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(conn) => return Some(conn),
            Err(e) => tracing::warn!(
                remote = %remote,
                reason = %e,
                "refused incoming connection: handshake failed"
            ),
        }
    }
}

/// The node name in the peer's verified certificate (its DNS SAN), or `None` if the connection
/// carries no peer certificate or none naming a valid node.
pub fn peer_node_name(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    cert_node_name(&chain)
}

/// The node name in a certificate chain that TLS already verified (its end entity's DNS SAN),
/// or `None` if it names no valid node.
pub fn cert_node_name(chain: &[CertificateDer<'static>]) -> Option<String> {
    let end_entity = webpki::EndEntityCert::try_from(chain.first()?).ok()?;
    let name = end_entity
        .valid_dns_names()
        .find(|name| validate_node_name(name).is_ok())?;
    Some(name.to_owned())
}
