//! The cluster file: one per node (`/etc/mirrorkit/cluster.toml` by default), naming the
//! cluster, this node, both nodes' replication addresses, the heartbeat networks, and where
//! certificates, modules and state live. `mirrorkit cluster init` writes both nodes' files and
//! certificates in one go (`init`).
//!
//! ```toml
//! cluster = "shop"
//! node = "alpha"                       # this node
//! certs = "/etc/mirrorkit/certs"       # ca.pem, <node>.pem, <node>.key
//! modules = "/etc/mirrorkit/modules"   # one folder per module
//! state = "/var/lib/mirrorkit"         # per module: data generations, dirty record, event log
//! run = "/run/mirrorkit"               # control socket, scripts' run directories
//!
//! [nodes.alpha]
//! replication = "10.0.0.1:7400"
//! [nodes.beta]
//! replication = "10.0.0.2:7400"
//!
//! [[heartbeat]]                        # one or more networks, tried in this order
//! name = "lan"
//! alpha = "10.0.0.1:7410"
//! beta = "10.0.0.2:7410"
//!
//! [witness]                            # optional: arbitrates the primary role (split brain)
//! name = "witness"                     # the name in its certificate
//! address = "10.0.0.3:7450"
//!
//! [console]                            # the web console and REST API (HTTPS)
//! listen = "0.0.0.0:9010"
//! admin_password_hash = "$argon2id$v=19$..."   # `mirrorkit console set-password`
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the daemon and the CLI look for the cluster file unless told otherwise.
pub const DEFAULT_CLUSTER_FILE: &str = "/etc/mirrorkit/cluster.toml";
/// Default replication port (QUIC, UDP).
pub const DEFAULT_REPLICATION_PORT: u16 = 7400;
/// Default heartbeat port of the first network (QUIC, UDP); the next networks use the next ports.
pub const DEFAULT_HEARTBEAT_PORT: u16 = 7410;
/// Default port of the witness (QUIC, UDP).
pub const DEFAULT_WITNESS_PORT: u16 = 7450;

/// Default address of the web console and REST API (HTTPS, TCP).
pub const DEFAULT_CONSOLE_LISTEN: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    DEFAULT_CONSOLE_PORT,
);
/// Default port of the web console (HTTPS); the peer's console is reached on the same port.
pub const DEFAULT_CONSOLE_PORT: u16 = 9010;

/// The web console and REST API of the node (`crates/console`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// Where it listens (HTTPS); its port is also where it reaches the peer's console.
    #[serde(default = "default_console_listen")]
    pub listen: SocketAddr,
    /// The admin password's argon2id hash (PHC string). Without one the console does not start:
    /// there is no default password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password_hash: Option<String>,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        ConsoleSection {
            listen: DEFAULT_CONSOLE_LISTEN,
            admin_password_hash: None,
        }
    }
}

fn default_console_listen() -> SocketAddr {
    DEFAULT_CONSOLE_LISTEN
}

/// The prefix of an argon2id PHC string, the only password hash the console accepts.
pub const ARGON2ID_PREFIX: &str = "$argon2id$";

/// The cluster's witness, as the nodes see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessRef {
    /// The name its certificate carries (signed by the cluster CA).
    pub name: String,
    pub address: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddrs {
    pub replication: SocketAddr,
}

/// One heartbeat network: each node's address on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatNet {
    pub name: String,
    #[serde(flatten)]
    pub addrs: BTreeMap<String, SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub cluster: String,
    pub node: String,
    pub certs: PathBuf,
    pub modules: PathBuf,
    pub state: PathBuf,
    pub run: PathBuf,
    /// For test and demo clusters on one machine: every replicated directory of every module
    /// is taken beneath this directory (`<data_root>/<dir>`) instead of at `dir` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_root: Option<PathBuf>,
    pub nodes: BTreeMap<String, NodeAddrs>,
    #[serde(rename = "heartbeat")]
    pub heartbeats: Vec<HeartbeatNet>,
    /// The witness: with one, a node is primary only while the witness grants it (no split
    /// brain); without, a cut link makes two primaries (documented in operations.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessRef>,
    /// The web console; absent: default address, no password (the console does not start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleSection>,
}

/// A cluster file that cannot be used, with the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<ClusterFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let cf: ClusterFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        cf.validate().map_err(invalid)?;
        Ok(cf)
    }

    /// Every rule the file must follow, each failure saying which field.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.len() != 2 {
            return Err(format!(
                "[nodes] must name exactly two nodes, found {}: {:?}",
                self.nodes.len(),
                self.nodes.keys().collect::<Vec<_>>()
            ));
        }
        for name in self.nodes.keys() {
            mirrorkit_net::pki::validate_node_name(name)
                .map_err(|e| format!("[nodes.{name}]: {e}"))?;
        }
        if !self.nodes.contains_key(&self.node) {
            return Err(format!(
                "node = {:?} is not one of [nodes]: {:?}",
                self.node,
                self.nodes.keys().collect::<Vec<_>>()
            ));
        }
        if self.heartbeats.is_empty() {
            return Err("at least one [[heartbeat]] network is needed".into());
        }
        for (i, hb) in self.heartbeats.iter().enumerate() {
            if hb.name.is_empty() {
                return Err(format!("[[heartbeat]] number {}: name is empty", i + 1));
            }
            for n in self.nodes.keys() {
                if !hb.addrs.contains_key(n) {
                    return Err(format!(
                        "[[heartbeat]] {:?}: no address for node {n:?} (write {n} = \"ADDRESS:PORT\")",
                        hb.name
                    ));
                }
            }
            if let Some(extra) = hb.addrs.keys().find(|k| !self.nodes.contains_key(*k)) {
                return Err(format!(
                    "[[heartbeat]] {:?}: {extra:?} is not a node of [nodes]",
                    hb.name
                ));
            }
        }
        if let Some(w) = &self.witness {
            mirrorkit_net::pki::validate_node_name(&w.name)
                .map_err(|e| format!("[witness] name: {e}"))?;
            if self.nodes.contains_key(&w.name) {
                return Err(format!(
                    "[witness] name = {:?} is a node's name: the witness needs a certificate of its own",
                    w.name
                ));
            }
        }
        if let Some(hash) = self
            .console
            .as_ref()
            .and_then(|c| c.admin_password_hash.as_deref())
        {
            if !hash.starts_with(ARGON2ID_PREFIX) {
                return Err(format!(
                    "[console] admin_password_hash is not an argon2id hash (it must start with {ARGON2ID_PREFIX}): set it with `mirrorkit console set-password`"
                ));
            }
        }
        for (field, p) in [
            ("certs", &self.certs),
            ("modules", &self.modules),
            ("state", &self.state),
            ("run", &self.run),
        ] {
            if !p.is_absolute() {
                return Err(format!("{field} = {:?} must be an absolute path", p));
            }
        }
        Ok(())
    }

    /// The file of node `node` of a cluster whose nodes all run on this machine (the demo,
    /// tests), each in its own network namespace: `nodes` gives each node's address (for
    /// replication and the one heartbeat network `lan`, on the default ports); every node keeps
    /// its state, run and data directories beneath `base/<node>/`.
    pub fn on_one_machine(
        cluster: &str,
        node: &str,
        nodes: &[(&str, std::net::IpAddr)],
        base: &Path,
        certs: &Path,
        modules: &Path,
    ) -> ClusterFile {
        let own = base.join(node);
        ClusterFile {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            certs: certs.to_owned(),
            modules: modules.to_owned(),
            state: own.join("state"),
            run: own.join("run"),
            data_root: Some(own.join("data")),
            nodes: nodes
                .iter()
                .map(|(n, a)| {
                    let replication = SocketAddr::new(*a, DEFAULT_REPLICATION_PORT);
                    ((*n).to_owned(), NodeAddrs { replication })
                })
                .collect(),
            heartbeats: vec![HeartbeatNet {
                name: "lan".into(),
                addrs: nodes
                    .iter()
                    .map(|(n, a)| ((*n).to_owned(), SocketAddr::new(*a, DEFAULT_HEARTBEAT_PORT)))
                    .collect(),
            }],
            witness: None,
            console: None,
        }
    }

    /// The file's text (TOML), checked first.
    pub fn to_toml(&self) -> Result<String, String> {
        self.validate()?;
        toml::to_string_pretty(self).map_err(|e| format!("cannot encode the cluster file: {e}"))
    }

    /// The other node's name.
    pub fn peer(&self) -> &str {
        self.nodes
            .keys()
            .find(|n| **n != self.node)
            .map_or("", |n| n.as_str())
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    pub fn replication(&self, node: &str) -> Option<SocketAddr> {
        self.nodes.get(node).map(|n| n.replication)
    }

    /// Where a module's replicated directory `dir` is on this node.
    pub fn data_dir(&self, dir: &Path) -> PathBuf {
        match &self.data_root {
            Some(root) => root.join(dir.strip_prefix("/").unwrap_or(dir)),
            None => dir.to_owned(),
        }
    }

    /// The module's state directory on this node.
    pub fn module_state(&self, module: &str) -> PathBuf {
        self.state.join("modules").join(module)
    }

    /// The module's scripts' run directory on this node.
    pub fn module_run(&self, module: &str) -> PathBuf {
        self.run.join("modules").join(module)
    }

    /// The daemon's control socket (CLI).
    pub fn socket(&self) -> PathBuf {
        self.run.join("mirrorkit.sock")
    }

    /// The console's settings (the defaults when the file has no `[console]`).
    pub fn console(&self) -> ConsoleSection {
        self.console.clone().unwrap_or_default()
    }
}

/// Write `hash` (argon2id PHC string) as the console's admin password hash into the cluster file
/// at `path`, keeping the file's leading comment lines; the rest is written back as TOML. The
/// new file replaces the old one atomically (same directory, renamed over it, same mode).
pub fn set_admin_password_hash(path: &Path, hash: &str) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let mut cf = ClusterFile::load(path)?;
    let old = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut console = cf.console();
    console.admin_password_hash = Some(hash.to_owned());
    cf.console = Some(console);
    let header: String = old
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let text = header + &cf.to_toml().map_err(invalid)?;
    let tmp = path.with_extension("toml.new");
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap_or(0o644);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        invalid(format!("cannot write the new file: {e}"))
    })
}

/// One node given to `cluster init`: its name and its address on the first heartbeat network
/// and for replication.
#[derive(Clone, Debug)]
pub struct InitNode {
    pub name: String,
    pub addr: std::net::IpAddr,
}

/// What `cluster init` needs.
#[derive(Clone, Debug)]
pub struct InitSpec {
    pub cluster: String,
    pub nodes: [InitNode; 2],
    /// Further heartbeat networks: name and each node's address, in node order.
    pub extra_heartbeats: Vec<(String, [std::net::IpAddr; 2])>,
    pub replication_port: u16,
    pub heartbeat_port: u16,
    /// The paths written into both files (as on the nodes).
    pub certs: PathBuf,
    pub modules: PathBuf,
    pub state: PathBuf,
    pub run: PathBuf,
    pub data_root: Option<PathBuf>,
    /// A witness: its name and address. Its certificate and `witness.toml` are written too.
    pub witness: Option<(String, SocketAddr)>,
    /// The console's admin password hash (argon2id PHC string), written into both files.
    pub admin_password_hash: Option<String>,
}

/// Write `<out>/<node>/cluster.toml` and `<out>/<node>/certs/{ca.pem,<node>.pem,<node>.key}` for
/// both nodes, from one new cluster CA (whose key is kept in `<out>/ca/` only: it signs no
/// more certificates unless an operator uses it). Refuses to overwrite anything.
pub fn init(spec: &InitSpec, out: &Path) -> Result<Vec<PathBuf>, String> {
    let mut names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    if let Some((w, _)) = &spec.witness {
        names.push(w.as_str());
    }
    let ca_dir = out.join("ca");
    // Each node's certificate also names its addresses (every network), so that its console
    // opened by address passes a browser's check once the cluster CA is trusted.
    let mut addresses: Vec<(&str, Vec<std::net::IpAddr>)> = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut ips = vec![n.addr];
            ips.extend(spec.extra_heartbeats.iter().map(|(_, a)| a[i]));
            (n.name.as_str(), ips)
        })
        .collect();
    if let Some((w, addr)) = &spec.witness {
        addresses.push((w.as_str(), vec![addr.ip()]));
    }
    mirrorkit_net::pki::generate_cluster_with_addresses(
        &ca_dir,
        &spec.cluster,
        &names,
        &addresses,
        false,
    )
    .map_err(|e| {
        format!(
            "cannot create the cluster's certificates in {}: {e}",
            ca_dir.display()
        )
    })?;
    let mut heartbeats = vec![HeartbeatNet {
        name: "net1".into(),
        addrs: spec
            .nodes
            .iter()
            .map(|n| (n.name.clone(), SocketAddr::new(n.addr, spec.heartbeat_port)))
            .collect(),
    }];
    for (i, (name, addrs)) in spec.extra_heartbeats.iter().enumerate() {
        let port = spec.heartbeat_port.saturating_add(1 + i as u16);
        heartbeats.push(HeartbeatNet {
            name: name.clone(),
            addrs: spec
                .nodes
                .iter()
                .zip(addrs)
                .map(|(n, a)| (n.name.clone(), SocketAddr::new(*a, port)))
                .collect(),
        });
    }
    let nodes: BTreeMap<String, NodeAddrs> = spec
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                NodeAddrs {
                    replication: SocketAddr::new(n.addr, spec.replication_port),
                },
            )
        })
        .collect();
    let mut written = Vec::new();
    for n in &spec.nodes {
        let cf = ClusterFile {
            cluster: spec.cluster.clone(),
            node: n.name.clone(),
            certs: spec.certs.clone(),
            modules: spec.modules.clone(),
            state: spec.state.clone(),
            run: spec.run.clone(),
            data_root: spec.data_root.clone(),
            nodes: nodes.clone(),
            heartbeats: heartbeats.clone(),
            witness: spec.witness.as_ref().map(|(name, address)| WitnessRef {
                name: name.clone(),
                address: *address,
            }),
            console: Some(ConsoleSection {
                listen: DEFAULT_CONSOLE_LISTEN,
                admin_password_hash: spec.admin_password_hash.clone(),
            }),
        };
        let dir = out.join(&n.name);
        copy_certs(&ca_dir, &dir.join("certs"), &n.name)?;
        let text = cf.to_toml()?;
        let header = format!(
            "# mirrorkit cluster file of node {} (cluster {}), written by `mirrorkit cluster init`.\n# Install it as {DEFAULT_CLUSTER_FILE} on {}, with certs/ in the `certs` directory below.\n\n",
            n.name, spec.cluster, n.name
        );
        written.push(write_new(&dir.join("cluster.toml"), &(header + &text))?);
    }
    if let Some((w, address)) = &spec.witness {
        let dir = out.join(w);
        copy_certs(&ca_dir, &dir.join("certs"), w)?;
        let listen = SocketAddr::new(
            if address.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            },
            address.port(),
        );
        let nodes: Vec<String> = spec.nodes.iter().map(|n| format!("{:?}", n.name)).collect();
        let text = format!(
            "# mirrorkit witness of cluster {cluster}, written by `mirrorkit cluster init`.\n# Install it as {DEFAULT_WITNESS_FILE} on the witness machine (reachable at {address} from both nodes),\n# with certs/ in the `certs` directory below; run `mirrorkit witness`.\n\ncluster = {cluster:?}\nname = {w:?}\nlisten = \"{listen}\"\ncerts = \"/etc/mirrorkit/certs\"\nstate_dir = \"/var/lib/mirrorkit-witness\"\nnodes = [{}]\n",
            nodes.join(", "),
            cluster = spec.cluster,
        );
        written.push(write_new(&dir.join("witness.toml"), &text)?);
    }
    Ok(written)
}

/// Where `mirrorkit witness` looks for its file unless told otherwise.
pub const DEFAULT_WITNESS_FILE: &str = "/etc/mirrorkit/witness.toml";

/// Copy the CA certificate and `name`'s certificate and key into `certs` (key mode 0600).
fn copy_certs(ca_dir: &Path, certs: &Path, name: &str) -> Result<(), String> {
    std::fs::create_dir_all(certs)
        .map_err(|e| format!("cannot create {}: {e}", certs.display()))?;
    for f in [
        "ca.pem".to_owned(),
        format!("{name}.pem"),
        format!("{name}.key"),
    ] {
        let from = ca_dir.join(&f);
        let to = certs.join(&f);
        if to.exists() {
            return Err(format!("{} exists: refusing to overwrite it", to.display()));
        }
        std::fs::copy(&from, &to)
            .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
        if f.ends_with(".key") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot restrict {}: {e}", to.display()))?;
        }
    }
    Ok(())
}

/// Write a new file, refusing to overwrite one.
fn write_new(file: &Path, text: &str) -> Result<PathBuf, String> {
    if file.exists() {
        return Err(format!(
            "{} exists: refusing to overwrite it",
            file.display()
        ));
    }
    std::fs::write(file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(file.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> InitSpec {
        InitSpec {
            cluster: "shop".into(),
            nodes: [
                InitNode {
                    name: "alpha".into(),
                    addr: "10.0.0.1".parse().unwrap(),
                },
                InitNode {
                    name: "beta".into(),
                    addr: "10.0.0.2".parse().unwrap(),
                },
            ],
            extra_heartbeats: vec![(
                "backup".into(),
                [
                    "192.168.9.1".parse().unwrap(),
                    "192.168.9.2".parse().unwrap(),
                ],
            )],
            replication_port: DEFAULT_REPLICATION_PORT,
            heartbeat_port: DEFAULT_HEARTBEAT_PORT,
            certs: "/etc/mirrorkit/certs".into(),
            modules: "/etc/mirrorkit/modules".into(),
            state: dir.join("state"),
            run: "/run/mirrorkit".into(),
            data_root: None,
            witness: Some(("witness".into(), "10.0.0.3:7450".parse().unwrap())),
            admin_password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into()),
        }
    }

    #[test]
    fn init_writes_two_valid_files_with_their_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let files = init(&spec(tmp.path()), tmp.path()).unwrap();
        assert_eq!(files.len(), 3);
        assert!(files[2].ends_with("witness/witness.toml"), "{files:?}");
        let a = ClusterFile::load(&files[0]).unwrap();
        let b = ClusterFile::load(&files[1]).unwrap();
        assert_eq!((a.node.as_str(), a.peer()), ("alpha", "beta"));
        assert_eq!((b.node.as_str(), b.peer()), ("beta", "alpha"));
        assert_eq!(a.heartbeats.len(), 2);
        assert_eq!(
            a.heartbeats[1].addrs["beta"].port(),
            DEFAULT_HEARTBEAT_PORT + 1
        );
        assert_eq!(a.nodes, b.nodes);
        mirrorkit_net::pki::NodeIdentity::load(&tmp.path().join("alpha/certs"), "alpha").unwrap();
        mirrorkit_net::pki::NodeIdentity::load(&tmp.path().join("beta/certs"), "beta").unwrap();
        assert!(!tmp.path().join("alpha/certs/beta.key").exists());
        // Certificates name their node's addresses: a console opened by address is accepted.
        let valid = |node: &str, ip: &str| {
            mirrorkit_net::pki::certificate_valid_for_ip(
                &tmp.path().join(format!("{node}/certs/{node}.pem")),
                ip.parse().unwrap(),
            )
            .unwrap()
        };
        assert!(valid("alpha", "10.0.0.1") && valid("alpha", "192.168.9.1"));
        assert!(valid("beta", "10.0.0.2") && valid("beta", "192.168.9.2"));
        assert!(!valid("alpha", "10.0.0.2"));
        assert_eq!(a.witness.as_ref().map(|w| w.name.as_str()), Some("witness"));
        mirrorkit_net::pki::NodeIdentity::load(&tmp.path().join("witness/certs"), "witness")
            .unwrap();
        let w = std::fs::read_to_string(&files[2]).unwrap();
        assert!(w.contains("listen = \"0.0.0.0:7450\""), "{w}");
        assert!(w.contains("nodes = [\"alpha\", \"beta\"]"), "{w}");
        // Both nodes carry the same console password hash, on the default port.
        assert_eq!(a.console, b.console);
        let console = a.console();
        assert_eq!(console.listen, DEFAULT_CONSOLE_LISTEN);
        assert!(console
            .admin_password_hash
            .is_some_and(|h| h.starts_with(ARGON2ID_PREFIX)));
        // Never overwrites.
        assert!(init(&spec(tmp.path()), tmp.path()).is_err());
    }

    #[test]
    fn set_admin_password_hash_keeps_the_header_and_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sp = spec(tmp.path());
        sp.admin_password_hash = None;
        let files = init(&sp, tmp.path()).unwrap();
        let before = ClusterFile::load(&files[0]).unwrap();
        assert_eq!(before.console().admin_password_hash, None);
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$bmV3aGFzaA";
        set_admin_password_hash(&files[0], hash).unwrap();
        let after = ClusterFile::load(&files[0]).unwrap();
        assert_eq!(after.console().admin_password_hash.as_deref(), Some(hash));
        assert_eq!(
            ClusterFile {
                console: before.console.clone(),
                ..after.clone()
            },
            before
        );
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            text.starts_with("# mirrorkit cluster file of node alpha"),
            "{text}"
        );
        // A hash that is not argon2id is refused, and the file is left as it was.
        let e = set_admin_password_hash(&files[0], "plain")
            .unwrap_err()
            .to_string();
        assert!(e.contains("argon2id"), "{e}");
        assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), text);
    }

    #[test]
    fn invalid_files_say_which_field() {
        let tmp = tempfile::tempdir().unwrap();
        let files = init(&spec(tmp.path()), tmp.path()).unwrap();
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let cases = [
            (
                text.replace("node = \"alpha\"", "node = \"gamma\""),
                "not one of [nodes]",
            ),
            (text.replace("[nodes.beta]", "[nodes.Beta_2]"), "nodes"),
            (
                text.replace("beta = \"10.0.0.2:7410\"", ""),
                "no address for node \"beta\"",
            ),
            (
                text.replace("run = \"/run/mirrorkit\"", "run = \"run\""),
                "run",
            ),
            (text.replace("cluster = ", "clustr = "), "unknown field"),
            (
                text.replace("name = \"witness\"", "name = \"alpha\""),
                "[witness] name = \"alpha\" is a node's name",
            ),
            (
                text.replace("$argon2id$", "$argon2i$"),
                "[console] admin_password_hash is not an argon2id hash",
            ),
            (
                text.replace("listen = \"0.0.0.0:9010\"", "listen = \"9010\""),
                "listen",
            ),
        ];
        for (bad, want) in cases {
            std::fs::write(&files[0], &bad).unwrap();
            let e = ClusterFile::load(&files[0]).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("cluster.toml"),
                "{want}: {e}"
            );
        }
    }
}
