//! `mirrorkit demo`: a two-node cluster on this machine. Each node is a network namespace
//! (`mkdemo-alpha`, `mkdemo-beta`) plugged into a bridge of this machine (`mkdemo0`, the
//! "LAN", 10.77.0.100/24), running a real `mirrorkit daemon` with the demo module: the notes
//! application behind the virtual IP 10.77.0.80, its data replicated between the nodes.
//! Everything it creates goes on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mirrorkit_cluster::machine::StateKind;
use mirrorkit_node::api::{self, Reply, Request};
use mirrorkit_node::config::{
    ClusterFile, ConsoleSection, DEFAULT_CONSOLE_LISTEN, DEFAULT_CONSOLE_PORT,
};
use mirrorkit_node::demo_module::{module_toml, DemoModule};

const NODES: [&str; 2] = ["alpha", "beta"];
const BRIDGE: &str = "mkdemo0";
const NET: &str = "10.77.0";
const VIP: &str = "10.77.0.80";
const PORT: u16 = 8080;
const DATA_DIR: &str = "/var/lib/mirrorkit-demo/data";

fn ns(node: &str) -> String {
    format!("mkdemo-{node}")
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What the demo set up, undone on drop (also after an error half-way).
struct Demo {
    base: PathBuf,
    daemons: Vec<(String, Child)>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for (node, child) in &mut self.daemons {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                eprintln!("{node}: the daemon did not stop within 20 s: killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        cleanup(&self.base);
    }
}

/// Remove what a demo (this one, or one that was killed) left: namespaces, bridge, mounts,
/// the application.
fn cleanup(base: &Path) {
    let _ = Command::new("pkill")
        .arg("-f")
        .arg(format!("data {}", base.display()))
        .output();
    for node in NODES {
        let d = base
            .join(node)
            .join("data")
            .join(DATA_DIR.trim_start_matches('/'));
        let _ = Command::new("umount").arg("-l").arg(&d).output();
        let _ = Command::new("ip")
            .args(["netns", "del", &ns(node)])
            .output();
    }
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
}

fn node_addrs() -> Vec<(&'static str, std::net::IpAddr)> {
    NODES
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, std::net::IpAddr::from([10, 77, 0, i as u8 + 1])))
        .collect()
}

fn start_daemon(exe: &Path, base: &Path, node: &str) -> Result<Child> {
    let log = base.join(node).join("daemon.log");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", ns(node)))
        .arg(exe)
        .args(["daemon", "--config"])
        .arg(base.join(node).join("cluster.toml"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .context("cannot start the daemon with nsenter (util-linux)")
}

fn states(base: &Path, rt: &tokio::runtime::Runtime) -> Vec<Option<StateKind>> {
    NODES
        .iter()
        .map(|n| {
            let sock = base.join(n).join("run/mirrorkit.sock");
            match rt.block_on(api::call(&sock, &Request::Status)) {
                Ok(Reply::Status(s)) => s.modules.first().and_then(|m| m.state),
                _ => None,
            }
        })
        .collect()
}

pub fn run(base: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces, mounts FUSE file systems and moves a virtual IP: run it as root (sudo)");
    }
    let exe = crate::self_exe()?;
    let app = exe.with_file_name("mirrorkit-demo-app");
    if !app.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --bins` (the demo runs it as its application)",
            app.display()
        );
    }
    cleanup(base);
    let _ = std::fs::remove_dir_all(base);
    let mut demo = Demo {
        base: base.to_owned(),
        daemons: Vec::new(),
    };
    let md = base.join("modules/demo");
    std::fs::create_dir_all(&md).with_context(|| format!("cannot create {}", md.display()))?;
    for (name, text) in [
        (
            "start_prim",
            include_str!("../../../modules/demo/start_prim"),
        ),
        ("stop_prim", include_str!("../../../modules/demo/stop_prim")),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let p = md.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    let module = DemoModule {
        name: "demo",
        dir: DATA_DIR,
        vip: VIP.parse()?,
        prefix_len: 24,
        interface: "eth0",
        port: PORT,
        app: &app,
        heartbeat: "default",
        default_primary: None,
        checkers: true,
        extra: "",
        more_scripts: "",
        mirror_extra: "",
    };
    std::fs::write(md.join("module.toml"), module_toml(&module))?;
    mirrorkit_net::pki::generate_cluster(&base.join("certs"), "demo", &NODES, true)?;
    // The console's password: new for every demo, printed below.
    let password = mirrorkit_console::auth::random_hex()[..16].to_owned();
    let password_hash =
        mirrorkit_console::auth::hash_password(&password).map_err(|e| anyhow!(e))?;

    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{NET}.100/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    for (i, node) in NODES.iter().enumerate() {
        let n = ns(node);
        ip(&["netns", "add", &n])?;
        ip(&["-n", &n, "link", "set", "lo", "up"])?;
        let port = format!("mkd-{node}");
        ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &n,
        ])?;
        ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
        ip(&[
            "-n",
            &n,
            "addr",
            "add",
            &format!("{NET}.{}/24", i + 1),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &n, "link", "set", "eth0", "up"])?;
        let data = base
            .join(node)
            .join("data")
            .join(DATA_DIR.trim_start_matches('/'));
        std::fs::create_dir_all(&data)?;
        let mut cf = ClusterFile::on_one_machine(
            "demo",
            node,
            &node_addrs(),
            base,
            &base.join("certs"),
            &base.join("modules"),
        );
        cf.console = Some(ConsoleSection {
            listen: DEFAULT_CONSOLE_LISTEN,
            admin_password_hash: Some(password_hash.clone()),
        });
        let text = cf.to_toml().map_err(|e| anyhow!(e))?;
        std::fs::write(base.join(node).join("cluster.toml"), text)?;
    }
    for node in NODES {
        let child = start_daemon(&exe, base, node)?;
        demo.daemons.push((node.to_owned(), child));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = states(base, &rt);
        if s.contains(&Some(StateKind::Prim)) && s.contains(&Some(StateKind::Second)) {
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "the demo cluster did not settle within 60 s (states {s:?}); see {}/alpha/daemon.log and {}/beta/daemon.log",
                base.display(),
                base.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cfg = |n: &str| base.join(n).join("cluster.toml").display().to_string();
    let pid = |n: &str| {
        demo.daemons
            .iter()
            .find(|(d, _)| d == n)
            .map_or(0, |(_, c)| c.id())
    };
    println!(
        "\nmirrorkit demo cluster is up: nodes alpha ({NET}.1) and beta ({NET}.2), module `demo`.\n\
         \n\
         The application (notes), through the virtual IP:  http://{VIP}:{PORT}/\n\
         \x20 curl -d note=hello http://{VIP}:{PORT}/notes ; curl http://{VIP}:{PORT}/notes\n\
         The web console, on either node (user admin, password {password}):\n\
         \x20 https://{NET}.1:{DEFAULT_CONSOLE_PORT}/  or  https://{NET}.2:{DEFAULT_CONSOLE_PORT}/\n\
         \x20 (its certificate comes from the demo cluster's own CA, {base}/certs/ca.pem: let the\n\
         \x20 browser accept it)\n\
         The CLI shows the same:\n\
         \x20 {exe} status --config {a}\n\
         \n\
         Try:\n\
         \x20 switch the primary:   {exe} swap demo --config {a}\n\
         \x20 the module's log:     {exe} log demo --config {a}\n\
         \x20 a failover:           kill -9 <daemon of the primary> (alpha: pid {pa}, beta: pid {pb}); the other node takes the\n\
         \x20                       virtual IP in about 2 s and serves every note. Bring the node back with\n\
         \x20                       nsenter --net=/var/run/netns/mkdemo-<node> {exe} daemon --config {base}/<node>/cluster.toml &\n\
         \x20 daemon logs:          {base}/alpha/daemon.log, {base}/beta/daemon.log\n\
         \n\
         Ctrl-C stops the demo and removes everything it created.",
        exe = exe.display(),
        a = cfg("alpha"),
        pa = pid("alpha"),
        pb = pid("beta"),
        base = base.display(),
    );
    rt.block_on(crate::wait_for_signal());
    println!("stopping the demo cluster...");
    drop(demo);
    Ok(())
}
