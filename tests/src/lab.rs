//! A two-node cluster on one machine, in network namespaces: a client namespace holding a
//! bridge (the "LAN"), and one namespace per server, each with an `eth0` plugged into that
//! bridge. Each server runs a real `mirrorkit daemon` (entered with `nsenter --net`, so that
//! its FUSE mounts stay visible to the test), with its own state, run and data directories.
//! The test talks to the daemons with the real CLI (run in the node's namespace, as on a node:
//! through the node's console when the lab has one), and to the application through the
//! virtual IP from the client namespace.
//!
//! Needs root and `ip netns`: `require_lab` skips (or fails under CI) otherwise.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorkit_node::config::ClusterFile;
use mirrorkit_node::demo_module::{module_toml, DemoModule};

use crate::{mirrorkit_bin, require_root_and_fuse};

/// The LAN: 10.77.0.0/24; the client is .100, node i is .(i+1), virtual IPs from .80.
pub const LAN_PREFIX: &str = "10.77.0";
pub const NODES: [&str; 2] = ["alpha", "beta"];

/// Root, FUSE and network namespaces, or skip (fail under CI).
pub fn require_lab(test: &str) -> bool {
    if !require_root_and_fuse(test) {
        return false;
    }
    let ok = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    crate::skip_unless_ci(&format!("{test}: needs `ip netns` (iproute2)"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Run `f` on a thread whose network namespace is `ns` (sockets it creates live there).
pub fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "setns {}: {}",
            ns.display(),
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

/// One HTTP/1.0 request; returns status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    http_within(addr, method, path, body, Duration::from_millis(1000))
}

/// As `http`, connecting within `connect`.
pub fn http_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    connect: Duration,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s =
        TcpStream::connect_timeout(&addr, connect).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: lab\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A client that posts numbered notes as fast as it can, from the client namespace, and keeps
/// those the application acknowledged (201: the note is fsynced).
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl Writer {
    /// Start posting `<prefix>-<n>` to `addr` from namespace `ns`.
    pub fn start(ns: &Path, addr: SocketAddr, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, prefix, flag) = (ns.to_owned(), prefix.to_owned(), stop.clone());
        let handle = std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).expect("namespace");
            // SAFETY: a valid namespace fd; only this thread changes namespace.
            let r =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            let mut acked = Vec::new();
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let note = format!("{prefix}-{n}");
                n += 1;
                let r = http_within(addr, "POST", "/notes", &note, Duration::from_millis(200));
                if matches!(r, Ok((201, _))) {
                    acked.push(note);
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            acked
        });
        Writer { stop, handle }
    }

    /// Stop; the notes the application acknowledged.
    pub fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

/// A module of the lab: the demo module, copied with its own name, port and virtual IP.
#[derive(Clone, Debug)]
pub struct LabModule {
    pub name: String,
    pub port: u16,
    /// Last byte of the virtual IP in the LAN.
    pub vip: u8,
    pub default_primary: Option<String>,
    pub heartbeat: &'static str,
    /// The shipped demo module's checkers (port, process).
    pub checkers: bool,
    /// More TOML for module.toml (checkers, `[notify]`).
    pub extra: String,
    /// More lines of its `[scripts]` (the slots other than `start_prim`, `stop_prim`).
    pub scripts: String,
    /// More executable files of the module folder: name and content.
    pub files: Vec<(String, String)>,
    /// More lines of its `[[mirror]]` table (`include`, `exclude`).
    pub mirror_extra: String,
}

impl LabModule {
    pub fn demo(name: &str, port: u16, vip: u8) -> LabModule {
        LabModule {
            name: name.into(),
            port,
            vip,
            default_primary: None,
            heartbeat: "default",
            checkers: false,
            extra: String::new(),
            scripts: String::new(),
            files: Vec::new(),
            mirror_extra: String::new(),
        }
    }

    pub fn vip_addr(&self) -> SocketAddr {
        SocketAddr::new(
            format!("{LAN_PREFIX}.{}", self.vip).parse().expect("ip"),
            self.port,
        )
    }

    /// The replicated directory, as the module declares it.
    pub fn dir(&self) -> String {
        format!("/var/lib/mirrorkit-lab/{}", self.name)
    }
}

pub struct LabNode {
    pub name: String,
    pub ns: Netns,
    pub config: PathBuf,
    pub base: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// The witness of a lab built `with_witness`: its own namespace on the LAN, at `.3`.
pub struct LabWitness {
    pub ns: Netns,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// The witness's address in the LAN.
pub const WITNESS_ADDR: &str = "10.77.0.3:7450";

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub client: Netns,
    pub nodes: Vec<LabNode>,
    pub witness: Option<LabWitness>,
    pub modules: Vec<LabModule>,
    keep: bool,
    /// Unique per lab: names its namespaces, its cluster and so its scripts' cgroups.
    tag: String,
}

static LABS: AtomicU32 = AtomicU32::new(0);

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

impl Lab {
    /// Build the namespaces, certificates, cluster files and module folders; no daemon runs yet.
    pub fn new(modules: Vec<LabModule>) -> Lab {
        Lab::build(modules, false)
    }

    /// As `new`, with a witness in a third server namespace (not started yet).
    pub fn with_witness(modules: Vec<LabModule>) -> Lab {
        Lab::build(modules, true)
    }

    /// Plug a namespace's `eth0` into the LAN bridge (port `port`) with address `addr`/24.
    fn plug(client: &Netns, ns: &Netns, port: &str, addr: &str) {
        ip(&[
            "-n",
            &client.name,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        ip(&[
            "-n",
            &client.name,
            "link",
            "set",
            port,
            "master",
            "br0",
            "up",
        ]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
    }

    fn build(modules: Vec<LabModule>, with_witness: bool) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("mirrorkit-lab-")
            .tempdir()
            .expect("tempdir");
        let tag = format!(
            "{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let client = Netns::new(format!("mkl-{tag}-c"));
        // No IPv6 on the LAN: its link-local addresses would appear a second or two after the
        // links come up (duplicate address detection), and a browser in the client namespace
        // takes such a change for a new network and aborts its requests (ERR_NETWORK_CHANGED).
        // Set before the links exist, so that none of them ever has an IPv6 address.
        run(Command::new("ip").args([
            "netns",
            "exec",
            &client.name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]));
        ip(&["-n", &client.name, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &client.name,
            "addr",
            "add",
            &format!("{LAN_PREFIX}.100/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &client.name, "link", "set", "br0", "up"]);
        let bin = mirrorkit_bin();
        run(Command::new(&bin)
            .args([
                "certs",
                "--cluster",
                "lab",
                "--nodes",
                if with_witness {
                    "alpha,beta,witness"
                } else {
                    "alpha,beta"
                },
                "--dir",
            ])
            .arg(dir.path().join("certs")));
        // Module folders.
        let demo_app = bin.with_file_name("mirrorkit-demo-app");
        assert!(
            demo_app.exists(),
            "{} not found: build it first (cargo build --bin mirrorkit-demo-app)",
            demo_app.display()
        );
        let mods = dir.path().join("modules");
        for m in &modules {
            let md = mods.join(&m.name);
            std::fs::create_dir_all(&md).expect("module dir");
            for f in ["start_prim", "stop_prim"] {
                std::fs::copy(workspace_root().join("modules/demo").join(f), md.join(f))
                    .expect("copy script");
            }
            let dir = m.dir();
            let toml = module_toml(&DemoModule {
                name: &m.name,
                dir: &dir,
                vip: m.vip_addr().ip(),
                prefix_len: 24,
                interface: "eth0",
                port: m.port,
                app: &demo_app,
                heartbeat: m.heartbeat,
                default_primary: m.default_primary.as_deref(),
                checkers: m.checkers,
                extra: &m.extra,
                more_scripts: &m.scripts,
                mirror_extra: &m.mirror_extra,
            });
            std::fs::write(md.join("module.toml"), toml).expect("module.toml");
            for (f, text) in &m.files {
                use std::os::unix::fs::PermissionsExt;
                let p = md.join(f);
                std::fs::write(&p, text).expect("module file");
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            }
        }
        let mut nodes = Vec::new();
        for (i, name) in NODES.iter().enumerate() {
            let ns = Netns::new(format!("mkl-{tag}-{}", &name[..1]));
            Lab::plug(
                &client,
                &ns,
                &format!("v{}", &name[..1]),
                &format!("{LAN_PREFIX}.{}", i + 1),
            );
            let base = dir.path().join(name);
            for m in &modules {
                std::fs::create_dir_all(base.join("data").join(m.dir().trim_start_matches('/')))
                    .expect("data dir");
            }
            let addrs: Vec<(&str, std::net::IpAddr)> = NODES
                .iter()
                .enumerate()
                .map(|(k, n)| (*n, format!("{LAN_PREFIX}.{}", k + 1).parse().expect("ip")))
                .collect();
            let mut cf = ClusterFile::on_one_machine(
                &format!("lab-{tag}"),
                name,
                &addrs,
                dir.path(),
                &dir.path().join("certs"),
                &mods,
            );
            if with_witness {
                cf.witness = Some(mirrorkit_node::config::WitnessRef {
                    name: "witness".into(),
                    address: WITNESS_ADDR.parse().expect("witness address"),
                });
            }
            let cfg = cf.to_toml().expect("cluster file");
            let config = base.join("cluster.toml");
            std::fs::write(&config, cfg).expect("cluster file");
            nodes.push(LabNode {
                name: (*name).to_owned(),
                ns,
                config,
                log: base.join("daemon.log"),
                base,
                child: None,
            });
        }
        let witness = with_witness.then(|| {
            let ns = Netns::new(format!("mkl-{tag}-w"));
            Lab::plug(&client, &ns, "vw", &format!("{LAN_PREFIX}.3"));
            let base = dir.path().join("witness");
            std::fs::create_dir_all(&base).expect("witness dir");
            let config = base.join("witness.toml");
            let text = format!(
                "cluster = \"lab-{tag}\"\nname = \"witness\"\nlisten = \"{WITNESS_ADDR}\"\ncerts = \"{}\"\nstate_dir = \"{}\"\nnodes = [\"alpha\", \"beta\"]\n",
                dir.path().join("certs").display(),
                base.join("state").display()
            );
            std::fs::write(&config, text).expect("witness.toml");
            LabWitness {
                ns,
                config,
                log: base.join("witness.log"),
                child: None,
            }
        });
        Lab {
            dir,
            client,
            nodes,
            witness,
            modules,
            keep: std::env::var_os("MIRRORKIT_KEEP_LAB").is_some(),
            tag,
        }
    }

    pub fn index(&self, node: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == node)
            .unwrap_or_else(|| panic!("no node {node}"))
    }

    /// Start node `i`'s daemon.
    pub fn start(&mut self, i: usize) {
        let bin = mirrorkit_bin();
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "{} already runs", n.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("log");
        let filter = std::env::var("MIRRORKIT_TEST_LOG").unwrap_or_else(|_| "info".into());
        let child = Command::new("nsenter")
            .arg(format!("--net={}", n.ns.path().display()))
            .arg(&bin)
            .args(["daemon", "--config"])
            .arg(&n.config)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start daemon");
        n.child = Some(child);
    }

    /// Start the witness (`mirrorkit witness`) in its namespace.
    pub fn start_witness(&mut self) {
        let bin = mirrorkit_bin();
        let w = self.witness.as_mut().expect("a lab with a witness");
        assert!(w.child.is_none(), "the witness already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&w.log)
            .expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", w.ns.path().display()))
            .arg(&bin)
            .args(["witness", "--config"])
            .arg(&w.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start witness");
        w.child = Some(child);
    }

    /// SIGKILL the witness.
    pub fn kill_witness(&mut self) {
        if let Some(mut c) = self.witness.as_mut().and_then(|w| w.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn witness_log(&self) -> String {
        self.witness
            .as_ref()
            .and_then(|w| std::fs::read_to_string(&w.log).ok())
            .unwrap_or_default()
    }

    /// Cut the witness off the LAN, or plug it back.
    pub fn set_witness_link(&self, up: bool) {
        ip(&[
            "-n",
            &self.client.name,
            "link",
            "set",
            "vw",
            if up { "up" } else { "down" },
        ]);
    }

    /// Cut (or restore) the path between the two nodes only: each drops what it sends to the
    /// other (a blackhole route), while both still reach the client and the witness.
    pub fn cut_between_nodes(&self, cut: bool) {
        for (i, n) in self.nodes.iter().enumerate() {
            let other = format!("{LAN_PREFIX}.{}/32", 2 - i);
            ip(&[
                "-n",
                &n.ns.name,
                "route",
                if cut { "add" } else { "del" },
                "blackhole",
                &other,
            ]);
        }
    }

    /// Cut (or restore) node `i`'s path to the client (a blackhole route to it): the node
    /// loses its "router" while it still reaches its peer.
    pub fn set_route_to_client(&self, i: usize, up: bool) {
        let client = format!("{}/32", client_addr());
        ip(&[
            "-n",
            &self.nodes[i].ns.name,
            "route",
            if up { "del" } else { "add" },
            "blackhole",
            &client,
        ]);
    }

    /// Node `i`'s status straight from its control socket (no process started: fast enough to
    /// sample every few milliseconds).
    pub fn status_now(&self, i: usize) -> Option<mirrorkit_node::api::NodeStatus> {
        let cf = ClusterFile::load(&self.nodes[i].config).ok()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        // A daemon that does not answer within 2 s counts as not answering.
        match rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(2),
                mirrorkit_node::api::call(&cf.socket(), &mirrorkit_node::api::Request::Status),
            )
            .await
        }) {
            Ok(Ok(mirrorkit_node::api::Reply::Status(s))) => Some(s),
            _ => None,
        }
    }

    /// SIGKILL node `i`'s daemon (what it started keeps running, as after a daemon crash).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM node `i`'s daemon and wait for it (it stops its modules first).
    pub fn stop(&mut self, i: usize, timeout: Duration) {
        if let Some(mut c) = self.nodes[i].child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!(
                "{} did not stop within {timeout:?}\n{}",
                self.nodes[i].name,
                self.log(i)
            );
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Run the CLI on node `i` (in its network namespace, so that it reaches its node's
    /// console on loopback as on a real node).
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        self.cli_with(i, &self.nodes[i].config, args)
    }

    /// Run the CLI on node `i` with the cluster file `config`.
    pub fn cli_with(&self, i: usize, config: &Path, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.nodes[i].ns.path().display()))
            .arg(mirrorkit_bin())
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .expect("run mirrorkit")
    }

    /// Node `i`'s status as that node says it (`mirrorkit status --json`; through a console,
    /// the node's own entry in the cluster view), if its daemon answers.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let out = self.cli(i, &["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        match v.get("nodes").and_then(|n| n.as_array()) {
            Some(nodes) => nodes
                .iter()
                .find(|n| n["node"] == self.nodes[i].name.as_str())
                .map(|n| n["status"].clone())
                .filter(|s| !s.is_null()),
            None => Some(v),
        }
    }

    /// The module's state on node `i` as that node says it.
    pub fn state(&self, i: usize, module: &str) -> Option<String> {
        let s = self.status(i)?;
        let m = s["modules"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == module)?;
        m["state"].as_str().map(str::to_owned)
    }

    /// Wait until the module's states on the nodes are `want` (None: anything, or down).
    pub fn wait_states(&self, module: &str, want: [Option<&str>; 2], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = (None, None);
        while Instant::now() < deadline {
            last = (self.state(0, module), self.state(1, module));
            let ok =
                |w: Option<&str>, got: &Option<String>| w.is_none_or(|w| got.as_deref() == Some(w));
            if ok(want[0], &last.0) && ok(want[1], &last.1) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "module {module}: wanted {want:?} within {timeout:?}, last seen {last:?}\nstatus alpha: {}\nstatus beta: {}\n--- alpha log:\n{}\n--- beta log:\n{}",
            self.status(0).map(|s| s.to_string()).unwrap_or_default(),
            self.status(1).map(|s| s.to_string()).unwrap_or_default(),
            tail(&self.log(0), 80),
            tail(&self.log(1), 80)
        );
    }

    /// An HTTP request to `addr` from the client namespace.
    pub fn http(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
        in_netns(&self.client.path(), move || {
            http(addr, &method, &path, &body)
        })
    }

    /// Cut node `i` off the LAN (its bridge port down), or plug it back.
    pub fn set_link(&self, i: usize, up: bool) {
        let port = format!("v{}", &self.nodes[i].name[..1]);
        ip(&[
            "-n",
            &self.client.name,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ]);
    }

    /// Where node `i` keeps the module's replicated directory.
    pub fn data_dir(&self, i: usize, module: &LabModule) -> PathBuf {
        self.nodes[i]
            .base
            .join("data")
            .join(module.dir().trim_start_matches('/'))
    }

    /// Whether node `i`'s eth0 holds the module's virtual IP.
    pub fn holds_vip(&self, i: usize, module: &LabModule) -> bool {
        let out = run(Command::new("ip").args([
            "-n",
            &self.nodes[i].ns.name,
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ]));
        String::from_utf8_lossy(&out.stdout).contains(&format!("{LAN_PREFIX}.{}/", module.vip))
    }

    /// A lab whose module `m` is a whole module folder of its own (such as `modules/postgresql`)
    /// rather than the demo module: see `install_module_dir`. No daemon runs yet.
    pub fn with_module_dir(m: LabModule, src: &Path, module_toml: &str, witness: bool) -> Lab {
        let lab = Lab::build(vec![m.clone()], witness);
        lab.install_module_dir(&m, src, module_toml);
        lab
    }

    /// Before the daemons start: replace the lab's folder of module `m` by the files of `src`
    /// (modes kept), with `module_toml` as its `module.toml` (`m.dir()` as its replicated
    /// directory, `m.vip_addr()` as its virtual IP). The lab's directory becomes reachable
    /// (0711) by applications that run as a user other than root, such as PostgreSQL.
    pub fn install_module_dir(&self, m: &LabModule, src: &Path, module_toml: &str) {
        use std::os::unix::fs::PermissionsExt;
        let md = self.dir.path().join("modules").join(&m.name);
        let _ = std::fs::remove_dir_all(&md);
        std::fs::create_dir_all(&md).expect("module dir");
        let entries = std::fs::read_dir(src)
            .unwrap_or_else(|e| panic!("module folder {}: {e}", src.display()));
        for e in entries {
            let e = e.expect("module folder entry");
            if e.file_type().expect("file type").is_file() && e.file_name() != "module.toml" {
                std::fs::copy(e.path(), md.join(e.file_name()))
                    .unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
            }
        }
        std::fs::write(md.join("module.toml"), module_toml).expect("module.toml");
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod lab dir");
    }

    /// Node `i`'s run directory of `module` (`MIRRORKIT_RUN_DIR` of its scripts).
    pub fn run_dir(&self, i: usize, module: &str) -> PathBuf {
        self.nodes[i].base.join("run/modules").join(module)
    }

    /// The cgroup v2 directory in which node `i`'s daemon keeps the processes of `module`'s
    /// scripts (the application), if it exists.
    pub fn module_cgroup(&self, i: usize, module: &str) -> Option<PathBuf> {
        let name = format!("lab-{}-{}-{module}", self.tag, self.nodes[i].name);
        [
            "/sys/fs/cgroup/unified/mirrorkit",
            "/sys/fs/cgroup/mirrorkit",
        ]
        .iter()
        .map(|p| Path::new(p).join(&name))
        .find(|p| p.join("cgroup.procs").exists())
    }

    /// Freeze (or thaw) every process of `module` on node `i` (cgroup v2 freezer); returns once
    /// the kernel reports the cgroup frozen (thawed), so that none of them is inside a system
    /// call any more.
    pub fn freeze_module(&self, i: usize, module: &str, frozen: bool) -> Result<(), String> {
        let cg = self.module_cgroup(i, module).ok_or_else(|| {
            format!(
                "no cgroup of module {module} on {}: cannot freeze it",
                self.nodes[i].name
            )
        })?;
        std::fs::write(cg.join("cgroup.freeze"), if frozen { "1" } else { "0" })
            .map_err(|e| format!("{}/cgroup.freeze: {e}", cg.display()))?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = std::fs::read_to_string(cg.join("cgroup.events")).unwrap_or_default();
            if events.lines().any(|l| l == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{}: not {want} after 30 s: {events}", cg.display()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL every process of `module` on both nodes (their cgroups): what a daemon killed
    /// with SIGKILL leaves running, which `Drop` would otherwise leave behind when the
    /// application does not name the lab's data on its command line.
    pub fn kill_module_processes(&self, module: &str) {
        for i in 0..self.nodes.len() {
            let Some(cg) = self.module_cgroup(i, module) else {
                continue;
            };
            let _ = std::fs::write(cg.join("cgroup.freeze"), "0");
            if std::fs::write(cg.join("cgroup.kill"), "1").is_err() {
                let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: signalling a process of this lab's own module cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    /// Keep the lab's directory (logs, data) when it is dropped, as `MIRRORKIT_KEEP_LAB` does:
    /// for a test that found a problem worth looking at.
    pub fn keep_files(&mut self) {
        self.keep = true;
    }
}

/// The port of the lab nodes' consoles (the default).
pub const CONSOLE_PORT: u16 = mirrorkit_node::config::DEFAULT_CONSOLE_PORT;

impl Lab {
    /// Give both nodes a `[console]` (default port, admin password `password`): their daemons
    /// then serve the web console. Call before starting them.
    pub fn with_console(&self, password: &str) {
        let hash = mirrorkit_console::auth::hash_password(password).expect("password hash");
        for n in &self.nodes {
            mirrorkit_node::config::set_admin_password_hash(&n.config, &hash)
                .expect("console section");
        }
    }

    /// Node `i`'s console, as the client namespace reaches it.
    pub fn console_url(&self, i: usize) -> String {
        format!("https://{LAN_PREFIX}.{}:{CONSOLE_PORT}", i + 1)
    }
}

pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        self.kill_witness();
        // What the daemons started (the application), and their mounts.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!("data {}", self.dir.path().display()))
            .output();
        // Every mount left under the lab's directory (a killed daemon's mirrors: the modules'
        // directories, and any other `[[mirror]]` a test declared), deepest first.
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(|p| p.replace("\\040", " ")))
            .filter(|p| p.starts_with(&root))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for d in mounts {
            let _ = Command::new("umount").arg("-l").arg(&d).output();
        }
        // The scripts' cgroups of this lab's cluster (empty once the application is gone).
        for parent in [
            "/sys/fs/cgroup/unified/mirrorkit",
            "/sys/fs/cgroup/mirrorkit",
        ] {
            let prefix = format!("lab-{}-", self.tag);
            if let Ok(rd) = std::fs::read_dir(parent) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
        }
        if self.keep {
            let p = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("lab kept in {}", p.keep().display());
        }
    }
}

/// The client's address in the LAN.
pub fn client_addr() -> Ipv4Addr {
    format!("{LAN_PREFIX}.100").parse().expect("ip")
}

/// The output of a command that must succeed (stdout and stderr together); panics with it,
/// naming `what`, if it failed.
pub fn ok(out: std::process::Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    text
}
