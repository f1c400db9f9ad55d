//! The web console end to end: a real headless Chromium (Debian's `chromium` with
//! `chromium-driver`, over WebDriver) in the lab's client namespace, against the consoles of
//! two real daemons. Log in, see both nodes, click swap and confirm, watch the primary move on
//! the page and check with the CLI that it moved; a wrong password, an API call without
//! credentials and a forged cross-site request are refused. Screenshots of the main states go
//! to `target/console-screenshots/`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    let mut m = LabModule::demo("demo", 8080, 80);
    m.default_primary = Some("alpha".into());
    let mut lab = Lab::new(vec![m]);
    lab.with_console(PASSWORD);
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);

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
