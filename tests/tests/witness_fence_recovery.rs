//! Found by the PostgreSQL chaos run (issue 7): a primary whose secondary dies and which, at
//! that moment, also misses its witness renewals fences itself (right: it can tell neither). It
//! used to wait for the dead peer ("alpha may have taken over since") until an operator forced
//! it; with a witness, whether the peer took over is the witness's to say, so it now claims the
//! role again and leads once the witness answers (the witness grants it only if its data is the
//! latest that may have acknowledged writes).

use std::time::{Duration, Instant};

use mirrorkit_tests::lab::{require_lab, tail, Lab, LabModule};

const BOOT: Duration = Duration::from_secs(90);

#[test]
fn a_primary_fenced_by_a_witness_hiccup_while_its_peer_is_dead_leads_again_once_the_witness_answers(
) {
    if !require_lab("a_primary_fenced_by_a_witness_hiccup_leads_again") {
        return;
    }
    let m = LabModule {
        heartbeat: "fast",
        ..LabModule::demo("demo", 8080, 80)
    };
    let mut lab = Lab::with_witness(vec![m.clone()]);
    lab.start_witness();
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    let r = lab.http(m.vip_addr(), "POST", "/notes", "before");
    assert!(matches!(r, Ok((201, _))), "{r:?}");

    // The secondary dies; a moment later the primary misses its witness for 2 s.
    lab.kill9(1);
    std::thread::sleep(Duration::from_millis(800));
    lab.set_witness_link(false);
    std::thread::sleep(Duration::from_secs(2));
    lab.set_witness_link(true);

    // The witness answers again and nobody else holds the module: alpha serves again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = lab.state(0, "demo");
        if s.as_deref() == Some("ALONE") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alpha did not lead again within 60 s of the witness's return: {s:?}\n{}\n--- alpha log:\n{}\n--- witness log:\n{}",
            lab.status(0).map(|s| s.to_string()).unwrap_or_default(),
            tail(&lab.log(0), 40),
            tail(&lab.witness_log(), 20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let body = match lab.http(m.vip_addr(), "GET", "/notes", "") {
        Ok((200, b)) => b,
        other => panic!("GET /notes: {other:?}"),
    };
    assert!(body.contains("before"), "{body}");
}
