//! PostgreSQL under chaos (`chaos.rs`): the shipped module `modules/postgresql` in the namespace
//! lab, and its workload. Clients in the client namespace commit numbered transactions through
//! the virtual IP (`INSERT INTO chaos_acks (client, n)`, autocommit, one number per attempt,
//! increasing per client) and keep the numbers whose COMMIT was acknowledged; `pgbench` runs
//! beside them for load, restarted whenever a failover ends it. A check reads every committed
//! number back through the virtual IP.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::chaos::{ChaosApp, Lost};
use crate::lab::{in_netns, tail, Lab, LabModule, LAN_PREFIX};
use crate::pgwire::PgConn;

/// The module's name (modules/postgresql/module.toml).
pub const MODULE: &str = "postgresql";
const USER: &str = "postgres";
const DB: &str = "postgres";

/// The directory of Debian's PostgreSQL programs (the newest `/usr/lib/postgresql/*/bin` with
/// `postgres`, `initdb`, `pg_ctl` and `pgbench`), if PostgreSQL is installed.
pub fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            ["postgres", "initdb", "pg_ctl", "pgbench"]
                .iter()
                .all(|p| bin.join(p).exists())
                .then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// PostgreSQL (and its `postgres` user) installed, or skip (fail under CI).
pub fn require_postgresql(test: &str) -> bool {
    let user = Command::new("id")
        .arg("-u")
        .arg(USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if pg_bin().is_some() && user {
        return true;
    }
    crate::skip_unless_ci(&format!(
        "{test}: needs PostgreSQL (apt-get install postgresql: /usr/lib/postgresql/*/bin and the postgres user)"
    ))
}

/// The PostgreSQL module of a lab: virtual IP .81, port 5432.
pub fn module(heartbeat: &'static str) -> LabModule {
    LabModule {
        heartbeat,
        ..LabModule::demo(MODULE, 5432, 81)
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

/// The shipped module folder.
pub fn module_src() -> PathBuf {
    workspace_root().join("modules/postgresql")
}

/// Replace `from` by `to` in `text`, where it must occur exactly once (the shipped file changed
/// otherwise: this must follow).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "modules/postgresql/module.toml: {from:?} should occur exactly once"
    );
    text.replacen(from, to, 1)
}

/// The shipped `module.toml` with the lab's replicated directory, virtual IP and heartbeat
/// profile; TCP only (both nodes share one machine's /var/run/postgresql), the lab's clients
/// trusted, checkpoints every 30 s (so that failovers also hit checkpoints).
pub fn lab_module_toml(m: &LabModule) -> String {
    let text = std::fs::read_to_string(module_src().join("module.toml"))
        .expect("modules/postgresql/module.toml");
    let mut t = replace_once(
        &text,
        "dir = \"/var/lib/mirrorkit-postgresql\"",
        &format!("dir = \"{}\"", m.dir()),
    );
    t = replace_once(
        &t,
        "address = \"192.0.2.81/24\"",
        &format!("address = \"{}/24\"", m.vip_addr().ip()),
    );
    t = replace_once(
        &t,
        "heartbeat = \"default\"",
        &format!("heartbeat = \"{}\"", m.heartbeat),
    );
    t = replace_once(
        &t,
        "PG_SOCKET_DIR = \"/var/run/postgresql\"",
        "PG_SOCKET_DIR = \"\"",
    );
    t = replace_once(
        &t,
        "PG_CLIENT_NETS = \"\"",
        &format!("PG_CLIENT_NETS = \"{LAN_PREFIX}.0/24\""),
    );
    t = replace_once(
        &t,
        "PG_HOST_AUTH = \"scram-sha-256\"",
        "PG_HOST_AUTH = \"trust\"",
    );
    replace_once(
        &t,
        "PG_OPTIONS = \"\"",
        "PG_OPTIONS = \"-c checkpoint_timeout=30s -c shared_buffers=64MB\"",
    )
}

/// A lab running the shipped PostgreSQL module, whose drop also kills the servers (they do not
/// name the lab's directory on their command line, so the lab's own drop would miss them).
pub struct PgLab {
    pub lab: Lab,
}

impl PgLab {
    pub fn new(m: &LabModule, witness: bool) -> PgLab {
        let lab = Lab::with_module_dir(m.clone(), &module_src(), &lab_module_toml(m), witness);
        PgLab { lab }
    }
}

impl Drop for PgLab {
    fn drop(&mut self) {
        for i in 0..self.lab.nodes.len() {
            self.lab.kill9(i);
        }
        self.lab.kill_module_processes(MODULE);
    }
}

/// The workload's size.
#[derive(Clone, Debug)]
pub struct PgLoad {
    /// Clients committing numbered transactions.
    pub clients: usize,
    /// pgbench's clients (0: no pgbench).
    pub pgbench_clients: usize,
    /// pgbench's scale factor (`-i -s`).
    pub pgbench_scale: u32,
}

impl Default for PgLoad {
    fn default() -> Self {
        PgLoad {
            clients: 3,
            pgbench_clients: 2,
            pgbench_scale: 2,
        }
    }
}

/// Run `f` on a new thread inside network namespace `ns`.
fn spawn_in_netns<T: Send + 'static>(
    ns: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

fn connect(addr: SocketAddr, connect_ms: u64, io_ms: u64) -> Result<PgConn, String> {
    PgConn::connect(
        addr,
        USER,
        DB,
        Duration::from_millis(connect_ms),
        Duration::from_millis(io_ms),
    )
}

/// The PostgreSQL workload of a chaos run.
pub struct PgChaos {
    m: LabModule,
    load: PgLoad,
    bin: PathBuf,
    stop: Arc<AtomicBool>,
    /// Per client, the numbers whose COMMIT was acknowledged (increasing).
    acked: Vec<Arc<Mutex<Vec<u64>>>>,
    attempts: Arc<AtomicU64>,
    writers: Vec<JoinHandle<()>>,
    pgbench: Option<JoinHandle<(u64, u64)>>,
    pgbench_log: PathBuf,
}

impl PgChaos {
    pub fn new(m: &LabModule, load: PgLoad) -> PgChaos {
        PgChaos {
            m: m.clone(),
            load,
            bin: pg_bin().expect("PostgreSQL installed (require_postgresql)"),
            stop: Arc::new(AtomicBool::new(false)),
            acked: Vec::new(),
            attempts: Arc::new(AtomicU64::new(0)),
            writers: Vec::new(),
            pgbench: None,
            pgbench_log: PathBuf::new(),
        }
    }

    /// libpq's connection string for pgbench: bounded connection and dead-peer detection, so
    /// that a pgbench talking to a node that was cut off ends instead of waiting for TCP.
    fn conninfo(&self) -> String {
        format!(
            "host={} port={} user={USER} dbname={DB} connect_timeout=2 keepalives_idle=2 keepalives_interval=1 keepalives_count=2 tcp_user_timeout=5000",
            self.m.vip_addr().ip(),
            self.m.port
        )
    }

    /// Run one statement through the virtual IP from the client namespace, retrying on
    /// connection failures until `within` has passed.
    fn query(
        &self,
        lab: &Lab,
        sql: &str,
        within: Duration,
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        let addr = self.m.vip_addr();
        let sql = sql.to_owned();
        in_netns(&lab.client.path(), move || {
            let deadline = Instant::now() + within;
            loop {
                let r = connect(addr, 500, 30_000).and_then(|mut c| c.query(&sql));
                match r {
                    Ok(r) => return Ok(r.rows),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("{sql}: {e} (for {within:?})"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
    }
}

/// The pgbench loop: run it, again whenever it ends (a failover ends its sessions), until
/// `stop`; its output appended to `log`. Returns (runs, transactions processed by the runs that
/// ended by themselves).
fn pgbench_loop(
    ns: PathBuf,
    pgbench: PathBuf,
    clients: usize,
    conninfo: String,
    log: PathBuf,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let mut runs = 0;
    while !stop.load(Ordering::Relaxed) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("pgbench log");
        let child: Result<Child, _> = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .arg(&pgbench)
            .args(["-n", "-c", &clients.to_string(), "-j", "1", "-T", "86400"])
            .arg(&conninfo)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn();
        let Ok(mut child) = child else {
            break;
        };
        runs += 1;
        loop {
            if stop.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let tx = text
        .lines()
        .filter_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .filter_map(|n| n.split('/').next()?.trim().parse::<u64>().ok())
        .sum();
    (runs, tx)
}

impl ChaosApp for PgChaos {
    fn module(&self) -> &LabModule {
        &self.m
    }

    fn setup(&mut self, lab: &Lab, settle: Duration) -> Result<(), String> {
        self.query(lab, "SELECT 1", settle)?;
        self.query(
            lab,
            "CREATE TABLE IF NOT EXISTS chaos_acks (client int NOT NULL, n bigint NOT NULL, \
             at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (client, n)); \
             CREATE TABLE IF NOT EXISTS chaos_probe (id bigserial PRIMARY KEY, \
             at timestamptz NOT NULL DEFAULT now())",
            settle,
        )?;
        self.pgbench_log = lab.dir.path().join("pgbench.log");
        if self.load.pgbench_clients > 0 {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", lab.client.path().display()))
                .arg(self.bin.join("pgbench"))
                .args(["-i", "-q", "-s", &self.load.pgbench_scale.to_string()])
                .arg(self.conninfo())
                .output()
                .map_err(|e| format!("pgbench -i: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "pgbench -i failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    fn start_load(&mut self, lab: &Lab) {
        let addr = self.m.vip_addr();
        for client in 0..self.load.clients {
            let acked = Arc::new(Mutex::new(Vec::new()));
            self.acked.push(acked.clone());
            let (stop, attempts) = (self.stop.clone(), self.attempts.clone());
            self.writers
                .push(spawn_in_netns(lab.client.path(), move || {
                    let mut conn: Option<PgConn> = None;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match connect(addr, 300, 5000) {
                                Ok(c) => conn.insert(c),
                                Err(_) => {
                                    std::thread::sleep(Duration::from_millis(50));
                                    continue;
                                }
                            },
                        };
                        n += 1;
                        attempts.fetch_add(1, Ordering::Relaxed);
                        let sql =
                            format!("INSERT INTO chaos_acks (client, n) VALUES ({client}, {n})");
                        match c.query(&sql) {
                            Ok(r) if r.tags.first().is_some_and(|t| t == "INSERT 0 1") => {
                                acked.lock().expect("acked").push(n);
                            }
                            _ => {
                                conn = None;
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                }));
        }
        if self.load.pgbench_clients > 0 {
            let (ns, pgbench, clients, conninfo, log, stop) = (
                lab.client.path(),
                self.bin.join("pgbench"),
                self.load.pgbench_clients,
                self.conninfo(),
                self.pgbench_log.clone(),
                self.stop.clone(),
            );
            self.pgbench = Some(std::thread::spawn(move || {
                pgbench_loop(ns, pgbench, clients, conninfo, log, stop)
            }));
        }
    }

    fn probe(&self, lab: &Lab) -> bool {
        let addr = self.m.vip_addr();
        in_netns(&lab.client.path(), move || {
            connect(addr, 200, 1000)
                .and_then(|mut c| c.query("INSERT INTO chaos_probe DEFAULT VALUES"))
                .is_ok()
        })
    }

    fn acked(&self) -> usize {
        self.acked
            .iter()
            .map(|a| a.lock().expect("acked").len())
            .sum()
    }

    fn verify(&mut self, lab: &Lab) -> Result<usize, Result<Lost, String>> {
        // What was acknowledged before the query: all of it must be read back.
        let snapshot: Vec<Vec<u64>> = self
            .acked
            .iter()
            .map(|a| a.lock().expect("acked").clone())
            .collect();
        let rows = self
            .query(
                lab,
                "SELECT client, n FROM chaos_acks",
                Duration::from_secs(60),
            )
            .map_err(Err)?;
        let mut present = vec![HashSet::new(); snapshot.len()];
        for r in rows {
            let c: Option<usize> = r.first().cloned().flatten().and_then(|v| v.parse().ok());
            let n: Option<u64> = r.get(1).cloned().flatten().and_then(|v| v.parse().ok());
            if let (Some(c), Some(n)) = (c, n) {
                if let Some(set) = present.get_mut(c) {
                    set.insert(n);
                }
            }
        }
        let mut count = 0;
        let mut detail = Vec::new();
        for (c, list) in snapshot.iter().enumerate() {
            let missing: Vec<u64> = list
                .iter()
                .copied()
                .filter(|n| !present[c].contains(n))
                .collect();
            if !missing.is_empty() {
                count += missing.len();
                detail.push(format!(
                    "client {c}: {} of {} acknowledged numbers missing (first: {:?}; highest acknowledged {}, rows present {})",
                    missing.len(),
                    list.len(),
                    &missing[..missing.len().min(20)],
                    list.last().copied().unwrap_or(0),
                    present[c].len()
                ));
            }
        }
        if count == 0 {
            Ok(snapshot.iter().map(Vec::len).sum())
        } else {
            Err(Ok(Lost {
                count,
                detail: detail.join("; "),
            }))
        }
    }

    fn stop_load(&mut self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.writers.drain(..) {
            let _ = w.join();
        }
        let (runs, tx) = self
            .pgbench
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or((0, 0));
        let acked = self.acked();
        let pgbench = if self.load.pgbench_clients > 0 {
            format!(
                "; pgbench ({} clients, scale {}) alongside: {runs} runs, {tx} transactions in the runs a failover ended (the last run's are not counted)",
                self.load.pgbench_clients, self.load.pgbench_scale
            )
        } else {
            String::new()
        };
        format!(
            "{} clients committed {acked} numbered transactions ({} attempts){pgbench}",
            self.load.clients,
            self.attempts.load(Ordering::Relaxed)
        )
    }

    fn app_pid(&self, lab: &Lab, i: usize) -> Option<i32> {
        std::fs::read_to_string(lab.run_dir(i, MODULE).join("postgres.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    fn diagnostics(&self, lab: &Lab) -> String {
        let mut s = String::new();
        for (i, n) in lab.nodes.iter().enumerate() {
            let log = std::fs::read_to_string(lab.run_dir(i, MODULE).join("postgresql.log"))
                .unwrap_or_default();
            s.push_str(&format!(
                "--- {} postgresql.log:\n{}\n",
                n.name,
                tail(&log, 30)
            ));
        }
        let pgb = std::fs::read_to_string(&self.pgbench_log).unwrap_or_default();
        s.push_str(&format!("--- pgbench.log:\n{}\n", tail(&pgb, 10)));
        s
    }
}

impl Drop for PgChaos {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
