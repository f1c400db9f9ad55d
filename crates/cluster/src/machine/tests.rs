//! Single-machine tests: one node, events fed by hand. Two-node behaviour (failover, swap,
//! split brain, witness) is in `tests/sim`.

use super::*;
use crate::generation::{DataState, GenId, Role};

fn cfg() -> Config {
    Config::new("app", "a", "b")
}

/// Feed events, collecting every action.
struct One {
    m: Machine,
    now: u64,
    acts: Vec<Action>,
}

impl One {
    fn new(cfg: Config, data: DataState) -> One {
        let mut one = One {
            m: Machine::new(cfg, data, 1),
            now: 0,
            acts: Vec::new(),
        };
        one.ev(Event::Booted);
        one
    }

    fn ev(&mut self, ev: Event) -> Vec<Action> {
        let acts = self.m.handle(self.now, ev);
        self.acts.extend(acts.clone());
        acts
    }

    fn verb(&mut self, verb: Verb) -> Vec<Action> {
        self.ev(Event::Verb {
            verb,
            who: "alice".to_owned(),
        })
    }

    fn at(&mut self, now: u64) {
        self.now = now;
    }

    /// Answer the pending asynchronous action, if any, with success.
    fn complete(&mut self, acts: &[Action]) -> Vec<Action> {
        let op = acts.iter().find_map(|a| match a {
            Action::MountPrimary { op, .. }
            | Action::TakeVip { op }
            | Action::RunScripts { op, .. }
            | Action::Unmount { op }
            | Action::ReleaseVip { op }
            | Action::Barrier { op } => Some(*op),
            _ => None,
        });
        match op {
            Some(op) => self.ev(Event::Done { op, result: Ok(()) }),
            None => Vec::new(),
        }
    }

    fn verb_result(&self) -> Option<Result<StateKind, String>> {
        self.acts.iter().rev().find_map(|a| match a {
            Action::VerbDone { result, .. } => Some(result.clone()),
            _ => None,
        })
    }
}

fn primary_alone() -> DataState {
    let mut d = DataState {
        consistent: true,
        ..DataState::default()
    };
    d.begin_alone(GenId(1));
    d
}

fn was_secondary() -> DataState {
    let mut d = DataState {
        consistent: true,
        ..DataState::default()
    };
    d.begin_resync_as_target();
    d.resync_done_as_target(&primary_alone());
    d
}

#[test]
fn former_secondary_waits_alone_and_says_why() {
    let mut one = One::new(cfg(), was_secondary());
    one.verb(Verb::Start);
    assert_eq!(one.m.state(), StateKind::Starting);
    one.at(10_000);
    one.ev(Event::Timer(Timer::PeerWait));
    assert_eq!(one.m.state(), StateKind::Wait);
    let reason = one.m.status().reason;
    assert!(reason.contains("was secondary"), "{reason}");
    assert!(reason.contains("`prim`"), "{reason}");
    assert_eq!(one.verb_result(), Some(Ok(StateKind::Wait)));
}

#[test]
fn prim_forces_a_stale_node_and_persists_before_mounting() {
    let mut one = One::new(cfg(), was_secondary());
    one.verb(Verb::Start);
    one.at(10_000);
    one.ev(Event::Timer(Timer::PeerWait));
    let acts = one.verb(Verb::Prim);
    let persist = acts
        .iter()
        .position(|a| matches!(a, Action::Persist(d) if d.role == Role::Primary));
    assert!(persist.is_some(), "{acts:?}");
    assert!(acts.iter().any(|a| matches!(a, Action::Log { text, .. } if text.contains("FORCED primary by alice at 10000 ms"))));
    // prestart, then the mount: after the persist.
    let acts = one.complete(&acts);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::MountPrimary { forced: true, .. })),
        "{acts:?}"
    );
    let acts = one.complete(&acts);
    let acts = one.complete(&acts);
    one.complete(&acts);
    assert_eq!(one.m.state(), StateKind::Alone);
    assert_eq!(one.verb_result(), Some(Ok(StateKind::Alone)));
    assert_eq!(
        one.m.data().bitmap,
        None,
        "a forced primary's record is not trusted"
    );
}

#[test]
fn primary_alone_restarts_alone_but_not_when_its_peer_was_in_sync() {
    let mut one = One::new(cfg(), primary_alone());
    one.verb(Verb::Start);
    one.at(10_000);
    one.ev(Event::Timer(Timer::PeerWait));
    assert_eq!(one.m.state(), StateKind::Promoting);

    let mut in_sync = primary_alone();
    in_sync.resync_done_as_source();
    let mut one = One::new(cfg(), in_sync);
    one.verb(Verb::Start);
    one.at(10_000);
    one.ev(Event::Timer(Timer::PeerWait));
    assert_eq!(one.m.state(), StateKind::Wait);
    assert!(one.m.status().reason.contains("may have taken over"));
}

#[test]
fn a_failed_start_script_ends_in_stop_with_an_error() {
    let mut one = One::new(cfg(), primary_alone());
    one.verb(Verb::Start);
    one.at(10_000);
    let acts = one.ev(Event::Timer(Timer::PeerWait));
    let acts = one.complete(&acts); // prestart
    let acts = one.complete(&acts); // mounted
    let op = acts
        .iter()
        .find_map(|a| match a {
            Action::RunScripts { op, .. } => Some(*op),
            _ => None,
        })
        .expect("start scripts");
    let failure = Failure {
        detail: "start_prim failed".to_owned(),
        exit_status: Some(3),
    };
    let mut acts = one.ev(Event::Done {
        op,
        result: Err(failure),
    });
    assert_eq!(one.m.state(), StateKind::Demoting);
    // stop_prim, stop_both, unmount, poststop (the VIP was never taken)
    for _ in 0..4 {
        acts = one.complete(&acts);
    }
    assert_eq!(one.m.state(), StateKind::Stop);
    let result = one.verb_result().expect("verb settled");
    let err = result.expect_err("start failed");
    assert!(err.contains("exit status 3"), "{err}");
}

#[test]
fn verbs_that_cannot_apply_are_refused_at_once() {
    let mut one = One::new(cfg(), was_secondary());
    one.verb(Verb::Swap);
    assert!(matches!(one.verb_result(), Some(Err(e)) if e.contains("swap needs")));
    one.verb(Verb::Start);
    one.verb(Verb::Start);
    assert!(matches!(one.verb_result(), Some(Err(e)) if e.contains("busy")));
    one.at(10_000);
    one.ev(Event::Timer(Timer::PeerWait)); // the first `start` settles: WAIT
    one.verb(Verb::Start);
    assert!(matches!(one.verb_result(), Some(Err(e)) if e.contains("already started")));
    one.verb(Verb::Stop);
    assert_eq!(one.m.state(), StateKind::Stop);
    assert_eq!(one.verb_result(), Some(Ok(StateKind::Stop)));
}

#[test]
fn statuses_from_another_node_or_out_of_order_change_nothing() {
    let mut one = One::new(cfg(), was_secondary());
    one.verb(Verb::Start);
    one.ev(Event::PeerSeen);
    let status = PeerStatus {
        node: "mallory".to_owned(),
        boot: 9,
        seq: 5,
        state: StateKind::Prim,
        data: primary_alone(),
        eligible: true,
        committed: true,
        forced: false,
        in_sync: true,
        handover: false,
        seen_boot: 0,
        seen_seq: 0,
        reason: String::new(),
    };
    one.ev(Event::Peer(PeerMsg::Status(status.clone())));
    assert_eq!(one.m.state(), StateKind::Starting);
    let good = PeerStatus {
        node: "b".to_owned(),
        ..status
    };
    one.ev(Event::Peer(PeerMsg::Status(good.clone())));
    assert_eq!(one.m.state(), StateKind::Second);
    let older = PeerStatus {
        seq: 4,
        state: StateKind::Stop,
        ..good
    };
    one.ev(Event::Peer(PeerMsg::Status(older)));
    assert_eq!(one.m.state(), StateKind::Second);
}

/// The steps a machine asks for, as names, answering each with success until it settles.
fn drive(one: &mut One, mut acts: Vec<Action>) -> Vec<String> {
    let mut steps = Vec::new();
    loop {
        for a in &acts {
            match a {
                Action::RunScripts { scripts, .. } => {
                    steps.extend(scripts.iter().map(|s| format!("{s:?}")))
                }
                Action::MountPrimary { .. } => steps.push("Mount".into()),
                Action::Unmount { .. } => steps.push("Unmount".into()),
                Action::TakeVip { .. } => steps.push("TakeVip".into()),
                Action::ReleaseVip { .. } => steps.push("ReleaseVip".into()),
                Action::Barrier { .. } => steps.push("Barrier".into()),
                Action::StartReceiver => steps.push("StartReceiver".into()),
                Action::StopReceiver => steps.push("StopReceiver".into()),
                _ => {}
            }
        }
        let next = one.complete(&acts);
        if next.is_empty() {
            return steps;
        }
        acts = next;
    }
}

#[test]
fn a_primary_runs_the_scripts_in_the_documented_order() {
    let mut one = One::new(cfg(), primary_alone());
    one.verb(Verb::Start);
    one.at(10_000);
    let acts = one.ev(Event::Timer(Timer::PeerWait));
    let steps = drive(&mut one, acts);
    assert_eq!(
        steps,
        ["Prestart", "Mount", "StartBoth", "StartPrim", "TakeVip"],
        "start on a primary"
    );
    assert_eq!(one.m.state(), StateKind::Alone);
    // A restart in place: the primary's half only, the data kept.
    let acts = one.verb(Verb::Restart);
    let steps = drive(&mut one, acts);
    assert_eq!(steps, ["ReleaseVip", "StopPrim", "StartPrim", "TakeVip"]);
    assert_eq!(one.m.state(), StateKind::Alone);
    let acts = one.verb(Verb::Stop);
    let steps = drive(&mut one, acts);
    assert_eq!(
        steps,
        ["ReleaseVip", "StopPrim", "StopBoth", "Unmount", "Poststop"],
        "stop on a primary"
    );
    assert_eq!(one.m.state(), StateKind::Stop);
    assert_eq!(one.verb_result(), Some(Ok(StateKind::Stop)));
}

fn peer_primary(seq: u64) -> PeerStatus {
    PeerStatus {
        node: "b".into(),
        boot: 7,
        seq,
        state: StateKind::Prim,
        data: primary_alone(),
        eligible: true,
        committed: true,
        forced: false,
        in_sync: false,
        handover: false,
        seen_boot: 0,
        seen_seq: 0,
        reason: "primary".into(),
    }
}

#[test]
fn a_secondary_runs_its_own_scripts_and_waits_for_them() {
    let mut one = One::new(cfg(), DataState::default());
    one.ev(Event::PeerSeen);
    one.ev(Event::Peer(PeerMsg::Status(peer_primary(1))));
    let acts = one.verb(Verb::Start);
    assert_eq!(one.m.state(), StateKind::Second);
    // prestart first: the receiver waits for it.
    assert!(
        !acts.iter().any(|a| matches!(a, Action::StartReceiver)),
        "{acts:?}"
    );
    let steps = drive(&mut one, acts);
    assert_eq!(steps, ["Prestart", "StartReceiver", "StartBoth"]);
    assert_eq!(one.m.state(), StateKind::Second);
    assert_eq!(one.verb_result(), Some(Ok(StateKind::Second)));
    let acts = one.verb(Verb::Stop);
    assert_eq!(one.m.state(), StateKind::Demoting);
    let steps = drive(&mut one, acts);
    assert_eq!(steps, ["StopBoth", "StopReceiver", "Poststop"]);
    assert_eq!(one.m.state(), StateKind::Stop);
    assert_eq!(one.verb_result(), Some(Ok(StateKind::Stop)));

    // A failed start_both: stop_both, the data released, poststop; STOP with the reason.
    let mut one = One::new(cfg(), DataState::default());
    one.ev(Event::PeerSeen);
    one.ev(Event::Peer(PeerMsg::Status(peer_primary(1))));
    let acts = one.verb(Verb::Start);
    let acts = one.complete(&acts); // prestart
    let op = acts
        .iter()
        .find_map(|a| match a {
            Action::RunScripts { op, scripts } if scripts == &[Script::StartBoth] => Some(*op),
            _ => None,
        })
        .expect("start_both");
    let acts = one.ev(Event::Done {
        op,
        result: Err(Failure {
            detail: "agent missing".into(),
            exit_status: Some(1),
        }),
    });
    let steps = drive(&mut one, acts);
    assert_eq!(steps, ["StopBoth", "StopReceiver", "Poststop"]);
    assert_eq!(one.m.state(), StateKind::Stop);
    assert!(
        one.m.status().reason.contains("start_both"),
        "{}",
        one.m.status().reason
    );
}

#[test]
fn a_secondary_fails_over_once_its_start_scripts_are_done() {
    // In sync with b, which is lost while start_both still runs: the failover waits for it,
    // and then runs the primary's half only.
    let mut one = One::new(cfg(), DataState::default());
    one.ev(Event::PeerSeen);
    one.ev(Event::Peer(PeerMsg::Status(peer_primary(1))));
    let acts = one.verb(Verb::Start);
    let acts = one.complete(&acts); // prestart: the receiver starts, then start_both
    let start_both = acts
        .iter()
        .find_map(|a| match a {
            Action::RunScripts { op, .. } => Some(*op),
            _ => None,
        })
        .expect("start_both");
    one.ev(Event::PeerLost);
    assert_eq!(
        one.m.state(),
        StateKind::Second,
        "decisions wait for start_both"
    );
    let reason = one.m.status().reason;
    assert!(reason.contains("start_both script runs"), "{reason}");
    let acts = one.ev(Event::Done {
        op: start_both,
        result: Ok(()),
    });
    // Not in sync: it waits rather than fail over, but only now that start_both is done.
    assert_eq!(one.m.state(), StateKind::Wait, "{acts:?}");
    let acts = one.verb(Verb::Prim);
    let steps = drive(&mut one, acts);
    assert_eq!(
        steps,
        ["Mount", "StartPrim", "TakeVip"],
        "prestart and start_both ran already"
    );
    assert_eq!(one.m.state(), StateKind::Alone);
}
