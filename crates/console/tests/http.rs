//! The console's HTTP layer for real: two consoles (alpha and beta) over real TLS listeners on
//! loopback, each in front of a real control socket (`mirrorkit_node::api::serve`) whose
//! handler plays the daemon. What a browser, a script, the CLI of a node, the peer node and an
//! intruder get.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mirrorkit_cluster::machine::{StateKind, Verb};
use mirrorkit_console::auth::{self, TokenStore};
use mirrorkit_console::client::{ClientError, NodeClient};
use mirrorkit_console::tls::{self, Req, Response};
use mirrorkit_console::{Console, Settings};
use mirrorkit_net::pki::NodeIdentity;
use mirrorkit_node::api::{NodeStatus, Reply, Request};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";
const REFUSAL: &str = "swap refused: the peer beta is not in sync (resync 40%); wait for SECOND";

/// What a fake daemon answers, and what it was asked.
struct FakeDaemon {
    node: &'static str,
    peer: &'static str,
    state: StateKind,
    requests: Vec<Request>,
}

impl FakeDaemon {
    fn status(&self) -> NodeStatus {
        let peer_state = if self.state == StateKind::Prim {
            "SECOND"
        } else {
            "PRIM"
        };
        serde_json::from_value(json!({
            "cluster": "test",
            "node": self.node,
            "peer": self.peer,
            "witness": null,
            "heartbeats": [{"name": "lan", "up": true, "last_heard_ms_ago": 120,
                            "rtt_us": 350, "received": 1000, "missed": 3}],
            "modules": [{
                "name": "demo",
                "problems": [],
                "state": self.state,
                "colour": self.state.colour(),
                "reason": format!("{} on {}", self.state, self.node),
                "since_ms_ago": 5000,
                "progress": {"done_bytes": 40, "total_bytes": 100},
                "split_brain": false,
                "mirror": "in-sync: peer holds every write",
                "peer_state": peer_state,
                "peer_reason": "as the peer said",
                "peer_in_sync": true,
                "write_rate": 5_000_000,
                "replication": {
                    "role": "primary", "mode": "syncing", "ops_sent": 1234,
                    "data_bytes_sent": 4096, "sync_rate": 2_000_000, "sync_eta_secs": 7,
                    "acks": 10, "ack_latency_us_sum": 12_000,
                    "ack_latency_buckets": [1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]
                },
                "checkers": [{
                    "name": "port \"80\"", "kind": "tcp", "scope": "application", "running": true,
                    "state": "ok", "last_result": "ok", "last_check_unix_ms": 1,
                    "consecutive_failures": 0, "restarts_in_window": 0
                }]
            }]
        }))
        .expect("a NodeStatus")
    }

    fn answer(&mut self, req: Request) -> Reply {
        self.requests.push(req.clone());
        match req {
            Request::Status => Reply::Status(self.status()),
            Request::Log { module, lines } => Reply::Log(
                (0..lines.min(3))
                    .map(|i| mirrorkit_scripts::Entry {
                        time_ms: 1_700_000_000_000 + i as u64,
                        level: "info".into(),
                        kind: "state".into(),
                        text: format!("{module} line {i} on {}", self.node),
                    })
                    .collect(),
            ),
            Request::Verb {
                verb: Verb::Swap, ..
            } => Reply::Error(REFUSAL.into()),
            Request::Verb { .. } => Reply::Done { state: self.state },
        }
    }

    fn verbs(&self) -> Vec<(Verb, String)> {
        self.requests
            .iter()
            .filter_map(|r| match r {
                Request::Verb { verb, who, .. } => Some((*verb, who.clone())),
                _ => None,
            })
            .collect()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    alpha: SocketAddr,
    daemons: [Arc<Mutex<FakeDaemon>>; 2],
    beta_console: tokio::task::JoinHandle<()>,
    browser: Arc<rustls::ClientConfig>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    mirrorkit_net::pki::generate_cluster(&certs, "test", &["alpha", "beta", "gamma"], false)
        .expect("certificates");
    mirrorkit_net::pki::generate_cluster(&dir.path().join("other"), "other", &["beta"], false)
        .expect("another cluster's certificates");
    let hash = auth::hash_password(PASSWORD).expect("hash");
    let listeners = [
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    ];
    let addrs = [
        listeners[0].local_addr().expect("addr"),
        listeners[1].local_addr().expect("addr"),
    ];
    let names = [("alpha", "beta"), ("beta", "alpha")];
    let mut daemons = Vec::new();
    let mut handles = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (node, peer) = names[i];
        let daemon = Arc::new(Mutex::new(FakeDaemon {
            node,
            peer,
            state: if i == 0 {
                StateKind::Prim
            } else {
                StateKind::Second
            },
            requests: Vec::new(),
        }));
        let socket = dir.path().join(node).join("run/mirrorkit.sock");
        let d = daemon.clone();
        mirrorkit_node::api::serve(&socket, move |req| {
            let d = d.clone();
            async move { d.lock().expect("fake daemon").answer(req) }
        })
        .await
        .expect("control socket");
        let console = Console::new(Settings {
            cluster: "test".into(),
            node: node.into(),
            peer: peer.into(),
            listen: addrs[i],
            peer_console: addrs[1 - i],
            socket,
            admin_password_hash: hash.clone(),
            cluster_file: None,
            tokens: TokenStore::in_state_dir(&dir.path().join(node).join("state")),
            identity: NodeIdentity::load(&certs, node).expect("identity"),
        })
        .expect("console");
        handles.push(tokio::spawn(console.serve(listener)));
        daemons.push(daemon);
    }
    let browser_identity = NodeIdentity::load(&certs, "alpha").expect("identity");
    let beta_console = handles.pop().expect("beta");
    Fixture {
        alpha: addrs[0],
        daemons: [daemons[0].clone(), daemons[1].clone()],
        beta_console,
        browser: tls::client_config(&browser_identity, false).expect("client"),
        dir,
    }
}

impl Fixture {
    /// A request to alpha's console as a browser or script would send it (no client
    /// certificate).
    async fn send(&self, r: Req) -> Response {
        tls::request(
            self.browser.clone(),
            self.alpha,
            "alpha",
            &r,
            Duration::from_secs(10),
        )
        .await
        .expect("an answer")
    }

    /// A request to alpha's console presenting `node`'s certificate of cluster `pki`.
    async fn send_as(&self, pki: &str, node: &str, r: Req) -> Result<Response, String> {
        let id = NodeIdentity::load(&self.dir.path().join(pki), node).expect("identity");
        let cfg = tls::client_config(&id, true).expect("client");
        tls::request(cfg, self.alpha, "alpha", &r, Duration::from_secs(10)).await
    }

    async fn login(&self, password: &str) -> Response {
        let body = format!("password={}", password.replace(' ', "+"));
        self.send(
            Req::post("/login", body)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("origin", &format!("https://{}", self.alpha))
                .header("sec-fetch-site", "same-origin"),
        )
        .await
    }

    /// Log in; the session cookie and the CSRF token.
    async fn session(&self) -> (String, String) {
        let r = self.login(PASSWORD).await;
        assert_eq!(r.status, 303, "{}", r.text());
        let cookie = r
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("a cookie")
            .to_owned();
        let info = self
            .send(Req::get("/api/v1/session").header("cookie", &cookie))
            .await;
        assert_eq!(info.status, 200, "{}", info.text());
        let v: Value = serde_json::from_slice(&info.body).expect("json");
        (cookie, v["csrf"].as_str().expect("csrf").to_owned())
    }

    fn same_origin(&self, r: Req) -> Req {
        r.header("origin", &format!("https://{}", self.alpha))
            .header("sec-fetch-site", "same-origin")
    }

    fn verbs(&self, i: usize) -> Vec<(Verb, String)> {
        self.daemons[i].lock().expect("fake daemon").verbs()
    }
}

fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_nothing_is_shown_and_nothing_acts() {
    let f = fixture().await;
    for r in [
        Req::get("/api/v1/status"),
        Req::get("/api/v1/events"),
        Req::get("/api/v1/session"),
        Req::get("/api/v1/modules/demo/log?lines=5"),
        Req::get("/api/v1/no-such-route"),
        Req::get("/metrics"),
        Req::post("/api/v1/modules/demo/stop", ""),
        Req::post("/api/v1/modules/demo/prim", "{\"node\":\"beta\"}"),
        Req::post("/logout", ""),
        Req::get("/api/v1/status").header("authorization", "Bearer mkt_0123"),
        Req::get("/api/v1/status").header("authorization", "Basic YWRtaW46YWRtaW4="),
        Req::get("/metrics").header("cookie", "mirrorkit_session=forged"),
    ] {
        let what = format!("{} {} {:?}", r.method, r.path, r.headers);
        let resp = f.send(r).await;
        if resp.status == 303 {
            // Pages (not /api/, not /metrics) send the browser to the login form.
            assert_eq!(resp.header("location"), Some("/login"), "{what}");
            assert!(what.contains("/logout"), "{what}");
            continue;
        }
        assert_eq!(resp.status, 401, "{what}: {}", resp.text());
        assert!(json_of(&resp)["error"].is_string(), "{what}");
        assert_eq!(
            resp.header("www-authenticate"),
            Some("Bearer realm=\"mirrorkit\"")
        );
    }
    let page = f.send(Req::get("/")).await;
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), Some("/login"));
    // The login page and the assets are public, and carry the security headers.
    let login = f.send(Req::get("/login")).await;
    assert_eq!(login.status, 200);
    assert!(login.text().contains("<form"), "{}", login.text());
    for h in [&login, &page] {
        let csp = h.header("content-security-policy").expect("CSP");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h.header("x-frame-options"), Some("DENY"));
        assert_eq!(h.header("cache-control"), Some("no-store"));
    }
    assert_eq!(f.send(Req::get("/assets/console.js")).await.status, 200);
    // Nothing reached either daemon but status requests... of which there were none.
    assert!(f.daemons[0].lock().expect("d").requests.is_empty());
    assert!(f.daemons[1].lock().expect("d").requests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_gives_a_strict_cookie_and_wrong_passwords_are_refused_then_rate_limited() {
    let f = fixture().await;
    let ok = f.login(PASSWORD).await;
    assert_eq!(ok.status, 303, "{}", ok.text());
    assert_eq!(ok.header("location"), Some("/"));
    let cookie = ok.header("set-cookie").expect("cookie");
    let (pair, flags) = cookie.split_once(';').expect("flags");
    let id = pair.strip_prefix("mirrorkit_session=").expect("name");
    assert_eq!(id.len(), 64, "256 random bits in hex: {id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(flags.contains(flag), "{flag} missing: {cookie}");
    }
    let status = f
        .send(Req::get("/api/v1/status").header("cookie", pair))
        .await;
    assert_eq!(status.status, 200, "{}", status.text());
    let page = f.send(Req::get("/").header("cookie", pair)).await;
    assert_eq!(page.status, 200);

    // A login posted from another site is refused before the password is looked at.
    let forged = f
        .send(
            Req::post("/login", format!("password={}", PASSWORD.replace(' ', "+")))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("origin", "https://evil.example")
                .header("sec-fetch-site", "cross-site"),
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert!(forged.header("set-cookie").is_none());

    for i in 0..auth::LOGIN_FAILURES_MAX {
        let r = f.login("wrong password").await;
        assert_eq!(r.status, 401, "attempt {i}: {}", r.text());
        assert!(r.text().contains("Wrong password"), "{}", r.text());
        assert!(r.header("set-cookie").is_none());
    }
    // Now even the right password is refused from this address for a while.
    let limited = f.login(PASSWORD).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert!(limited.header("set-cookie").is_none());
    let wait: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=auth::LOGIN_WINDOW_SECS).contains(&wait), "{wait}");
    // The session made before still works; logging out ends it.
    let (cookie2, csrf) = {
        // A second session cannot be had now: reuse the first one's cookie for logout.
        let info = f
            .send(Req::get("/api/v1/session").header("cookie", pair))
            .await;
        let v = json_of(&info);
        (
            pair.to_owned(),
            v["csrf"].as_str().expect("csrf").to_owned(),
        )
    };
    let out = f
        .send(
            f.same_origin(
                Req::post("/logout", "")
                    .header("cookie", &cookie2)
                    .header("x-csrf-token", &csrf),
            ),
        )
        .await;
    assert_eq!(out.status, 200, "{}", out.text());
    let after = f
        .send(Req::get("/api/v1/status").header("cookie", &cookie2))
        .await;
    assert_eq!(after.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_with_a_session_need_the_csrf_token_and_the_same_origin() {
    let f = fixture().await;
    let (cookie, csrf) = f.session().await;
    let origin = format!("https://{}", f.alpha);
    let stop = || Req::post("/api/v1/modules/demo/stop", "").header("cookie", &cookie);
    let cases = [
        ("no CSRF token", f.same_origin(stop())),
        (
            "a wrong CSRF token",
            f.same_origin(stop().header("x-csrf-token", &"0".repeat(64))),
        ),
        (
            "a cross-site Origin",
            stop()
                .header("x-csrf-token", &csrf)
                .header("origin", "https://evil.example"),
        ),
        (
            "Sec-Fetch-Site cross-site",
            stop()
                .header("x-csrf-token", &csrf)
                .header("origin", &origin)
                .header("sec-fetch-site", "cross-site"),
        ),
        (
            "neither Origin nor Sec-Fetch-Site",
            stop().header("x-csrf-token", &csrf),
        ),
    ];
    for (what, r) in cases {
        let resp = f.send(r).await;
        assert_eq!(resp.status, 403, "{what}: {}", resp.text());
        assert!(json_of(&resp)["error"].is_string(), "{what}");
    }
    assert!(f.verbs(0).is_empty(), "{:?}", f.verbs(0));
    let ok = f
        .send(f.same_origin(stop().header("x-csrf-token", &csrf)))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(json_of(&ok)["state"], "PRIM");
    assert_eq!(
        f.verbs(0),
        vec![(Verb::Stop, "console user admin from 127.0.0.1".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_work_without_csrf_until_revoked() {
    let f = fixture().await;
    let store = TokenStore::in_state_dir(&f.dir.path().join("alpha/state"));
    let token = store.create("ci").expect("token");
    let bearer = format!("Bearer {token}");
    let r = f
        .send(Req::post("/api/v1/modules/demo/restart", "").header("authorization", &bearer))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        f.verbs(0),
        vec![(Verb::Restart, "api token ci from 127.0.0.1".to_owned())]
    );
    let who = f
        .send(Req::get("/api/v1/session").header("authorization", &bearer))
        .await;
    assert_eq!(json_of(&who)["token"], "ci");
    store.revoke("ci").expect("revoke");
    let r = f
        .send(Req::post("/api/v1/modules/demo/restart", "").header("authorization", &bearer))
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(f.verbs(0).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_reach_the_chosen_node_and_refusals_come_back_with_the_daemons_reason() {
    let f = fixture().await;
    let (cookie, csrf) = f.session().await;
    let verb = |path: &str, body: &str| {
        f.same_origin(
            Req::post(path, body.to_owned())
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .header("content-type", "application/json"),
        )
    };
    let refused = f.send(verb("/api/v1/modules/demo/swap", "")).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    let v = json_of(&refused);
    assert_eq!(v["error"], REFUSAL);
    assert_eq!(
        (v["node"].as_str(), v["verb"].as_str()),
        (Some("alpha"), Some("swap"))
    );

    // On the other node: through beta's console, with who asked.
    let done = f
        .send(verb("/api/v1/modules/demo/second", "{\"node\": \"beta\"}"))
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(json_of(&done)["state"], "SECOND");
    assert_eq!(
        f.verbs(1),
        vec![(
            Verb::Second,
            "console user admin from 127.0.0.1 via node alpha".to_owned()
        )]
    );
    assert_eq!(
        f.verbs(0),
        vec![(Verb::Swap, "console user admin from 127.0.0.1".to_owned())]
    );

    let unknown = f.send(verb("/api/v1/modules/demo/explode", "")).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let bad_node = f
        .send(verb("/api/v1/modules/demo/stop", "{\"node\": \"gamma\"}"))
        .await;
    assert_eq!(bad_node.status, 400, "{}", bad_node.text());
    let bad_body = f.send(verb("/api/v1/modules/demo/stop", "node=beta")).await;
    assert_eq!(bad_body.status, 400, "{}", bad_body.text());

    let log = f
        .send(Req::get("/api/v1/modules/demo/log?lines=2&node=beta").header("cookie", &cookie))
        .await;
    assert_eq!(log.status, 200, "{}", log.text());
    let v = json_of(&log);
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["entries"][1]["text"], "demo line 1 on beta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_path_answers_only_the_peers_certificate() {
    let f = fixture().await;
    let body = serde_json::to_vec(&Request::Status).expect("json");
    let req = || Req::post("/api/v1/node/request", body.clone());
    let peer = f.send_as("certs", "beta", req()).await.expect("answer");
    assert_eq!(peer.status, 200, "{}", peer.text());
    let reply: Reply = serde_json::from_slice(&peer.body).expect("a Reply");
    assert!(matches!(reply, Reply::Status(s) if s.node == "alpha"));

    // No certificate (even with a session), another node of the same CA, another cluster.
    let (cookie, csrf) = f.session().await;
    let browser = f
        .send(
            f.same_origin(
                req()
                    .header("cookie", &cookie)
                    .header("x-csrf-token", &csrf),
            ),
        )
        .await;
    assert_eq!(browser.status, 403, "{}", browser.text());
    let gamma = f.send_as("certs", "gamma", req()).await.expect("answer");
    assert_eq!(gamma.status, 403, "{}", gamma.text());
    let intruder = f.send_as("other", "beta", req()).await;
    assert!(
        intruder.as_ref().map_or(true, |r| r.status != 200),
        "a certificate of another CA got {:?}",
        intruder.map(|r| r.text())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_is_let_in_by_its_nodes_certificate() {
    let f = fixture().await;
    let certs = f.dir.path().join("certs");
    let cli = |node: &str| {
        let id = NodeIdentity::load(&certs, node).expect("identity");
        NodeClient::with_identity(&id, "alpha", f.alpha).expect("client")
    };
    let alpha = cli("alpha");

    // The cluster view, both nodes, as the console shows it.
    let view = alpha.status().await.expect("status");
    assert_eq!(view.local, "alpha");
    let states: Vec<_> = view
        .nodes
        .iter()
        .map(|n| {
            (
                n.node.as_str(),
                n.status.as_ref().and_then(|s| s.modules[0].state),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("alpha", Some(StateKind::Prim)),
            ("beta", Some(StateKind::Second))
        ]
    );

    // A verb without CSRF token (not a browser), recorded with the node and the user; a
    // refusal comes back with the daemon's reason.
    let state = alpha
        .verb("demo", Verb::Stop, "bob (uid 0)")
        .await
        .expect("stop");
    assert_eq!(state, StateKind::Prim);
    match alpha.verb("demo", Verb::Swap, "bob (uid 0)").await {
        Err(ClientError::Daemon(reason)) => assert_eq!(reason, REFUSAL),
        other => panic!("swap: {other:?}"),
    }
    // The peer's certificate is a node's of this cluster too.
    cli("beta")
        .verb("demo", Verb::Restart, "")
        .await
        .expect("restart");
    assert_eq!(
        f.verbs(0),
        vec![
            (Verb::Stop, "cli on alpha, user bob (uid 0)".to_owned()),
            (Verb::Swap, "cli on alpha, user bob (uid 0)".to_owned()),
            (Verb::Restart, "cli on beta".to_owned()),
        ]
    );
    let log = alpha.log("demo", 2).await.expect("log");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].text, "demo line 1 on alpha");
    let who = f
        .send_as("certs", "alpha", Req::get("/api/v1/session"))
        .await
        .expect("answer");
    assert_eq!(json_of(&who)["node_certificate"], "alpha");

    // A browser holding a node certificate is still protected from other sites' forms.
    let forged = f
        .send_as(
            "certs",
            "alpha",
            Req::post("/api/v1/modules/demo/stop", "")
                .header("origin", "https://evil.example")
                .header("sec-fetch-site", "cross-site"),
        )
        .await
        .expect("answer");
    assert_eq!(forged.status, 403, "{}", forged.text());
    // Pages still want a session.
    let page = f
        .send_as("certs", "alpha", Req::get("/"))
        .await
        .expect("answer");
    assert_eq!(page.status, 303);
    assert_eq!(f.verbs(0).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_of_no_node_of_this_cluster_are_refused() {
    let f = fixture().await;
    // gamma: signed by the cluster CA (as the witness's is) but not a node of this cluster.
    let gamma = f
        .send_as("certs", "gamma", Req::get("/api/v1/status"))
        .await
        .expect("answer");
    assert_eq!(gamma.status, 403, "{}", gamma.text());
    assert!(
        json_of(&gamma)["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"gamma\", which is not a node of cluster test")),
        "{}",
        gamma.text()
    );
    let id = NodeIdentity::load(&f.dir.path().join("certs"), "gamma").expect("identity");
    let client = NodeClient::with_identity(&id, "alpha", f.alpha).expect("client");
    let e = client
        .verb("demo", Verb::Stop, "mallory")
        .await
        .expect_err("refused");
    assert!(
        matches!(e, ClientError::Refused { status: 403, .. }) && e.fall_back(),
        "{e:?}"
    );

    // beta of another cluster: the handshake fails, no HTTP answer at all.
    for r in [
        Req::get("/api/v1/status"),
        Req::post("/api/v1/modules/demo/stop", ""),
    ] {
        let intruder = f.send_as("other", "beta", r).await;
        assert!(
            intruder.is_err(),
            "a certificate of another CA got {:?}",
            intruder.map(|r| (r.status, r.text()))
        );
    }
    // Trusting this cluster's CA but presenting the other cluster's certificate: the console
    // refuses it during the handshake, which the client takes as nothing handled.
    let other = NodeIdentity::load(&f.dir.path().join("other"), "beta").expect("identity");
    let ours = NodeIdentity::load(&f.dir.path().join("certs"), "alpha").expect("identity");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(ours.roots())
    .with_client_auth_cert(other.cert_chain().to_vec(), other.key())
    .expect("client certificate");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let e = tls::send(
        Arc::new(tls),
        f.alpha,
        "alpha",
        &Req::post("/api/v1/modules/demo/stop", ""),
        Duration::from_secs(10),
    )
    .await
    .expect_err("refused");
    assert!(e.not_delivered(), "{e}");
    assert!(f.verbs(0).is_empty(), "{:?}", f.verbs(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_both_nodes_and_says_so_when_the_peer_is_unreachable() {
    let mut f = fixture().await;
    let (cookie, _) = f.session().await;
    let get = || Req::get("/api/v1/status").header("cookie", &cookie);
    let v = json_of(&f.send(get()).await);
    assert_eq!(v["local"], "alpha");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0]["node"], "alpha");
    assert_eq!(nodes[0]["status"]["modules"][0]["state"], "PRIM");
    assert_eq!(nodes[1]["node"], "beta");
    assert_eq!(nodes[1]["status"]["modules"][0]["state"], "SECOND");
    assert!(nodes[1]["error"].is_null());

    f.beta_console.abort();
    let _ = (&mut f.beta_console).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let v = json_of(&f.send(get()).await);
    let beta = &v["nodes"][1];
    assert!(beta["status"].is_null(), "{beta}");
    let e = beta["error"].as_str().expect("an error");
    assert!(e.contains("cannot reach node beta's console"), "{e}");
    // What alpha knows of beta is still there.
    assert_eq!(
        v["nodes"][0]["status"]["modules"][0]["peer_state"],
        "SECOND"
    );
}

/// A tiny parser of the Prometheus text format: every sample line is
/// `name{label="value",...} number`, every family announced by HELP and TYPE first.
/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (name, rest) = line.split_once('{').expect("labels");
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} sampled before its TYPE");
        let (labels, value) = rest.rsplit_once("} ").expect("value");
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        let mut parsed = Vec::new();
        let mut chars = labels.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut val = String::new();
            loop {
                match chars.next().expect("closing quote") {
                    '\\' => match chars.next().expect("escape") {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    '"' => break,
                    c => val.push(c),
                }
            }
            parsed.push((key, val));
            if chars.peek() == Some(&',') {
                chars.next();
            }
        }
        samples.push((name.to_owned(), parsed, value));
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let f = fixture().await;
    let token = TokenStore::in_state_dir(&f.dir.path().join("alpha/state"))
        .create("prometheus")
        .expect("token");
    let r = f
        .send(Req::get("/metrics").header("authorization", &format!("Bearer {token}")))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let samples = parse_metrics(&r.text());
    let get = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.2)
    };
    let state = |s: &str| {
        get(
            "mirrorkit_module_state",
            &[("module", "demo"), ("node", "alpha"), ("state", s)],
        )
    };
    assert_eq!(state("PRIM"), Some(1.0));
    assert_eq!(state("SECOND"), Some(0.0));
    assert_eq!(state("WAIT"), Some(0.0));
    assert_eq!(
        get("mirrorkit_resync_done_bytes", &[("module", "demo")]),
        Some(40.0)
    );
    assert_eq!(
        get(
            "mirrorkit_replication_link_mode",
            &[("module", "demo"), ("mode", "in-sync")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get("mirrorkit_heartbeat_up", &[("network", "lan")]),
        Some(1.0)
    );
    assert_eq!(
        get(
            "mirrorkit_heartbeat_last_heard_seconds",
            &[("network", "lan")]
        ),
        Some(0.12)
    );
    // A label value with a quote survives the escaping.
    assert_eq!(
        get(
            "mirrorkit_checker_state",
            &[("checker", "port \"80\""), ("state", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(get("mirrorkit_witness_configured", &[]), Some(0.0));
    // Replication and heartbeat figures.
    let demo = [("module", "demo")];
    assert_eq!(
        get("mirrorkit_replication_operations_total", &demo),
        Some(1234.0)
    );
    assert_eq!(
        get("mirrorkit_resync_rate_bytes_per_second", &demo),
        Some(2e6)
    );
    assert_eq!(get("mirrorkit_resync_eta_seconds", &demo), Some(7.0));
    assert_eq!(
        get("mirrorkit_replication_write_rate_bytes_per_second", &demo),
        Some(5e6)
    );
    let bucket = |le: &str| {
        get(
            "mirrorkit_replication_latency_seconds_bucket",
            &[("module", "demo"), ("le", le)],
        )
    };
    // Cumulative: 1 at or below 100 µs, 1+2 at or below 250 µs, all 10 at 1 ms and above.
    assert_eq!(bucket("0.0001"), Some(1.0));
    assert_eq!(bucket("0.00025"), Some(3.0));
    assert_eq!(bucket("0.001"), Some(10.0));
    assert_eq!(bucket("1"), Some(10.0));
    assert_eq!(bucket("+Inf"), Some(10.0));
    assert_eq!(
        get("mirrorkit_replication_latency_seconds_sum", &demo),
        Some(0.012)
    );
    assert_eq!(
        get("mirrorkit_replication_latency_seconds_count", &demo),
        Some(10.0)
    );
    let lan = [("network", "lan")];
    assert_eq!(get("mirrorkit_heartbeat_rtt_seconds", &lan), Some(0.00035));
    assert_eq!(
        get("mirrorkit_heartbeat_received_total", &lan),
        Some(1000.0)
    );
    assert_eq!(get("mirrorkit_heartbeat_missed_total", &lan), Some(3.0));
}

/// Read server-sent events from `body` until one `status` event arrives; its JSON.
async fn next_status_event(body: &mut hyper::body::Incoming, buf: &mut String) -> Value {
    use http_body_util::BodyExt;
    loop {
        if let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.lines().any(|l| l == "event: status") {
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                return serde_json::from_str(&data).expect("status JSON");
            }
            continue;
        }
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            buf.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_starts_with_a_snapshot_and_follows_changes() {
    let f = fixture().await;
    let (cookie, _) = f.session().await;
    let tcp = tokio::net::TcpStream::connect(f.alpha).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("alpha").expect("name");
    let stream = tokio_rustls::TlsConnector::from(f.browser.clone())
        .connect(name, tcp)
        .await
        .expect("tls");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("http");
    tokio::spawn(conn);
    let req = hyper::Request::get("/api/v1/events")
        .header("host", "alpha")
        .header("cookie", &cookie)
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut body = resp.into_body();
    let mut buf = String::new();
    let first = next_status_event(&mut body, &mut buf).await;
    assert_eq!(first["nodes"][0]["status"]["modules"][0]["state"], "PRIM");
    assert_eq!(first["nodes"][1]["status"]["modules"][0]["state"], "SECOND");
    // A change on a daemon comes without asking.
    f.daemons[1].lock().expect("d").state = StateKind::Wait;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = next_status_event(&mut body, &mut buf).await;
        if v["nodes"][1]["status"]["modules"][0]["state"] == "WAIT" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no change seen: {v}"
        );
    }
}

#[tokio::test]
async fn without_a_password_the_console_does_not_start_and_says_how_to_set_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    mirrorkit_net::pki::generate_cluster(&certs, "test", &["alpha", "beta"], false)
        .expect("certificates");
    let nodes = [
        ("alpha", "127.0.0.1".parse().expect("ip")),
        ("beta", "127.0.0.2".parse().expect("ip")),
    ];
    let mut cf = mirrorkit_node::config::ClusterFile::on_one_machine(
        "test",
        "alpha",
        &nodes,
        dir.path(),
        &certs,
        &dir.path().join("modules"),
    );
    let e = mirrorkit_console::start(&cf, None)
        .await
        .expect_err("no password, no console")
        .to_string();
    assert!(
        e.contains("no admin password") && e.contains("mirrorkit console set-password"),
        "{e}"
    );
    // With one, it listens (on a free port here).
    cf.console = Some(mirrorkit_node::config::ConsoleSection {
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_password_hash: Some(auth::hash_password(PASSWORD).expect("hash")),
    });
    let addr = mirrorkit_console::start(&cf, None).await.expect("started");
    assert_ne!(addr.port(), 0);
}
