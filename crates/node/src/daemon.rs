//! The node daemon: one task owns every module's state machine and performs its actions with
//! the real components (the engine's mount and receiver, the module's scripts, virtual IPs,
//! the heartbeat channel). Everything that takes time runs in its own task and comes back as
//! an input of the loop, so that the machines never wait for I/O and see events in order.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use mirrorkit_cluster::machine::{
    Action, Event, Failure, Level, MirrorEvent, OpId, PeerMsg, Progress, Script, StateKind, Timer,
    Verb,
};
use mirrorkit_engine::link::{LinkConfig, Mode};
use mirrorkit_engine::managed::EngineEvent;
use mirrorkit_engine::mount::Mounted;
use mirrorkit_engine::primary::PeerAddr;
use mirrorkit_engine::secondary::{Receiver, SecondaryConfig, SecondaryCounters};
use mirrorkit_engine::status::Status as EngineStatus;
use mirrorkit_module::{HeartbeatProfile, ScriptKind};
use mirrorkit_net::pki::NodeIdentity;
use mirrorkit_scripts::{Kind, Level as LogLevel, ScriptRole};
use mirrorkit_store::StateFile;
use mirrorkit_vip::VipSpec;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::api::{self, ModuleStatus, NetStatus, NodeStatus, Reply, Request};
use crate::config::ClusterFile;
use crate::module_rt::EngineReport;
use crate::module_rt::{module_rt, ModuleRt};

/// Everything the loop reacts to.
pub(crate) enum Input {
    Machine(String, Event),
    Engine(EngineEvent),
    Api(Request, oneshot::Sender<Reply>),
    Mounted {
        module: String,
        op: OpId,
        /// One mount per mirror, in the module's order, with its FUSE device.
        result: Result<Vec<(Mounted, Option<u64>)>, String>,
    },
    Liveness(HeartbeatProfile, bool),
    /// No heartbeat from the peer for its profile's detection time less two intervals.
    Fading(HeartbeatProfile),
    Checker(String, mirrorkit_checkers::CheckerReport),
    /// A module folder changed (`crate::reload`).
    ModuleFile(PathBuf, mirrorkit_module::WatchUpdate),
    Stop(oneshot::Sender<()>),
}

type Receivers = Arc<Mutex<HashMap<String, Arc<Receiver>>>>;

pub(crate) struct Daemon {
    pub(crate) cf: ClusterFile,
    start: Instant,
    pub(crate) tx: mpsc::UnboundedSender<Input>,
    engine_tx: mirrorkit_engine::managed::Events,
    pub(crate) modules: BTreeMap<String, ModuleRt>,
    endpoint: quinn::Endpoint,
    receivers: Receivers,
    heartbeat: mirrorkit_heartbeat::Heartbeat,
    witness: Option<mirrorkit_witness::WitnessClient>,
    pub(crate) guard: crate::guard::Guard,
}

/// With a witness: how long a grant lasts for a module of this heartbeat profile. A failover
/// waits for the dead primary's lease to run out, so it is about the profile's detection time.
fn witness_lease_ms(p: HeartbeatProfile) -> u32 {
    match p {
        HeartbeatProfile::Default => 2_000,
        HeartbeatProfile::Fast => 800,
    }
}

/// The early warning of a lost peer (`Event::PeerFading`): two heartbeat intervals before the
/// peer itself may declare this node lost.
fn fading_after_ms(p: HeartbeatProfile) -> u64 {
    p.peer_lost_after_ms().saturating_sub(2 * p.interval_ms())
}

/// Run the node daemon until `stop` resolves; then stop every module as `stop` would (the
/// primary hands over to a secondary in sync) and return.
pub async fn run(
    cf: ClusterFile,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let identity = NodeIdentity::load(&cf.certs, &cf.node).with_context(|| {
        format!(
            "cannot load node {}'s certificate from {}",
            cf.node,
            cf.certs.display()
        )
    })?;
    let peer = cf.peer().to_owned();
    let bind = cf
        .replication(&cf.node)
        .ok_or_else(|| anyhow!("no replication address for node {}", cf.node))?;
    let endpoint =
        mirrorkit_net::endpoint(&identity, bind, &mirrorkit_net::TransportParams::default())
            .with_context(|| format!("cannot open the replication endpoint on {bind}"))?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    let (engine_tx, mut engine_rx) = mpsc::unbounded_channel::<EngineEvent>();
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(e) = engine_rx.recv().await {
                if tx.send(Input::Engine(e)).is_err() {
                    break;
                }
            }
        });
    }

    // Modules: every folder of the modules directory.
    let mut modules = BTreeMap::new();
    let names = cf.names();
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(&cf.modules) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(e) => {
            warn!(dir = %cf.modules.display(), "cannot read the modules directory: {e}; no module runs");
            Vec::new()
        }
    };
    entries.sort();
    for dir in entries {
        let (name, rt) = module_rt(&cf, &dir, &names, &tx);
        modules.insert(name, rt);
    }

    // Heartbeats: the fastest profile in use sets the beat.
    let interval = modules
        .values()
        .map(|m| m.profile.interval_ms())
        .min()
        .unwrap_or(HeartbeatProfile::Default.interval_ms());
    let networks = cf
        .heartbeats
        .iter()
        .filter_map(|h| {
            Some(mirrorkit_heartbeat::Network {
                name: h.name.clone(),
                local: *h.addrs.get(&cf.node)?,
                peer: *h.addrs.get(&peer)?,
            })
        })
        .collect();
    let hb_cfg = mirrorkit_heartbeat::Config {
        node: cf.node.clone(),
        peer: peer.clone(),
        networks,
        interval_ms: interval,
    };
    let (heartbeat, mut messages) = mirrorkit_heartbeat::Heartbeat::start(identity.clone(), hb_cfg)
        .await
        .map_err(|e| anyhow!("cannot start the heartbeats: {e}"))?;
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = messages.recv().await {
                match postcard::from_bytes::<PeerMsg>(&m.payload) {
                    Ok(msg) => {
                        if tx
                            .send(Input::Machine(m.channel, Event::Peer(msg)))
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => warn!(module = %m.channel, "unreadable message from the peer: {e}"),
                }
            }
        });
    }
    let mut profiles: Vec<HeartbeatProfile> = modules.values().map(|m| m.profile).collect();
    profiles.sort_by_key(|p| p.peer_lost_after_ms());
    profiles.dedup();
    let guard = crate::guard::Guard::new(cf.witness.is_some());
    for m in modules.values() {
        if let Some(name) = m.loaded.as_ref().map(|l| l.config.name.clone()) {
            guard.set_module(&name, m.profile, &m.vips);
        }
    }
    for p in profiles.clone() {
        let mut w = heartbeat.watch(fading_after_ms(p));
        let (tx, guard) = (tx.clone(), guard.clone());
        tokio::spawn(async move {
            while let Some(l) = w.recv().await {
                let lost = matches!(l, mirrorkit_heartbeat::Liveness::Lost { .. });
                guard.peer_in_view(p, !lost);
                if lost && tx.send(Input::Fading(p)).is_err() {
                    break;
                }
            }
        });
    }
    for p in profiles {
        let mut w = heartbeat.watch(p.peer_lost_after_ms());
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(l) = w.recv().await {
                let seen = matches!(l, mirrorkit_heartbeat::Liveness::Seen);
                if let mirrorkit_heartbeat::Liveness::Lost { reason } = &l {
                    warn!(profile = ?p, "peer lost: {reason}");
                }
                if tx.send(Input::Liveness(p, seen)).is_err() {
                    break;
                }
            }
        });
    }

    let witness = match &cf.witness {
        Some(w) => {
            let (wtx, mut wrx) = mpsc::unbounded_channel();
            let client = mirrorkit_witness::WitnessClient::start(
                identity.clone(),
                w.address,
                w.name.clone(),
                wtx,
            );
            let (tx, guard) = (tx.clone(), guard.clone());
            tokio::spawn(async move {
                while let Some((module, ev)) = wrx.recv().await {
                    guard.witness_event(&module, &ev);
                    if tx.send(Input::Machine(module, Event::Witness(ev))).is_err() {
                        break;
                    }
                }
            });
            info!(witness = %w.name, address = %w.address, "the witness arbitrates the primary role");
            Some(client)
        }
        None => None,
    };

    let receivers: Receivers = Arc::default();
    tokio::spawn(accept_loop(
        endpoint.clone(),
        peer.clone(),
        receivers.clone(),
    ));

    // The control socket.
    {
        let tx = tx.clone();
        api::serve(&cf.socket(), move |req| {
            let tx = tx.clone();
            async move {
                let (rtx, rrx) = oneshot::channel();
                if tx.send(Input::Api(req, rtx)).is_err() {
                    return Reply::Error("the daemon is stopping".into());
                }
                rrx.await
                    .unwrap_or_else(|_| Reply::Error("the daemon is stopping".into()))
            }
        })
        .await
        .map_err(|e| anyhow!(e))?;
    }

    for m in modules.values() {
        crate::reload::watch(m.folder.clone(), names.clone(), tx.clone());
    }

    let mut d = Daemon {
        cf,
        start: Instant::now(),
        tx: tx.clone(),
        engine_tx,
        modules,
        endpoint,
        receivers,
        heartbeat,
        witness,
        guard,
    };
    info!(node = %d.cf.node, peer = %peer, modules = d.modules.len(), socket = %d.cf.socket().display(), "mirrorkit daemon started");
    d.boot().await;

    {
        let tx = tx.clone();
        tokio::spawn(async move {
            stop.await;
            let (stx, srx) = oneshot::channel();
            if tx.send(Input::Stop(stx)).is_ok() {
                let _ = srx.await;
            }
        });
    }
    // (who waits, when asked, since when every module is stopped)
    let mut stopping: Option<(oneshot::Sender<()>, Instant, Option<Instant>)> = None;
    // Modules that were primary when the stop was asked: their peer should take over.
    let mut handing: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let next = d.next_deadline();
        let sleep = async {
            match next {
                Some(at) => {
                    let now = d.now();
                    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { break };
                match input {
                    Input::Stop(done) => {
                        info!("stopping: every module stops (a primary hands over to a secondary in sync)");
                        handing = d
                            .modules
                            .iter()
                            .filter(|(_, m)| m.machine.as_ref().is_some_and(|mc| mc.state().is_primary()))
                            .map(|(n, _)| n.clone())
                            .collect();
                        for name in d.modules.keys().cloned().collect::<Vec<_>>() {
                            d.feed(&name, Event::Verb { verb: Verb::Stop, who: "daemon shutdown".into() }).await;
                        }
                        stopping = Some((done, Instant::now(), None));
                    }
                    other => d.input(other).await,
                }
            }
            _ = sleep => d.fire_timers().await,
            _ = tick.tick() => {
                d.retry_stalled().await;
                d.poll_progress().await;
            }
        }
        if let Some((_, asked, stopped_since)) = &mut stopping {
            let all_stopped = d.modules.values().all(|m| {
                m.machine
                    .as_ref()
                    .is_none_or(|mc| mc.state() == StateKind::Stop)
            });
            // A handover completes when the peer has heard of it and committed its promotion
            // (which needs this node's consent while it is in view): stay, answering, until
            // then, or until the peer is gone, for a few seconds at most.
            let handed = handing.iter().all(|name| {
                d.modules.get(name).is_none_or(|m| {
                    m.peer
                        .as_ref()
                        .is_none_or(|p| p.state.is_primary() && p.committed)
                })
            });
            *stopped_since = if all_stopped {
                Some(stopped_since.unwrap_or_else(Instant::now))
            } else {
                None
            };
            let lingered = stopped_since.is_some_and(|t| t.elapsed() > Duration::from_secs(5));
            if (all_stopped && (handed || lingered)) || asked.elapsed() > Duration::from_secs(600) {
                if let Some((done, _, _)) = stopping.take() {
                    let _ = done.send(());
                }
                break;
            }
        }
    }
    d.heartbeat.shutdown().await;
    d.endpoint.close(0u32.into(), b"daemon stopped");
    info!("mirrorkit daemon stopped");
    Ok(())
}

/// Route each incoming replication connection to the receiver of the mirror it greets.
async fn accept_loop(endpoint: quinn::Endpoint, peer: String, receivers: Receivers) {
    while let Some(conn) = mirrorkit_net::accept(&endpoint).await {
        let who = mirrorkit_net::peer_node_name(&conn).unwrap_or_default();
        if who != peer {
            warn!(remote = %conn.remote_address(), node = %who, "refused replication session: only node {peer} may replicate to this node");
            conn.close(1u32.into(), b"not the configured peer");
            continue;
        }
        let receivers = receivers.clone();
        tokio::spawn(async move {
            let (send, recv, hello) = match mirrorkit_engine::secondary::greet(&conn).await {
                Ok(g) => g,
                Err(e) => {
                    info!(remote = %conn.remote_address(), "replication session ended at its greeting: {e}");
                    conn.close(0u32.into(), b"session ended");
                    return;
                }
            };
            let r = receivers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&hello.mirror)
                .cloned();
            match r {
                Some(r) => r.serve(conn, send, recv, hello).await,
                None => {
                    // Not secondary here (yet): the primary retries shortly.
                    conn.close(2u32.into(), b"mirror not received on this node now");
                }
            }
        });
    }
}

fn log_level(l: Level) -> LogLevel {
    match l {
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    }
}

fn script_kind(s: Script) -> ScriptKind {
    match s {
        Script::Prestart => ScriptKind::Prestart,
        Script::StartBoth => ScriptKind::StartBoth,
        Script::StartPrim => ScriptKind::StartPrim,
        Script::StopPrim => ScriptKind::StopPrim,
        Script::StopBoth => ScriptKind::StopBoth,
        Script::Poststop => ScriptKind::Poststop,
    }
}

/// Drop the module's virtual IPs now (idempotent), logging failures: `why` says when.
fn drop_vips(name: &str, vips: &[VipSpec], why: &str) {
    for v in vips {
        if let Err(e) = mirrorkit_vip::release(v) {
            error!(module = %name, "cannot drop the virtual IP {v} ({why}): {e}");
        }
    }
}

/// Cut the application off at once: no virtual IP, the mount's FUSE connection aborted (every
/// request of the application fails), then writers held by the link released (nothing they
/// release reaches the application as a success).
fn cut_off(name: &str, m: &ModuleRt, why: &str) {
    drop_vips(name, &m.vips, why);
    for mr in &m.mirrors {
        if let (Some(_), Some(dev)) = (&mr.mounted, mr.fuse_dev) {
            crate::fence::abort_fuse(dev);
        }
    }
    for link in m.links() {
        link.fence();
    }
}

impl Daemon {
    /// The modules whose peer liveness follows heartbeat `profile`.
    fn modules_of(&self, profile: HeartbeatProfile) -> Vec<String> {
        self.modules
            .iter()
            .filter(|(_, m)| m.profile == profile)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn boot(&mut self) {
        let names: Vec<String> = self.modules.keys().cloned().collect();
        for name in names {
            if self.modules[&name].machine.is_none() {
                continue;
            }
            self.clean_slate(&name);
            self.feed(&name, Event::Booted).await;
            let autostart = self.modules[&name]
                .loaded
                .as_ref()
                .is_some_and(|l| l.config.autostart);
            if autostart {
                self.feed(
                    &name,
                    Event::Verb {
                        verb: Verb::Start,
                        who: "boot (autostart)".into(),
                    },
                )
                .await;
            }
        }
    }

    /// At boot this node holds no role: whatever a previous daemon of this node left (it was
    /// killed, or the node crashed) goes: the module's processes, its virtual IPs, a dead
    /// mount over its directory.
    pub(crate) fn clean_slate(&mut self, name: &str) {
        let Some(m) = self.modules.get(name) else {
            return;
        };
        if let Some(r) = &m.runner {
            // Processes left by a previous daemon of this node (the runner logs what it kills;
            // it may wait up to 2 s for them to die).
            tokio::task::block_in_place(|| r.kill_all());
        }
        // Releasing is idempotent: the vip crate logs an address it actually removes.
        drop_vips(name, &m.vips, "left by a previous daemon of this node");
        for mr in &m.mirrors {
            if let Err(e) = mirrorkit_engine::mount::detach_stale_mount(&mr.dir) {
                error!(module = %name, dir = %mr.dir.display(), "cannot detach a stale mount: {e}");
            }
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.modules
            .values()
            .filter_map(|m| m.timers.values().min().copied())
            .min()
    }

    async fn fire_timers(&mut self) {
        let now = self.now();
        let mut due = Vec::new();
        for (name, m) in &mut self.modules {
            let fired: Vec<Timer> = m
                .timers
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(t, _)| *t)
                .collect();
            for t in fired {
                m.timers.remove(&t);
                due.push((name.clone(), t));
            }
        }
        for (name, t) in due {
            self.feed(&name, Event::Timer(t)).await;
        }
    }

    /// Resync progress of mounted primaries, as the machine's events.
    async fn poll_progress(&mut self) {
        let mut events = Vec::new();
        let now = self.now();
        for (name, m) in &mut self.modules {
            if !m.is_mounted() {
                m.write_rate.clear();
                m.record_error = None;
                continue;
            }
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            let mut record_errors = Vec::new();
            let (mut sent, mut syncing) = (0u64, false);
            let mut p = Progress::default();
            for link in m.links() {
                record_errors.extend(link.retry_record());
                let c = link.counters();
                sent = sent.saturating_add(c.data_bytes_sent.load(relaxed));
                if link.status().0 == Mode::Syncing {
                    syncing = true;
                    p.done_bytes = p.done_bytes.saturating_add(c.sync_done_bytes.load(relaxed));
                    p.total_bytes = p
                        .total_bytes
                        .saturating_add(c.sync_total_bytes.load(relaxed));
                }
            }
            m.record_error = (!record_errors.is_empty()).then(|| record_errors.join("; "));
            m.write_rate.sample(now, sent);
            if !syncing {
                continue;
            }
            if m.last_progress != Some(p) {
                m.last_progress = Some(p);
                events.push((name.clone(), Event::Mirror(MirrorEvent::ResyncProgress(p))));
            }
        }
        for (name, e) in events {
            self.feed(&name, e).await;
        }
    }

    async fn input(&mut self, input: Input) {
        match input {
            Input::Machine(name, ev) => {
                if let Event::Peer(PeerMsg::Status(s)) = &ev {
                    if let Some(m) = self.modules.get_mut(&name) {
                        m.peer = Some(s.clone());
                    }
                }
                self.feed(&name, ev).await
            }
            Input::Liveness(profile, seen) => {
                let names = self.modules_of(profile);
                for n in names {
                    if let Some(m) = self.modules.get_mut(&n) {
                        if !seen {
                            m.peer = None;
                        }
                        // A mounted primary stops waiting the whole peer timeout for a peer
                        // the heartbeats lost (it waits only while acknowledgements come).
                        for link in m.links() {
                            if seen {
                                link.peer_heard();
                            } else {
                                link.peer_silent(format!(
                                    "the heartbeats lost {} ({} profile)",
                                    self.cf.peer(),
                                    profile.name()
                                ));
                            }
                        }
                    }
                    self.feed(
                        &n,
                        if seen {
                            Event::PeerSeen
                        } else {
                            Event::PeerLost
                        },
                    )
                    .await;
                }
            }
            Input::Checker(module, report) => self.checker_report(&module, report).await,
            Input::ModuleFile(folder, update) => self.module_file(&folder, update).await,
            Input::Fading(profile) => {
                let names = self.modules_of(profile);
                for n in names {
                    self.feed(&n, Event::PeerFading).await;
                }
            }
            Input::Engine(e) => self.engine_event(e).await,
            Input::Mounted { module, op, result } => {
                let result = match result {
                    Ok(mounts) => {
                        let peer = PeerAddr {
                            node: self.cf.peer().to_owned(),
                            addr: self
                                .cf
                                .replication(self.cf.peer())
                                .unwrap_or(self.cf.nodes[&self.cf.node].replication),
                        };
                        self.guard.mounted(
                            &module,
                            mounts
                                .iter()
                                .map(|(mt, dev)| (mt.core.clone(), *dev))
                                .collect(),
                        );
                        if let Some(m) = self.modules.get_mut(&module) {
                            for (mr, (mounted, dev)) in m.mirrors.iter_mut().zip(mounts) {
                                let core = mounted.core.clone();
                                mr.primary_task =
                                    Some(tokio::spawn(mirrorkit_engine::primary::run(
                                        core.clone(),
                                        self.endpoint.clone(),
                                        self.cf.node.clone(),
                                        peer.clone(),
                                    )));
                                if let Err(e) =
                                    mirrorkit_engine::control::serve(core, &mr.state_dir)
                                {
                                    warn!(module = %module, dir = %mr.dir.display(), "verify socket unavailable: {e}");
                                }
                                mr.mounted = Some(mounted);
                                mr.fuse_dev = dev;
                                mr.in_sync = false;
                            }
                        }
                        Ok(())
                    }
                    Err(e) => Err(Failure {
                        detail: e,
                        exit_status: None,
                    }),
                };
                self.feed(&module, Event::Done { op, result }).await;
            }
            Input::Api(req, reply) => self.api(req, reply).await,
            Input::Stop(_) => {}
        }
    }

    /// The module and index of the mirror an engine names.
    fn mirror_of(&self, key: &str) -> Option<(String, usize)> {
        self.modules.iter().find_map(|(name, m)| {
            m.mirrors
                .iter()
                .position(|mr| mr.key == key)
                .map(|k| (name.clone(), k))
        })
    }

    /// An engine's report, as the module's machine hears it: a module with several mirrors is
    /// in sync only when all its engines are, and any engine's loss is the module's.
    async fn engine_event(&mut self, e: EngineEvent) {
        let key = match &e {
            EngineEvent::PeerInSync { mirror }
            | EngineEvent::PeerOutOfSync { mirror, .. }
            | EngineEvent::ResyncStarting { mirror, .. }
            | EngineEvent::InSync { mirror, .. }
            | EngineEvent::SyncLost { mirror, .. } => mirror.clone(),
        };
        let Some((module, k)) = self.mirror_of(&key) else {
            warn!(mirror = %key, "report of an engine no module runs, ignored");
            if let EngineEvent::ResyncStarting { reply, .. } = e {
                let _ = reply.send(Err(format!("no module runs mirror {key} on this node")));
            }
            return;
        };
        let Some(m) = self.modules.get_mut(&module) else {
            return;
        };
        let mut flags: Vec<bool> = m.mirrors.iter().map(|mr| mr.in_sync).collect();
        let (report, ev) = match e {
            EngineEvent::PeerInSync { .. } => (EngineReport::InSync, MirrorEvent::PeerInSync),
            EngineEvent::PeerOutOfSync { reason, .. } => (
                EngineReport::Lost,
                MirrorEvent::PeerOutOfSync {
                    reason: m.mirror_reason(k, reason),
                },
            ),
            EngineEvent::ResyncStarting {
                source,
                full,
                reply,
                ..
            } => {
                if let Some(old) = m.mirrors[k].pending_resync.replace(reply) {
                    let _ = old.send(Err("superseded by a newer session".into()));
                }
                (
                    EngineReport::Lost,
                    MirrorEvent::ResyncStarting { source, full },
                )
            }
            EngineEvent::InSync { source, .. } => {
                (EngineReport::InSync, MirrorEvent::InSync { source })
            }
            EngineEvent::SyncLost { reason, .. } => (
                EngineReport::Lost,
                MirrorEvent::SyncLost {
                    reason: m.mirror_reason(k, reason),
                },
            ),
        };
        let heard = crate::module_rt::aggregate(&mut flags, k, report);
        for (mr, f) in m.mirrors.iter_mut().zip(flags) {
            mr.in_sync = f;
        }
        if !heard {
            info!(module = %module, dir = %m.mirrors[k].dir.display(), "this mirror is in sync; the module's other mirrors are not yet");
            return;
        }
        m.answering = Some(k);
        self.feed(&module, Event::Mirror(ev)).await;
        if let Some(m) = self.modules.get_mut(&module) {
            m.answering = None;
        }
    }

    async fn api(&mut self, req: Request, reply: oneshot::Sender<Reply>) {
        match req {
            Request::Status => {
                let _ = reply.send(Reply::Status(self.status()));
            }
            Request::Log { module, lines } => {
                let Some(m) = self.modules.get(&module) else {
                    let _ = reply.send(Reply::Error(self.unknown(&module)));
                    return;
                };
                let path = m.state_dir.join("events.log");
                let r = match mirrorkit_scripts::EventLog::read_tail(&path, lines) {
                    Ok(entries) => Reply::Log(entries),
                    Err(e) => Reply::Error(format!("cannot read {}: {e}", path.display())),
                };
                let _ = reply.send(r);
            }
            Request::Verb { module, verb, who } => {
                let Some(m) = self.modules.get_mut(&module) else {
                    let _ = reply.send(Reply::Error(self.unknown(&module)));
                    return;
                };
                if m.machine.is_none() {
                    let why = m.problems.join("; ");
                    let _ = reply.send(Reply::Error(format!(
                        "module {module} cannot run on this node: {why}"
                    )));
                    return;
                }
                if let Some(log) = &m.log {
                    log.append(
                        LogLevel::Info,
                        Kind::Verb,
                        &format!("{verb} asked by {who}"),
                    );
                }
                info!(module = %module, %verb, %who, "verb");
                m.verb_waiters.push((verb, reply));
                self.feed(&module, Event::Verb { verb, who }).await;
            }
        }
    }

    fn unknown(&self, module: &str) -> String {
        format!(
            "no module {module:?} on node {} (modules: {})",
            self.cf.node,
            self.modules.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    }

    fn status(&self) -> NodeStatus {
        let now = self.now();
        NodeStatus {
            cluster: self.cf.cluster.clone(),
            node: self.cf.node.clone(),
            peer: self.cf.peer().to_owned(),
            witness: self
                .cf
                .witness
                .as_ref()
                .map(|w| format!("{} ({})", w.name, w.address)),
            heartbeats: self
                .heartbeat
                .networks()
                .into_iter()
                .map(|n| NetStatus {
                    name: n.name,
                    up: n.up,
                    last_heard_ms_ago: n.last_heard_ms_ago,
                    rtt_us: n.rtt_us,
                    last_error: n.last_error,
                    received: n.received,
                    missed: n.missed,
                })
                .collect(),
            modules: self
                .modules
                .iter()
                .map(|(name, m)| {
                    let st = m.machine.as_ref().map(|mc| mc.status());
                    ModuleStatus {
                        name: name.clone(),
                        problems: m
                            .problems
                            .iter()
                            .cloned()
                            .chain(m.stalled.as_ref().map(|s| {
                                format!(
                                    "{}; the module acts on nothing until it is written (retried every 200 ms)",
                                    s.error
                                )
                            }))
                            .chain(m.record_error.as_ref().map(|e| {
                                format!(
                                    "cannot record what {} may lack: {e}; the application's writes wait until it is recorded (retried every 200 ms)",
                                    self.cf.peer()
                                )
                            }))
                            .collect(),
                        state: st.as_ref().map(|s| s.state),
                        colour: st.as_ref().map(|s| s.state.colour().to_owned()),
                        reason: st.as_ref().map(|s| s.reason.clone()).unwrap_or_default(),
                        since_ms_ago: st.as_ref().map_or(0, |s| now.saturating_sub(s.since_ms)),
                        progress: st.as_ref().and_then(|s| s.progress),
                        split_brain: st.as_ref().is_some_and(|s| s.split_brain),
                        config_problems: m.config_problems.clone(),
                        mirror: m.is_mounted().then(|| {
                            m.mirrors
                                .iter()
                                .enumerate()
                                .filter_map(|(k, mr)| {
                                    let (mode, reason) = mr.mounted.as_ref()?.core.link.status();
                                    Some(m.mirror_reason(k, format!("{}: {reason}", mode.as_str())))
                                })
                                .collect::<Vec<_>>()
                                .join("; ")
                        }),
                        checkers: m.checkers.as_ref().map(|c| c.status()).unwrap_or_default(),
                        peer_state: m.peer.as_ref().map(|p| p.state),
                        peer_reason: m.peer.as_ref().map(|p| p.reason.clone()),
                        peer_in_sync: m.peer.as_ref().map(|p| p.in_sync),
                        replication: if m.is_mounted() {
                            let parts: Vec<EngineStatus> = m
                                .mirrors
                                .iter()
                                .filter_map(|mr| mr.mounted.as_ref())
                                .map(|mt| EngineStatus::of_primary(&mt.core))
                                .collect();
                            Some(EngineStatus::combine(name, &parts))
                        } else if m.has_receiver() {
                            let parts: Vec<EngineStatus> = m
                                .mirrors
                                .iter()
                                .filter_map(|mr| {
                                    let r = mr.receiver.as_ref()?;
                                    Some(EngineStatus::of_secondary(&mr.key, r.counters()))
                                })
                                .collect();
                            Some(EngineStatus::combine(name, &parts))
                        } else {
                            None
                        },
                        write_rate: if m.is_mounted() { m.write_rate.rate() } else { None },
                    }
                })
                .collect(),
        }
    }

    /// Give one event to a module's machine and perform the actions it asks for, in order.
    pub(crate) async fn feed(&mut self, name: &str, ev: Event) {
        let now = self.now();
        let Some(m) = self.modules.get_mut(name) else {
            warn!(module = %name, "event for an unknown module ignored");
            return;
        };
        if let Some(stall) = &mut m.stalled {
            stall.events.push_back((m.answering, ev));
            return;
        }
        let Some(machine) = m.machine.as_mut() else {
            return;
        };
        let before = machine.state();
        let actions = machine.handle(now, ev);
        let after = machine.state();
        if before != after {
            // The machine logs the change itself (one event, with the reason); the event log
            // gets a line of its own kind, for the console and `mirrorkit log`.
            let reason = machine.status().reason;
            if let Some(log) = &m.log {
                log.append(
                    LogLevel::Info,
                    Kind::State,
                    &format!("{before} -> {after}: {reason}"),
                );
            }
            if let Some(n) = &m.notifier {
                n.notify(mirrorkit_notify::Notification::new(
                    self.cf.cluster.clone(),
                    name,
                    self.cf.node.clone(),
                    before.name(),
                    after.name(),
                    reason,
                ));
            }
        }
        self.run_actions(name, actions.into(), false).await;
        self.checker_modes(name);
        if after == StateKind::Stop && before != StateKind::Stop {
            self.apply_pending(name).await;
        }
    }

    /// Perform a machine's actions in order. A `Persist` that fails stalls the module: the
    /// rest waits (`retry_stalled`), so that nothing the machine asked for after it happens
    /// before the state is durable, while the other modules and the API go on.
    async fn run_actions(
        &mut self,
        name: &str,
        mut actions: std::collections::VecDeque<Action>,
        retrying: bool,
    ) {
        while let Some(a) = actions.pop_front() {
            if let Action::Persist(d) = &a {
                if let Err(error) = self.persist(name, d) {
                    actions.push_front(a);
                    if let Some(m) = self.modules.get_mut(name) {
                        if !retrying {
                            error!(module = %name, "{error}; this module acts on nothing until it is written (retried every 200 ms); the other modules go on");
                            if let Some(log) = &m.log {
                                log.append(
                                    LogLevel::Error,
                                    Kind::Log,
                                    &format!("{error}; the module waits until it can be written"),
                                );
                            }
                        }
                        m.stalled = Some(crate::module_rt::Stall {
                            actions,
                            events: std::collections::VecDeque::new(),
                            error,
                        });
                    }
                    return;
                }
                continue;
            }
            self.perform(name, a).await;
        }
    }

    /// Write the module's data state (unless the mounted link holds it already). The error
    /// says what and where.
    fn persist(
        &mut self,
        name: &str,
        d: &mirrorkit_cluster::generation::DataState,
    ) -> Result<(), String> {
        let Some(m) = self.modules.get_mut(name) else {
            return Ok(());
        };
        // With one mirror, the mounted link holds exactly what is on disk: when it already
        // stored this state (the end of a resync), there is nothing to write again.
        if !m.shares_state() && m.links().next().is_some_and(|l| l.data_state() == *d) {
            return Ok(());
        }
        let file = StateFile::new(&m.state_dir);
        tokio::task::block_in_place(|| file.store(d)).map_err(|e| {
            format!(
                "cannot persist the module's data state in {}: {e}",
                m.state_dir.display()
            )
        })?;
        // Several mirrors: the module's file decides; each engine's copy follows it (a copy
        // left older by a crash here is written again before its engine starts).
        if m.shares_state() {
            for mr in &m.mirrors {
                let copy = StateFile::new(&mr.state_dir);
                tokio::task::block_in_place(|| copy.store(d)).map_err(|e| {
                    format!(
                        "cannot copy the module's data state to {} (mirror {}): {e}",
                        mr.state_dir.display(),
                        mr.declared.display()
                    )
                })?;
            }
        }
        for link in m.links() {
            link.adopt_state(d.clone());
        }
        Ok(())
    }

    /// Try the stalled modules' state again; once written, perform what waited and feed the
    /// events that came meanwhile.
    async fn retry_stalled(&mut self) {
        let names: Vec<String> = self
            .modules
            .iter()
            .filter(|(_, m)| m.stalled.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(stall) = self.modules.get_mut(&name).and_then(|m| m.stalled.take()) else {
                continue;
            };
            let crate::module_rt::Stall {
                actions,
                events,
                error,
            } = stall;
            self.run_actions(&name, actions, true).await;
            let Some(m) = self.modules.get_mut(&name) else {
                continue;
            };
            if let Some(again) = &mut m.stalled {
                // Still failing: keep the first error's events, in order, before any new one.
                let mut all = events;
                all.append(&mut again.events);
                again.events = all;
                continue;
            }
            info!(module = %name, "data state persisted after all ({error} before); going on with {} events that waited", events.len());
            if let Some(log) = &m.log {
                log.append(
                    LogLevel::Info,
                    Kind::Log,
                    &format!("data state persisted after all; was: {error}"),
                );
            }
            for (answering, ev) in events {
                if let Some(m) = self.modules.get_mut(&name) {
                    m.answering = answering;
                }
                self.feed(&name, ev).await;
                if let Some(m) = self.modules.get_mut(&name) {
                    m.answering = None;
                }
            }
            self.checker_modes(&name);
        }
    }

    /// Application checkers run on a primary whose application is up (ALONE, PRIM); node
    /// checkers wherever the module is started.
    pub(crate) fn checker_modes(&mut self, name: &str) {
        let Some(m) = self.modules.get(name) else {
            return;
        };
        let (Some(c), Some(mc)) = (&m.checkers, &m.machine) else {
            return;
        };
        let state = mc.state();
        let app = matches!(state, StateKind::Alone | StateKind::Prim);
        c.set_mode(app, state != StateKind::Stop);
    }

    async fn checker_report(&mut self, name: &str, r: mirrorkit_checkers::CheckerReport) {
        use mirrorkit_checkers::Verdict;
        let Some(m) = self.modules.get_mut(name) else {
            return;
        };
        let ev = match r.verdict {
            Verdict::Restart | Verdict::Failover => {
                let policy = if matches!(r.verdict, Verdict::Restart) {
                    mirrorkit_cluster::machine::CheckerPolicy::Restart
                } else {
                    mirrorkit_cluster::machine::CheckerPolicy::Failover
                };
                Event::CheckerFailed {
                    checker: format!("{} ({})", r.checker, r.detail),
                    policy,
                }
            }
            Verdict::NodeProblem(_) | Verdict::NodeRecovered => {
                let problems = m
                    .checkers
                    .as_ref()
                    .map(|c| c.node_problems())
                    .unwrap_or_default();
                let problem = (!problems.is_empty()).then(|| {
                    problems
                        .iter()
                        .map(|(c, d)| format!("checker {c}: {d}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                if problem == m.health {
                    return;
                }
                m.health = problem.clone();
                Event::NodeHealth { problem }
            }
        };
        self.feed(name, ev).await;
    }

    async fn perform(&mut self, name: &str, action: Action) {
        let tx = self.tx.clone();
        let module = name.to_owned();
        let Some(m) = self.modules.get_mut(name) else {
            return;
        };
        match action {
            Action::Persist(d) => {
                // Normally done by `run_actions`; here only if performed directly.
                if let Err(e) = self.persist(name, &d) {
                    error!(module = %name, "{e}");
                }
            }
            Action::Log { level, text } => {
                match level {
                    Level::Info => info!(module = %name, "{text}"),
                    Level::Warn => warn!(module = %name, "{text}"),
                    Level::Error => error!(module = %name, "{text}"),
                }
                if let Some(log) = &m.log {
                    log.append(log_level(level), Kind::Log, &text);
                }
            }
            Action::Send(msg) => match postcard::to_allocvec(&msg) {
                Ok(bytes) => {
                    self.heartbeat.send(name, bytes);
                }
                Err(e) => error!(module = %name, "cannot encode a message for the peer: {e}"),
            },
            Action::ArmTimer { timer, at_ms } => {
                m.timers.insert(timer, at_ms);
            }
            Action::RunScripts { op, scripts } => {
                let Some(runner) = m.runner.clone() else {
                    return;
                };
                let Some(loaded) = &m.loaded else { return };
                let mut batch = Vec::new();
                // MIRRORKIT_ROLE: the role taken or left; none for prestart and poststop.
                let data_role = if m.is_mounted() {
                    ScriptRole::Primary
                } else if m.has_receiver() {
                    ScriptRole::Secondary
                } else {
                    ScriptRole::None
                };
                let mut role = ScriptRole::None;
                for s in scripts {
                    let kind = script_kind(s);
                    match s {
                        Script::StartPrim | Script::StopPrim => role = ScriptRole::Primary,
                        Script::StartBoth | Script::StopBoth => role = data_role,
                        Script::Prestart | Script::Poststop => {}
                    }
                    if let Some(sc) = loaded.config.scripts.get(kind) {
                        batch.push((kind, sc.clone()));
                    }
                }
                // One batch at a time, in the order asked: a stop asked while a start script
                // runs follows it.
                let previous = m.scripts_running.take();
                m.scripts_running = Some(tokio::spawn(async move {
                    if let Some(p) = previous {
                        let _ = p.await;
                    }
                    let result = runner.run(&batch, role).await.map_err(|f| Failure {
                        detail: f.detail,
                        exit_status: f.exit_status,
                    });
                    let _ = tx.send(Input::Machine(module, Event::Done { op, result }));
                }));
            }
            Action::MountPrimary { op, forced } => {
                let replication = m
                    .loaded
                    .as_ref()
                    .map(|l| l.config.replication)
                    .unwrap_or_default();
                // The checked module's patterns always compile; a failure here is a bug,
                // reported as a failed mount rather than replicating another set.
                let mut plan = Vec::new();
                for mr in &m.mirrors {
                    let filter = match &mr.filter {
                        Ok(f) => f.clone(),
                        Err(e) => {
                            let _ = tx.send(Input::Mounted {
                                module,
                                op,
                                result: Err(e.clone()),
                            });
                            return;
                        }
                    };
                    let cfg = LinkConfig {
                        managed: Some(self.engine_tx.clone()),
                        forced_by: forced.then(|| "an operator (prim)".to_owned()),
                        peer_timeout_ms: replication.peer_timeout_ms,
                        resync_bytes_per_sec: replication.resync_bytes_per_sec(),
                        filter,
                        ..LinkConfig::default()
                    };
                    plan.push((mr.key.clone(), mr.dir.clone(), mr.state_dir.clone(), cfg));
                }
                // Several mirrors: each engine starts from the module's data state, which
                // the machine persisted before asking for the mount.
                let shared = m.shared_state();
                tokio::task::spawn_blocking(move || {
                    let mut mounts = Vec::new();
                    for (key, dir, state_dir, cfg) in plan {
                        let mounted = match &shared {
                            Some(d) => crate::module_rt::give_state(&dir, &state_dir, d),
                            None => Ok(()),
                        }
                        .and_then(|()| mirrorkit_engine::mount::mount(&key, &dir, &state_dir, cfg));
                        match mounted {
                            Ok(mt) => {
                                let dev = crate::fence::device_of(&mt.dir);
                                mounts.push((mt, dev));
                            }
                            Err(e) => {
                                // The mounts made so far go (dropping one unmounts it).
                                drop(mounts);
                                let _ = tx.send(Input::Mounted {
                                    module,
                                    op,
                                    result: Err(e),
                                });
                                return;
                            }
                        }
                    }
                    let _ = tx.send(Input::Mounted {
                        module,
                        op,
                        result: Ok(mounts),
                    });
                });
            }
            Action::AllowAlone => {
                if let Some(mc) = &m.machine {
                    for link in m.links() {
                        link.allow_alone(mc.data().clone());
                    }
                }
            }
            Action::Barrier { op } => {
                if !m.is_mounted() {
                    let result = Err(Failure {
                        detail: "the mirror is not mounted".into(),
                        exit_status: None,
                    });
                    let _ = tx.send(Input::Machine(module, Event::Done { op, result }));
                    return;
                }
                let links: Vec<(PathBuf, mirrorkit_engine::link::Link)> = m
                    .mirrors
                    .iter()
                    .filter_map(|mr| {
                        Some((mr.declared.clone(), mr.mounted.as_ref()?.core.link.clone()))
                    })
                    .collect();
                let several = links.len() > 1;
                tokio::task::spawn_blocking(move || {
                    // Every mirror's peer must prove it holds everything.
                    let mut result = Ok(());
                    for (dir, link) in links {
                        if let Err(detail) = link.barrier() {
                            let detail = if several {
                                format!("{}: {detail}", dir.display())
                            } else {
                                detail
                            };
                            result = Err(Failure {
                                detail,
                                exit_status: None,
                            });
                            break;
                        }
                    }
                    let _ = tx.send(Input::Machine(module, Event::Done { op, result }));
                });
            }
            Action::Unmount { op } => {
                self.guard.unmounted(name);
                let parts: Vec<(Option<Mounted>, Option<tokio::task::JoinHandle<()>>)> = m
                    .mirrors
                    .iter_mut()
                    .map(|mr| {
                        mr.fuse_dev = None;
                        mr.in_sync = false;
                        (mr.mounted.take(), mr.primary_task.take())
                    })
                    .collect();
                tokio::task::spawn_blocking(move || {
                    // Every mount is tried; the first failure is reported.
                    let mut result = Ok(());
                    for (mounted, task) in parts {
                        if let Some(mt) = mounted {
                            let dir = mt.dir.clone();
                            if let Err(e) = mt.unmount() {
                                if result.is_ok() {
                                    result = Err(Failure {
                                        detail: format!("cannot unmount the mirror from {}: {e} (the application may still hold files there)", dir.display()),
                                        exit_status: None,
                                    });
                                }
                            }
                        }
                        if let Some(t) = task {
                            t.abort();
                        }
                    }
                    let _ = tx.send(Input::Machine(module, Event::Done { op, result }));
                });
            }
            Action::TakeVip { op } | Action::ReleaseVip { op } => {
                let take = matches!(action, Action::TakeVip { .. });
                let vips = m.vips.clone();
                tokio::task::spawn_blocking(move || {
                    let mut result = Ok(());
                    for v in &vips {
                        let r = if take {
                            mirrorkit_vip::take(v)
                        } else {
                            mirrorkit_vip::release(v)
                        };
                        if let Err(e) = r {
                            result = Err(Failure {
                                detail: e.to_string(),
                                exit_status: None,
                            });
                            break;
                        }
                    }
                    let _ = tx.send(Input::Machine(module, Event::Done { op, result }));
                });
            }
            Action::Fence => cut_off(name, m, "fence"),
            Action::ForceStop => {
                if let Some(r) = &m.runner {
                    tokio::task::block_in_place(|| r.kill_all());
                }
                cut_off(name, m, "forcestop");
                self.guard.unmounted(name);
                for mr in &mut m.mirrors {
                    if let Some(mt) = mr.mounted.take() {
                        crate::fence::detach(&mt.dir);
                        mr.fuse_dev = None;
                        drop(mt);
                    }
                    if let Some(t) = mr.primary_task.take() {
                        t.abort();
                    }
                    mr.in_sync = false;
                }
                self.stop_receiver(name).await;
            }
            Action::StartReceiver => {
                let shared = m.shared_state();
                let mut failure = None;
                for mr in &mut m.mirrors {
                    let cfg = SecondaryConfig {
                        mirror: mr.key.clone(),
                        node: self.cf.node.clone(),
                        peer_node: self.cf.peer().to_owned(),
                        root: mr.dir.clone(),
                        state_dir: mr.state_dir.clone(),
                        managed: Some(self.engine_tx.clone()),
                    };
                    if let Err(e) = std::fs::create_dir_all(&mr.dir) {
                        warn!(module = %name, dir = %mr.dir.display(), "cannot create the replicated directory: {e}");
                    }
                    // Several mirrors: each receiver starts from the module's data state.
                    if let Some(d) = &shared {
                        if let Err(e) = crate::module_rt::give_state(&mr.dir, &mr.state_dir, d) {
                            failure = Some(e);
                            break;
                        }
                    }
                    match Receiver::open(cfg, Arc::new(SecondaryCounters::default())) {
                        Ok(r) => {
                            let r = Arc::new(r);
                            mr.receiver = Some(r.clone());
                            mr.in_sync = false;
                            self.receivers
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(mr.key.clone(), r);
                        }
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
                if let Some(error) = failure {
                    // None or all: the receivers opened so far close again.
                    self.stop_receiver(name).await;
                    let _ = tx.send(Input::Machine(
                        module,
                        Event::Mirror(MirrorEvent::ReceiverFailed { error }),
                    ));
                }
            }
            Action::StopReceiver => self.stop_receiver(name).await,
            Action::ProceedResync { keep_aside: _ } => {
                if let Some(r) = m.answered().and_then(|mr| mr.pending_resync.take()) {
                    let _ = r.send(Ok(()));
                }
            }
            Action::RefuseResync { reason } => {
                match m.answered().and_then(|mr| mr.pending_resync.take()) {
                    Some(r) => {
                        let _ = r.send(Err(reason));
                    }
                    // The end of a resync refused: no session of the module's goes on.
                    None => {
                        for mr in &m.mirrors {
                            if let Some(r) = &mr.receiver {
                                r.close_current();
                            }
                        }
                    }
                }
            }
            Action::WitnessClaim {
                op,
                current,
                history,
                force,
            } => match &self.witness {
                Some(w) => w.claim(
                    name,
                    op,
                    current,
                    history,
                    force,
                    witness_lease_ms(m.profile),
                ),
                None => {
                    error!(module = %name, "the state machine asked for a witness, but none is configured");
                }
            },
            Action::WitnessRelease => {
                self.guard.released(name);
                if let Some(w) = &self.witness {
                    w.release(name);
                }
            }
            Action::VerbDone { verb, who, result } => {
                let text = match &result {
                    Ok(s) => format!("{verb} by {who}: done, {s}"),
                    Err(e) => format!("{verb} by {who}: refused or failed: {e}"),
                };
                if let Some(log) = &m.log {
                    log.append(
                        if result.is_ok() {
                            LogLevel::Info
                        } else {
                            LogLevel::Error
                        },
                        Kind::Verb,
                        &text,
                    );
                }
                info!(module = %name, "{text}");
                let reply = match result {
                    Ok(state) => Reply::Done { state },
                    Err(e) => Reply::Error(e),
                };
                if let Some(i) = m.verb_waiters.iter().position(|(v, _)| *v == verb) {
                    let (_, w) = m.verb_waiters.remove(i);
                    let _ = w.send(reply);
                }
            }
        }
    }

    async fn stop_receiver(&mut self, name: &str) {
        let Some(m) = self.modules.get_mut(name) else {
            return;
        };
        {
            let mut receivers = self.receivers.lock().unwrap_or_else(|p| p.into_inner());
            for mr in &m.mirrors {
                receivers.remove(&mr.key);
            }
        }
        let mut closing = Vec::new();
        for mr in &mut m.mirrors {
            if let Some(r) = mr.pending_resync.take() {
                let _ = r.send(Err("the receiver is stopping".into()));
            }
            mr.in_sync = false;
            if let Some(r) = mr.receiver.take() {
                r.close_current();
                closing.push((mr.dir.clone(), r));
            }
        }
        for (dir, r) in closing {
            if tokio::time::timeout(Duration::from_secs(10), r.idle())
                .await
                .is_err()
            {
                error!(module = %name, dir = %dir.display(), "the receiver's last session did not end within 10 s");
            }
        }
    }
}
