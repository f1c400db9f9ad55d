//! The product's scenarios, step by step, in the simulated world (all invariants checked on
//! every event, as in the random runs).

use crate::world::{Setup, World, NAMES};
use mirrorkit_cluster::generation::Role;
use mirrorkit_cluster::machine::{CheckerPolicy, Level, StateKind, Verb};

const ALPHA: usize = 0;
const BETA: usize = 1;

fn world(setup: Setup) -> World {
    let mut w = World::new(7, setup, true);
    w.keep_logs();
    w
}

/// Process events until `done` holds, failing with the trace if it does not within `ms`.
#[track_caller]
fn until(w: &mut World, ms: u64, what: &str, done: impl Fn(&World) -> bool) {
    if !w.run_until(ms, done) {
        let v = w.violation.take().unwrap_or_default();
        panic!("{what}: not within {ms} ms {v}\n{}", w.trace_text());
    }
}

/// Run, failing with the trace on any violation.
fn run(w: &mut World, ms: u64) {
    w.run_for(ms);
    if let Some(v) = w.violation.take() {
        panic!("{v}\n{}", w.trace_text());
    }
}

#[track_caller]
fn expect(w: &World, i: usize, state: StateKind) {
    assert_eq!(
        w.state(i),
        Some(state),
        "{}: {}\n{}",
        NAMES[i],
        w.reason(i),
        w.trace_text()
    );
}

/// Both started; alpha (the default primary) PRIM, beta SECOND in sync.
fn in_sync(setup: Setup) -> World {
    let mut w = world(setup);
    w.verb(ALPHA, Verb::Start, "op");
    w.verb(BETA, Verb::Start, "op");
    run(&mut w, 15_000);
    expect(&w, ALPHA, StateKind::Prim);
    expect(&w, BETA, StateKind::Second);
    w
}

fn writes(w: &mut World, i: usize, n: usize) -> Vec<u64> {
    let before = w.stats.writes_acked;
    for _ in 0..n {
        assert!(w.write(i), "{} did not acknowledge a write", NAMES[i]);
    }
    assert_eq!(w.stats.writes_acked, before + n as u64);
    w.nodes[i].data.iter().rev().take(n).copied().collect()
}

#[track_caller]
fn holds(w: &World, i: usize, ids: &[u64]) {
    for id in ids {
        assert!(
            w.nodes[i].data.contains(id),
            "{} lacks write {id}",
            NAMES[i]
        );
    }
}

fn verb_result(w: &World, i: usize, verb: Verb) -> Option<String> {
    w.logs.iter().rev().find_map(|(n, _, text)| {
        (*n == i
            && text.contains(&format!("`{verb}` by"))
            && (text.contains("done") || text.contains("failed")))
        .then(|| text.clone())
    })
}

#[test]
fn failover_after_primary_crash_then_return_as_secondary() {
    let mut w = in_sync(Setup::plain());
    let ids = writes(&mut w, ALPHA, 20);
    holds(&w, BETA, &ids);
    w.crash(ALPHA);
    run(&mut w, 5_000);
    expect(&w, BETA, StateKind::Alone);
    let more = writes(&mut w, BETA, 5);
    w.restart(ALPHA);
    run(&mut w, 15_000);
    expect(&w, ALPHA, StateKind::Second);
    expect(&w, BETA, StateKind::Prim);
    holds(&w, ALPHA, &ids);
    holds(&w, ALPHA, &more);
}

#[test]
fn swap_both_directions() {
    let mut w = in_sync(Setup::plain());
    let a = writes(&mut w, ALPHA, 10);
    // From the primary.
    w.verb(ALPHA, Verb::Swap, "op");
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Second);
    expect(&w, BETA, StateKind::Prim);
    assert!(verb_result(&w, ALPHA, Verb::Swap).is_some_and(|t| t.contains("done")));
    holds(&w, BETA, &a);
    let b = writes(&mut w, BETA, 10);
    // From the secondary.
    w.verb(ALPHA, Verb::Swap, "op");
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Prim);
    expect(&w, BETA, StateKind::Second);
    assert!(verb_result(&w, ALPHA, Verb::Swap).is_some_and(|t| t.contains("done")));
    holds(&w, ALPHA, &b);
    holds(&w, BETA, &b);
}

#[test]
fn secondary_restarting_alone_waits_with_its_reason_until_the_peer_returns() {
    let mut w = in_sync(Setup::plain());
    let ids = writes(&mut w, ALPHA, 5);
    w.crash(BETA);
    run(&mut w, 5_000);
    expect(&w, ALPHA, StateKind::Alone);
    let alone = writes(&mut w, ALPHA, 5);
    w.crash(ALPHA);
    w.restart(BETA);
    run(&mut w, 10_000);
    expect(&w, BETA, StateKind::Wait);
    let reason = w.reason(BETA);
    assert!(
        reason.contains("was secondary") && reason.contains("`prim`"),
        "{reason}"
    );
    w.restart(ALPHA);
    run(&mut w, 15_000);
    expect(&w, ALPHA, StateKind::Prim);
    expect(&w, BETA, StateKind::Second);
    holds(&w, BETA, &ids);
    holds(&w, BETA, &alone);
}

#[test]
fn prim_forces_a_waiting_node_and_the_split_brain_is_resolved_by_an_operator() {
    let mut w = in_sync(Setup::plain());
    w.crash(BETA);
    run(&mut w, 5_000);
    let lost = writes(&mut w, ALPHA, 3);
    w.crash(ALPHA);
    w.restart(BETA);
    run(&mut w, 10_000);
    expect(&w, BETA, StateKind::Wait);
    w.verb(BETA, Verb::Prim, "alice");
    run(&mut w, 2_000);
    expect(&w, BETA, StateKind::Alone);
    assert!(w.logs.iter().any(|(n, l, t)| *n == BETA
        && *l == Level::Warn
        && t.contains("FORCED primary by alice at")));
    // alpha returns with writes beta never had: a split brain, reported, nothing merged.
    w.restart(ALPHA);
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Wait);
    expect(&w, BETA, StateKind::Alone);
    assert!(
        w.reason(ALPHA).contains("split brain"),
        "{}",
        w.reason(ALPHA)
    );
    assert!(w.reason(BETA).contains("SPLIT BRAIN"), "{}", w.reason(BETA));
    holds(&w, ALPHA, &lost);
    // The operator keeps beta's data: alpha resyncs, its divergent files kept aside.
    let aside = w.stats.keep_aside;
    w.verb(BETA, Verb::Prim, "alice");
    run(&mut w, 15_000);
    expect(&w, BETA, StateKind::Prim);
    expect(&w, ALPHA, StateKind::Second);
    assert_eq!(w.stats.keep_aside, aside + 1);
    assert_eq!(w.nodes[ALPHA].data, w.nodes[BETA].data);
}

#[test]
fn cut_link_without_witness_makes_two_primaries_reported_on_heal() {
    let mut w = in_sync(Setup::plain());
    w.cut();
    run(&mut w, 10_000);
    // The documented outcome without a witness: both primary.
    expect(&w, ALPHA, StateKind::Alone);
    expect(&w, BETA, StateKind::Alone);
    writes(&mut w, ALPHA, 3);
    writes(&mut w, BETA, 3);
    w.heal();
    run(&mut w, 10_000);
    // One yields (beta: alpha is the default primary) and keeps its data untouched.
    expect(&w, ALPHA, StateKind::Alone);
    expect(&w, BETA, StateKind::Wait);
    assert!(w.reason(BETA).contains("split brain"), "{}", w.reason(BETA));
    assert!(w
        .logs
        .iter()
        .any(|(n, l, t)| *n == BETA && *l == Level::Error && t.contains("TWO PRIMARIES")));
    w.verb(ALPHA, Verb::Prim, "alice");
    run(&mut w, 15_000);
    expect(&w, ALPHA, StateKind::Prim);
    expect(&w, BETA, StateKind::Second);
}

#[test]
fn cut_link_with_witness_keeps_one_primary() {
    let setup = Setup {
        witness: true,
        ..Setup::plain()
    };
    let mut w = in_sync(setup);
    w.cut();
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Alone);
    expect(&w, BETA, StateKind::Wait);
    assert!(w.reason(BETA).contains("witness"), "{}", w.reason(BETA));
    let ids = writes(&mut w, ALPHA, 5);
    w.heal();
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Prim);
    expect(&w, BETA, StateKind::Second);
    holds(&w, BETA, &ids);
}

#[test]
fn isolated_primary_with_witness_fences_itself_and_the_peer_takes_over() {
    let setup = Setup {
        witness: true,
        ..Setup::plain()
    };
    let mut w = in_sync(setup);
    let ids = writes(&mut w, ALPHA, 5);
    w.cut();
    w.set_witness_link(ALPHA, false);
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Wait);
    assert!(w
        .logs
        .iter()
        .any(|(n, l, t)| *n == ALPHA && *l == Level::Error && t.contains("fenced itself")));
    // Cut off from the witness too, it cannot be granted the role back: it says so.
    assert!(
        w.reason(ALPHA).contains("without the witness's grant"),
        "{}",
        w.reason(ALPHA)
    );
    expect(&w, BETA, StateKind::Alone);
    holds(&w, BETA, &ids);
    w.heal();
    w.set_witness_link(ALPHA, true);
    run(&mut w, 15_000);
    expect(&w, ALPHA, StateKind::Second);
    expect(&w, BETA, StateKind::Prim);
}

#[test]
fn witness_down_with_the_nodes_fine_moves_nothing_and_a_later_cut_leaves_no_primary() {
    let setup = Setup {
        witness: true,
        ..Setup::plain()
    };
    let mut w = in_sync(setup);
    w.set_witness_link(ALPHA, false);
    w.set_witness_link(BETA, false);
    run(&mut w, 20_000);
    expect(&w, ALPHA, StateKind::Prim);
    expect(&w, BETA, StateKind::Second);
    let ids = writes(&mut w, ALPHA, 5);
    // Now the link too: nobody may be primary without the witness.
    w.cut();
    run(&mut w, 10_000);
    // Both wait, asking the witness now and then (PROMOTING while a claim is out, never
    // committed: nothing is mounted, nothing acknowledged).
    for i in [ALPHA, BETA] {
        assert!(
            matches!(w.state(i), Some(StateKind::Wait | StateKind::Promoting)),
            "{:?}: {}",
            w.state(i),
            w.reason(i)
        );
    }
    // The witness returns: exactly one leads, with every acknowledged write.
    w.set_witness_link(ALPHA, true);
    w.set_witness_link(BETA, true);
    run(&mut w, 15_000);
    let primaries: Vec<usize> = (0..2)
        .filter(|&i| w.state(i) == Some(StateKind::Alone))
        .collect();
    assert_eq!(
        primaries.len(),
        1,
        "{:?} {:?}",
        w.state(ALPHA),
        w.state(BETA)
    );
    holds(&w, primaries[0], &ids);
}

/// Found by the PostgreSQL chaos run: the secondary dies and, at that moment, the primary
/// misses its witness too: it fences itself (it can tell neither), and once the witness answers
/// again it leads again on its data, which the witness recorded last.
#[test]
fn a_primary_fenced_while_its_peer_is_dead_leads_again_once_the_witness_answers() {
    let setup = Setup {
        witness: true,
        ..Setup::plain()
    };
    let mut w = in_sync(setup);
    let ids = writes(&mut w, ALPHA, 5);
    w.crash(BETA);
    w.set_witness_link(ALPHA, false);
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Wait);
    w.set_witness_link(ALPHA, true);
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Alone);
    holds(&w, ALPHA, &ids);
    // beta returns: it follows alpha and is resynced.
    w.restart(BETA);
    run(&mut w, 20_000);
    expect(&w, ALPHA, StateKind::Prim);
    expect(&w, BETA, StateKind::Second);
}

fn failback(on: bool) -> World {
    let setup = Setup {
        failback: on,
        ..Setup::plain()
    };
    let mut w = in_sync(setup);
    w.crash(ALPHA);
    run(&mut w, 5_000);
    expect(&w, BETA, StateKind::Alone);
    w.restart(ALPHA);
    run(&mut w, 20_000);
    w
}

#[test]
fn failback_when_configured() {
    let w = failback(true);
    expect(&w, ALPHA, StateKind::Prim);
    expect(&w, BETA, StateKind::Second);
}

#[test]
fn no_failback_by_default() {
    let w = failback(false);
    expect(&w, ALPHA, StateKind::Second);
    expect(&w, BETA, StateKind::Prim);
}

#[test]
fn checker_failover_hands_over_and_checker_restart_restarts_in_place() {
    let mut w = in_sync(Setup::plain());
    w.checker_failed(ALPHA, CheckerPolicy::Restart);
    expect(&w, ALPHA, StateKind::Restarting);
    run(&mut w, 5_000);
    expect(&w, ALPHA, StateKind::Prim);
    let ids = writes(&mut w, ALPHA, 5);
    w.checker_failed(ALPHA, CheckerPolicy::Failover);
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Second);
    expect(&w, BETA, StateKind::Prim);
    holds(&w, BETA, &ids);
}

#[test]
fn checker_failover_without_a_peer_in_sync_restarts_in_place_and_says_why() {
    let mut w = in_sync(Setup::plain());
    w.crash(BETA);
    run(&mut w, 5_000);
    expect(&w, ALPHA, StateKind::Alone);
    w.checker_failed(ALPHA, CheckerPolicy::Failover);
    expect(&w, ALPHA, StateKind::Restarting);
    assert!(
        w.reason(ALPHA)
            .contains("checker app-port failed and beta cannot take over"),
        "{}",
        w.reason(ALPHA)
    );
    run(&mut w, 5_000);
    expect(&w, ALPHA, StateKind::Alone);
}

#[test]
fn a_primary_whose_own_check_fails_hands_over_and_takes_back_only_once_it_passes() {
    let mut w = in_sync(Setup::plain());
    let ids = writes(&mut w, ALPHA, 5);
    w.set_health(ALPHA, true);
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Second);
    expect(&w, BETA, StateKind::Prim);
    holds(&w, BETA, &ids);
    // alpha may not take over while its check fails: beta dies, alpha waits and says why.
    w.crash(BETA);
    run(&mut w, 5_000);
    expect(&w, ALPHA, StateKind::Wait);
    assert!(
        w.reason(ALPHA).contains("own check fails"),
        "{}",
        w.reason(ALPHA)
    );
    w.set_health(ALPHA, false);
    run(&mut w, 5_000);
    expect(&w, ALPHA, StateKind::Alone);
}

#[test]
fn a_primary_whose_own_check_fails_stays_when_the_peer_cannot_take_over() {
    let mut w = in_sync(Setup::plain());
    w.set_health(BETA, true);
    run(&mut w, 2_000);
    w.set_health(ALPHA, true);
    run(&mut w, 5_000);
    expect(&w, ALPHA, StateKind::Prim);
    assert!(w.reason(ALPHA).contains("WARNING"), "{}", w.reason(ALPHA));
    assert!(
        w.reason(BETA).contains("NOT ELIGIBLE"),
        "{}",
        w.reason(BETA)
    );
    // Once beta's check passes, alpha hands over.
    w.set_health(BETA, false);
    run(&mut w, 10_000);
    expect(&w, BETA, StateKind::Prim);
    expect(&w, ALPHA, StateKind::Second);
}

#[test]
fn stop_on_the_primary_moves_the_application_and_second_then_start_follow() {
    let mut w = in_sync(Setup::plain());
    let ids = writes(&mut w, ALPHA, 5);
    w.verb(ALPHA, Verb::Stop, "op");
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Stop);
    expect(&w, BETA, StateKind::Alone);
    holds(&w, BETA, &ids);
    w.verb(ALPHA, Verb::Second, "op");
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Second);
    expect(&w, BETA, StateKind::Prim);
}

#[test]
fn start_script_failure_stops_the_node_and_the_peer_takes_back_the_application() {
    let mut w = in_sync(Setup::plain());
    w.nodes[BETA].script_trouble = true;
    w.verb(ALPHA, Verb::Swap, "op");
    run(&mut w, 15_000);
    // beta could not start the application: it stops and says why; the swap fails; alpha,
    // which had already been brought to beta's generation, takes the application back.
    expect(&w, BETA, StateKind::Stop);
    assert!(
        w.reason(BETA).contains("exit status 1"),
        "{}",
        w.reason(BETA)
    );
    assert!(verb_result(&w, ALPHA, Verb::Swap).is_some_and(|t| t.contains("failed")));
    expect(&w, ALPHA, StateKind::Alone);
    w.nodes[BETA].script_trouble = false;
    w.verb(BETA, Verb::Start, "op");
    run(&mut w, 15_000);
    expect(&w, ALPHA, StateKind::Prim);
    expect(&w, BETA, StateKind::Second);
}

#[test]
fn the_loser_of_a_split_brain_remembers_it_across_a_restart() {
    let mut w = in_sync(Setup::plain());
    w.cut();
    run(&mut w, 10_000);
    writes(&mut w, ALPHA, 2);
    writes(&mut w, BETA, 2);
    w.heal();
    run(&mut w, 10_000);
    expect(&w, BETA, StateKind::Wait); // yielded: alpha is the default primary
    let theirs = writes(&mut w, ALPHA, 3);
    // beta restarts while alpha is away: its data is no longer the latest, and it knows it.
    w.crash(BETA);
    w.crash(ALPHA);
    w.restart(BETA);
    run(&mut w, 10_000);
    expect(&w, BETA, StateKind::Wait);
    assert!(
        w.reason(BETA).contains("saw the peer with newer data"),
        "{}",
        w.reason(BETA)
    );
    w.restart(ALPHA);
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Alone);
    holds(&w, ALPHA, &theirs);
}

#[test]
fn a_quick_stop_and_start_does_not_race_the_peer_into_a_split_brain() {
    let mut w = in_sync(Setup::plain());
    w.verb(ALPHA, Verb::Swap, "op");
    run(&mut w, 10_000);
    expect(&w, ALPHA, StateKind::Second);
    expect(&w, BETA, StateKind::Prim);
    // beta stops (alpha takes over) and starts again at once, before the statuses settle.
    w.verb(BETA, Verb::Stop, "op");
    run(&mut w, 1);
    w.verb(BETA, Verb::Start, "op");
    run(&mut w, 15_000);
    let primaries = (0..2)
        .filter(|&i| matches!(w.state(i), Some(StateKind::Alone | StateKind::Prim)))
        .count();
    assert_eq!(primaries, 1, "{}", w.trace_text());
    assert!((0..2).all(|i| !w.nodes[i]
        .m
        .as_ref()
        .is_some_and(|m| m.status().split_brain)));
    assert_eq!(w.stats.dual_primaries, 0);
}

#[test]
fn a_secondary_does_not_fail_over_after_its_primary_went_on_alone() {
    let mut w = in_sync(Setup::plain());
    // The session fails while both live and hear each other, and cannot be opened again:
    // alpha starts a new generation and, once beta has heard of it, goes on alone.
    w.mirror_broken = true;
    w.session_error();
    until(&mut w, 1_000, "alpha alone", |w| {
        w.nodes[ALPHA].alone_allowed && w.state(ALPHA) == Some(StateKind::Alone)
    });
    let lost = writes(&mut w, ALPHA, 3);
    w.crash(ALPHA);
    run(&mut w, 5_000);
    // beta holds the generation alpha left: it must not take over without alpha's writes.
    expect(&w, BETA, StateKind::Wait);
    w.mirror_broken = false;
    w.restart(ALPHA);
    run(&mut w, 15_000);
    expect(&w, ALPHA, StateKind::Prim);
    holds(&w, BETA, &lost);
}

#[test]
fn a_session_lost_as_a_resync_ends_starts_a_new_generation() {
    let setup = Setup {
        witness: true,
        ..Setup::plain()
    };
    let mut w = in_sync(setup);
    w.crash(BETA);
    run(&mut w, 5_000);
    expect(&w, ALPHA, StateKind::Alone);
    writes(&mut w, ALPHA, 2);
    w.restart(BETA);
    // The resync into beta ends; the link fails before alpha hears that it did.
    until(&mut w, 20_000, "condition", |w| {
        w.reason(BETA).starts_with("in sync")
    });
    w.cut();
    run(&mut w, 3_000);
    let after = writes(&mut w, ALPHA, 3);
    w.verb(ALPHA, Verb::Stop, "op");
    run(&mut w, 2_000);
    expect(&w, ALPHA, StateKind::Stop);
    w.heal();
    run(&mut w, 10_000);
    // beta reached alpha's old generation, but alpha wrote more in a new one: beta waits.
    expect(&w, BETA, StateKind::Wait);
    w.verb(ALPHA, Verb::Start, "op");
    run(&mut w, 15_000);
    expect(&w, ALPHA, StateKind::Prim);
    holds(&w, BETA, &after);
}

#[test]
fn a_stop_then_start_at_the_same_instant_as_the_peer_decides_makes_one_primary() {
    let mut w = in_sync(Setup::plain());
    w.verb(ALPHA, Verb::Swap, "op");
    // beta is taking over and alpha already holds beta's new generation (equal data: the
    // election is a tie broken by each one's view of the other). beta is stopped there and
    // started again the instant it stops, while alpha, handing over, sees it stop and decides
    // too: both elect themselves from statuses already out of date.
    until(&mut w, 5_000, "condition", |w| {
        w.state(BETA) == Some(StateKind::Promoting)
            && w.nodes[BETA].persisted.role == Role::Primary
            && w.nodes[ALPHA].persisted.current == w.nodes[BETA].persisted.current
    });
    w.verb(BETA, Verb::Stop, "op");
    until(&mut w, 5_000, "condition", |w| {
        w.state(BETA) == Some(StateKind::Stop)
    });
    w.verb(BETA, Verb::Start, "op");
    run(&mut w, 15_000);
    let primaries = (0..2)
        .filter(|&i| matches!(w.state(i), Some(StateKind::Alone | StateKind::Prim)))
        .count();
    assert_eq!(primaries, 1, "{}", w.trace_text());
    assert_eq!(w.stats.dual_primaries, 0, "{}", w.trace_text());
}

#[test]
fn a_primary_goes_on_alone_only_once_its_secondary_heard_of_the_new_generation() {
    let mut w = in_sync(Setup::plain());
    w.mirror_broken = true;
    w.session_error();
    until(&mut w, 1_000, "alpha alone", |w| {
        w.nodes[ALPHA].alone_allowed
    });
    // alpha acknowledges writes beta does not have, and the link fails at that instant:
    // beta, which heard of alpha's new generation first, must not fail over.
    let alone = writes(&mut w, ALPHA, 2);
    w.cut();
    run(&mut w, 5_000);
    expect(&w, BETA, StateKind::Wait);
    w.mirror_broken = false;
    w.heal();
    run(&mut w, 15_000);
    expect(&w, ALPHA, StateKind::Prim);
    holds(&w, BETA, &alone);
}
