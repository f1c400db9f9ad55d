//! Failover and swap benchmark (docs/benchmarks.md, "Failover"): a two-node cluster in network
//! namespaces (`mirrorkit_tests::lab`) running the demo module behind its virtual IP. Each
//! cycle kills the primary's daemon and cuts its link at the same instant (the node is gone:
//! the client can only reach the other one), and measures until the demo application answers
//! `GET /notes`, with every note acknowledged before, through the virtual IP from the client
//! namespace. The node then returns (link up, daemon restarted) and the next cycle starts once
//! it is SECOND again. Then `swap` is timed both ways.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use mirrorkit_tests::lab::{http_within, in_netns, require_lab, Lab, LabModule};

use crate::stats;

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// Failovers per heartbeat profile.
    #[arg(long, default_value_t = 10)]
    cycles: usize,
    /// Heartbeat profiles to measure: default, fast.
    #[arg(long, value_delimiter = ',', default_value = "fast,default")]
    profiles: Vec<String>,
    /// Swaps to time (each way counts one).
    #[arg(long, default_value_t = 6)]
    swaps: usize,
    /// Run the cluster with a witness (a third namespace): a failover then also waits for the
    /// dead primary's lease to run out at the witness.
    #[arg(long)]
    witness: bool,
}

const SETTLE: Duration = Duration::from_secs(90);

fn primary_of(lab: &Lab) -> Option<usize> {
    (0..2).find(|i| matches!(lab.state(*i, "demo").as_deref(), Some("PRIM")))
}

/// Poll the application through the virtual IP until it serves `note`; the time it took.
fn until_served(lab: &Lab, m: &LabModule, note: &str, since: Instant) -> Result<Duration> {
    let addr = m.vip_addr();
    let ns = lab.client.path();
    let note = note.to_owned();
    in_netns(&ns, move || {
        while since.elapsed() < Duration::from_secs(60) {
            if let Ok((200, body)) =
                http_within(addr, "GET", "/notes", "", Duration::from_millis(50))
            {
                if body.contains(&note) {
                    return Ok(since.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("the application did not serve {note:?} through the virtual IP within 60 s")
    })
}

pub fn run(a: &FailoverArgs) -> Result<()> {
    if !require_lab("mirrorkit-bench failover") {
        bail!("needs root, FUSE and network namespaces");
    }
    for profile in &a.profiles {
        let hb: &'static str = match profile.as_str() {
            "fast" => "fast",
            "default" => "default",
            other => bail!("unknown heartbeat profile {other:?} (default, fast)"),
        };
        let mut m = LabModule::demo("demo", 8080, 80);
        m.heartbeat = hb;
        let mut lab = if a.witness {
            let mut lab = Lab::with_witness(vec![m.clone()]);
            lab.start_witness();
            lab
        } else {
            Lab::new(vec![m.clone()])
        };
        let with = if a.witness { ", with a witness" } else { "" };
        lab.start(0);
        lab.start(1);
        lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], SETTLE);
        let mut times = Vec::new();
        for c in 0..a.cycles {
            let note = format!("{hb}-{c}");
            let r = lab.http(m.vip_addr(), "POST", "/notes", &note);
            if !matches!(r, Ok((201, _))) {
                bail!("cycle {c}: POST {note}: {r:?}");
            }
            let Some(p) = primary_of(&lab) else {
                bail!("cycle {c}: no primary");
            };
            let t0 = Instant::now();
            lab.kill9(p);
            lab.set_link(p, false);
            let took = until_served(&lab, &m, &note, t0)?;
            eprintln!(
                "{hb} cycle {c}: node {} gone, served by the other after {:.3} s",
                lab.nodes[p].name,
                took.as_secs_f64()
            );
            times.push(took.as_secs_f64());
            lab.set_link(p, true);
            lab.start(p);
            let want = if p == 0 {
                [Some("SECOND"), Some("PRIM")]
            } else {
                [Some("PRIM"), Some("SECOND")]
            };
            lab.wait_states("demo", want, SETTLE);
        }
        let (med, p90, max) = (
            stats::median(&times),
            stats::percentile(&times, 90.0),
            times.iter().cloned().fold(0.0, f64::max),
        );
        println!(
            "failover, {hb} profile{with}, {} cycles: median {med:.3} s, p90 {p90:.3} s, max {max:.3} s",
            times.len()
        );
        if hb == "default" || a.profiles.len() == 1 {
            let mut swaps = Vec::new();
            for s in 0..a.swaps {
                let Some(p) = primary_of(&lab) else {
                    bail!("swap {s}: no primary")
                };
                let t0 = Instant::now();
                let out = lab.cli(p, &["swap", "demo"]);
                if !out.status.success() {
                    bail!("swap {s}: {}", String::from_utf8_lossy(&out.stderr));
                }
                let note = format!("swap-{s}");
                let want = if p == 0 {
                    [Some("SECOND"), Some("PRIM")]
                } else {
                    [Some("PRIM"), Some("SECOND")]
                };
                lab.wait_states("demo", want, SETTLE);
                let took = t0.elapsed().as_secs_f64();
                let r = lab.http(m.vip_addr(), "POST", "/notes", &note);
                if !matches!(r, Ok((201, _))) {
                    bail!("after swap {s}: POST: {r:?}");
                }
                swaps.push(took);
                eprintln!("swap {s}: {took:.3} s (from the command to the other node PRIM with the peer SECOND in sync)");
            }
            println!(
                "swap{with}, {} swaps: median {:.3} s, max {:.3} s (includes the demo application's own stop and start)",
                swaps.len(),
                stats::median(&swaps),
                swaps.iter().cloned().fold(0.0, f64::max)
            );
        }
    }
    Ok(())
}
