//! The cluster commands: the node daemon, `cluster init`, the status table, the verbs and the
//! module event log. The CLI asks its own node: through the node's web console (HTTPS, the
//! node's certificate) when the node runs one, so that it shows what the console and the API
//! show; over the daemon's control socket without a console, with `--socket`, or when the
//! console does not answer (with a warning).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use mirrorkit_cluster::machine::Verb;
use mirrorkit_console::backend::{ClusterView, NodeView};
use mirrorkit_console::client::{self, ClientError, NodeClient};
use mirrorkit_console::server::LOG_LINES_MAX;
use mirrorkit_node::api::{self, NodeStatus, Reply, Request};
use mirrorkit_node::config::{self, ClusterFile, InitNode, InitSpec};

#[derive(Args, Clone)]
pub struct ConfigArg {
    /// The node's cluster file.
    #[arg(long, default_value = config::DEFAULT_CLUSTER_FILE)]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Create both nodes' cluster files and certificates (one new cluster CA) in OUT/<node>/.
    Init {
        /// Cluster name.
        #[arg(long)]
        name: String,
        /// A node: NAME=ADDRESS (its address for replication and the first heartbeat
        /// network). Give exactly two.
        #[arg(long = "node", required = true, num_args = 1)]
        nodes: Vec<String>,
        /// A further heartbeat network: NAME:ADDRESS1,ADDRESS2 (the nodes' addresses on it, in
        /// the order of --node).
        #[arg(long = "heartbeat")]
        heartbeats: Vec<String>,
        #[arg(long, default_value_t = config::DEFAULT_REPLICATION_PORT)]
        replication_port: u16,
        #[arg(long, default_value_t = config::DEFAULT_HEARTBEAT_PORT)]
        heartbeat_port: u16,
        /// Where the files go: OUT/<node>/cluster.toml and OUT/<node>/certs/.
        #[arg(long)]
        out: PathBuf,
        /// The paths written into the files, as they will be on the nodes.
        #[arg(long, default_value = "/etc/mirrorkit/certs")]
        certs: PathBuf,
        #[arg(long, default_value = "/etc/mirrorkit/modules")]
        modules: PathBuf,
        #[arg(long, default_value = "/var/lib/mirrorkit")]
        state: PathBuf,
        #[arg(long, default_value = "/run/mirrorkit")]
        run: PathBuf,
        /// A witness on a third machine: NAME=ADDRESS[:PORT] (default port 7450). Its
        /// certificate and OUT/NAME/witness.toml are written too.
        #[arg(long)]
        witness: Option<String>,
        /// The web console's admin password: the first line of FILE. Only its argon2id hash
        /// goes into both nodes' files. Without it the console does not start until one is
        /// set with `mirrorkit console set-password`.
        #[arg(long, value_name = "FILE")]
        admin_password_file: Option<PathBuf>,
    },
}

fn parse_witness(s: &str) -> Result<(String, std::net::SocketAddr)> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--witness {s:?}: expected NAME=ADDRESS[:PORT]"))?;
    let addr = match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let ip: IpAddr = addr.parse().with_context(|| {
                format!("--witness {s:?}: {addr:?} is neither ADDRESS nor ADDRESS:PORT")
            })?;
            std::net::SocketAddr::new(ip, config::DEFAULT_WITNESS_PORT)
        }
    };
    Ok((name.to_owned(), addr))
}

fn parse_node(s: &str) -> Result<InitNode> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--node {s:?}: expected NAME=ADDRESS"))?;
    let addr: IpAddr = addr
        .parse()
        .with_context(|| format!("--node {s:?}: {addr:?} is not an IP address"))?;
    Ok(InitNode {
        name: name.to_owned(),
        addr,
    })
}

pub fn cluster(cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Init {
            name,
            nodes,
            heartbeats,
            replication_port,
            heartbeat_port,
            out,
            certs,
            modules,
            state,
            run,
            witness,
            admin_password_file,
        } => {
            let admin_password_hash = match &admin_password_file {
                Some(f) => {
                    let text = std::fs::read_to_string(f).with_context(|| {
                        format!("--admin-password-file {}: cannot read it", f.display())
                    })?;
                    let password = crate::console_cmd::password_from(
                        &text,
                        &format!("--admin-password-file {}", f.display()),
                    )?;
                    Some(
                        mirrorkit_console::auth::hash_password(&password)
                            .map_err(|e| anyhow!(e))?,
                    )
                }
                None => None,
            };
            let nodes: Vec<InitNode> =
                nodes.iter().map(|n| parse_node(n)).collect::<Result<_>>()?;
            let [a, b]: [InitNode; 2] = nodes
                .try_into()
                .map_err(|v: Vec<InitNode>| anyhow!("give exactly two --node, not {}", v.len()))?;
            let mut extra = Vec::new();
            for h in &heartbeats {
                let (n, addrs) = h
                    .split_once(':')
                    .ok_or_else(|| anyhow!("--heartbeat {h:?}: expected NAME:ADDRESS1,ADDRESS2"))?;
                let (x, y) = addrs
                    .split_once(',')
                    .ok_or_else(|| anyhow!("--heartbeat {h:?}: expected NAME:ADDRESS1,ADDRESS2"))?;
                let x: IpAddr = x
                    .parse()
                    .with_context(|| format!("--heartbeat {h:?}: {x:?}"))?;
                let y: IpAddr = y
                    .parse()
                    .with_context(|| format!("--heartbeat {h:?}: {y:?}"))?;
                extra.push((n.to_owned(), [x, y]));
            }
            let spec = InitSpec {
                cluster: name,
                nodes: [a, b],
                extra_heartbeats: extra,
                replication_port,
                heartbeat_port,
                certs,
                modules,
                state,
                run,
                data_root: None,
                witness: witness.as_deref().map(parse_witness).transpose()?,
                admin_password_hash,
            };
            for f in config::init(&spec, &out).map_err(|e| anyhow!(e))? {
                println!("wrote {}", f.display());
            }
            println!(
                "Copy each node's folder to it: cluster.toml to {} (witness.toml to {} on the witness), certs/ to the `certs` path in it. The CA's key stays in {} (keep it offline).",
                config::DEFAULT_CLUSTER_FILE,
                config::DEFAULT_WITNESS_FILE,
                out.join("ca").display()
            );
            if spec.admin_password_hash.is_none() {
                println!(
                    "No console password given (--admin-password-file): the web console starts only once one is set with `mirrorkit console set-password` on each node."
                );
            }
            Ok(())
        }
    }
}

/// Run the witness until SIGTERM or SIGINT.
pub fn witness(config: &std::path::Path) -> Result<()> {
    let cfg = mirrorkit_witness::ServerConfig::load(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mirrorkit-witness")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(mirrorkit_witness::serve(cfg, crate::wait_for_signal()))?;
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    Ok(())
}

/// Run the node daemon until SIGTERM or SIGINT, with its web console next to it (which talks
/// to the daemon over the same control socket as the CLI).
pub fn daemon(c: &ConfigArg) -> Result<()> {
    let cf = ClusterFile::load(&c.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("mirrorkit-daemon")
        .build()
        .context("cannot start the async runtime")?;
    let config = c.config.clone();
    let r = rt.block_on(async move {
        tokio::spawn(mirrorkit_console::run(config));
        mirrorkit_node::daemon::run(cf, crate::wait_for_signal()).await
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    r
}

/// How `status`, the verbs and `log` reach the daemon.
#[derive(Args, Clone)]
pub struct ReachArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Ask the daemon over its control socket (<run>/mirrorkit.sock), this node only, instead
    /// of the node's web console. Without a [console] in the cluster file (with an admin
    /// password) the socket is always used; with one, the CLI asks the console over HTTPS
    /// with the node's certificate, so that it shows what the console and the API show (both
    /// nodes), and falls back to the socket, with a warning, when the console does not answer.
    #[arg(long)]
    pub socket: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn call(rt: &tokio::runtime::Runtime, cf: &ClusterFile, req: &Request) -> Result<Reply> {
    rt.block_on(api::call(&cf.socket(), req))
        .map_err(|e| anyhow!(e))
}

/// The node's console, when the CLI asks through it: not with `--socket`, nor when the node
/// runs none. An error means it cannot be used (the node's certificate).
fn console(cf: &ClusterFile, socket: bool) -> Option<Result<NodeClient, ClientError>> {
    if socket {
        return None;
    }
    let addr = client::console_address(cf)?;
    Some(NodeClient::new(cf, addr))
}

/// Say on one line why the console is not used, and that the control socket is.
fn fall_back(cf: &ClusterFile, e: &ClientError) {
    eprintln!(
        "mirrorkit: warning: {e}; asking the daemon's control socket {} instead",
        cf.socket().display()
    );
}

/// Ask the console with `ask`; `Ok(None)` when it handled nothing and the control socket is to
/// be asked instead (the warning said so), or when there is no console to ask.
fn through_console<T>(
    rt: &tokio::runtime::Runtime,
    cf: &ClusterFile,
    socket: bool,
    ask: impl AsyncFnOnce(&NodeClient) -> Result<T, ClientError>,
) -> Result<Option<T>, ClientError> {
    let client = match console(cf, socket) {
        None => return Ok(None),
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            fall_back(cf, &e);
            return Ok(None);
        }
    };
    match rt.block_on(ask(&client)) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.fall_back() => {
            fall_back(cf, &e);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn socket_status(rt: &tokio::runtime::Runtime, cf: &ClusterFile) -> Result<NodeStatus> {
    match call(rt, cf, &Request::Status)? {
        Reply::Status(s) => Ok(s),
        Reply::Error(e) => bail!(e),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// `mirrorkit status`: the cluster view from the node's console (both nodes); from the
/// control socket with `--socket` or without a console (this node's status, which says what
/// it last heard from its peer).
pub fn status(a: &ReachArgs, json: bool) -> Result<()> {
    let cf = ClusterFile::load(&a.config.config)?;
    let rt = runtime()?;
    let consoled = console_configured(&cf, a.socket);
    let view = match through_console(&rt, &cf, a.socket, async |c| c.status().await) {
        Ok(Some(view)) => view,
        Ok(None) if consoled => {
            // Same shape as the console's view, so that a script reading `--json` sees the
            // same document whether or not the console answered.
            let here = socket_status(&rt, &cf)?;
            let peer = cf.peer().to_owned();
            let mut nodes = vec![
                NodeView {
                    node: cf.node.clone(),
                    status: Some(here),
                    error: None,
                },
                NodeView {
                    error: Some(format!(
                        "not asked: node {}'s console did not answer and its control socket answers for {} only; its status says what it last heard from {peer}",
                        cf.node, cf.node
                    )),
                    node: peer,
                    status: None,
                },
            ];
            nodes.sort_by(|x, y| x.node.cmp(&y.node));
            ClusterView {
                cluster: cf.cluster.clone(),
                local: cf.node.clone(),
                nodes,
                generated_unix_ms: mirrorkit_console::backend::unix_ms(),
            }
        }
        Ok(None) => {
            let s = socket_status(&rt, &cf)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", api::table(&s));
            }
            return Ok(());
        }
        Err(e) => bail!("status: {e}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", mirrorkit_console::text::table(&view));
    }
    Ok(())
}

/// True when the CLI would ask the console (whether or not it answers).
fn console_configured(cf: &ClusterFile, socket: bool) -> bool {
    !socket && client::console_address(cf).is_some()
}

pub fn verb(a: &ReachArgs, module: &str, verb: Verb) -> Result<()> {
    let cf = ClusterFile::load(&a.config.config)?;
    let rt = runtime()?;
    let who = crate::operator();
    let state = match through_console(&rt, &cf, a.socket, async |c| {
        c.verb(module, verb, &who).await
    }) {
        Ok(Some(state)) => state,
        Ok(None) => match call(
            &rt,
            &cf,
            &Request::Verb {
                module: module.to_owned(),
                verb,
                who,
            },
        )? {
            Reply::Done { state } => state,
            Reply::Error(e) => bail!("{verb} {module}: {e}"),
            other => bail!("unexpected answer from the daemon: {other:?}"),
        },
        Err(ClientError::Daemon(e)) => bail!("{verb} {module}: {e}"),
        Err(e @ ClientError::NoAnswer { .. }) => bail!(
            "{verb} {module}: {e}; the verb may have run: see `mirrorkit status` and `mirrorkit log {module}`"
        ),
        Err(e) => bail!("{verb} {module}: {e}"),
    };
    println!("{verb} {module}: done, {state} on this node");
    Ok(())
}

pub fn log(a: &ReachArgs, module: &str, lines: usize) -> Result<()> {
    let cf = ClusterFile::load(&a.config.config)?;
    let rt = runtime()?;
    if lines > LOG_LINES_MAX && console_configured(&cf, a.socket) {
        eprintln!(
            "mirrorkit: the console gives at most the last {LOG_LINES_MAX} entries; add --socket for {lines}"
        );
    }
    let entries = match through_console(&rt, &cf, a.socket, async |c| c.log(module, lines).await) {
        Ok(Some(entries)) => entries,
        Ok(None) => match call(
            &rt,
            &cf,
            &Request::Log {
                module: module.to_owned(),
                lines,
            },
        )? {
            Reply::Log(entries) => entries,
            Reply::Error(e) => bail!(e),
            other => bail!("unexpected answer from the daemon: {other:?}"),
        },
        Err(ClientError::Daemon(e)) => bail!(e),
        Err(e) => bail!("log {module}: {e}"),
    };
    for e in entries {
        println!("{}", format_entry(&e));
    }
    Ok(())
}

fn format_entry(e: &mirrorkit_scripts::Entry) -> String {
    format!(
        "{} {:<5} {:<6} {}",
        mirrorkit_scripts::utc_text(e.time_ms),
        e.level,
        e.kind,
        e.text
    )
}
