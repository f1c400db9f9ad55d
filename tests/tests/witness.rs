//! The witness end to end, in network namespaces: two real daemons and a real `mirrorkit
//! witness` in a third namespace. Issue 5's scenarios: a cut link between the nodes with the
//! witness reachable from both leaves exactly one primary; a primary isolated from both its
//! peer and the witness stops its application and drops the virtual IP before the secondary
//! takes over (never both at once, sampled every few milliseconds); the witness down with the
//! nodes fine moves nothing.

use std::time::{Duration, Instant};

use mirrorkit_cluster::machine::StateKind;
use mirrorkit_tests::lab::{require_lab, tail, Lab, LabModule};

const BOOT: Duration = Duration::from_secs(90);
const MOVE: Duration = Duration::from_secs(60);

fn fast_module() -> LabModule {
    LabModule {
        heartbeat: "fast",
        ..LabModule::demo("demo", 8080, 80)
    }
}

/// Whether a state holds the application (running or restarting it as primary).
fn serving(s: Option<StateKind>) -> bool {
    matches!(
        s,
        Some(StateKind::Alone | StateKind::Prim | StateKind::Restarting)
    )
}

/// Sample both nodes' states every few milliseconds for `d`: panics at the first moment with
/// two nodes serving. Returns the number of samples and the last states.
fn never_two_primaries(lab: &Lab, module: &str, d: Duration) -> (u64, [Option<StateKind>; 2]) {
    let end = Instant::now() + d;
    let mut n = 0;
    let mut last = [None, None];
    while Instant::now() < end {
        for (i, slot) in last.iter_mut().enumerate() {
            *slot = lab.status_now(i).and_then(|s| {
                s.modules
                    .into_iter()
                    .find(|m| m.name == module)
                    .and_then(|m| m.state)
            });
        }
        n += 1;
        assert!(
            !(serving(last[0]) && serving(last[1])),
            "two primaries at once after {n} samples: {last:?}\n--- alpha log:\n{}\n--- beta log:\n{}\n--- witness log:\n{}",
            tail(&lab.log(0), 60),
            tail(&lab.log(1), 60),
            tail(&lab.witness_log(), 30)
        );
        std::thread::sleep(Duration::from_millis(3));
    }
    (n, last)
}

fn reason(lab: &Lab, i: usize, module: &str) -> String {
    lab.status_now(i)
        .and_then(|s| s.modules.into_iter().find(|m| m.name == module))
        .map(|m| m.reason)
        .unwrap_or_default()
}

/// The witness down with the nodes fine moves nothing; then a cut link between the nodes,
/// with the witness back and reachable from both, leaves exactly one primary; healed, the
/// other returns as SECOND.
#[test]
fn witness_down_moves_nothing_and_a_cut_link_keeps_one_primary() {
    if !require_lab("witness_down_moves_nothing_and_a_cut_link_keeps_one_primary") {
        return;
    }
    let m = fast_module();
    let mut lab = Lab::with_witness(vec![m.clone()]);
    lab.start_witness();
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);

    // Witness down for many leases: nothing moves.
    lab.kill_witness();
    let (samples, last) = never_two_primaries(&lab, "demo", Duration::from_secs(6));
    assert_eq!(
        last,
        [Some(StateKind::Prim), Some(StateKind::Second)],
        "the witness's absence moved the module ({samples} samples)\n{}",
        tail(&lab.log(0), 40)
    );
    assert!(lab.holds_vip(0, &m) && !lab.holds_vip(1, &m));
    assert!(
        lab.log(0).contains("the witness is unreachable"),
        "{}",
        tail(&lab.log(0), 40)
    );
    lab.start_witness();
    std::thread::sleep(Duration::from_secs(2));
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], MOVE);

    // Cut the link between the nodes only: the witness keeps alpha primary, beta waits.
    lab.cut_between_nodes(true);
    let (_, last) = never_two_primaries(&lab, "demo", Duration::from_secs(8));
    assert_eq!(
        last,
        [Some(StateKind::Alone), Some(StateKind::Wait)],
        "alpha: {}\nbeta: {}",
        reason(&lab, 0, "demo"),
        reason(&lab, 1, "demo")
    );
    assert!(
        reason(&lab, 1, "demo").contains("witness"),
        "{}",
        reason(&lab, 1, "demo")
    );
    assert!(lab.holds_vip(0, &m) && !lab.holds_vip(1, &m));
    let r = lab.http(m.vip_addr(), "POST", "/notes", "during-cut");
    assert!(matches!(r, Ok((201, _))), "{r:?}");

    lab.cut_between_nodes(false);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], MOVE);
}

/// The primary is cut off from the LAN (peer, witness and clients): it stops its application
/// and drops the virtual IP; the secondary takes over with every acknowledged note; never both
/// at once. Plugged back, the old primary returns as SECOND.
#[test]
fn isolated_primary_fences_itself_and_the_secondary_takes_over() {
    if !require_lab("isolated_primary_fences_itself_and_the_secondary_takes_over") {
        return;
    }
    let m = fast_module();
    let mut lab = Lab::with_witness(vec![m.clone()]);
    lab.start_witness();
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    for n in ["one", "two", "three"] {
        let r = lab.http(m.vip_addr(), "POST", "/notes", n);
        assert!(matches!(r, Ok((201, _))), "POST {n}: {r:?}");
    }

    let cut = Instant::now();
    lab.set_link(0, false);
    let (samples, last) = never_two_primaries(&lab, "demo", Duration::from_secs(6));
    assert!(
        !serving(last[0]) && last[1] == Some(StateKind::Alone),
        "after {samples} samples: {last:?}\nalpha: {}\nbeta: {}",
        reason(&lab, 0, "demo"),
        reason(&lab, 1, "demo")
    );
    assert!(
        !lab.holds_vip(0, &m),
        "the isolated primary kept the virtual IP"
    );
    assert!(lab.holds_vip(1, &m));
    assert!(
        lab.log(0).contains("fenced itself"),
        "{}",
        tail(&lab.log(0), 40)
    );
    let r = lab.http(m.vip_addr(), "GET", "/notes", "");
    let body = match r {
        Ok((200, b)) => b,
        other => panic!("GET /notes through the virtual IP: {other:?}"),
    };
    for n in ["one", "two", "three"] {
        assert!(body.contains(n), "note {n} lost: {body}");
    }
    eprintln!(
        "isolated primary: secondary ALONE and serving within {:?} ({samples} samples, never two primaries)",
        cut.elapsed()
    );

    lab.set_link(0, true);
    lab.wait_states("demo", [Some("SECOND"), Some("PRIM")], MOVE);
}
