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
    let mount = acts
        .iter()
        .position(|a| matches!(a, Action::MountPrimary { forced: true, .. }));
    assert!(
        persist.is_some() && mount.is_some() && persist < mount,
        "{acts:?}"
    );
    assert!(acts.iter().any(|a| matches!(a, Action::Log { text, .. } if text.contains("FORCED primary by alice at 10000 ms"))));
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
    let acts = one.complete(&acts); // mounted
    let acts = one.complete(&acts); // VIP
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
    // stop scripts, unmount, release the VIP
    for _ in 0..3 {
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
