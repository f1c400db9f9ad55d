//! `mirrorkit`: the daemon and command line.
//!
//! Wires the crates together; holds no replication logic of its own.

mod cluster_cmd;
mod console_cmd;
mod demo;
mod module_cmd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mirrorkit_cluster::machine::Verb;
use mirrorkit_engine::link::LinkConfig;
use mirrorkit_engine::primary::PeerAddr;
use mirrorkit_engine::secondary::{SecondaryConfig, SecondaryCounters};
use mirrorkit_engine::status::{Status, STATUS_INTERVAL_MS};
use mirrorkit_net::pki::NodeIdentity;
use mirrorkit_net::TransportParams;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "mirrorkit",
    version,
    about = "Synchronous two-node mirror of application directories"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the cluster CA and one certificate per node.
    Certs {
        /// Directory for ca.pem, ca.key, <node>.pem, <node>.key.
        #[arg(long)]
        dir: PathBuf,
        /// Cluster name (in the CA's subject).
        #[arg(long, default_value = "mirrorkit")]
        cluster: String,
        /// Node names, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Run one node of a mirror.
    Mirror {
        #[command(subcommand)]
        role: RoleCmd,
    },
    /// Run the node daemon (what the systemd unit starts): every module of the node, its
    /// heartbeats, failover and switchover, its web console and REST API (with a [console]
    /// section), and the control socket.
    Daemon {
        #[command(flatten)]
        config: cluster_cmd::ConfigArg,
    },
    /// Run the witness (on a third machine): it grants the primary role of each module to one
    /// node at a time, so that a cut link never makes two primaries.
    Witness {
        /// The witness's file (written by `mirrorkit cluster init --witness`).
        #[arg(long, default_value = mirrorkit_node::config::DEFAULT_WITNESS_FILE)]
        config: PathBuf,
    },
    /// Set up a cluster.
    Cluster {
        #[command(subcommand)]
        cmd: cluster_cmd::ClusterCmd,
    },
    /// The web console (served by the daemon, HTTPS port 9010): its admin password and the
    /// API tokens of scripts.
    Console {
        #[command(subcommand)]
        cmd: console_cmd::ConsoleCmd,
    },
    /// The cluster: each module's state on both nodes, with the reasons (through the node's
    /// console, as it shows them; with --socket or without a console, as this node sees it);
    /// or, with --state-dir, one mirror run by `mirrorkit mirror`.
    Status {
        #[command(flatten)]
        reach: cluster_cmd::ReachArgs,
        /// A mirror's state directory (for `mirrorkit mirror`, not the daemon).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Start a module on this node (it becomes primary or secondary, as the data decides).
    Start(VerbArgs),
    /// Stop a module on this node (a primary hands over to a secondary in sync first).
    Stop(VerbArgs),
    /// Restart the application in place (primary), or start again.
    Restart(VerbArgs),
    /// Switch the primary role to the other node (from either node).
    Swap(VerbArgs),
    /// Make this node primary on its own data, whatever its age (logged with your name).
    Prim(VerbArgs),
    /// Make this node secondary.
    Second(VerbArgs),
    /// Stop at once, without scripts: kill the module's processes, drop its virtual IP.
    Forcestop(VerbArgs),
    /// A module's event log on this node: every state change, verb and script output.
    Log {
        module: String,
        /// How many of the last entries.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        #[command(flatten)]
        reach: cluster_cmd::ReachArgs,
    },
    /// Compare both copies of a mirror by chunk digests while it runs (the primary's peer must
    /// be in sync). Prints every difference with its path and byte range. Exit status: 0
    /// identical, 1 differences found, 2 could not verify.
    Verify {
        /// The primary's state directory.
        #[arg(long)]
        state_dir: PathBuf,
        /// Repair what differs: the primary records it and resynchronises the peer.
        #[arg(long)]
        repair: bool,
    },
    /// Work with module folders (module.toml and its scripts).
    Module {
        #[command(subcommand)]
        cmd: module_cmd::ModuleCmd,
    },
    /// Run a two-node demo mirror on this machine.
    Demo {
        /// Where the demo keeps its directories.
        #[arg(long, default_value = "/tmp/mirrorkit-demo")]
        base: PathBuf,
    },
}

#[derive(Args)]
struct VerbArgs {
    /// The module.
    module: String,
    #[command(flatten)]
    reach: cluster_cmd::ReachArgs,
}

#[derive(Subcommand)]
enum RoleCmd {
    /// Mount the mirror over DIR and replicate every change to the peer.
    Primary {
        #[command(flatten)]
        common: Common,
        /// The peer: NAME@ADDRESS:PORT.
        #[arg(long)]
        peer: String,
        /// Longest a write waits for the peer before this node continues alone (ms).
        #[arg(long, default_value_t = 3000)]
        peer_timeout_ms: u64,
        /// Most file data a resynchronisation sends per second, in bytes, with an optional
        /// K, M or G suffix (powers of 1024): e.g. 50M. Default: no limit. The application's
        /// own writes are never limited.
        #[arg(long, value_parser = parse_rate)]
        resync_bandwidth: Option<u64>,
        /// Become primary even if this node's data may be older than its peer's (it was
        /// secondary, or a resync into it did not finish). Its data becomes the reference:
        /// when the peer returns it first keeps its own divergent files aside, then takes
        /// this node's. Logged with the operator's name.
        #[arg(long)]
        force: bool,
        /// Pass read-only opens through to the backing files: their reads run at the local
        /// disk's speed, without the engine (Linux 6.9 or later, as root). While a file is
        /// open for reading this way, an open of it for writing waits for that reader, up to
        /// 5 s, then fails with ETXTBSY. Also turned on by MIRRORKIT_READ_PASSTHROUGH=1.
        #[arg(long)]
        read_passthrough: bool,
        /// Replicate only what matches these patterns (repeatable; default everything), as
        /// `include` in module.toml: see docs/modules.md.
        #[arg(long = "include", value_name = "PATTERN")]
        include: Vec<String>,
        /// Leave out what matches these patterns (repeatable), as `exclude` in module.toml.
        #[arg(long = "exclude", value_name = "PATTERN")]
        exclude: Vec<String>,
    },
    /// Receive the primary's changes into DIR.
    Secondary {
        #[command(flatten)]
        common: Common,
        /// Name of the primary node (only its certificate is accepted).
        #[arg(long)]
        peer: String,
    },
}

#[derive(Args)]
struct Common {
    /// Mirror name; both nodes must use the same.
    #[arg(long)]
    mirror: String,
    /// This node's name (as in its certificate).
    #[arg(long)]
    node: String,
    /// The replicated directory.
    #[arg(long)]
    dir: PathBuf,
    /// Where this node keeps the mirror's state (outside DIR).
    #[arg(long)]
    state_dir: PathBuf,
    /// Directory holding ca.pem and this node's certificate and key.
    #[arg(long)]
    certs: PathBuf,
    /// Address to listen on for the replication link.
    #[arg(long)]
    listen: SocketAddr,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Mirror { .. } | Cmd::Daemon { .. }) {
        // The primary holds a descriptor per file the kernel caches through the mount.
        match mirrorkit_engine::mount::raise_open_file_limit() {
            Ok((before, after)) if after > before => {
                info!("limit on open files raised from {before} to {after}")
            }
            Ok((_, after)) if after < 65536 => warn!(
                "limit on open files is {after}: the primary keeps one open per file the \
                 kernel caches, so applications may get EMFILE (\"Too many open files\") from \
                 a mirror; raise it (LimitNOFILE= in the systemd unit, or ulimit -n)"
            ),
            Ok(_) => {}
            Err(e) => warn!("cannot raise the limit on open files: {e}"),
        }
    }
    if let Err(e) = run(cli) {
        error!("{e:#}");
        eprintln!("mirrorkit: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Certs {
            dir,
            cluster,
            nodes,
            force,
        } => {
            let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
            mirrorkit_net::pki::generate_cluster(&dir, &cluster, &names, force)?;
            println!(
                "cluster CA and certificates for {} written to {}",
                nodes.join(", "),
                dir.display()
            );
            Ok(())
        }
        Cmd::Mirror { role } => run_mirror(role),
        Cmd::Daemon { config } => cluster_cmd::daemon(&config),
        Cmd::Witness { config } => cluster_cmd::witness(&config),
        Cmd::Cluster { cmd } => cluster_cmd::cluster(cmd),
        Cmd::Console { cmd } => console_cmd::run(cmd),
        Cmd::Start(a) => cluster_cmd::verb(&a.reach, &a.module, Verb::Start),
        Cmd::Stop(a) => cluster_cmd::verb(&a.reach, &a.module, Verb::Stop),
        Cmd::Restart(a) => cluster_cmd::verb(&a.reach, &a.module, Verb::Restart),
        Cmd::Swap(a) => cluster_cmd::verb(&a.reach, &a.module, Verb::Swap),
        Cmd::Prim(a) => cluster_cmd::verb(&a.reach, &a.module, Verb::Prim),
        Cmd::Second(a) => cluster_cmd::verb(&a.reach, &a.module, Verb::Second),
        Cmd::Forcestop(a) => cluster_cmd::verb(&a.reach, &a.module, Verb::Forcestop),
        Cmd::Log {
            module,
            lines,
            reach,
        } => cluster_cmd::log(&reach, &module, lines),
        Cmd::Status {
            reach,
            state_dir: None,
            json,
        } => cluster_cmd::status(&reach, json),
        Cmd::Status {
            state_dir: Some(state_dir),
            json,
            ..
        } => {
            let s = Status::read(&state_dir).with_context(|| {
                format!(
                    "no status in {} (is the daemon running?)",
                    state_dir.display()
                )
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "mirror {}: {} {} ({})\n  operations sent {}, applied {}, data bytes {}, sync bytes {}, sessions {}",
                    s.mirror, s.role, s.mode, s.reason, s.ops_sent, s.ops_applied, s.data_bytes_sent, s.sync_data_bytes_sent, s.sessions
                );
                if s.mode == "syncing" {
                    println!("  {}", resync_line(&s));
                }
            }
            Ok(())
        }
        Cmd::Verify { state_dir, repair } => verify_cmd(&state_dir, repair),
        Cmd::Module { cmd } => module_cmd::run(cmd),
        Cmd::Demo { base } => demo::run(&base),
    }
}

fn parse_peer(s: &str) -> Result<PeerAddr> {
    let Some((node, addr)) = s.split_once('@') else {
        bail!("--peer {s:?}: expected NAME@ADDRESS:PORT");
    };
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("--peer {s:?}: {addr:?} is not ADDRESS:PORT"))?;
    Ok(PeerAddr {
        node: node.to_string(),
        addr,
    })
}

fn check_state_dir(c: &Common) -> Result<()> {
    std::fs::create_dir_all(&c.state_dir)
        .with_context(|| format!("cannot create state directory {}", c.state_dir.display()))?;
    let dir = std::fs::canonicalize(&c.dir)
        .with_context(|| format!("replicated directory {}", c.dir.display()))?;
    let state = std::fs::canonicalize(&c.state_dir)?;
    if state.starts_with(&dir) {
        bail!(
            "state directory {} is inside the replicated directory {}: keep it outside",
            state.display(),
            dir.display()
        );
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mirrorkit-net")
        .build()
        .context("cannot start the async runtime")
}

/// The `--include`/`--exclude` patterns, checked as module.toml's are.
fn selection(include: Vec<String>, exclude: &[String]) -> Result<mirrorkit_module::MirrorFilter> {
    let include = if include.is_empty() {
        vec![mirrorkit_module::INCLUDE_ALL.to_owned()]
    } else {
        include
    };
    for (flag, p) in include
        .iter()
        .map(|p| ("--include", p))
        .chain(exclude.iter().map(|p| ("--exclude", p)))
    {
        mirrorkit_module::rules::parse_pattern(p).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    }
    mirrorkit_module::MirrorFilter::from_patterns(&include, exclude).map_err(anyhow::Error::msg)
}

fn run_mirror(role: RoleCmd) -> Result<()> {
    let rt = runtime()?;
    match role {
        RoleCmd::Primary {
            common,
            peer,
            peer_timeout_ms,
            resync_bandwidth,
            force,
            read_passthrough,
            include,
            exclude,
        } => {
            check_state_dir(&common)?;
            let peer = parse_peer(&peer)?;
            let identity = NodeIdentity::load(&common.certs, &common.node)?;
            let filter = selection(include, &exclude)?;
            let cfg = LinkConfig {
                peer_timeout_ms,
                resync_bytes_per_sec: resync_bandwidth,
                forced_by: force.then(operator),
                filter: std::sync::Arc::new(filter),
                ..LinkConfig::default()
            };
            let mut opts = mirrorkit_engine::mount::MountOptions::from_env();
            opts.read_passthrough |= read_passthrough;
            let mounted = mirrorkit_engine::mount::mount_with(
                &common.mirror,
                &common.dir,
                &common.state_dir,
                cfg,
                opts,
            )
            .map_err(anyhow::Error::msg)?;
            let core = mounted.core.clone();
            let state_dir = common.state_dir.clone();
            let result: Result<()> = rt.block_on(async {
                let endpoint =
                    mirrorkit_net::endpoint(&identity, common.listen, &TransportParams::default())?;
                tokio::spawn(mirrorkit_engine::primary::run(
                    core.clone(),
                    endpoint,
                    common.node.clone(),
                    peer,
                ));
                let status_core = core.clone();
                status_loop(state_dir.clone(), move || Status::of_primary(&status_core))?;
                mirrorkit_engine::control::serve(core.clone(), &state_dir).with_context(|| {
                    format!("cannot open the control socket in {}", state_dir.display())
                })?;
                wait_for_signal().await;
                Ok(())
            });
            info!(dir = %mounted.dir.display(), "stopping: unmounting the mirror");
            mounted.unmount().context("unmount failed")?;
            rt.shutdown_timeout(Duration::from_millis(500));
            result
        }
        RoleCmd::Secondary { common, peer } => {
            check_state_dir(&common)?;
            let identity = NodeIdentity::load(&common.certs, &common.node)?;
            let cfg = SecondaryConfig {
                mirror: common.mirror.clone(),
                node: common.node.clone(),
                peer_node: peer,
                root: std::fs::canonicalize(&common.dir)
                    .with_context(|| format!("replicated directory {}", common.dir.display()))?,
                state_dir: common.state_dir.clone(),
                managed: None,
            };
            let counters = Arc::new(SecondaryCounters::default());
            let result: Result<()> = rt.block_on(async {
                let endpoint = mirrorkit_net::endpoint(&identity, common.listen, &TransportParams::default())?;
                let c = counters.clone();
                let mirror = common.mirror.clone();
                status_loop(common.state_dir.clone(), move || Status::of_secondary(&mirror, &c))?;
                let closing = endpoint.clone();
                tokio::select! {
                    r = mirrorkit_engine::secondary::run(endpoint, cfg, counters.clone()) => r.map_err(anyhow::Error::msg),
                    _ = wait_for_signal() => {
                        // Tell the primary at once (it would otherwise notice only at its idle
                        // timeout, and writes meanwhile would wait for the peer timeout).
                        closing.close(0u32.into(), b"secondary stopping");
                        let _ = tokio::time::timeout(Duration::from_millis(500), closing.wait_idle()).await;
                        Ok(())
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_millis(500));
            result
        }
    }
}

/// Rewrite the status file when it changes, on a thread of its own: file writes must not
/// stall the async workers that carry the replication link.
fn status_loop(state_dir: PathBuf, status: impl Fn() -> Status + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name("mirrorkit-status".into())
        .spawn(move || {
            let mut last = Status::default();
            loop {
                let s = status();
                if s != last {
                    if let Err(e) = s.write(&state_dir) {
                        tracing::warn!(dir = %state_dir.display(), "cannot write status: {e}");
                    }
                    last = s;
                }
                std::thread::sleep(Duration::from_millis(STATUS_INTERVAL_MS));
            }
        })
        .context("cannot start the status thread")?;
    Ok(())
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon still runs; it stops when killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}

/// Path of this executable, for the demo to start its nodes.
pub fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the mirrorkit executable")
}

/// Wait until a node's status file satisfies `pred`, up to `timeout`.
pub fn wait_status(
    state_dir: &Path,
    timeout: Duration,
    pred: impl Fn(&Status) -> bool,
) -> Option<Status> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok(s) = Status::read(state_dir) {
            if pred(&s) {
                return Some(s);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Who runs this command, for the log of a forced start: the user behind sudo if any.
pub fn operator() -> String {
    let uid = nix_uid();
    for var in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            if !u.is_empty() {
                return format!("{u} (uid {uid})");
            }
        }
    }
    format!("uid {uid}")
}

fn nix_uid() -> u32 {
    // SAFETY: getuid cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

/// `mirrorkit verify`: ask the primary's control socket, print what it finds.
fn verify_cmd(state_dir: &std::path::Path, repair: bool) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let sock = state_dir.join(mirrorkit_engine::control::CONTROL_SOCKET);
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).with_context(|| {
        format!(
            "cannot reach the primary's control socket {} (is a primary running with this state directory?)",
            sock.display()
        )
    })?;
    writeln!(conn, "{}", if repair { "verify repair" } else { "verify" })?;
    let mut differences = 0u64;
    for line in BufReader::new(conn).lines() {
        let line = line.context("control socket")?;
        if let Some(rest) = line.strip_prefix("DIFF ") {
            differences += 1;
            let mut f = rest.splitn(4, ' ');
            let (start, end, what, path) = (
                f.next().unwrap_or(""),
                f.next().unwrap_or(""),
                f.next().unwrap_or("").replace('_', " "),
                f.next().unwrap_or(""),
            );
            println!("differs: {path} bytes {start}..{end}: {what}");
        } else if let Some(rest) = line.strip_prefix("DONE ") {
            println!("verify complete: {rest}");
            if differences > 0 {
                std::process::exit(1);
            }
            return Ok(());
        } else if let Some(rest) = line.strip_prefix("ERROR ") {
            eprintln!("mirrorkit verify: {rest}");
            std::process::exit(2);
        }
    }
    eprintln!(
        "mirrorkit verify: the primary closed the control socket before the end of the verify"
    );
    std::process::exit(2);
}

/// One line of resync progress: done of total, percentage, rate, time left.
fn resync_line(s: &Status) -> String {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let pct = if s.sync_total_bytes == 0 {
        100.0
    } else {
        100.0 * s.sync_done_bytes as f64 / s.sync_total_bytes as f64
    };
    let eta = match s.sync_eta_secs {
        Some(e) => format!("{}:{:02}:{:02} left", e / 3600, e / 60 % 60, e % 60),
        None => "time left not known yet".into(),
    };
    format!(
        "resync: {:.1} of {:.1} MiB compared or sent ({pct:.0}%), {:.1} MiB/s, {eta}",
        mib(s.sync_done_bytes),
        mib(s.sync_total_bytes),
        mib(s.sync_rate)
    )
}

/// A rate in bytes per second: digits with an optional K, M or G suffix (powers of 1024).
fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!("'{s}' is not a rate in bytes per second (e.g. 50M, 500K, 1048576)")
    })?;
    match n.checked_mul(1 << shift) {
        Some(0) | None => Err(format!(
            "'{s}': the rate must be above 0 and below 16 EiB per second"
        )),
        Some(r) => Ok(r),
    }
}

#[cfg(test)]
mod rate_tests {
    use super::parse_rate;

    #[test]
    fn rates_with_and_without_suffix() {
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("500k"), Ok(500 << 10));
        assert_eq!(parse_rate("2G"), Ok(2 << 30));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("M").is_err());
        assert!(parse_rate("99999999999999G").is_err());
    }
}
