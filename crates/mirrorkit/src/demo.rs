//! `mirrorkit demo`: two nodes of one mirror on this machine, on loopback.
//!
//! Node `alpha` is primary: the mirror is mounted over `<base>/alpha/data`. Node `beta` is
//! secondary: it holds the copy in `<base>/beta/data`. Until the cluster manager exists the
//! demo shows the replication engine alone.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

const PRIMARY_ADDR: &str = "127.0.0.1:17101";
const SECONDARY_ADDR: &str = "127.0.0.1:17102";

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub fn run(base: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo mounts a FUSE file system and needs root: run it with sudo");
    }
    let exe = crate::self_exe()?;
    for d in ["alpha/data", "alpha/state", "beta/data", "beta/state"] {
        std::fs::create_dir_all(base.join(d))
            .with_context(|| format!("cannot create {}", base.join(d).display()))?;
    }
    let certs = base.join("certs");
    if !certs.join("ca.pem").exists() {
        mirrorkit_net::pki::generate_cluster(&certs, "demo", &["alpha", "beta"], true)?;
    }
    let _ = std::fs::write(
        base.join("alpha/data/hello.txt"),
        b"Hello from mirrorkit. Edit me in alpha/data and watch beta/data.\n",
    );
    let log = |name: &str| -> Result<Stdio> {
        Ok(std::fs::File::create(base.join(format!("{name}.log")))?.into())
    };
    let node = |role: &str, name: &str, listen: &str, peer: &str| -> Result<Node> {
        let child = Command::new(&exe)
            .args(["mirror", role, "--mirror", "demo", "--node", name])
            .arg("--dir")
            .arg(base.join(name).join("data"))
            .arg("--state-dir")
            .arg(base.join(name).join("state"))
            .arg("--certs")
            .arg(&certs)
            .args(["--listen", listen, "--peer", peer])
            .stdout(Stdio::null())
            .stderr(log(name)?)
            .spawn()
            .with_context(|| format!("cannot start node {name}"))?;
        Ok(Node(child))
    };
    let beta = node("secondary", "beta", SECONDARY_ADDR, "alpha")?;
    let alpha = node(
        "primary",
        "alpha",
        PRIMARY_ADDR,
        &format!("beta@{SECONDARY_ADDR}"),
    )?;
    let state = base.join("alpha/state");
    if crate::wait_status(&state, Duration::from_secs(30), |s| s.mode == "in-sync").is_none() {
        bail!(
            "the demo mirror did not reach in-sync within 30 s: see {}",
            base.join("alpha.log").display()
        );
    }
    let b = base.display();
    println!(
        "mirrorkit demo: mirror \"demo\" is in sync.

  primary   alpha  {b}/alpha/data   (the mirror is mounted here: write here)
  secondary beta   {b}/beta/data    (the copy: look here)
  logs      {b}/alpha.log, {b}/beta.log

Try:
  echo hi > {b}/alpha/data/a.txt && cat {b}/beta/data/a.txt
  dd if=/dev/urandom of={b}/alpha/data/big bs=1M count=64 conv=fsync
  sha256sum {b}/alpha/data/big {b}/beta/data/big
  {exe} status --state-dir {b}/alpha/state
  kill -STOP {beta}   (the secondary stops answering: after 3 s the primary continues alone)
  kill -CONT {beta}   (it returns: an incremental resync of what changed brings it back in sync)

The web console comes with the cluster manager (not yet built). Ctrl-C stops the demo.",
        beta = beta.0.id(),
        exe = exe.display()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = ctrlc_channel(tx);
    let _ = rx.recv();
    println!("stopping the demo");
    drop(alpha);
    drop(beta);
    Ok(())
}

/// Deliver SIGINT/SIGTERM to a channel.
fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            if let (Ok(mut t), Ok(mut i)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
            }
            let _ = tx.send(());
        });
    });
    Ok(())
}
