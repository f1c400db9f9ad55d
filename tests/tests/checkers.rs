//! Checkers and notifications end to end, in network namespaces: two real daemons running the
//! demo module with a process checker and a notification command.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mirrorkit_tests::lab::{require_lab, tail, Lab, LabModule};

const BOOT: Duration = Duration::from_secs(90);
const MOVE: Duration = Duration::from_secs(60);

/// The notification command: one line per notification, in a file beside the module.
const NOTIFY: &str = r#"#!/bin/sh
echo "$MIRRORKIT_NOTIFY_NODE $MIRRORKIT_NOTIFY_MODULE $MIRRORKIT_NOTIFY_OLD_STATE->$MIRRORKIT_NOTIFY_NEW_STATE $MIRRORKIT_NOTIFY_TIME" >> "$MIRRORKIT_MODULE_DIR/notified-$MIRRORKIT_NOTIFY_NODE"
"#;

fn pid_file(lab: &Lab, i: usize) -> PathBuf {
    lab.nodes[i].base.join("run/modules/demo/demo-app.pid")
}

/// Kill the application on node `i` (SIGKILL to the PID its pid file holds); returns the PID.
fn kill_app(lab: &Lab, i: usize) -> i32 {
    let p = pid_file(lab, i);
    let deadline = Instant::now() + MOVE;
    loop {
        if let Some(pid) = std::fs::read_to_string(&p)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            // SAFETY: signalling a process of the test's own lab.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no living application PID in {}\n{}",
            p.display(),
            tail(&lab.log(i), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until node `i`'s application runs with a PID other than `old` and answers.
fn app_back(lab: &Lab, m: &LabModule, i: usize, old: i32) {
    let deadline = Instant::now() + MOVE;
    loop {
        let pid = std::fs::read_to_string(pid_file(lab, i))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = pid.is_some_and(|p| p != old && unsafe { libc::kill(p, 0) } == 0);
        if alive && matches!(lab.http(m.vip_addr(), "GET", "/notes", ""), Ok((200, _))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the application was not restarted on node {i}\n{}",
            tail(&lab.log(i), 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kill the application: restarted in place, up to `max_restarts`; one more: failover, with
/// every acknowledged note. Every state change was notified, in order.
#[test]
fn killed_application_restarts_in_place_then_fails_over_and_every_change_is_notified() {
    if !require_lab("killed_application_restarts_in_place_then_fails_over") {
        return;
    }
    let mut m = LabModule::demo("demo", 8080, 80);
    m.extra = "\n[[checker]]\n\
               name = \"app\"\n\
               kind = \"process\"\n\
               pid_file = \"demo-app.pid\"\n\
               interval_ms = 300\n\
               timeout_ms = 200\n\
               retries = 0\n\
               action = \"restart\"\n\
               max_restarts = 2\n\
               restart_window_ms = 600000\n\n\
               [notify]\n\
               command = \"notify.sh\"\n"
        .to_owned();
    m.files.push(("notify.sh".into(), NOTIFY.into()));
    let mut lab = Lab::new(vec![m.clone()]);
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    let r = lab.http(m.vip_addr(), "POST", "/notes", "before");
    assert!(matches!(r, Ok((201, _))), "{r:?}");

    // Two deaths: restarted in place each time, on alpha.
    for round in 1..=2 {
        let old = kill_app(&lab, 0);
        app_back(&lab, &m, 0, old);
        lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], MOVE);
        eprintln!("round {round}: the application restarted in place on alpha");
    }
    let log = lab.log(0);
    assert!(log.contains("checker app (process"), "{}", tail(&log, 40));

    // The third death within the window: failover to beta.
    kill_app(&lab, 0);
    lab.wait_states("demo", [Some("SECOND"), Some("PRIM")], MOVE);
    let body = match lab.http(m.vip_addr(), "GET", "/notes", "") {
        Ok((200, b)) => b,
        other => panic!("GET through the virtual IP after the failover: {other:?}"),
    };
    assert!(body.contains("before"), "{body}");

    // The checker's state shows in the status.
    let st = lab.status(1).expect("status");
    let checkers = st["modules"][0]["checkers"].clone();
    assert!(
        checkers
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "app" && c["running"] == true)),
        "{st}"
    );

    // Notifications: alpha's history, in order, includes both restarts and the handover.
    let module_dir = lab.dir.path().join("modules/demo");
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = [
        "STOP->STARTING",
        // PROMOTING->PRIM, or PROMOTING->ALONE->PRIM when the first sync ends after the start.
        "->PRIM",
        "PRIM->RESTARTING",
        "RESTARTING->PRIM",
        "PRIM->RESTARTING",
        "RESTARTING->PRIM",
        "PRIM->DEMOTING",
        "DEMOTING->SECOND",
    ];
    loop {
        let text = std::fs::read_to_string(module_dir.join("notified-alpha")).unwrap_or_default();
        let mut rest = text.as_str();
        let in_order = want.iter().all(|w| match rest.find(w) {
            Some(at) => {
                rest = &rest[at + w.len()..];
                true
            }
            None => false,
        });
        if in_order && text.lines().all(|l| l.starts_with("alpha demo ")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alpha's notifications, wanted {want:?} in order:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let beta = std::fs::read_to_string(module_dir.join("notified-beta")).unwrap_or_default();
    assert!(
        beta.contains("SECOND->PROMOTING") || beta.contains("->PRIM"),
        "{beta}"
    );
}

/// A node checker (`ping` of the LAN's router, here the client's address): the primary that
/// cannot reach it hands the application over to the secondary; while its check fails it does
/// not take the application back, not even when the other node dies; once the check passes
/// again, it does.
#[test]
fn a_primary_that_loses_its_network_hands_over_and_takes_over_only_once_it_is_back() {
    if !require_lab("a_primary_that_loses_its_network_hands_over") {
        return;
    }
    let mut m = LabModule::demo("demo", 8080, 80);
    m.extra = format!(
        "\n[[checker]]\n\
         name = \"gateway\"\n\
         kind = \"ping\"\n\
         target = \"{}\"\n\
         interval_ms = 300\n\
         timeout_ms = 200\n\
         retries = 1\n",
        mirrorkit_tests::lab::client_addr()
    );
    let mut lab = Lab::new(vec![m.clone()]);
    lab.start(0);
    lab.start(1);
    lab.wait_states("demo", [Some("PRIM"), Some("SECOND")], BOOT);
    let r = lab.http(m.vip_addr(), "POST", "/notes", "before");
    assert!(matches!(r, Ok((201, _))), "{r:?}");

    // alpha can no longer reach the router: it hands over.
    lab.set_route_to_client(0, false);
    lab.wait_states("demo", [Some("SECOND"), Some("PRIM")], MOVE);
    let st = lab.status(0).expect("status");
    assert!(
        st["modules"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("checker gateway")),
        "{st}"
    );
    // beta dies: alpha, still without its network, does not take over.
    lab.kill9(1);
    std::thread::sleep(Duration::from_secs(4));
    let s = lab.state(0, "demo");
    assert_eq!(s.as_deref(), Some("WAIT"), "{}", tail(&lab.log(0), 40));
    assert!(!lab.holds_vip(0, &m));
    // Its network back: it takes over, with the notes.
    lab.set_route_to_client(0, true);
    lab.wait_states("demo", [Some("ALONE"), None], MOVE);
    let body = match lab.http(m.vip_addr(), "GET", "/notes", "") {
        Ok((200, b)) => b,
        other => panic!("GET through the virtual IP: {other:?}"),
    };
    assert!(body.contains("before"), "{body}");
}
