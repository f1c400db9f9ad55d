//! The HTTPS server: routes, the authentication gate every request passes, the handlers, and
//! the TLS accept loop.
//!
//! Routes (see `docs/api.openapi.yaml`):
//! - public: `GET /login`, `POST /login`, `GET /assets/*` (no data);
//! - node-to-node, only with the peer node's verified certificate: `POST /api/v1/node/request`;
//! - everything else needs a session cookie or `Authorization: Bearer <token>`; a
//!   state-changing request with a session also needs the session's `X-CSRF-Token` and a
//!   same-origin `Origin`/`Sec-Fetch-Site`;
//! - the API (`/api/...`, `/metrics`) also answers a client presenting a cluster node's
//!   certificate (either node's: the CLI of a node, see `client`), without CSRF token.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mirrorkit_cluster::machine::Verb;
use mirrorkit_net::pki::NodeIdentity;
use mirrorkit_node::api::{Reply, Request as DaemonRequest};
use mirrorkit_node::config::ClusterFile;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::auth::{self, LoginLimiter, Sessions, TokenStore};
use crate::backend::{self, Backend, ClusterView};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "mirrorkit_session";
/// The header carrying the session's CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The header in which the CLI names the user who ran it (recorded with the verb); read only
/// from a client with a node certificate.
pub const OPERATOR_HEADER: &str = "x-mirrorkit-operator";
/// Longest operator name kept from [`OPERATOR_HEADER`]; longer ones are cut.
pub const OPERATOR_MAX_CHARS: usize = 100;
/// How often the event stream polls the daemons while someone listens.
pub const POLL_INTERVAL_MS: u64 = 500;
/// The event stream resends the view this often even when nothing changed (ages move on).
pub const RESEND_INTERVAL_MS: u64 = 10_000;
/// Interval of the event stream's keep-alive comment.
pub const SSE_KEEPALIVE_SECS: u64 = 15;
/// Most connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest wait for the request head of an HTTP/1 connection.
pub const HEADER_READ_TIMEOUT_SECS: u64 = 30;
/// Default and largest number of event-log lines one request returns.
pub const LOG_LINES_DEFAULT: usize = 50;
pub const LOG_LINES_MAX: usize = 1000;

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// The content security policy of every response: nothing but this origin, no inline script,
/// no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Why the console cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the console is not started: no admin password is set (admin_password_hash in [console] of the cluster file); set one with `mirrorkit console set-password --config FILE` on both nodes (there is no default password)")]
    NoPassword,
    #[error(
        "the console is not started: cannot load node {node}'s certificate from {dir}: {reason}"
    )]
    Identity {
        node: String,
        dir: PathBuf,
        reason: String,
    },
    #[error("the console is not started: TLS configuration: {0}")]
    Tls(String),
    #[error("the console is not started: no replication address for node {0} in the cluster file (the peer's console is reached at that address)")]
    NoPeerAddress(String),
    #[error("the console is not started: cannot listen on {addr}: {source} ([console] listen in the cluster file; is another process using the port?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What a console needs.
pub struct Settings {
    pub cluster: String,
    pub node: String,
    pub peer: String,
    /// Where this console listens.
    pub listen: SocketAddr,
    /// Where the peer's console listens (its replication address, this console's port).
    pub peer_console: SocketAddr,
    /// This node's daemon control socket.
    pub socket: PathBuf,
    pub admin_password_hash: String,
    /// The cluster file to read the admin password hash from at each login, so that
    /// `mirrorkit console set-password` takes effect without a restart; `None`: the hash above.
    pub cluster_file: Option<PathBuf>,
    pub tokens: TokenStore,
    pub identity: NodeIdentity,
}

impl Settings {
    /// The settings of the console of the node whose cluster file is `cf`.
    pub fn from_cluster_file(cf: &ClusterFile) -> Result<Settings, ConsoleError> {
        let console = cf.console();
        let admin_password_hash = console
            .admin_password_hash
            .clone()
            .ok_or(ConsoleError::NoPassword)?;
        let identity =
            NodeIdentity::load(&cf.certs, &cf.node).map_err(|e| ConsoleError::Identity {
                node: cf.node.clone(),
                dir: cf.certs.clone(),
                reason: e.to_string(),
            })?;
        let peer = cf.peer().to_owned();
        let peer_ip = cf
            .replication(&peer)
            .ok_or_else(|| ConsoleError::NoPeerAddress(peer.clone()))?
            .ip();
        Ok(Settings {
            cluster: cf.cluster.clone(),
            node: cf.node.clone(),
            peer,
            listen: console.listen,
            peer_console: SocketAddr::new(peer_ip, console.listen.port()),
            socket: cf.socket(),
            admin_password_hash,
            cluster_file: None,
            tokens: TokenStore::in_state_dir(&cf.state),
            identity,
        })
    }
}

/// The connection a request came on: set by the accept loop on every request.
#[derive(Clone, Debug)]
pub struct Conn {
    pub remote: SocketAddr,
    /// The node named by the client's certificate, verified against the cluster CA during the
    /// handshake; `None` without a client certificate (browsers, scripts).
    pub peer_node: Option<String>,
}

/// Who is asking, once authenticated.
#[derive(Clone, Debug)]
enum Principal {
    Session {
        id: String,
        user: String,
        csrf: String,
    },
    Token {
        name: String,
    },
    /// A client presenting a node certificate of this cluster: the CLI of that node (run as
    /// root there, which can read the node's key), with the user it names.
    Node {
        node: String,
        operator: Option<String>,
    },
}

impl Principal {
    /// Who asked, as the module's event log records it.
    fn who(&self, ip: IpAddr) -> String {
        match self {
            Principal::Session { user, .. } => format!("console user {user} from {ip}"),
            Principal::Token { name } => format!("api token {name} from {ip}"),
            Principal::Node {
                node,
                operator: Some(op),
            } => format!("cli on {node}, user {op}"),
            Principal::Node {
                node,
                operator: None,
            } => format!("cli on {node}"),
        }
    }
}

struct App {
    backend: Backend,
    admin_password_hash: String,
    cluster_file: Option<PathBuf>,
    tokens: TokenStore,
    sessions: Mutex<Sessions>,
    limiter: Mutex<LoginLimiter>,
    /// The latest view, for the event streams (polled only while one listens).
    views: watch::Sender<Option<Arc<ClusterView>>>,
}

impl App {
    /// The admin password hash in force: the cluster file's as it is now, else the one the
    /// console started with.
    fn password_hash(&self) -> String {
        let Some(path) = &self.cluster_file else {
            return self.admin_password_hash.clone();
        };
        match ClusterFile::load(path).map(|cf| cf.console().admin_password_hash) {
            Ok(Some(h)) => h,
            Ok(None) => {
                warn!(file = %path.display(), "console: the cluster file has no admin_password_hash any more; the one the console started with stays in force");
                self.admin_password_hash.clone()
            }
            Err(e) => {
                warn!("console: {e}; the admin password the console started with stays in force");
                self.admin_password_hash.clone()
            }
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, LoginLimiter> {
        self.limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A node's console: build with [`Console::new`], run with [`Console::serve`].
pub struct Console {
    app: Arc<App>,
    tls: Arc<rustls::ServerConfig>,
    listen: SocketAddr,
}

/// How often a console that could not start tries again (a password set meanwhile with
/// `mirrorkit console set-password`, a port freed).
pub const START_RETRY_MS: u64 = 5_000;

/// Start the console of the node whose cluster file is `cf` (read from `path`), in the current
/// tokio runtime: returns the address it listens on once listening. Errors say why it did not
/// start.
pub async fn start(
    cf: &ClusterFile,
    path: Option<&std::path::Path>,
) -> Result<SocketAddr, ConsoleError> {
    let mut settings = Settings::from_cluster_file(cf)?;
    settings.cluster_file = path.map(|p| p.to_owned());
    let console = Console::new(settings)?;
    let listener = console.bind().await?;
    let addr = listener.local_addr().map_err(|source| ConsoleError::Bind {
        addr: console.listen,
        source,
    })?;
    tokio::spawn(console.serve(listener));
    Ok(addr)
}

/// Run the console of the node whose cluster file is at `path`, as the daemon does: until it
/// can start (a password is set, the port is free...), say why in the log (once per distinct
/// reason) and try again every [`START_RETRY_MS`]. Never returns an error: the daemon runs
/// on without its console.
pub async fn run(path: PathBuf) {
    let mut last_error = String::new();
    loop {
        let result = match ClusterFile::load(&path) {
            Ok(cf) => start(&cf, Some(&path)).await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the console is not started: {e}")),
        };
        match result {
            Ok(addr) => {
                info!("console: https://{addr}/ (user admin)");
                return;
            }
            Err(e) => {
                if e != last_error {
                    error!("{e}; retrying every {} s", START_RETRY_MS / 1000);
                    last_error = e;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(START_RETRY_MS)).await;
    }
}

impl Console {
    pub fn new(s: Settings) -> Result<Console, ConsoleError> {
        let tls = crate::tls::server_config(&s.identity).map_err(ConsoleError::Tls)?;
        let peer_tls = crate::tls::client_config(&s.identity, true).map_err(ConsoleError::Tls)?;
        let backend = Backend::new(
            &s.cluster,
            &s.node,
            &s.peer,
            s.socket.clone(),
            s.peer_console,
            peer_tls,
        );
        let (views, _) = watch::channel(None);
        Ok(Console {
            app: Arc::new(App {
                backend,
                admin_password_hash: s.admin_password_hash,
                cluster_file: s.cluster_file,
                tokens: s.tokens,
                sessions: Mutex::new(Sessions::default()),
                limiter: Mutex::new(LoginLimiter::default()),
                views,
            }),
            tls,
            listen: s.listen,
        })
    }

    /// Listen on the configured address.
    pub async fn bind(&self) -> Result<tokio::net::TcpListener, ConsoleError> {
        tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|source| ConsoleError::Bind {
                addr: self.listen,
                source,
            })
    }

    /// The routes, behind the authentication gate and the security headers. Every request
    /// must carry a [`Conn`] extension (the accept loop sets it).
    pub fn router(&self) -> Router {
        let app = self.app.clone();
        Router::new()
            .route("/", get(index))
            .route("/login", get(login_page).post(login))
            .route("/logout", post(logout))
            .route("/assets/console.js", get(console_js))
            .route("/assets/console.css", get(console_css))
            .route("/api/v1/session", get(session_info))
            .route("/api/v1/status", get(status))
            .route("/api/v1/modules/{module}/log", get(module_log))
            .route("/api/v1/modules/{module}/{verb}", post(module_verb))
            .route("/api/v1/events", get(events))
            .route("/metrics", get(metrics))
            .route(backend::NODE_REQUEST_PATH, post(node_request))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(app.clone(), gate))
            .layer(middleware::from_fn(security_headers))
            .with_state(app)
    }

    /// Serve HTTPS on `listener` until the runtime stops; also polls the daemons for the
    /// event streams while any is open.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        use tower::Service;
        let local = listener.local_addr().ok();
        info!(
            listen = ?local,
            peer_console = %self.app.backend.peer_addr(),
            "console listening (HTTPS)"
        );
        tokio::spawn(poll_views(self.app.clone()));
        let router = self.router();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!("console: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!(client = %remote, "console: {MAX_CONNECTIONS} connections open, refusing one more");
                continue;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let handshake = tokio::time::timeout(
                    Duration::from_millis(crate::tls::HANDSHAKE_TIMEOUT_MS),
                    acceptor.accept(tcp),
                )
                .await;
                let tls = match handshake {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let bad_cert = e
                            .get_ref()
                            .and_then(|i| i.downcast_ref::<rustls::Error>())
                            .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
                        if bad_cert {
                            warn!(client = %remote, "console: refused a client certificate: {e}");
                        } else {
                            debug!(client = %remote, "console: TLS handshake failed: {e}");
                        }
                        return;
                    }
                    Err(_) => {
                        debug!(client = %remote, "console: TLS handshake timed out");
                        return;
                    }
                };
                let peer_node = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(mirrorkit_net::cert_node_name);
                let conn = Conn { remote, peer_node };
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(conn.clone());
                        router.clone().call(req)
                    },
                );
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(HEADER_READ_TIMEOUT_SECS));
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
                {
                    debug!(client = %remote, "console: connection ended: {e}");
                }
            });
        }
    }
}

/// While an event stream listens: poll both daemons and publish the view when something
/// changed (or every [`RESEND_INTERVAL_MS`]).
async fn poll_views(app: Arc<App>) {
    let mut last: Option<(serde_json::Value, Instant)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        if app.views.receiver_count() == 0 {
            last = None;
            continue;
        }
        let view = app.backend.view().await;
        let essence = backend::essence(&view);
        let due = match &last {
            None => true,
            Some((e, at)) => {
                *e != essence || at.elapsed() >= Duration::from_millis(RESEND_INTERVAL_MS)
            }
        };
        if due {
            app.views.send_replace(Some(Arc::new(view)));
            last = Some((essence, Instant::now()));
        }
    }
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics"
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

enum Auth {
    Ok(Principal),
    Missing,
    /// Credentials given but not valid: 401.
    Refused(String),
    /// Valid credentials of someone who may not use the console: 403.
    Forbidden(String),
}

/// The user the CLI names in [`OPERATOR_HEADER`]: visible text, cut to
/// [`OPERATOR_MAX_CHARS`]; `None` without one.
fn operator_of(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(OPERATOR_HEADER)?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| v.chars().take(OPERATOR_MAX_CHARS).collect())
}

/// Who asks: a token or a session when the request carries one; else, on the API, the node
/// named by a client certificate (verified against the cluster CA during the handshake), if
/// it is one of this cluster's two nodes.
fn authenticate(app: &App, conn: &Conn, path: &str, headers: &HeaderMap) -> Auth {
    match authenticate_by_header(app, headers) {
        Auth::Missing if is_api(path) => {}
        other => return other,
    }
    let Some(name) = &conn.peer_node else {
        return Auth::Missing;
    };
    let b = &app.backend;
    if *name == b.node || *name == b.peer {
        Auth::Ok(Principal::Node {
            node: name.clone(),
            operator: operator_of(headers),
        })
    } else {
        // Another certificate of the cluster CA (the witness's): not a node, no access.
        Auth::Forbidden(format!(
            "the client certificate names {name:?}, which is not a node of cluster {} ({}, {})",
            b.cluster, b.node, b.peer
        ))
    }
}

fn authenticate_by_header(app: &App, headers: &HeaderMap) -> Auth {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
            return Auth::Refused("Authorization must be `Bearer <token>`".into());
        };
        return match app.tokens.verify(token.trim()) {
            Ok(Some(name)) => Auth::Ok(Principal::Token { name }),
            Ok(None) => Auth::Refused(
                "unknown or revoked API token (`mirrorkit console token list` on this node)".into(),
            ),
            Err(e) => {
                error!("console: cannot check an API token: {e}");
                Auth::Refused(format!("cannot check API tokens on this node: {e}"))
            }
        };
    }
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        return match app.sessions().get(&id, Instant::now()) {
            Some(s) => Auth::Ok(Principal::Session {
                id,
                user: s.user,
                csrf: s.csrf,
            }),
            None => Auth::Refused("session expired: log in again".into()),
        };
    }
    Auth::Missing
}

/// The request's own origin, as a browser would write it in `Origin`.
fn own_origin(req: &Request) -> Option<String> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })?;
    Some(format!("https://{host}"))
}

/// A state-changing request from a browser must come from a page of this console: its
/// `Sec-Fetch-Site` must be `same-origin` and its `Origin` this console's, and at least one
/// of the two must be there.
fn check_same_origin(req: &Request) -> Result<(), String> {
    let headers = req.headers();
    let site = headers
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or(""));
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""));
    if site.is_none() && origin.is_none() {
        return Err("no Origin or Sec-Fetch-Site header: a browser request must come from this console's own page".into());
    }
    if let Some(site) = site {
        if site != "same-origin" {
            return Err(format!(
                "cross-site request refused (Sec-Fetch-Site: {site})"
            ));
        }
    }
    if let Some(origin) = origin {
        let own = own_origin(req);
        if own.as_deref() != Some(origin) {
            return Err(format!(
                "cross-site request refused (Origin {origin}, this console is {})",
                own.unwrap_or_else(|| "unknown".into())
            ));
        }
    }
    Ok(())
}

/// The gate every request passes: public paths, the node-to-node path (peer certificate
/// only), and everything else (session or token, or on the API a node certificate; CSRF for
/// state changes with a session, same origin for a browser's with a node certificate).
async fn gate(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if matches!(
        path.as_str(),
        "/login" | "/assets/console.js" | "/assets/console.css"
    ) {
        return next.run(req).await;
    }
    if path.starts_with("/api/v1/node/") {
        return match &conn.peer_node {
            Some(n) if *n == app.backend.peer => next.run(req).await,
            Some(n) => {
                warn!(client = %conn.remote, certificate = %n, "console: node-to-node request refused: the certificate is not the peer's");
                json_error(
                    StatusCode::FORBIDDEN,
                    format!("node {n} is not this node's peer ({})", app.backend.peer),
                )
            }
            None => json_error(
                StatusCode::FORBIDDEN,
                "this path is for the peer node only: it needs the peer's cluster certificate",
            ),
        };
    }
    let principal = match authenticate(&app, &conn, &path, req.headers()) {
        Auth::Ok(p) => p,
        Auth::Missing | Auth::Refused(_) | Auth::Forbidden(_) if !is_api(&path) => {
            return (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, "/login")],
                "log in first",
            )
                .into_response();
        }
        Auth::Missing => {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"mirrorkit\"")],
                Json(json!({"error": "authentication required: log in at /login, or send Authorization: Bearer <token> (create one with `mirrorkit console token create NAME`)"})),
            )
                .into_response();
        }
        Auth::Refused(why) => {
            warn!(client = %conn.remote, path = %path, "console: request refused: {why}");
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"mirrorkit\"")],
                Json(json!({ "error": why })),
            )
                .into_response();
        }
        Auth::Forbidden(why) => {
            warn!(client = %conn.remote, path = %path, "console: request refused: {why}");
            return json_error(StatusCode::FORBIDDEN, why);
        }
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if let (false, Principal::Node { node, .. }) = (safe, &principal) {
        // The CLI sends neither header. A browser holding a node certificate would present
        // it to any site's forged form as it sends a cookie: what it marks as coming from
        // elsewhere is refused as for a session.
        let browser = req.headers().contains_key(header::ORIGIN)
            || req.headers().contains_key("sec-fetch-site");
        if browser {
            if let Err(why) = check_same_origin(&req) {
                warn!(client = %conn.remote, path = %path, certificate = %node, "console: {why}");
                return json_error(StatusCode::FORBIDDEN, why);
            }
        }
    }
    if let (false, Principal::Session { csrf, .. }) = (safe, &principal) {
        if let Err(why) = check_same_origin(&req) {
            warn!(client = %conn.remote, path = %path, "console: {why}");
            return json_error(StatusCode::FORBIDDEN, why);
        }
        let given = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !auth::same_secret(given, csrf) {
            warn!(client = %conn.remote, path = %path, "console: request refused: missing or wrong CSRF token");
            return json_error(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token header (reload the page)",
            );
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on form posts, which the
        // same-origin check must refuse.
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    resp
}

async fn not_found(req: Request) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        format!("no such page or API route: {}", req.uri().path()),
    )
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn console_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CONSOLE_JS,
    )
}

async fn console_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        CONSOLE_CSS,
    )
}

fn login_html(status: StatusCode, message: &str, node: &str) -> Response {
    // `message` is one of our fixed texts; the node name is a validated DNS label.
    let page = LOGIN_HTML
        .replace("{{message}}", message)
        .replace("{{node}}", node);
    (status, Html(page)).into_response()
}

async fn login_page(State(app): State<Arc<App>>) -> Response {
    login_html(StatusCode::OK, "", &app.backend.node)
}

#[derive(Deserialize)]
struct LoginForm {
    password: String,
}

async fn login(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    req: Request,
) -> Response {
    let ip = conn.remote.ip();
    // A login form posted from another site would log the victim into the attacker's
    // console session: refuse what a browser marks as cross-site (scripts send neither).
    let headers = req.headers();
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s != "same-origin" && s != "none")
        || (headers.contains_key(header::ORIGIN) && check_same_origin(&req).is_err());
    if cross_site {
        warn!(client = %ip, "console: cross-site login refused");
        return login_html(
            StatusCode::FORBIDDEN,
            "Refused: the login came from another site.",
            &app.backend.node,
        );
    }
    let Ok(Form(form)) = Form::<LoginForm>::from_request(req, &()).await else {
        return login_html(
            StatusCode::BAD_REQUEST,
            "Send the form with a password field.",
            &app.backend.node,
        );
    };
    if let Some(wait) = app.limiter().blocked(ip, Instant::now()) {
        warn!(client = %ip, wait_secs = wait.as_secs() + 1, "console: login refused: too many failed logins from this address");
        let mut resp = login_html(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins from your address: wait a minute and try again.",
            &app.backend.node,
        );
        if let Ok(v) = HeaderValue::from_str(&(wait.as_secs() + 1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let hash = app.password_hash();
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &form.password))
        .await
        .unwrap_or(false);
    if !ok {
        let n = app.limiter().failed(ip, Instant::now());
        warn!(client = %ip, failures_in_window = n, "console: login failed: wrong password");
        return login_html(
            StatusCode::UNAUTHORIZED,
            "Wrong password.",
            &app.backend.node,
        );
    }
    app.limiter().succeeded(ip);
    let (id, _) = app.sessions().create(auth::ADMIN_USER, ip, Instant::now());
    info!(client = %ip, user = auth::ADMIN_USER, "console: logged in");
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        auth::SESSION_MAX_AGE_SECS
    );
    let mut resp = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/")],
        "logged in",
    )
        .into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            resp.headers_mut().insert(header::SET_COOKIE, v);
            resp
        }
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot set the session cookie: {e}"),
        ),
    }
}

async fn logout(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    Extension(p): Extension<Principal>,
) -> Response {
    if let Principal::Session { id, user, .. } = &p {
        app.sessions().remove(id);
        info!(client = %conn.remote.ip(), user = %user, "console: logged out");
    }
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    let mut resp = Json(json!({"ok": true})).into_response();
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn session_info(State(app): State<Arc<App>>, Extension(p): Extension<Principal>) -> Response {
    let b = &app.backend;
    match p {
        Principal::Session { user, csrf, .. } => Json(json!({
            "user": user, "csrf": csrf, "cluster": b.cluster, "node": b.node, "peer": b.peer,
        }))
        .into_response(),
        Principal::Token { name } => Json(json!({
            "token": name, "cluster": b.cluster, "node": b.node, "peer": b.peer,
        }))
        .into_response(),
        Principal::Node { node: cert, .. } => Json(json!({
            "node_certificate": cert, "cluster": b.cluster, "node": b.node, "peer": b.peer,
        }))
        .into_response(),
    }
}

async fn status(State(app): State<Arc<App>>) -> Json<ClusterView> {
    Json(app.backend.view().await)
}

#[derive(Deserialize, Default)]
struct VerbBody {
    /// The node that runs the verb; default: this node.
    node: Option<String>,
}

async fn module_verb(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    Extension(p): Extension<Principal>,
    Path((module, verb_name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(verb) = serde_json::from_value::<Verb>(serde_json::Value::String(verb_name.clone()))
    else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("unknown verb {verb_name:?}: one of start, stop, restart, swap, prim, second, forcestop"),
        );
    };
    let body: VerbBody = if body.iter().all(u8::is_ascii_whitespace) {
        VerbBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("the body must be JSON like {{\"node\": \"NAME\"}} or empty: {e}"),
                )
            }
        }
    };
    let b = &app.backend;
    let node = body.node.unwrap_or_else(|| b.node.clone());
    if node != b.node && node != b.peer {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!(
                "no node {node:?} in cluster {} (nodes: {}, {})",
                b.cluster, b.node, b.peer
            ),
        );
    }
    let mut who = p.who(conn.remote.ip());
    if node != b.node {
        who = format!("{who} via node {}", b.node);
    }
    info!(module = %module, %verb, node = %node, who = %who, "console: verb asked");
    let req = DaemonRequest::Verb {
        module: module.clone(),
        verb,
        who,
    };
    let answer = b
        .on(&node, &req, Duration::from_millis(backend::VERB_TIMEOUT_MS))
        .await;
    let base = json!({"module": module, "verb": verb, "node": node});
    match answer {
        Ok(Reply::Done { state }) => {
            let mut v = base;
            v["state"] = json!(state);
            (StatusCode::OK, Json(v)).into_response()
        }
        Ok(Reply::Error(e)) => {
            info!(module = %module, %verb, node = %node, "console: verb refused or failed: {e}");
            let mut v = base;
            v["error"] = json!(e);
            (StatusCode::CONFLICT, Json(v)).into_response()
        }
        Ok(other) => json_error(
            StatusCode::BAD_GATEWAY,
            format!("unexpected answer from node {node}'s daemon: {other:?}"),
        ),
        Err(e) => {
            warn!(module = %module, %verb, node = %node, "console: verb not delivered: {e}");
            let mut v = base;
            v["error"] = json!(e);
            (StatusCode::BAD_GATEWAY, Json(v)).into_response()
        }
    }
}

#[derive(Deserialize)]
struct LogQuery {
    lines: Option<usize>,
    node: Option<String>,
}

async fn module_log(
    State(app): State<Arc<App>>,
    Path(module): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let b = &app.backend;
    let node = q.node.unwrap_or_else(|| b.node.clone());
    let lines = q.lines.unwrap_or(LOG_LINES_DEFAULT).min(LOG_LINES_MAX);
    let req = DaemonRequest::Log {
        module: module.clone(),
        lines,
    };
    match b
        .on(&node, &req, Duration::from_millis(backend::LOG_TIMEOUT_MS))
        .await
    {
        Ok(Reply::Log(entries)) => {
            Json(json!({"module": module, "node": node, "entries": entries})).into_response()
        }
        Ok(Reply::Error(e)) => json_error(StatusCode::NOT_FOUND, e),
        Ok(other) => json_error(
            StatusCode::BAD_GATEWAY,
            format!("unexpected answer from node {node}'s daemon: {other:?}"),
        ),
        Err(e) => json_error(StatusCode::BAD_GATEWAY, e),
    }
}

fn view_event(v: &ClusterView) -> Event {
    Event::default()
        .event("status")
        .json_data(v)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

async fn events(State(app): State<Arc<App>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = app.views.subscribe();
    rx.mark_unchanged();
    // The first event is a fresh view, whatever the poller last saw.
    let first = app.backend.view().await;
    let stream = futures_util::stream::unfold((Some(first), rx), |(first, mut rx)| async move {
        if let Some(v) = first {
            return Some((Ok(view_event(&v)), (None, rx)));
        }
        loop {
            rx.changed().await.ok()?;
            let latest = rx.borrow_and_update().clone();
            if let Some(v) = latest {
                return Some((Ok(view_event(&v)), (None, rx)));
            }
        }
    });
    Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(SSE_KEEPALIVE_SECS))
            .text("heartbeat"),
    )
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let b = &app.backend;
    let timeout = Duration::from_millis(backend::STATUS_TIMEOUT_MS);
    match b.local(&DaemonRequest::Status, timeout).await {
        Ok(Reply::Status(s)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::render(&s),
        )
            .into_response(),
        Ok(Reply::Error(e)) => json_error(StatusCode::BAD_GATEWAY, e),
        Ok(other) => json_error(
            StatusCode::BAD_GATEWAY,
            format!("unexpected answer from the daemon: {other:?}"),
        ),
        Err(e) => json_error(StatusCode::BAD_GATEWAY, e),
    }
}

/// The peer's console asks this node's daemon (the gate checked its certificate).
async fn node_request(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    body: Bytes,
) -> Response {
    let req: DaemonRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            warn!(client = %conn.remote, "console: malformed node-to-node request: {e}");
            return json_error(StatusCode::BAD_REQUEST, format!("malformed request: {e}"));
        }
    };
    let timeout = match req {
        DaemonRequest::Status => backend::STATUS_TIMEOUT_MS,
        DaemonRequest::Log { .. } => backend::LOG_TIMEOUT_MS,
        DaemonRequest::Verb { .. } => backend::VERB_TIMEOUT_MS,
    };
    let reply = app
        .backend
        .local(&req, Duration::from_millis(timeout))
        .await
        .unwrap_or_else(Reply::Error);
    Json(reply).into_response()
}
