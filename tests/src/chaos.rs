//! Chaos runs: an application's workload runs against its module's virtual IP from the lab's
//! client namespace (`lab.rs`), while faults hit the cluster at random, seeded moments: SIGKILL
//! of the primary's daemon, of the secondary's, of the application; the primary cut off the
//! LAN, the link between the nodes cut; a swap; a daemon killed while a resync runs. After each
//! fault the run waits (bounded) until the cluster is back to PRIM + SECOND and the application
//! serves, then checks that every write the application acknowledged so far is there, read
//! through the virtual IP. Every `compare_every` cycles, and at the end, the application is
//! frozen on the primary (cgroup freezer: no system call in flight) and both copies of the
//! replicated directory are compared (blake3, `tree.rs`).
//!
//! The application is a `ChaosApp` (PostgreSQL: `postgres.rs`). Cut-link faults need the lab's
//! witness: without one a cut link makes both nodes primary (documented split brain) and
//! acknowledged writes of one side are set aside, which is not what this run checks.
//!
//! The seed is printed first; `MIRRORKIT_CHAOS_SEED` replays a run (the moments are the seed's,
//! the machine's timing is not: a replay takes the same decisions at the same points).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use mirrorkit_cluster::machine::StateKind;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::lab::{tail, Lab, LabModule};
use crate::tree;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL of the primary's daemon (its application keeps running on a dead mount, as after
    /// a daemon crash): the secondary fails over; the node's daemon is then restarted and
    /// returns as secondary.
    KillPrimary,
    /// SIGKILL of the secondary's daemon; restarted a moment later, it resyncs.
    KillSecondary,
    /// SIGKILL of the application on the primary: its checker restarts it in place, or fails
    /// the module over once its restarts are used up.
    KillApp,
    /// The primary cut off the LAN (peer, witness and clients): it fences itself, the
    /// secondary takes over; plugged back, it returns as secondary. Needs a witness.
    IsolatePrimary,
    /// The path between the two nodes cut, both still reaching the witness and the clients: the
    /// primary goes on alone, the secondary waits; healed, it resyncs. Needs a witness.
    CutBetweenNodes,
    /// A planned switchover: `mirrorkit swap`, asked on either node.
    Swap,
    /// The secondary's daemon killed and restarted after the primary went on alone; while the
    /// resync runs, SIGKILL of one of the two daemons (drawn), which is then restarted.
    KillDuringResync,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::KillPrimary,
        Fault::KillSecondary,
        Fault::KillApp,
        Fault::IsolatePrimary,
        Fault::CutBetweenNodes,
        Fault::Swap,
        Fault::KillDuringResync,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillPrimary => "kill-primary",
            Fault::KillSecondary => "kill-secondary",
            Fault::KillApp => "kill-app",
            Fault::IsolatePrimary => "isolate-primary",
            Fault::CutBetweenNodes => "cut-between-nodes",
            Fault::Swap => "swap",
            Fault::KillDuringResync => "kill-during-resync",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Whether the fault cuts links, which only a witness keeps from making two primaries.
    pub fn needs_witness(self) -> bool {
        matches!(self, Fault::IsolatePrimary | Fault::CutBetweenNodes)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Writes that were acknowledged and are not there.
#[derive(Clone, Debug)]
pub struct Lost {
    /// How many.
    pub count: usize,
    /// Which (the first ones), for the report.
    pub detail: String,
}

/// An application under chaos: its workload and how to check it.
pub trait ChaosApp {
    /// Its module in the lab.
    fn module(&self) -> &LabModule;
    /// Once, when the cluster first reached PRIM + SECOND: wait until the application answers,
    /// create what the workload needs (tables...). Bounded by `settle`.
    fn setup(&mut self, lab: &Lab, settle: Duration) -> Result<(), String>;
    /// Start the clients (they run through every fault until `stop_load`).
    fn start_load(&mut self, lab: &Lab);
    /// One write through the virtual IP, on a new connection, within about a second: whether
    /// the application acknowledged it (what "serving" means for failover times).
    fn probe(&self, lab: &Lab) -> bool;
    /// Writes acknowledged so far.
    fn acked(&self) -> usize;
    /// Check, through the virtual IP, that every write acknowledged before this call is there.
    /// `Ok(how many were checked)`; `Err(Ok(lost))` when some are missing; `Err(Err(why))` when
    /// the check could not be made (the application did not answer).
    fn verify(&mut self, lab: &Lab) -> Result<usize, Result<Lost, String>>;
    /// Stop the clients; one line describing the load they made.
    fn stop_load(&mut self) -> String;
    /// The PID of the application's main process on node `i`, if it runs there.
    fn app_pid(&self, lab: &Lab, i: usize) -> Option<i32>;
    /// What to show when something goes wrong (the application's logs on both nodes).
    fn diagnostics(&self, lab: &Lab) -> String;
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub seed: u64,
    pub cycles: usize,
    /// The faults drawn from (uniformly; list one twice to weigh it).
    pub faults: Vec<Fault>,
    /// Draw in rounds: every fault of `faults` once per round, in a seeded order (a short run
    /// then covers every kind); otherwise each cycle draws independently.
    pub rounds: bool,
    /// Longest wait for the cluster to be back to PRIM + SECOND, or for the application to serve.
    pub settle: Duration,
    /// Compare both copies every this many cycles (0: only at the end).
    pub compare_every: usize,
    /// Longest random pause before a fault (the load runs meanwhile).
    pub max_pause: Duration,
    /// Start no new cycle once the run has lasted this long (the summary covers the cycles
    /// done).
    pub time_limit: Option<Duration>,
}

impl ChaosConfig {
    pub fn new(seed: u64, cycles: usize, faults: Vec<Fault>) -> ChaosConfig {
        ChaosConfig {
            seed,
            cycles,
            faults,
            rounds: false,
            settle: Duration::from_secs(120),
            compare_every: 0,
            max_pause: Duration::from_secs(3),
            time_limit: None,
        }
    }
}

/// `MIRRORKIT_CHAOS_SEED` if set, else a fresh random seed.
pub fn seed_from_env() -> u64 {
    match std::env::var("MIRRORKIT_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("MIRRORKIT_CHAOS_SEED={s:?} is not a number")),
        Err(_) => rand::random(),
    }
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub cycles: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Unplanned moves of the primary role to the other node.
    pub failovers: usize,
    pub swaps: usize,
    /// Application restarts in place by its checker.
    pub restarts_in_place: usize,
    /// Moves of the primary role between two cycles, with no fault injected (a false failover:
    /// a heartbeat or witness renewal lost to load); each is also a note.
    pub spontaneous: usize,
    /// Kills during a resync that hit a resync in progress (the others found it already done).
    pub resync_kills_landed: usize,
    /// Checks of the acknowledged writes (one after every cycle, one at the end).
    pub checks: usize,
    /// Distinct acknowledged writes checked by the last check.
    pub acked_checked: usize,
    pub lost: usize,
    /// Comparisons of the two copies, and those that found them different.
    pub comparisons: usize,
    pub divergent: usize,
    /// From the fault to the first write acknowledged through the virtual IP, seconds: unplanned
    /// failovers (daemon killed, primary isolated), swaps, restarts in place.
    pub failover_s: Vec<f64>,
    pub swap_s: Vec<f64>,
    pub restart_s: Vec<f64>,
    /// Lost writes and differences found, with the cycle that found them.
    pub problems: Vec<String>,
    /// Notes: transient differences, resync kills that missed.
    pub notes: Vec<String>,
    /// The workload's own description.
    pub load: String,
    pub elapsed: Duration,
    /// One line per cycle.
    pub timeline: Vec<String>,
}

/// The median; NaN if empty.
pub fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// Nearest-rank percentile (0 < p <= 100); NaN if empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

impl Summary {
    /// Whether the contract held: nothing lost, copies identical.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.divergent == 0 && self.problems.is_empty()
    }

    /// The summary as docs/benchmarks.md tables it.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let times = |v: &[f64]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "median {:.3} s, p99 {:.3} s, max {:.3} s ({} samples)",
                    median(v),
                    percentile(v, 99.0),
                    v.iter().cloned().fold(0.0, f64::max),
                    v.len()
                )
            }
        };
        let _ = writeln!(s, "| measure | value |");
        let _ = writeln!(s, "| --- | --- |");
        let _ = writeln!(s, "| seed | {} |", self.seed);
        let _ = writeln!(
            s,
            "| cycles | {} in {:.0} s |",
            self.cycles,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(s, "| faults | {} |", faults.join(", "));
        let _ = writeln!(
            s,
            "| failovers (unplanned moves of the primary) | {} |",
            self.failovers
        );
        let _ = writeln!(s, "| swaps | {} |", self.swaps);
        let _ = writeln!(
            s,
            "| application restarts in place | {} |",
            self.restarts_in_place
        );
        let _ = writeln!(
            s,
            "| primary moves with no fault injected (false failovers) | {} |",
            self.spontaneous
        );
        let _ = writeln!(
            s,
            "| kills that hit a running resync | {} |",
            self.resync_kills_landed
        );
        let _ = writeln!(
            s,
            "| acknowledged writes checked | {} (at the end; {} checks, one after every cycle) |",
            self.acked_checked, self.checks
        );
        let _ = writeln!(s, "| lost (must be 0) | **{}** |", self.lost);
        let _ = writeln!(
            s,
            "| divergent copies (must be 0) | **{}** of {} comparisons |",
            self.divergent, self.comparisons
        );
        let _ = writeln!(
            s,
            "| failover time (fault to first write acknowledged through the virtual IP) | {} |",
            times(&self.failover_s)
        );
        let _ = writeln!(s, "| swap time | {} |", times(&self.swap_s));
        let _ = writeln!(
            s,
            "| application restart in place | {} |",
            times(&self.restart_s)
        );
        let _ = writeln!(s, "| load | {} |", self.load);
        for n in &self.notes {
            let _ = writeln!(s, "\nnote: {n}");
        }
        for p in &self.problems {
            let _ = writeln!(s, "\nPROBLEM: {p}");
        }
        s
    }
}

/// The time of day, UTC, as the daemons' logs write it (HH:MM:SS.mmm), to find a cycle in them.
fn utc_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        now.subsec_millis()
    )
}

/// Whether a state holds the application (or is taking it).
fn serving(s: Option<StateKind>) -> bool {
    matches!(
        s,
        Some(StateKind::Alone | StateKind::Prim | StateKind::Restarting)
    )
}

struct Run<'a> {
    lab: &'a mut Lab,
    app: &'a mut dyn ChaosApp,
    cfg: &'a ChaosConfig,
    rng: StdRng,
    module: String,
    sum: Summary,
    started: Instant,
    /// The primary when the previous cycle ended.
    last_primary: Option<usize>,
}

impl Run<'_> {
    fn states(&self) -> [Option<StateKind>; 2] {
        [self.state(0), self.state(1)]
    }

    fn state(&self, i: usize) -> Option<StateKind> {
        self.lab.status_now(i).and_then(|s| {
            s.modules
                .into_iter()
                .find(|m| m.name == self.module)
                .and_then(|m| m.state)
        })
    }

    fn mirror_mode(&self, i: usize) -> Option<String> {
        self.lab.status_now(i).and_then(|s| {
            s.modules
                .into_iter()
                .find(|m| m.name == self.module)
                .and_then(|m| m.mirror)
        })
    }

    /// Everything a failure message needs: the seed, what happened, both daemons' logs, the
    /// witness's and the application's.
    fn diag(&self, what: &str) -> String {
        let status = |i| {
            self.lab
                .status(i)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "(no answer)".into())
        };
        format!(
            "CHAOS FAILURE (seed {seed}; replay: MIRRORKIT_CHAOS_SEED={seed}): {what}\n--- timeline:\n{}\n--- status alpha: {}\n--- status beta: {}\n--- alpha log:\n{}\n--- beta log:\n{}\n--- witness log:\n{}\n{}",
            self.sum.timeline.join("\n"),
            status(0),
            status(1),
            tail(&self.lab.log(0), 60),
            tail(&self.lab.log(1), 60),
            tail(&self.lab.witness_log(), 20),
            self.app.diagnostics(self.lab),
            seed = self.cfg.seed,
        )
    }

    fn fail(&mut self, what: &str) -> ! {
        let d = self.diag(what);
        self.lab.keep_files();
        panic!("{d}");
    }

    /// Wait until one node is PRIM and the other SECOND; (primary, secondary).
    fn wait_pair(&mut self, why: &str) -> (usize, usize) {
        let deadline = Instant::now() + self.cfg.settle;
        let mut last = [None, None];
        while Instant::now() < deadline {
            last = self.states();
            match last {
                [Some(StateKind::Prim), Some(StateKind::Second)] => return (0, 1),
                [Some(StateKind::Second), Some(StateKind::Prim)] => return (1, 0),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        self.fail(&format!(
            "{why}: the cluster was not back to PRIM + SECOND within {:?}; last states {last:?}",
            self.cfg.settle
        ))
    }

    /// Probe until the application acknowledges a write; the time since `since`.
    fn wait_served(&mut self, since: Instant, why: &str) -> f64 {
        let deadline = Instant::now() + self.cfg.settle;
        while Instant::now() < deadline {
            if self.app.probe(self.lab) {
                return since.elapsed().as_secs_f64();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.fail(&format!(
            "{why}: the application acknowledged no write through the virtual IP within {:?}",
            self.cfg.settle
        ))
    }

    fn pause(&mut self, max: Duration) -> Duration {
        let ms = self.rng.gen_range(0..=max.as_millis().max(1) as u64);
        let d = Duration::from_millis(ms);
        std::thread::sleep(d);
        d
    }

    fn verify(&mut self, when: &str) {
        let r = self.app.verify(self.lab);
        self.sum.checks += 1;
        match r {
            Ok(n) => self.sum.acked_checked = n,
            Err(Ok(lost)) => {
                self.sum.lost += lost.count;
                let p = format!(
                    "{when}: {} acknowledged writes missing: {}",
                    lost.count, lost.detail
                );
                self.sum.problems.push(p.clone());
                // A lost write is the finding of the run: stop here, with everything shown.
                let d = self.diag(&p);
                self.lab.keep_files();
                eprintln!("{d}");
            }
            Err(Err(why)) => self.fail(&format!("{when}: cannot check the writes: {why}")),
        }
    }

    /// Freeze the application on the primary and compare both copies.
    fn compare(&mut self, when: &str) {
        let (p, s) = self.wait_pair(when);
        let m = self.app.module().clone();
        if let Err(e) = self.lab.freeze_module(p, &self.module, true) {
            self.fail(&format!("{when}: {e}"));
        }
        std::thread::sleep(Duration::from_millis(300));
        let a = self.lab.data_dir(p, &m);
        let b = self.lab.data_dir(s, &m);
        let first = tree::compare(&a, &b, 20);
        let result = match first {
            Ok(()) => Ok(()),
            Err(e) => {
                // Once more, still frozen: an operation in flight at the first look would be
                // done now; a real difference stays.
                std::thread::sleep(Duration::from_secs(2));
                match tree::compare(&a, &b, 20) {
                    Ok(()) => {
                        self.sum.notes.push(format!(
                            "{when}: a first comparison found a difference that was gone 2 s later (application frozen): {e}"
                        ));
                        Ok(())
                    }
                    Err(e2) => Err(e2),
                }
            }
        };
        if let Err(e) = self.lab.freeze_module(p, &self.module, false) {
            self.fail(&format!("{when}: {e}"));
        }
        let after = self.states();
        self.sum.comparisons += 1;
        if let Err(e) = result {
            if serving(after[p]) && after[s] == Some(StateKind::Second) {
                self.sum.divergent += 1;
                let msg = format!(
                    "{when}: the copies differ (primary {} frozen, in sync): {e}",
                    self.lab.nodes[p].name
                );
                self.sum.problems.push(msg.clone());
                let d = self.diag(&msg);
                self.lab.keep_files();
                eprintln!("{d}");
            } else {
                self.sum.notes.push(format!(
                    "{when}: comparison void (the states changed meanwhile: {after:?}): {e}"
                ));
            }
        }
    }

    fn log(&mut self, line: String) {
        let line = format!("{} {line}", utc_time());
        eprintln!("chaos: {line}");
        self.sum.timeline.push(line);
    }

    fn cycle(&mut self, c: usize, fault: Fault) {
        let (p, s) = self.wait_pair(&format!("before cycle {c}"));
        if self.last_primary.is_some_and(|l| l != p) {
            self.sum.spontaneous += 1;
            let n = format!(
                "before cycle {c} ({}): the primary moved to {} with no fault injected",
                utc_time(),
                self.lab.nodes[p].name
            );
            self.log(n.clone());
            self.sum.notes.push(n);
        }
        let (pn, sn) = (
            self.lab.nodes[p].name.clone(),
            self.lab.nodes[s].name.clone(),
        );
        let paused = self.pause(self.cfg.max_pause);
        *self.sum.faults.entry(fault.name()).or_default() += 1;
        let t0 = Instant::now();
        let mut what = format!(
            "cycle {c}: {fault} at {} UTC (primary {pn}) after {:.1} s",
            utc_time(),
            paused.as_secs_f64()
        );
        match fault {
            Fault::KillPrimary => {
                self.lab.kill9(p);
                let t = self.wait_served(t0, &what);
                self.sum.failover_s.push(t);
                self.sum.failovers += 1;
                let _ = write!(what, ": served by {sn} after {t:.3} s");
                let d = self.pause(Duration::from_secs(2));
                self.lab.start(p);
                let _ = write!(what, ", {pn} restarted {:.1} s later", d.as_secs_f64());
            }
            Fault::KillSecondary => {
                self.lab.kill9(s);
                let d = self.pause(Duration::from_secs(3));
                self.lab.start(s);
                let _ = write!(what, ": {sn} restarted after {:.1} s", d.as_secs_f64());
            }
            Fault::KillApp => {
                let Some(pid) = self.app.app_pid(self.lab, p) else {
                    self.fail(&format!("{what}: no application PID on {pn}"));
                };
                // SAFETY: signalling the lab's own application.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let t = self.wait_served(t0, &what);
                let (p2, _) = self.wait_pair(&what);
                if p2 == p {
                    self.sum.restarts_in_place += 1;
                    self.sum.restart_s.push(t);
                    let _ = write!(
                        what,
                        ": pid {pid} killed, restarted in place, served after {t:.3} s"
                    );
                } else {
                    self.sum.failovers += 1;
                    self.sum.failover_s.push(t);
                    let _ = write!(what, ": pid {pid} killed, failed over to {sn} (restarts used up), served after {t:.3} s");
                }
            }
            Fault::IsolatePrimary => {
                self.lab.set_link(p, false);
                let t = self.wait_served(t0, &what);
                self.sum.failover_s.push(t);
                self.sum.failovers += 1;
                let d = self.pause(Duration::from_secs(2));
                self.lab.set_link(p, true);
                let _ = write!(
                    what,
                    ": served by {sn} after {t:.3} s, {pn} plugged back {:.1} s later",
                    d.as_secs_f64()
                );
            }
            Fault::CutBetweenNodes => {
                self.lab.cut_between_nodes(true);
                let ms = self.rng.gen_range(1000..=4000);
                let end = Instant::now() + Duration::from_millis(ms);
                while Instant::now() < end {
                    let st = self.states();
                    if serving(st[0]) && serving(st[1]) {
                        self.lab.cut_between_nodes(false);
                        self.fail(&format!("{what}: two primaries at once: {st:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let still = self.app.probe(self.lab);
                self.lab.cut_between_nodes(false);
                let _ = write!(
                    what,
                    ": cut for {:.1} s, the application {} during the cut",
                    ms as f64 / 1000.0,
                    if still {
                        "served"
                    } else {
                        "did not serve at the end"
                    }
                );
            }
            Fault::Swap => {
                let asked = if self.rng.gen_bool(0.5) { p } else { s };
                let out = self.lab.cli(asked, &["swap", &self.module]);
                if !out.status.success() {
                    self.fail(&format!(
                        "{what}: swap asked on {} failed: {}{}",
                        self.lab.nodes[asked].name,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let t = self.wait_served(t0, &what);
                self.sum.swap_s.push(t);
                self.sum.swaps += 1;
                let _ = write!(
                    what,
                    ": asked on {}, served after {t:.3} s",
                    self.lab.nodes[asked].name
                );
            }
            Fault::KillDuringResync => {
                self.lab.kill9(s);
                // The primary notices and goes on alone, recording what changes.
                let deadline = Instant::now() + self.cfg.settle;
                while self.state(p) != Some(StateKind::Alone) {
                    if Instant::now() > deadline {
                        self.fail(&format!(
                            "{what}: {pn} did not go on alone after {sn}'s daemon was killed"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let ms = self.rng.gen_range(300..=2000);
                std::thread::sleep(Duration::from_millis(ms));
                self.lab.start(s);
                // Watch the primary's link for the resync.
                let deadline = Instant::now() + self.cfg.settle;
                let mut seen = false;
                while Instant::now() < deadline {
                    if self
                        .mirror_mode(p)
                        .is_some_and(|m| m.starts_with("syncing"))
                    {
                        seen = true;
                        break;
                    }
                    if self.state(p) == Some(StateKind::Prim) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                let delay = self.rng.gen_range(0..=40);
                std::thread::sleep(Duration::from_millis(delay));
                let landed = self
                    .mirror_mode(p)
                    .is_some_and(|m| m.starts_with("syncing"));
                let victim = if self.rng.gen_bool(0.5) { p } else { s };
                self.lab.kill9(victim);
                if landed {
                    self.sum.resync_kills_landed += 1;
                } else {
                    self.sum.notes.push(format!(
                        "cycle {c}: the resync {} before the kill",
                        if seen { "ended" } else { "was not seen" }
                    ));
                }
                let d = self.pause(Duration::from_secs(2));
                self.lab.start(victim);
                let _ = write!(
                    what,
                    ": {sn} restarted {:.1} s after {pn} went on alone; {} {} killed {}; restarted {:.1} s later",
                    ms as f64 / 1000.0,
                    if victim == p { "primary" } else { "secondary" },
                    self.lab.nodes[victim].name,
                    if landed { "during its resync" } else { "(resync already over)" },
                    d.as_secs_f64()
                );
            }
        }
        let (p2, _) = self.wait_pair(&what);
        self.last_primary = Some(p2);
        self.wait_served(Instant::now(), &what);
        let _ = write!(
            what,
            "; PRIM {} + SECOND after {:.1} s",
            self.lab.nodes[p2].name,
            t0.elapsed().as_secs_f64()
        );
        self.verify(&format!("after cycle {c} ({fault})"));
        let _ = write!(
            what,
            "; {} acknowledged writes present",
            self.sum.acked_checked
        );
        self.log(what);
    }
}

/// Run `cfg.cycles` faults against the lab's cluster and `app` (daemons started here, and the
/// witness if the lab has one). Panics (with the seed, the timeline and every log) when the
/// cluster or the application does not come back in time; returns the summary otherwise, with
/// lost writes and differing copies counted in it (and the lab's files kept).
pub fn run(lab: &mut Lab, app: &mut dyn ChaosApp, cfg: &ChaosConfig) -> Summary {
    assert!(!cfg.faults.is_empty(), "no fault to draw from");
    if lab.witness.is_none() {
        let cut: Vec<&Fault> = cfg.faults.iter().filter(|f| f.needs_witness()).collect();
        assert!(
            cut.is_empty(),
            "{cut:?} need a witness: without one a cut link makes two primaries (documented split brain)"
        );
    }
    eprintln!(
        "chaos: seed {} (replay: MIRRORKIT_CHAOS_SEED={}), {} cycles of {:?}",
        cfg.seed,
        cfg.seed,
        cfg.cycles,
        cfg.faults.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
    let module = app.module().name.clone();
    let mut run = Run {
        lab,
        app,
        cfg,
        rng: StdRng::seed_from_u64(cfg.seed),
        module,
        sum: Summary {
            seed: cfg.seed,
            ..Summary::default()
        },
        started: Instant::now(),
        last_primary: None,
    };
    if run.lab.witness.is_some() {
        run.lab.start_witness();
    }
    run.lab.start(0);
    run.lab.start(1);
    run.wait_pair("first start");
    if let Err(e) = run.app.setup(run.lab, cfg.settle) {
        run.fail(&format!("setting the workload up: {e}"));
    }
    run.app.start_load(run.lab);
    let mut order: Vec<Fault> = Vec::new();
    for c in 0..cfg.cycles {
        if cfg.time_limit.is_some_and(|t| run.started.elapsed() >= t) {
            run.log(format!(
                "time limit reached after {c} cycles ({:.0} s)",
                run.started.elapsed().as_secs_f64()
            ));
            break;
        }
        let fault = if cfg.rounds {
            if order.is_empty() {
                order = cfg.faults.clone();
                order.shuffle(&mut run.rng);
            }
            order.remove(0)
        } else {
            cfg.faults[run.rng.gen_range(0..cfg.faults.len())]
        };
        run.cycle(c, fault);
        run.sum.cycles = c + 1;
        if !run.sum.problems.is_empty() {
            break;
        }
        if cfg.compare_every > 0 && (c + 1) % cfg.compare_every == 0 {
            run.compare(&format!("after cycle {c}"));
            if !run.sum.problems.is_empty() {
                break;
            }
        }
    }
    if run.sum.problems.is_empty() {
        run.wait_pair("end of the run");
        run.sum.load = run.app.stop_load();
        run.verify("at the end");
        if run.sum.problems.is_empty() {
            run.compare("at the end");
        }
    } else {
        run.sum.load = run.app.stop_load();
    }
    run.sum.elapsed = run.started.elapsed();
    eprintln!(
        "chaos: seed {}: {} cycles in {:.0} s, {} failovers, {} swaps, {} acknowledged writes checked, {} lost, {} divergent of {} comparisons",
        cfg.seed,
        run.sum.cycles,
        run.sum.elapsed.as_secs_f64(),
        run.sum.failovers,
        run.sum.swaps,
        run.sum.acked_checked,
        run.sum.lost,
        run.sum.divergent,
        run.sum.comparisons
    );
    run.sum
}
