//! Two nodes on loopback: detection, messages, lost networks, restarts, intruders and garbage.
//! Every test picks its own ports; upper bounds on times are wide, lower bounds strict.

mod common;

use std::time::Duration;

use common::{
    free_addr, init_logs, message, net, next, start, wait_for, Logs, Pki, Relay, INTERVAL_MS,
    PATIENCE,
};
use mirrorkit_heartbeat::{Liveness, CLOSE_PROTOCOL_ERROR};
use tokio::time::Instant;

const LOST_AFTER_FAST_MS: u64 = 500;
const LOST_AFTER_DEFAULT_MS: u64 = 1500;

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn is_lost(report: &Liveness) -> bool {
    matches!(report, Liveness::Lost { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_see_each_other_and_exchange_messages_in_order() {
    init_logs();
    let pki = Pki::new("test", &["alpha", "beta"]);
    let (a, b) = (free_addr(), free_addr());
    let started = Instant::now();
    let (alpha, mut alpha_inbox) = start(&pki, "alpha", "beta", vec![net("n1", a, b)]).await;
    let (beta, mut beta_inbox) = start(&pki, "beta", "alpha", vec![net("n1", b, a)]).await;
    let mut alpha_watch = alpha.watch(LOST_AFTER_DEFAULT_MS);
    let mut beta_watch = beta.watch(LOST_AFTER_DEFAULT_MS);
    assert_eq!(next(&mut alpha_watch, PATIENCE).await, Liveness::Seen);
    assert_eq!(next(&mut beta_watch, PATIENCE).await, Liveness::Seen);
    eprintln!("both Seen {:?} after start", started.elapsed());
    assert_eq!(alpha.peer_boot_id(), Some(beta.boot_id()));
    assert_eq!(beta.peer_boot_id(), Some(alpha.boot_id()));
    wait_for("both networks up", PATIENCE, || {
        alpha.networks()[0].up && beta.networks()[0].up
    })
    .await;

    const COUNT: u32 = 1000;
    for i in 0..COUNT {
        let channel = if i % 2 == 0 { "even" } else { "odd" };
        assert!(
            alpha.send(channel, i.to_be_bytes().to_vec()),
            "alpha send {i}"
        );
        assert!(
            beta.send(channel, (COUNT + i).to_be_bytes().to_vec()),
            "beta send {i}"
        );
    }
    for (inbox, first) in [(&mut beta_inbox, 0), (&mut alpha_inbox, COUNT)] {
        for i in 0..COUNT {
            let m = message(inbox, PATIENCE).await;
            assert_eq!(m.channel, if i % 2 == 0 { "even" } else { "odd" });
            assert_eq!(m.payload, (first + i).to_be_bytes());
        }
    }

    for status in [&alpha.networks()[0], &beta.networks()[0]] {
        assert_eq!(status.name, "n1");
        assert!(status.up, "{status:?}");
        assert!(status.rtt_us.is_some(), "{status:?}");
        assert!(
            status.last_heard_ms_ago.is_some_and(|ms| ms < 5000),
            "{status:?}"
        );
        assert_eq!(status.last_error, None);
    }
    // Nothing reported while the peer stays.
    assert!(alpha_watch.try_recv().is_err());

    alpha.shutdown().await;
    beta.shutdown().await;
    for inbox in [&mut alpha_inbox, &mut beta_inbox] {
        let end = tokio::time::timeout(PATIENCE, inbox.recv()).await;
        assert!(
            matches!(end, Ok(None)),
            "the message channel ends after shutdown"
        );
    }
    assert!(
        !alpha.send("even", vec![1]),
        "nothing is sent after shutdown"
    );
}

/// Two networks, each through a relay that can be cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_network_down_keeps_the_peer_seen_and_both_down_lose_it() {
    init_logs();
    let pki = Pki::new("test", &["alpha", "beta"]);
    let (a1, a2, b1, b2) = (free_addr(), free_addr(), free_addr(), free_addr());
    let r1 = Relay::start(a1, b1).await;
    let r2 = Relay::start(a2, b2).await;
    let (alpha, mut alpha_inbox) = start(
        &pki,
        "alpha",
        "beta",
        vec![net("n1", a1, r1.a_facing), net("n2", a2, r2.a_facing)],
    )
    .await;
    let (beta, mut beta_inbox) = start(
        &pki,
        "beta",
        "alpha",
        vec![net("n1", b1, r1.b_facing), net("n2", b2, r2.b_facing)],
    )
    .await;
    let mut alpha_watch = alpha.watch(LOST_AFTER_FAST_MS);
    let mut beta_watch = beta.watch(LOST_AFTER_FAST_MS);
    assert_eq!(next(&mut alpha_watch, PATIENCE).await, Liveness::Seen);
    assert_eq!(next(&mut beta_watch, PATIENCE).await, Liveness::Seen);
    let all_up = |hb: &mirrorkit_heartbeat::Heartbeat| hb.networks().iter().all(|n| n.up);
    wait_for("all networks up", PATIENCE, || {
        all_up(&alpha) && all_up(&beta)
    })
    .await;

    // n1 cut: messages move to n2, and the peer stays seen.
    r1.cut();
    let cut_at = Instant::now();
    wait_for("n1 down and n2 up on both sides", PATIENCE, || {
        [&alpha, &beta].iter().all(|hb| {
            let nets = hb.networks();
            !nets[0].up && nets[1].up
        })
    })
    .await;
    assert!(alpha.send("m", b"over n2".to_vec()));
    assert!(beta.send("m", b"back over n2".to_vec()));
    assert_eq!(message(&mut beta_inbox, PATIENCE).await.payload, b"over n2");
    assert_eq!(
        message(&mut alpha_inbox, PATIENCE).await.payload,
        b"back over n2"
    );
    // Three thresholds after the cut, still no report.
    let quiet_until = cut_at + ms(3 * LOST_AFTER_FAST_MS);
    for watcher in [&mut alpha_watch, &mut beta_watch] {
        let report = tokio::time::timeout_at(quiet_until, watcher.recv()).await;
        assert!(
            report.is_err(),
            "no report with one network left: {report:?}"
        );
    }

    // Both cut: lost on both sides, and the reason names both networks.
    r2.cut();
    let cut_at = Instant::now();
    for watcher in [&mut alpha_watch, &mut beta_watch] {
        let report = next(watcher, ms(LOST_AFTER_FAST_MS) + PATIENCE).await;
        let Liveness::Lost { reason } = report else {
            panic!("expected Lost, got {report:?}");
        };
        assert!(
            reason.contains("n1: ") && reason.contains("n2: "),
            "{reason}"
        );
    }
    eprintln!(
        "both cut: Lost on both sides {:?} after the cut",
        cut_at.elapsed()
    );
    assert!(!alpha.send("m", b"nowhere".to_vec()), "no network is up");

    r1.restore();
    r2.restore();
    let restored_at = Instant::now();
    assert_eq!(next(&mut alpha_watch, PATIENCE).await, Liveness::Seen);
    assert_eq!(next(&mut beta_watch, PATIENCE).await, Liveness::Seen);
    eprintln!("restored: Seen again {:?} later", restored_at.elapsed());
    wait_for("all networks up again", PATIENCE, || {
        all_up(&alpha) && all_up(&beta)
    })
    .await;
    eprintln!(
        "restored: all networks up {:?} later",
        restored_at.elapsed()
    );
    assert!(alpha.send("m", b"after".to_vec()));
    assert_eq!(message(&mut beta_inbox, PATIENCE).await.payload, b"after");
    alpha.shutdown().await;
    beta.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_report_lost_in_threshold_order_and_never_early() {
    init_logs();
    let pki = Pki::new("test", &["alpha", "beta"]);
    let (a, b) = (free_addr(), free_addr());
    let (alpha, _alpha_inbox) = start(&pki, "alpha", "beta", vec![net("n1", a, b)]).await;
    let (beta, _beta_inbox) = start(&pki, "beta", "alpha", vec![net("n1", b, a)]).await;
    let mut fast = alpha.watch(LOST_AFTER_FAST_MS);
    let mut slow = alpha.watch(LOST_AFTER_DEFAULT_MS);
    assert_eq!(next(&mut fast, PATIENCE).await, Liveness::Seen);
    assert_eq!(next(&mut slow, PATIENCE).await, Liveness::Seen);
    // Heartbeats flowing for a while first.
    tokio::time::sleep(ms(3 * INTERVAL_MS)).await;

    beta.shutdown().await;
    // No heartbeat leaves beta from here on: the last one alpha heard is at most this late
    // (within the millisecond the status rounds down).
    let now = Instant::now();
    let ago = alpha.networks()[0].last_heard_ms_ago.expect("heard");
    let last_heard = now - ms(ago);
    let lower_bound = |threshold_ms: u64| last_heard + ms(threshold_ms) - ms(1);

    let report = next(&mut fast, ms(LOST_AFTER_FAST_MS) + PATIENCE).await;
    let fast_at = Instant::now();
    assert!(is_lost(&report), "{report:?}");
    assert!(
        format!("{report:?}").contains("threshold 500 ms"),
        "{report:?}"
    );
    let report = next(&mut slow, ms(LOST_AFTER_DEFAULT_MS) + PATIENCE).await;
    let slow_at = Instant::now();
    assert!(is_lost(&report), "{report:?}");
    eprintln!(
        "after the last heartbeat: fast watcher Lost at {:?}, default watcher at {:?}",
        fast_at - last_heard,
        slow_at - last_heard
    );
    assert!(
        fast_at >= lower_bound(LOST_AFTER_FAST_MS),
        "fast watcher early"
    );
    assert!(
        slow_at >= lower_bound(LOST_AFTER_DEFAULT_MS),
        "default watcher early"
    );
    assert!(fast_at < slow_at);
    assert!(fast_at - last_heard < ms(LOST_AFTER_FAST_MS) + PATIENCE);
    // Once lost, nothing more until the peer is back.
    assert!(fast.try_recv().is_err());

    // A watcher created while the peer is lost reports it at once.
    let mut late = alpha.watch(LOST_AFTER_FAST_MS);
    assert!(is_lost(&next(&mut late, PATIENCE).await));
    alpha.shutdown().await;
}

/// Run on one thread so that the captured log holds every node's lines.
#[tokio::test(flavor = "current_thread")]
async fn nodes_without_the_right_certificate_are_refused_and_logged() {
    let (logs, _guard) = Logs::capture();
    let ours = Pki::new("ours", &["alpha", "beta", "aaron"]);
    let theirs = Pki::new("theirs", &["alpha", "beta"]);

    // Another cluster's alpha dials our beta: beta refuses it during the handshake.
    let (a, b) = (free_addr(), free_addr());
    let (beta, _) = start(&ours, "beta", "alpha", vec![net("n1", b, a)]).await;
    let (intruder, _) = start(&theirs, "alpha", "beta", vec![net("n1", a, b)]).await;
    let mut beta_watch = beta.watch(LOST_AFTER_FAST_MS);
    let mut intruder_watch = intruder.watch(LOST_AFTER_FAST_MS);
    let remote = format!("refused a connection from {a}");
    wait_for("beta logs the refusal", PATIENCE, || {
        logs.has_line(&["WARN", "n1", &remote, "handshake failed"])
    })
    .await;
    wait_for("the intruder logs its failure", PATIENCE, || {
        logs.has_line(&["WARN", "cannot connect to beta"])
    })
    .await;
    assert!(is_lost(&next(&mut beta_watch, PATIENCE).await));
    assert!(is_lost(&next(&mut intruder_watch, PATIENCE).await));
    let error = beta.networks()[0].last_error.clone().unwrap_or_default();
    assert!(error.contains(&remote), "{error}");
    intruder.shutdown().await;

    // Our alpha dials another cluster's beta: alpha refuses its server certificate.
    let (a2, b2) = (free_addr(), free_addr());
    let (their_beta, _) = start(&theirs, "beta", "alpha", vec![net("n1", b2, a2)]).await;
    let (alpha, _) = start(&ours, "alpha", "beta", vec![net("n1", a2, b2)]).await;
    let mut alpha_watch = alpha.watch(LOST_AFTER_FAST_MS);
    wait_for("alpha records the bad certificate", PATIENCE, || {
        alpha.networks()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("certificate"))
    })
    .await;
    assert!(is_lost(&next(&mut alpha_watch, PATIENCE).await));
    their_beta.shutdown().await;
    alpha.shutdown().await;

    // A node of our cluster that is not beta's peer: the handshake succeeds, beta refuses the
    // name. ("aaron" sorts before "beta", so it dials.)
    let c = free_addr();
    let (aaron, _) = start(&ours, "aaron", "beta", vec![net("n1", c, b)]).await;
    let mut aaron_watch = aaron.watch(LOST_AFTER_FAST_MS);
    let remote = format!("refused a connection from {c}");
    wait_for("beta logs the refusal of aaron", PATIENCE, || {
        logs.has_line(&["WARN", &remote, "names node \"aaron\""])
    })
    .await;
    wait_for("aaron hears why", PATIENCE, || {
        aaron.networks()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused: not this node's peer"))
    })
    .await;
    assert!(is_lost(&next(&mut aaron_watch, PATIENCE).await));

    // Nobody was ever seen.
    tokio::time::sleep(ms(3 * INTERVAL_MS)).await;
    assert!(beta_watch.try_recv().is_err());
    assert!(aaron_watch.try_recv().is_err());
    assert_eq!(beta.peer_boot_id(), None);
    aaron.shutdown().await;
    beta.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_packets_and_malformed_frames_break_nothing() {
    init_logs();
    let pki = Pki::new("test", &["alpha", "beta"]);
    let (a, b) = (free_addr(), free_addr());
    let (beta, mut beta_inbox) = start(&pki, "beta", "alpha", vec![net("n1", b, a)]).await;
    let mut beta_watch = beta.watch(LOST_AFTER_FAST_MS);
    assert!(is_lost(&next(&mut beta_watch, PATIENCE).await));

    // A client holding alpha's certificate, speaking garbage on the message stream: each
    // connection is closed with a protocol error.
    let fake = mirrorkit_net::endpoint(
        &pki.identity("alpha"),
        "127.0.0.1:0".parse().unwrap(),
        &mirrorkit_net::TransportParams::default(),
    )
    .expect("fake endpoint");
    let mut too_long = b"MKC1".to_vec();
    too_long.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut undecodable = b"MKC1".to_vec();
    undecodable.extend_from_slice(&5u32.to_be_bytes());
    undecodable.extend_from_slice(&[0xff; 5]);
    for garbage in [b"HTTP/1.1 200".to_vec(), too_long, undecodable] {
        let conn = mirrorkit_net::connect(&fake, b, "beta")
            .await
            .expect("connect");
        let mut stream = conn.open_uni().await.expect("stream");
        stream.write_all(&garbage).await.expect("write");
        let closed = tokio::time::timeout(PATIENCE, conn.closed()).await;
        match closed {
            Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
                assert_eq!(close.error_code, CLOSE_PROTOCOL_ERROR.into())
            }
            other => panic!("expected a protocol error close, got {other:?}"),
        }
    }
    // Malformed heartbeats are ignored: the connection stays, and nobody is seen.
    let conn = mirrorkit_net::connect(&fake, b, "beta")
        .await
        .expect("connect");
    for datagram in [&[9u8; 17][..], &[1, 2, 3][..], &[1u8; 18][..]] {
        conn.send_datagram(bytes::Bytes::copy_from_slice(datagram))
            .expect("datagram");
    }
    tokio::time::sleep(ms(5 * INTERVAL_MS)).await;
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    assert!(beta_watch.try_recv().is_err(), "garbage is no heartbeat");
    conn.close(0u32.into(), b"done");
    fake.wait_idle().await;

    // Raw UDP garbage at beta's port, some of it shaped like QUIC long headers.
    let spray = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let garbage = |i: usize| -> Vec<u8> {
        let len = 1 + (i * 37) % 1400;
        let mut packet: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
        if i % 3 == 0 {
            packet[0] = 0xc0;
        }
        packet
    };
    for i in 0..300 {
        let _ = spray.send_to(&garbage(i), b);
    }

    // The real alpha still gets through, and garbage during the conversation changes nothing.
    let (alpha, mut alpha_inbox) = start(&pki, "alpha", "beta", vec![net("n1", a, b)]).await;
    let mut alpha_watch = alpha.watch(LOST_AFTER_FAST_MS);
    assert_eq!(next(&mut beta_watch, PATIENCE).await, Liveness::Seen);
    assert_eq!(next(&mut alpha_watch, PATIENCE).await, Liveness::Seen);
    for i in 0..300 {
        let _ = spray.send_to(&garbage(i), if i % 2 == 0 { a } else { b });
        if i % 50 == 0 {
            tokio::time::sleep(ms(INTERVAL_MS)).await;
        }
    }
    wait_for("alpha's network up", PATIENCE, || alpha.networks()[0].up).await;
    assert!(alpha.send("m", b"ping".to_vec()));
    assert_eq!(message(&mut beta_inbox, PATIENCE).await.payload, b"ping");
    assert!(beta.send("m", b"pong".to_vec()));
    assert_eq!(message(&mut alpha_inbox, PATIENCE).await.payload, b"pong");
    assert!(alpha_watch.try_recv().is_err());
    alpha.shutdown().await;
    beta.shutdown().await;
}

/// Restarts of either node, closing its connection or vanishing without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_picked_up_quickly() {
    init_logs();
    let pki = Pki::new("test", &["alpha", "beta"]);
    let (a, b) = (free_addr(), free_addr());
    let relay = Relay::start(a, b).await;
    let alpha_net = || vec![net("n1", a, relay.a_facing)];
    let beta_net = || vec![net("n1", b, relay.b_facing)];
    let (alpha, _) = start(&pki, "alpha", "beta", alpha_net()).await;
    let (beta, _) = start(&pki, "beta", "alpha", beta_net()).await;
    wait_for("alpha hears beta", PATIENCE, || {
        alpha.peer_boot_id() == Some(beta.boot_id())
    })
    .await;

    // The accepting node restarts cleanly.
    beta.shutdown().await;
    drop(beta);
    let (beta, _) = start(&pki, "beta", "alpha", beta_net()).await;
    let took = wait_for("alpha hears the new beta", PATIENCE, || {
        alpha.peer_boot_id() == Some(beta.boot_id())
    })
    .await;
    eprintln!("accepting node restarted cleanly: heard again after {took:?}");

    // The accepting node vanishes without closing anything; a new process takes its place.
    relay.cut();
    beta.shutdown().await;
    drop(beta);
    let (beta, mut beta_inbox) = start(&pki, "beta", "alpha", beta_net()).await;
    relay.restore();
    let took = wait_for("alpha hears the new beta", PATIENCE, || {
        alpha.peer_boot_id() == Some(beta.boot_id())
    })
    .await;
    eprintln!("accepting node replaced silently: heard again after {took:?}");

    // The dialling node restarts cleanly, then vanishes silently.
    alpha.shutdown().await;
    drop(alpha);
    let (alpha, _) = start(&pki, "alpha", "beta", alpha_net()).await;
    let took = wait_for("beta hears the new alpha", PATIENCE, || {
        beta.peer_boot_id() == Some(alpha.boot_id())
    })
    .await;
    eprintln!("dialling node restarted cleanly: heard again after {took:?}");
    relay.cut();
    alpha.shutdown().await;
    drop(alpha);
    let (alpha, _) = start(&pki, "alpha", "beta", alpha_net()).await;
    relay.restore();
    let took = wait_for("beta hears the new alpha", PATIENCE, || {
        beta.peer_boot_id() == Some(alpha.boot_id())
    })
    .await;
    eprintln!("dialling node replaced silently: heard again after {took:?}");

    wait_for("alpha's network up", PATIENCE, || alpha.networks()[0].up).await;
    assert!(alpha.send("m", b"hello again".to_vec()));
    assert_eq!(
        message(&mut beta_inbox, PATIENCE).await.payload,
        b"hello again"
    );
    alpha.shutdown().await;
    beta.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn invalid_configurations_are_refused_with_the_reason() {
    let pki = Pki::new("test", &["alpha", "beta"]);
    let (a, b, c) = (free_addr(), free_addr(), free_addr());
    let valid = mirrorkit_heartbeat::Config {
        node: "alpha".into(),
        peer: "beta".into(),
        networks: vec![net("n1", a, b)],
        interval_ms: INTERVAL_MS,
    };
    type Change = Box<dyn Fn(&mut mirrorkit_heartbeat::Config)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "the peer is the other node",
            Box::new(|c| c.peer = "alpha".into()),
        ),
        (
            "the identity is node \"alpha\"'s",
            Box::new(|c| {
                c.node = "beta".into();
                c.peer = "alpha".into();
            }),
        ),
        ("interval_ms is 0", Box::new(|c| c.interval_ms = 0)),
        ("interval_ms is 5000", Box::new(|c| c.interval_ms = 5000)),
        ("0 networks given", Box::new(|c| c.networks.clear())),
        (
            "network \"n1\" is given twice",
            Box::new(move |cfg| cfg.networks.push(net("n1", c, b))),
        ),
        (
            "both bind",
            Box::new(move |cfg| cfg.networks.push(net("n2", a, c))),
        ),
        ("has no name", Box::new(|c| c.networks[0].name.clear())),
        ("invalid node name", Box::new(|c| c.peer = "Beta!".into())),
    ];
    for (expected, change) in cases {
        let mut cfg = valid.clone();
        change(&mut cfg);
        let error = mirrorkit_heartbeat::Heartbeat::start(pki.identity("alpha"), cfg)
            .await
            .map(|_| ())
            .expect_err(expected)
            .to_string();
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
    }
    // A port already taken names the network.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut cfg = valid.clone();
    cfg.networks[0].local = taken.local_addr().expect("addr");
    let error = mirrorkit_heartbeat::Heartbeat::start(pki.identity("alpha"), cfg)
        .await
        .map(|_| ())
        .expect_err("port taken")
        .to_string();
    assert!(error.contains("network \"n1\""), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_lost_on_the_way_are_counted_as_missed() {
    init_logs();
    let pki = Pki::new("test", &["alpha", "beta"]);
    let (a, b) = (free_addr(), free_addr());
    let relay = Relay::start(a, b).await;
    let (alpha, _alpha_inbox) =
        start(&pki, "alpha", "beta", vec![net("n1", a, relay.a_facing)]).await;
    let (beta, _beta_inbox) =
        start(&pki, "beta", "alpha", vec![net("n1", b, relay.b_facing)]).await;
    let up = |hb: &mirrorkit_heartbeat::Heartbeat| hb.networks()[0].up;
    wait_for("the network up", PATIENCE, || up(&alpha) && up(&beta)).await;
    // Some beats on one connection, none lost on loopback.
    let counted = |hb: &mirrorkit_heartbeat::Heartbeat| {
        let n = &hb.networks()[0];
        (n.received, n.missed)
    };
    wait_for("a few heartbeats", PATIENCE, || counted(&alpha).0 >= 5).await;
    assert_eq!(counted(&alpha).1, 0, "nothing lost on loopback");

    // A cut shorter than the silence that closes a connection: the same connection goes on,
    // and the beats sent meanwhile are missed.
    let before = counted(&alpha);
    relay.cut();
    tokio::time::sleep(ms(3 * INTERVAL_MS)).await;
    relay.restore();
    wait_for("beats again", PATIENCE, || counted(&alpha).0 > before.0 + 2).await;
    let (received, missed) = counted(&alpha);
    assert!(
        (2..=6).contains(&missed),
        "{missed} beats missed in a cut of 3 intervals (received {received})"
    );
    assert!(alpha.networks()[0].rtt_us.is_some());
    alpha.shutdown().await;
    beta.shutdown().await;
}
