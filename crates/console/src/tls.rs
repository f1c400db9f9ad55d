//! HTTPS with the cluster's certificates (rustls, no OpenSSL): the console's server side, which
//! asks for a client certificate but does not require one (browsers have none; the peer node
//! presents its own), and a minimal client for the node-to-node channel and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use mirrorkit_net::pki::NodeIdentity;
use rustls::pki_types::ServerName;

/// Longest TLS handshake of an incoming connection.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Longest a client connection (TCP and TLS) may take to open.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Largest response body the client reads.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// The console's TLS server configuration: the node's certificate; a client certificate is
/// requested and, when given, must chain to the cluster CA (only the peer node has one).
pub fn server_config(identity: &NodeIdentity) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        identity.roots(),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| format!("client certificate verifier: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain().to_vec(), identity.key())
        .map_err(|e| format!("the node's certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS client configuration trusting the cluster CA, presenting `identity`'s certificate when
/// given (the node-to-node channel), none otherwise (a browser, in tests).
pub fn client_config(
    identity: &NodeIdentity,
    present_certificate: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(identity.roots());
    let mut cfg = if present_certificate {
        builder
            .with_client_auth_cert(identity.cert_chain().to_vec(), identity.key())
            .map_err(|e| format!("the node's certificate: {e}"))?
    } else {
        builder.with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An HTTP response as read by [`request`].
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP request for [`request`].
#[derive(Clone, Debug, Default)]
pub struct Req {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req {
            method: "GET".into(),
            path: path.into(),
            ..Req::default()
        }
    }

    pub fn post(path: &str, body: impl Into<Bytes>) -> Req {
        Req {
            method: "POST".into(),
            path: path.into(),
            body: body.into(),
            ..Req::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Why [`send`] got no HTTP answer, told apart by whether the request can have been handled.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No connection was made (TCP refused or timed out, the TLS handshake failed), or the
    /// server refused the connection with a TLS alert before answering (it did not accept our
    /// certificate): the request was not handled.
    #[error("{0}")]
    NotConnected(String),
    /// The request was sent but no complete answer came (timeout, connection lost): it may
    /// have been handled.
    #[error("{0}")]
    NoAnswer(String),
}

impl RequestError {
    /// True when the request was certainly not handled.
    pub fn not_delivered(&self) -> bool {
        matches!(self, RequestError::NotConnected(_))
    }
}

/// The TLS alert the other side sent, if `e` (or one of its causes) is one.
fn received_alert(e: &(dyn std::error::Error + 'static)) -> Option<rustls::AlertDescription> {
    let mut cause = Some(e);
    while let Some(err) = cause {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            return Some(*alert);
        }
        cause = err.source();
    }
    None
}

/// One HTTPS request to `addr`, whose certificate must name `server_name`, bounded by
/// `timeout` (connecting within [`CONNECT_TIMEOUT_MS`]).
pub async fn request(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    r: &Req,
    timeout: Duration,
) -> Result<Response, String> {
    send(tls, addr, server_name, r, timeout)
        .await
        .map_err(|e| e.to_string())
}

/// As [`request`], saying whether a failed request can have been handled.
pub async fn send(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    r: &Req,
    timeout: Duration,
) -> Result<Response, RequestError> {
    use RequestError::{NoAnswer, NotConnected};
    let (method, path) = (r.method.as_str(), r.path.as_str());
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| NotConnected(format!("{server_name:?} is not a TLS server name: {e}")))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| NotConnected(format!("cannot connect to {addr}: {e}")))?;
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| NotConnected(format!("TLS with {server_name} at {addr} failed: {e}")))
    };
    let stream = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect)
        .await
        .map_err(|_| {
            NotConnected(format!(
                "no connection to {addr} within {CONNECT_TIMEOUT_MS} ms"
            ))
        })??;
    let exchange = async {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| NotConnected(format!("HTTP with {addr}: {e}")))?;
        // The connection's own error (a TLS alert from the server comes here, not with the
        // request's), for the request's error below.
        let (conn_error_tx, conn_error_rx) = tokio::sync::oneshot::channel();
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("HTTP connection ended: {e}");
                let _ = conn_error_tx.send(received_alert(&e));
            }
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string());
        for (k, v) in &r.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(r.body.clone()))
            .map_err(|e| NotConnected(format!("cannot build the request: {e}")))?;
        let resp = match send.send_request(req).await {
            Ok(resp) => resp,
            Err(e) => {
                let alert = match received_alert(&e) {
                    Some(a) => Some(a),
                    None => conn_error_rx.await.ok().flatten(),
                };
                return Err(match alert {
                    Some(alert) => NotConnected(format!(
                        "{server_name} at {addr} refused the connection: TLS alert {alert:?} (does it accept this certificate?)"
                    )),
                    None => NoAnswer(format!("{method} {path} at {addr}: {e}")),
                });
            }
        };
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| NoAnswer(format!("reading the answer of {addr}: {e}")))?
            .to_bytes();
        driver.abort();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        NoAnswer(format!(
            "{method} {path} at {addr}: no answer within {timeout:?}"
        ))
    })?
}
