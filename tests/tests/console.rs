//! The web console end to end: a real headless Chromium (Debian's `chromium` with
//! `chromium-driver`, over WebDriver) in the lab's client namespace, against the consoles of
//! two real daemons. Log in, see both nodes, click swap and confirm, watch the primary move on
//! the page and check with the CLI that it moved; a wrong password, an API call without
//! credentials and a forged cross-site request are refused. Screenshots of the main states go
//! to `target/console-screenshots/`.
//!
//! And the CLI through the console: `mirrorkit status`, a verb and `log` go through the node's
//! REST API with the node's certificate, fall back to the control socket when the console does
//! not answer; a certificate of another cluster is refused.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirrorkit_net::pki::NodeIdentity;
use mirrorkit_tests::browser::{self, Browser, Driver};
use mirrorkit_tests::lab::{client_addr, require_lab, Lab, LabModule};
use serde_json::json;

const PASSWORD: &str = "night shift 3am";
const BOOT: Duration = Duration::from_secs(60);
const MOVE: Duration = Duration::from_secs(30);
const PAGE: Duration = Duration::from_secs(20);
const CHROMEDRIVER_PORT: u16 = 9515;

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("target/console-screenshots")
}

/// Move this thread into network namespace `ns` (sockets it opens, and processes it starts,
/// live there).
fn enter_netns(ns: &Path) {
    let file = std::fs::File::open(ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
    // SAFETY: a valid namespace descriptor; only this thread changes namespace.
    let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Another site, in the client namespace: one page whose form posts a `stop` to the console
/// (a classic cross-site request forgery). Serves until dropped.
struct EvilSite {
    url: String,
    stop: Arc<AtomicBool>,
}

impl EvilSite {
    fn start(ns: &Path, target: &str) -> EvilSite {
        let page = format!(
            "<!doctype html><html><body><form method=\"post\" action=\"{target}/api/v1/modules/demo/stop\">\
             <input name=\"node\" value=\"beta\"></form><script>document.forms[0].submit()</script></body></html>"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (ns, flag) = (ns.to_owned(), stop.clone());
        std::thread::spawn(move || {
            enter_netns(&ns);
            let l = TcpListener::bind((client_addr(), 0)).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            tx.send(l.local_addr().expect("addr")).expect("send");
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 4096];
                        let _ = s.read(&mut buf);
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                            page.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let addr = rx.recv().expect("evil site address");
        EvilSite {
            url: format!("http://{addr}/"),
            stop,
        }
    }
}

impl Drop for EvilSite {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn state_js(module: &str, node: &str) -> String {
    format!("const e = document.getElementById('state-{module}-{node}'); return e ? e.dataset.state : null;")
}

fn wait_state(b: &Browser, node: &str, want: &str) {
    let js = format!(
        "const e = document.getElementById('state-demo-{node}'); return !!e && e.dataset.state === '{want}';"
    );
    b.wait_for(&format!("the page shows {node} {want}"), &js, PAGE)
        .unwrap_or_else(|e| panic!("{e}"));
}

fn log_in(b: &Browser, url: &str) {
    b.goto(&format!("{url}/")).expect("open the console");
    b.wait_for(
        "the login page",
        "return location.pathname === '/login' && !!document.getElementById('password')",
        PAGE,
    )
    .expect("redirected to the login page");
    b.type_into("#password", PASSWORD).expect("type");
    b.click("#login").expect("log in");
    b.wait_for(
        "the console page",
        "return location.pathname === '/' && !!document.querySelector('.badge')",
        PAGE,
    )
    .expect("logged in");
}

/// How a fetch from the page (same origin) is answered: status and body.
fn page_fetch(b: &Browser, method: &str, path: &str, headers: serde_json::Value) -> (u64, String) {
    let script = format!(
        "const done = arguments[arguments.length - 1];\
         fetch({path:?}, {{method: {method:?}, headers: {headers}, credentials: 'same-origin'}})\
         .then(async r => done([r.status, await r.text()])).catch(e => done([0, String(e)]));"
    );
    let v = b.eval_async(&script).expect("fetch");
    (
        v[0].as_u64().unwrap_or(0),
        v[1].as_str().unwrap_or("").to_owned(),
    )
}

/// Both nodes with their consoles, the demo module PRIM on alpha and SECOND on beta.
fn console_lab() -> Lab {
    let mut m = LabModule::demo("demo", 8080, 80);
    m.default_primary = Some("alpha".into());
    let mut lab = Lab::new(vec![m]);
    lab.with_console(PASSWORD);
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    lab
}

#[test]
fn console_in_a_real_browser() {
    if !require_lab("console_in_a_real_browser") {
        return;
    }
    let Some((chromium, chromedriver)) = browser::chromium() else {
        mirrorkit_tests::skip_unless_ci(
            "console_in_a_real_browser: needs chromium and chromedriver (apt-get install chromium chromium-driver)",
        );
        return;
    };
    let mut lab = console_lab();

    let shots = screenshots();
    let _ = std::fs::create_dir_all(&shots);
    let driver = Driver::start(
        &chromedriver,
        &lab.client.path(),
        CHROMEDRIVER_PORT,
        lab.dir.path().join("chromedriver.log"),
    );
    let profile = lab.dir.path().join("chromium-profile");
    let client_ns = lab.client.path();
    let (alpha, beta) = (lab.console_url(0), lab.console_url(1));
    std::thread::scope(|scope| {
        let lab = &mut lab;
        scope
            .spawn(move || {
                enter_netns(&client_ns);
                let b = Browser::open(driver.port, &chromium, &profile).unwrap_or_else(|e| {
                    panic!(
                        "{e}\nchromedriver log:\n{}",
                        std::fs::read_to_string(&driver.log).unwrap_or_default()
                    )
                });

                // Without credentials: the API answers 401, pages send to the login form. The
                // console may still be starting (its daemon just started): until it answers,
                // the browser shows its own error page, whose fetches fail (status 0).
                let up = std::time::Instant::now();
                let (status, body) = loop {
                    b.goto(&format!("{alpha}/login")).expect("login page");
                    let r = page_fetch(&b, "GET", "/api/v1/status", json!({}));
                    if r.0 != 0 || up.elapsed() > Duration::from_secs(30) {
                        break r;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                };
                assert_eq!(status, 401, "{body}");
                assert!(body.contains("authentication required"), "{body}");
                let (status, _) = page_fetch(&b, "GET", "/metrics", json!({}));
                assert_eq!(status, 401);

                // A wrong password is refused.
                b.type_into("#password", "not the password").expect("type");
                b.click("#login").expect("submit");
                b.wait_for(
                    "the refusal",
                    "const m = document.getElementById('message'); return m && m.textContent.includes('Wrong password');",
                    PAGE,
                )
                .expect("wrong password refused");

                // Logged in: both nodes, the primary obvious, the missing witness said.
                log_in(&b, &alpha);
                wait_state(&b, "alpha", "PRIM");
                wait_state(&b, "beta", "SECOND");
                b.wait_for(
                    "the primary line",
                    "const e = document.getElementById('primary-demo'); return e && e.dataset.primary === 'alpha';",
                    PAGE,
                )
                .expect("alpha shown as primary");
                // The primary's replication figures, and the heartbeat's round-trip time.
                b.wait_for(
                    "the replication figures",
                    "const e = document.querySelector('[data-figures=\"demo|alpha\"]'); return e && e.textContent.includes('operations sent') && e.textContent;",
                    PAGE,
                )
                .expect("replication figures shown");
                b.wait_for(
                    "the heartbeat's round-trip time",
                    "return document.getElementById('nodes').textContent.includes('rtt ');",
                    PAGE,
                )
                .expect("heartbeat rtt shown");
                let banner = b.text("#banner-witness").expect("witness banner");
                assert!(banner.contains("split brain"), "{banner}");
                b.wait_for(
                    "the event log",
                    "return document.querySelectorAll('[data-log] .entry').length > 0",
                    PAGE,
                )
                .expect("event log shown");
                b.screenshot(&shots.join("prim-second.png")).expect("screenshot");

                // A forged cross-site POST (another site's form) is refused.
                let evil = EvilSite::start(&lab.client.path(), &alpha);
                b.goto(&evil.url).expect("evil page");
                let answer = b
                    .wait_for(
                        "the console's answer to the forged form",
                        "return location.href.includes('/api/v1/modules/demo/stop') && document.body && document.body.innerText",
                        PAGE,
                    )
                    .expect("the forged form was answered");
                let answer = answer.as_str().unwrap_or("").to_owned();
                assert!(answer.contains("\"error\""), "forged request not refused: {answer}");
                drop(evil);
                assert_eq!(lab.state(1, "demo").as_deref(), Some("SECOND"));
                let log = String::from_utf8_lossy(&lab.cli(1, &["log", "demo"]).stdout).into_owned();
                assert!(!log.contains("stop asked by"), "the forged stop reached beta: {log}");

                // Back on the console: a POST from the page without the CSRF token is refused.
                b.goto(&format!("{alpha}/")).expect("console");
                wait_state(&b, "alpha", "PRIM");
                let (status, body) = page_fetch(
                    &b,
                    "POST",
                    "/api/v1/modules/demo/stop",
                    json!({"Content-Type": "application/json"}),
                );
                assert_eq!(status, 403, "{body}");
                assert_eq!(lab.state(0, "demo").as_deref(), Some("PRIM"));

                // Swap from the page: confirm, watch the primary move, check with the CLI.
                b.click("#btn-demo-alpha-swap").expect("swap");
                b.wait_for(
                    "the confirmation dialog",
                    "const d = document.getElementById('confirm'); return d.open && document.getElementById('confirm-text').textContent;",
                    PAGE,
                )
                .expect("swap asks for confirmation");
                b.click("#confirm-ok").expect("confirm");
                wait_state(&b, "beta", "PRIM");
                wait_state(&b, "alpha", "SECOND");
                b.wait_for(
                    "the primary line",
                    "const e = document.getElementById('primary-demo'); return e && e.dataset.primary === 'beta';",
                    PAGE,
                )
                .expect("beta shown as primary");
                lab.wait_states("demo", [Some("SECOND"), Some("PRIM")], MOVE);
                let cli = lab.status(1).expect("beta's status");
                assert_eq!(cli["modules"][0]["state"], "PRIM", "{cli}");
                let log = String::from_utf8_lossy(&lab.cli(0, &["log", "demo"]).stdout).into_owned();
                assert!(
                    log.contains("swap asked by console user admin from 10.77.0.100"),
                    "{log}"
                );

                // A node dies: the other's console says so, and shows it ALONE.
                lab.kill9(0);
                lab.wait_states("demo", [None, Some("ALONE")], MOVE);
                log_in(&b, &beta);
                wait_state(&b, "beta", "ALONE");
                b.wait_for(
                    "the unreachable banner",
                    "return !!document.getElementById('banner-unreachable-alpha')",
                    PAGE,
                )
                .expect("alpha unreachable said");
                b.screenshot(&shots.join("alone.png")).expect("screenshot");

                // The survivor stops; the old secondary returns on stale data: it waits, and
                // prim on it asks for a confirmation saying what forcing means.
                let out = lab.cli(1, &["stop", "demo"]);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                lab.start(0);
                lab.wait_states("demo", [Some("WAIT"), Some("STOP")], MOVE);
                wait_state(&b, "alpha", "WAIT");
                wait_state(&b, "beta", "STOP");
                let reason = b.text("#reason-demo-alpha").expect("reason");
                assert!(!reason.is_empty());
                b.screenshot(&shots.join("wait.png")).expect("screenshot");
                b.click("#btn-demo-alpha-prim").expect("prim");
                let text = b
                    .wait_for(
                        "the prim confirmation",
                        "const d = document.getElementById('confirm'); return d.open && document.getElementById('confirm-text').textContent;",
                        PAGE,
                    )
                    .expect("prim asks for confirmation");
                let text = text.as_str().unwrap_or("");
                assert!(text.contains("alpha is WAIT"), "{text}");
                b.screenshot(&shots.join("wait-prim-confirm.png")).expect("screenshot");
                b.click("#confirm-cancel").expect("cancel");
                assert_eq!(b.eval(&state_js("demo", "alpha"), json!([])).ok(), Some(json!("WAIT")));
                assert_eq!(lab.state(0, "demo").as_deref(), Some("WAIT"));
                eprintln!("console screenshots in {}", shots.display());
            })
            .join()
            .expect("the browser scenario");
    });
}

/// `mirrorkit status --json` on node `i` until it comes through the console (no fallback
/// warning): the console starts a moment after its daemon.
fn status_through_console(lab: &Lab, i: usize) -> serde_json::Value {
    let deadline = std::time::Instant::now() + BOOT;
    loop {
        let out = lab.cli(i, &["status", "--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() && !stderr.contains("warning") {
            return serde_json::from_slice(&out.stdout).expect("status JSON");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {i}'s console never answered the CLI: {stderr}\n{}",
            mirrorkit_tests::lab::tail(&lab.log(i), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What the CLI said on its standard error (its own lines, not its log's).
fn said(stderr: &[u8]) -> Vec<String> {
    text(stderr)
        .lines()
        .filter(|l| l.starts_with("mirrorkit: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_cli_goes_through_the_console_api() {
    if !require_lab("the_cli_goes_through_the_console_api") {
        return;
    }
    let lab = console_lab();

    // Status through the REST API: the cluster view, with beta's own status in alpha's
    // answer (alpha's control socket only knows what beta last said).
    let v = status_through_console(&lab, 0);
    assert_eq!(v["local"], "alpha", "{v}");
    assert_eq!(v["nodes"][0]["node"], "alpha", "{v}");
    assert_eq!(
        v["nodes"][0]["status"]["modules"][0]["state"], "PRIM",
        "{v}"
    );
    assert_eq!(v["nodes"][1]["node"], "beta", "{v}");
    assert_eq!(v["nodes"][1]["status"]["node"], "beta", "{v}");
    assert_eq!(
        v["nodes"][1]["status"]["modules"][0]["state"], "SECOND",
        "{v}"
    );
    let table = lab.cli(0, &["status"]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    assert!(table.starts_with("cluster lab-"), "{table}");
    assert!(table.contains("), from node alpha\n"), "{table}");
    assert!(table.contains("alpha heartbeat lan: up"), "{table}");
    assert!(table.contains("beta  heartbeat lan: up"), "{table}");
    // --socket: this node's status alone, as before.
    let socket = lab.cli(0, &["status", "--json", "--socket"]);
    let s: serde_json::Value = serde_json::from_slice(&socket.stdout).expect("status JSON");
    assert_eq!(
        (s["node"].as_str(), s["nodes"].is_null()),
        (Some("alpha"), true),
        "{s}"
    );

    // A verb through the API moves the module; the event log names the CLI's node and user.
    let _ = status_through_console(&lab, 1);
    let swap = lab.cli(1, &["swap", "demo"]);
    assert!(swap.status.success(), "{}", text(&swap.stderr));
    assert!(said(&swap.stderr).is_empty(), "{}", text(&swap.stderr));
    assert!(
        text(&swap.stdout).starts_with("swap demo: done, "),
        "{}",
        text(&swap.stdout)
    );
    lab.wait_states("demo", [Some("SECOND"), Some("PRIM")], MOVE);
    let log = lab.cli(1, &["log", "demo"]);
    assert!(log.status.success(), "{}", text(&log.stderr));
    assert!(said(&log.stderr).is_empty(), "{}", text(&log.stderr));
    assert!(
        text(&log.stdout).contains("swap asked by cli on beta, user "),
        "{}",
        text(&log.stdout)
    );

    // Refusals read exactly as over the control socket.
    for args in [["start", "demo"], ["prim", "no-such-module"]] {
        let api = lab.cli(0, &args);
        let sock = lab.cli(0, &[args[0], args[1], "--socket"]);
        let what = args.join(" ");
        assert!(!api.status.success() && !sock.status.success(), "{what}");
        let (api, sock) = (said(&api.stderr), said(&sock.stderr));
        assert_eq!(api.len(), 1, "{api:?}");
        assert!(
            api[0].starts_with(&format!("mirrorkit: {what}: ")),
            "{api:?}"
        );
        assert_eq!(api, sock);
    }

    // A console that does not answer: one warning naming its address and the error, then the
    // control socket, in the same document shape.
    let mut cf = mirrorkit_node::config::ClusterFile::load(&lab.nodes[0].config).expect("file");
    if let Some(c) = cf.console.as_mut() {
        c.listen = "127.0.0.1:1".parse().expect("addr");
    }
    let dead = lab.dir.path().join("alpha/console-down.toml");
    std::fs::write(&dead, cf.to_toml().expect("toml")).expect("write");
    let out = lab.cli_with(0, &dead, &["status", "--json"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(said(&out.stderr).len(), 1, "{stderr}");
    assert!(
        stderr.contains("warning: node alpha's console at 127.0.0.1:1 did not answer: cannot connect to 127.0.0.1:1")
            && stderr.contains("control socket"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(
        v["nodes"][0]["status"]["modules"][0]["state"], "SECOND",
        "{v}"
    );
    assert!(v["nodes"][1]["status"].is_null(), "{v}");
    assert!(
        v["nodes"][1]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("not asked")),
        "{v}"
    );
    let out = lab.cli_with(0, &dead, &["start", "demo"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let lines = said(&out.stderr);
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains("console at 127.0.0.1:1 did not answer"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("start demo: ") && lines[1].contains("already started"),
        "{stderr}"
    );

    // A certificate of another cluster's CA is refused by the console (during the TLS
    // handshake: no HTTP answer at all), from the client's network as from the node.
    let other = lab.dir.path().join("other-certs");
    let made = std::process::Command::new(mirrorkit_tests::mirrorkit_bin())
        .args([
            "certs",
            "--cluster",
            "other",
            "--nodes",
            "alpha,beta",
            "--dir",
        ])
        .arg(&other)
        .output()
        .expect("mirrorkit certs");
    assert!(made.status.success(), "{}", text(&made.stderr));
    let certs = lab.dir.path().join("certs");
    let addr: std::net::SocketAddr = format!(
        "{}.1:{}",
        mirrorkit_tests::lab::LAN_PREFIX,
        mirrorkit_tests::lab::CONSOLE_PORT
    )
    .parse()
    .expect("addr");
    let refused = mirrorkit_tests::lab::in_netns(&lab.client.path(), move || {
        let ours = NodeIdentity::load(&certs, "alpha").expect("identity");
        let theirs = NodeIdentity::load(&other, "beta").expect("identity");
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ours.roots())
        .with_client_auth_cert(theirs.cert_chain().to_vec(), theirs.key())
        .expect("client certificate");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(mirrorkit_console::tls::send(
            Arc::new(tls),
            addr,
            "alpha",
            &mirrorkit_console::tls::Req::post("/api/v1/modules/demo/stop", ""),
            Duration::from_secs(10),
        ))
    });
    match refused {
        Err(e) => assert!(e.not_delivered(), "{e}"),
        Ok(r) => panic!(
            "another cluster's certificate got HTTP {}: {}",
            r.status,
            r.text()
        ),
    }
    assert!(
        lab.log(0).contains("refused a client certificate"),
        "{}",
        mirrorkit_tests::lab::tail(&lab.log(0), 40)
    );
    assert_eq!(lab.state(0, "demo").as_deref(), Some("SECOND"));
}
