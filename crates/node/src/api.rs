//! The daemon's local control socket (`<run>/mirrorkit.sock`, mode 0600: root only) and its
//! client, used by the console and by the CLI (on a node without a console, with `--socket`,
//! or when the console does not answer). One JSON request per line, one JSON reply per line.

use std::path::Path;

use mirrorkit_cluster::machine::{Progress, StateKind, Verb};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status,
    Verb {
        module: String,
        verb: Verb,
        who: String,
    },
    Log {
        module: String,
        lines: usize,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Status(NodeStatus),
    /// A verb ended: the state it ended in.
    Done {
        state: StateKind,
    },
    Log(Vec<mirrorkit_scripts::Entry>),
    Error(String),
}

/// What a node knows of the cluster: its own modules and the peer's last statuses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub cluster: String,
    pub node: String,
    pub peer: String,
    /// The witness (name and address), when the cluster has one.
    #[serde(default)]
    pub witness: Option<String>,
    pub heartbeats: Vec<NetStatus>,
    pub modules: Vec<ModuleStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetStatus {
    pub name: String,
    pub up: bool,
    pub last_heard_ms_ago: Option<u64>,
    /// Round-trip time on the network's current connection (QUIC's smoothed estimate).
    #[serde(default)]
    pub rtt_us: Option<u64>,
    /// Why the network was last down; cleared when a connection is established.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Heartbeats heard, and heartbeats the peer sent that never arrived, since the daemon
    /// started.
    #[serde(default)]
    pub received: u64,
    #[serde(default)]
    pub missed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModuleStatus {
    pub name: String,
    /// Problems that keep the module from running on this node (invalid module.toml,
    /// unsupported feature); empty when it runs.
    pub problems: Vec<String>,
    pub state: Option<StateKind>,
    pub colour: Option<String>,
    pub reason: String,
    /// How long ago it entered its state.
    pub since_ms_ago: u64,
    pub progress: Option<Progress>,
    pub split_brain: bool,
    /// Why the latest change of the module's file is not applied (it is invalid, or waits
    /// for the module to stop here); empty when the running configuration is the file's.
    #[serde(default)]
    pub config_problems: Vec<String>,
    /// The replication link on this node, when mounted as primary: mode and reason.
    pub mirror: Option<String>,
    /// The peer's module, as it last said (state and reason), if heard since it was lost.
    pub peer_state: Option<StateKind>,
    pub peer_reason: Option<String>,
    pub peer_in_sync: Option<bool>,
    /// This node's checkers of the module: state and last result.
    #[serde(default)]
    pub checkers: Vec<mirrorkit_checkers::CheckerStatus>,
    /// The replication engine's counters on this node: as primary (operations and bytes
    /// sent, synchronisation progress with rate and ETA, replication latency) or as
    /// secondary (operations applied); `None` when neither runs here.
    #[serde(default)]
    pub replication: Option<mirrorkit_engine::status::Status>,
    /// Application data replicated per second, over the last two seconds (primary in sync).
    #[serde(default)]
    pub write_rate: Option<u64>,
}

/// Send one request to the daemon behind `socket` and read its reply.
pub async fn call(socket: &Path, req: &Request) -> Result<Reply, String> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot reach the mirrorkit daemon at {}: {e} (is it running on this node? `systemctl status mirrorkit`; run as root)",
            socket.display()
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(req).map_err(|e| format!("cannot encode: {e}"))?;
    line.push('\n');
    w.write_all(line.as_bytes())
        .await
        .map_err(|e| format!("cannot send to the daemon: {e}"))?;
    let mut reader = BufReader::new(r);
    let mut answer = String::new();
    let n = reader
        .read_line(&mut answer)
        .await
        .map_err(|e| format!("cannot read the daemon's answer: {e}"))?;
    if n == 0 {
        return Err("the daemon closed the connection without answering (it may be stopping; see its log: journalctl -u mirrorkit)".into());
    }
    serde_json::from_str(&answer).map_err(|e| format!("unreadable answer from the daemon: {e}"))
}

/// The status as a table, for `mirrorkit status` over the control socket.
pub fn table(s: &NodeStatus) -> String {
    let mut out = format!("cluster {}, node {} (peer {})\n", s.cluster, s.node, s.peer);
    for h in &s.heartbeats {
        out.push_str(&heartbeat_line(h));
        out.push('\n');
    }
    out.push_str(&format!(
        "\n{:<16} {:<11} {:<11} {}\n",
        "MODULE",
        s.node.to_uppercase(),
        s.peer.to_uppercase(),
        "REASON"
    ));
    for m in &s.modules {
        let here = m
            .state
            .map_or("INVALID".to_owned(), |k| k.name().to_owned());
        let there = m.peer_state.map_or("?".to_owned(), |k| k.name().to_owned());
        out.push_str(&format!(
            "{:<16} {:<11} {:<11} {}\n",
            m.name,
            here,
            there,
            module_reason(m)
        ));
        if let Some(line) = replication_line(m) {
            out.push_str(&format!("{:<16} {line}\n", ""));
        }
    }
    let checkers: Vec<_> = s
        .modules
        .iter()
        .flat_map(|m| m.checkers.iter().map(move |c| (&m.name, c)))
        .collect();
    if !checkers.is_empty() {
        out.push_str(&format!(
            "\n{:<16} {:<16} {:<11} {:<8} {}\n",
            "MODULE", "CHECKER", "SCOPE", "STATE", "LAST RESULT"
        ));
        for (module, c) in checkers {
            out.push_str(&format!("{module:<16} {}\n", checker_line(c)));
        }
    }
    out.push_str(&witness_line(s.witness.as_deref()));
    out
}

/// A heartbeat network on one line: up or down, when the peer was last heard, round-trip
/// time, heartbeats heard and missed, the last error.
pub fn heartbeat_line(h: &NetStatus) -> String {
    format!(
        "heartbeat {}: {}{}{}, {} heard, {} missed{}",
        h.name,
        if h.up { "up" } else { "DOWN" },
        h.last_heard_ms_ago
            .map(|ms| format!(", peer heard {ms} ms ago"))
            .unwrap_or_default(),
        h.rtt_us
            .map(|us| format!(", rtt {}", micros(us)))
            .unwrap_or_default(),
        h.received,
        h.missed,
        h.last_error
            .as_ref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default()
    )
}

/// Why the module is in its state on this node: its problems if it cannot run, else its
/// reason, after the resync's progress and pace while one runs.
pub fn module_reason(m: &ModuleStatus) -> String {
    let reason = if m.problems.is_empty() {
        m.reason.clone()
    } else {
        m.problems.join("; ")
    };
    let Some(p) = m.progress else {
        return reason;
    };
    let pace = m
        .replication
        .as_ref()
        .filter(|r| r.sync_rate > 0)
        .map(|r| {
            format!(
                " at {}/s{}",
                bytes(r.sync_rate),
                r.sync_eta_secs
                    .map(|s| format!(", ETA {s} s"))
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default();
    format!(
        "resync {}% ({} of {}{pace}); {reason}",
        p.percent(),
        bytes(p.done_bytes),
        bytes(p.total_bytes)
    )
}

/// A checker's row after its module's name: name, scope, state, last result, restarts.
pub fn checker_line(c: &mirrorkit_checkers::CheckerStatus) -> String {
    let state = serde_json::to_value(c.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "{:<16} {:<11} {:<8} {}{}",
        c.name,
        c.scope.as_str(),
        state,
        c.last_result,
        if c.restarts_in_window > 0 {
            format!(" ({} restarts in the window)", c.restarts_in_window)
        } else {
            String::new()
        }
    )
}

/// The witness, or the warning that there is none, after a blank line.
pub fn witness_line(witness: Option<&str>) -> String {
    match witness {
        Some(w) => format!("\nwitness: {w}\n"),
        None => "\nno witness: if the link between the nodes is cut, both may become primary (split brain); see docs/operations.md\n".to_owned(),
    }
}

/// The replication figures of a module as primary, on one line (`None` elsewhere).
pub fn replication_line(m: &ModuleStatus) -> Option<String> {
    let r = m.replication.as_ref().filter(|r| r.role == "primary")?;
    let mut parts = vec![format!("replication {}", r.mode)];
    if let Some(rate) = m.write_rate {
        parts.push(format!("{}/s written", bytes(rate)));
    }
    if r.ack_latency_recent_us > 0 {
        parts.push(format!(
            "latency {} (recent average)",
            micros(r.ack_latency_recent_us)
        ));
    }
    parts.push(format!(
        "{} operations, {} of data sent",
        r.ops_sent,
        bytes(r.data_bytes_sent)
    ));
    Some(parts.join(", "))
}

/// A byte count for people: 1023 B, 1.5 KiB, 12.3 MiB, 4.0 GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration in microseconds for people: 850 µs, 1.25 ms, 2.1 s.
pub fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.1} s", us as f64 / 1e6)
    }
}

/// Serve the control socket: each connection's request goes to `handle`.
pub async fn serve<F, Fut>(socket: &Path, handle: F) -> Result<(), String>
where
    F: Fn(Request) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Reply> + Send,
{
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot remove the old socket {}: {e}",
                socket.display()
            ))
        }
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", socket.display()))?;
    }
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut reader = BufReader::new(r);
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let reply = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => handle(req).await,
                    Err(e) => Reply::Error(format!("malformed request: {e}")),
                };
                if let Ok(mut text) = serde_json::to_string(&reply) {
                    text.push('\n');
                    let _ = w.write_all(text.as_bytes()).await;
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A malformed request gets an error naming the problem; the handler never sees it.
    #[tokio::test]
    async fn malformed_requests_are_answered_with_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("run/mirrorkit.sock");
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s = seen.clone();
        serve(&sock, move |_req| {
            let s = s.clone();
            async move {
                s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Reply::Error("handled".into())
            }
        })
        .await
        .expect("serve");
        let mode = std::fs::metadata(&sock).expect("socket").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        for bad in [
            "not json\n",
            "{\"op\":\"launch\"}\n",
            "{\"op\":\"verb\",\"module\":\"m\"}\n",
        ] {
            let stream = tokio::net::UnixStream::connect(&sock)
                .await
                .expect("connect");
            let (r, mut w) = stream.into_split();
            w.write_all(bad.as_bytes()).await.expect("send");
            let mut answer = String::new();
            BufReader::new(r)
                .read_line(&mut answer)
                .await
                .expect("read");
            match serde_json::from_str::<Reply>(&answer).expect("a reply") {
                Reply::Error(e) => assert!(e.starts_with("malformed request"), "{bad}: {e}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
        // A well-formed one reaches the handler.
        let r = call(&sock, &Request::Status).await.expect("call");
        assert!(matches!(r, Reply::Error(e) if e == "handled"));
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn people_units() {
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12_897_484), "12.3 MiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(1_250), "1.25 ms");
        assert_eq!(micros(2_100_000), "2.1 s");
    }

    #[test]
    fn the_table_shows_replication_resync_and_heartbeat_figures() {
        let primary = mirrorkit_engine::status::Status {
            role: "primary".into(),
            mode: "syncing".into(),
            ops_sent: 1234,
            data_bytes_sent: 3 << 30,
            sync_rate: 80 << 20,
            sync_eta_secs: Some(7),
            ack_latency_recent_us: 410,
            ..Default::default()
        };
        let s = NodeStatus {
            cluster: "c".into(),
            node: "alpha".into(),
            peer: "beta".into(),
            witness: None,
            heartbeats: vec![NetStatus {
                name: "lan".into(),
                up: true,
                last_heard_ms_ago: Some(12),
                rtt_us: Some(350),
                last_error: None,
                received: 1000,
                missed: 3,
            }],
            modules: vec![ModuleStatus {
                name: "db".into(),
                problems: vec![],
                state: Some(StateKind::Prim),
                colour: None,
                reason: "in sync".into(),
                since_ms_ago: 0,
                progress: Some(Progress {
                    done_bytes: 450 << 20,
                    total_bytes: 1000 << 20,
                }),
                split_brain: false,
                config_problems: vec![],
                mirror: None,
                peer_state: Some(StateKind::Second),
                peer_reason: None,
                peer_in_sync: Some(false),
                checkers: vec![],
                replication: Some(primary),
                write_rate: Some(5 << 20),
            }],
        };
        let t = table(&s);
        assert!(
            t.contains("heartbeat lan: up, peer heard 12 ms ago, rtt 350 µs, 1000 heard, 3 missed"),
            "{t}"
        );
        assert!(
            t.contains("resync 45% (450.0 MiB of 1000.0 MiB at 80.0 MiB/s, ETA 7 s); in sync"),
            "{t}"
        );
        assert!(
            t.contains("replication syncing, 5.0 MiB/s written, latency 410 µs (recent average), 1234 operations, 3.0 GiB of data sent"),
            "{t}"
        );
    }
}
