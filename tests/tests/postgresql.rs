//! Scenario 7 of the product brief, in network namespaces: the shipped PostgreSQL module
//! (`modules/postgresql`) on two real daemons with a witness; clients commit numbered
//! transactions through the virtual IP while pgbench runs beside them, and a short chaos run
//! (`mirrorkit_tests::chaos`) kills the primary's daemon, the server, cuts the primary off,
//! swaps, and kills a daemon during a resync. After every fault PostgreSQL starts on its own
//! (no manual repair), every committed number is there, and at the end both copies of the data
//! directory are identical.
//!
//! A longer run is `mirrorkit-bench chaos` (docs/benchmarks.md). `MIRRORKIT_CHAOS_SEED` replays
//! a seed; `MIRRORKIT_CHAOS_CYCLES` runs more cycles.

use std::time::{Duration, Instant};

use mirrorkit_tests::chaos::{self, ChaosConfig, Fault};
use mirrorkit_tests::lab::require_lab;
use mirrorkit_tests::postgres::{self, PgChaos, PgLab, PgLoad};

#[test]
fn postgresql_survives_chaos_with_every_committed_transaction() {
    if !require_lab("postgresql_survives_chaos")
        || !postgres::require_postgresql("postgresql_survives_chaos")
    {
        return;
    }
    let started = Instant::now();
    let m = postgres::module("default");
    let mut pg = PgLab::new(&m, true);
    let mut app = PgChaos::new(
        &m,
        PgLoad {
            clients: 2,
            pgbench_clients: 1,
            pgbench_scale: 1,
        },
    );
    let faults = vec![
        Fault::KillPrimary,
        Fault::KillApp,
        Fault::IsolatePrimary,
        Fault::Swap,
        Fault::KillDuringResync,
    ];
    let cycles = std::env::var("MIRRORKIT_CHAOS_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(faults.len());
    let mut cfg = ChaosConfig::new(chaos::seed_from_env(), cycles, faults);
    cfg.rounds = true;
    cfg.settle = Duration::from_secs(90);
    cfg.max_pause = Duration::from_millis(1500);
    let sum = chaos::run(&mut pg.lab, &mut app, &cfg);
    eprintln!("{}", sum.report());
    assert!(
        sum.ok(),
        "seed {}: {}\n{}",
        sum.seed,
        sum.problems.join("\n"),
        sum.timeline.join("\n")
    );
    assert_eq!(sum.cycles, cycles);
    assert!(
        sum.acked_checked >= 50,
        "too few committed transactions to prove anything: {}",
        sum.load
    );
    assert!(sum.comparisons >= 1);
    eprintln!("postgresql chaos: {:.0} s", started.elapsed().as_secs_f64());
}
