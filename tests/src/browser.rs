//! A headless Chromium (Debian's `chromium` and `chromium-driver`) driven over the W3C
//! WebDriver protocol, for the console test. chromedriver runs inside a network namespace
//! (the lab's client), so the browser browses from there; the `Browser` calls must then come
//! from a thread in that namespace too (chromedriver listens on its loopback).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The browser and its driver, if installed: (chromium, chromedriver).
pub fn chromium() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"]
                .iter()
                .map(|d| Path::new(d).join(n))
                .find(|p| p.exists())
        })
    };
    Some((
        find(&["chromium", "chromium-browser"])?,
        find(&["chromedriver"])?,
    ))
}

/// chromedriver, started in network namespace `netns`; killed on drop.
pub struct Driver {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Driver {
    pub fn start(chromedriver: &Path, netns: &Path, port: u16, log: PathBuf) -> Driver {
        let out = std::fs::File::create(&log).expect("chromedriver log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start chromedriver");
        Driver { child, port, log }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session. Use it from a thread in the driver's network namespace.
pub struct Browser {
    agent: ureq::Agent,
    base: String,
    session: String,
}

fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return Err(format!("not base64: {:?}", c as char)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

impl Browser {
    /// Wait for chromedriver on `port` (this thread's loopback) and open a headless Chromium
    /// that accepts the console's certificate (the lab's own CA) and keeps its profile in
    /// `profile`.
    pub fn open(port: u16, chromium: &Path, profile: &Path) -> Result<Browser, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = agent
                .get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("chromedriver did not answer on {base} within 15 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--ignore-certificate-errors", "--window-size=1400,1100",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let mut b = Browser {
            agent,
            base,
            session: String::new(),
        };
        let v = b.raw("POST", "/session", Some(caps))?;
        b.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session id in {v}"))?
            .to_owned();
        Ok(b)
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, b) => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(b.unwrap_or_else(|| json!({})).to_string()),
        };
        let mut resp = resp.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{method} {path}: {e}: {text}"))?;
        if status != 200 {
            return Err(format!(
                "{method} {path}: HTTP {status}: {}",
                v["value"]["message"]
            ));
        }
        Ok(v["value"].clone())
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .map(drop)
    }

    pub fn url(&self) -> Result<String, String> {
        Ok(self
            .cmd("GET", "/url", None)?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    fn find(&self, css: &str) -> Result<String, String> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no element {css}: {v}"))
    }

    pub fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let e = self.find(css)?;
        self.cmd("POST", &format!("/element/{e}/clear"), None)?;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .map(drop)
    }

    /// Click the element `css` selects. The console redraws its page on every live update,
    /// so an element found a moment ago may be gone: it is found again (a few times).
    pub fn click(&self, css: &str) -> Result<(), String> {
        self.retry_stale(|| {
            let e = self.find(css)?;
            self.cmd("POST", &format!("/element/{e}/click"), None)
                .map(drop)
        })
    }

    pub fn text(&self, css: &str) -> Result<String, String> {
        self.retry_stale(|| {
            let e = self.find(css)?;
            Ok(self
                .cmd("GET", &format!("/element/{e}/text"), None)?
                .as_str()
                .unwrap_or("")
                .to_owned())
        })
    }

    fn retry_stale<T>(&self, f: impl Fn() -> Result<T, String>) -> Result<T, String> {
        let mut last = String::new();
        for _ in 0..10 {
            match f() {
                Err(e) if e.contains("stale element") => {
                    last = e;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
        Err(last)
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub fn eval(&self, script: &str, args: Value) -> Result<Value, String> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Run an asynchronous script: it ends by calling `arguments[arguments.length - 1](value)`.
    pub fn eval_async(&self, script: &str) -> Result<Value, String> {
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Poll `script` until it returns something truthy (not null, false, "" or 0), up to
    /// `timeout`; that value.
    pub fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.eval(script, json!([])) {
                Ok(v) => {
                    let truthy = match &v {
                        Value::Null => false,
                        Value::Bool(b) => *b,
                        Value::String(s) => !s.is_empty(),
                        Value::Number(n) => n.as_f64() != Some(0.0),
                        _ => true,
                    };
                    if truthy {
                        return Ok(v);
                    }
                    v
                }
                Err(e) => Value::String(e),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "{what}: not within {timeout:?} (last: {last}); page: {}",
                    self.eval(
                        "return document.body ? document.body.innerText : ''",
                        json!([])
                    )
                    .unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Save a PNG of the window.
    pub fn screenshot(&self, file: &Path) -> Result<(), String> {
        let v = self.cmd("GET", "/screenshot", None)?;
        let png = decode_base64(v.as_str().unwrap_or(""))?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(file, png).map_err(|e| format!("{}: {e}", file.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(
            super::decode_base64("aGVsbG8=").as_deref(),
            Ok(&b"hello"[..])
        );
        assert_eq!(
            super::decode_base64("AAEC/w==").as_deref(),
            Ok(&[0u8, 1, 2, 255][..])
        );
        assert!(super::decode_base64("a*").is_err());
    }
}
