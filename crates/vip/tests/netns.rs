//! The crate against the real kernel, in network namespaces built per test: needs root and
//! `ip netns` (skipped with a reason otherwise, but failing when `CI` is set).

mod support;

use std::time::{Duration, Instant};

use mirrorkit_vip::{
    announce, is_held, release, take, VipError, VipSpec, ANNOUNCE_REPEAT_COUNT,
    ANNOUNCE_REPEAT_INTERVAL_MS,
};
use support::{eventually, Netns, Pair, NODE_MAC, PEER_MAC};

fn spec(addr: &str, prefix_len: u8, interface: &str) -> VipSpec {
    VipSpec {
        addr: addr.parse().unwrap(),
        prefix_len,
        interface: interface.into(),
    }
}

/// The lines of `ip -o addr show dev <interface>` that list `addr_with_prefix`.
fn listed(ns: &Netns, interface: &str, addr_with_prefix: &str) -> Vec<String> {
    ns.ip(&["-o", "addr", "show", "dev", interface])
        .lines()
        .filter(|line| line.split_whitespace().any(|w| w == addr_with_prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn take_and_release_are_idempotent_and_seen_by_ip() {
    if !support::netns_available("take_and_release_are_idempotent_and_seen_by_ip") {
        return;
    }
    let pair = Pair::new();
    let vip = spec("10.77.0.80", 24, "vip0");

    pair.node.run(|| take(&vip)).unwrap();
    assert_eq!(listed(&pair.node, "vip0", "10.77.0.80/24").len(), 1);
    assert!(pair.node.run(|| is_held(&vip)).unwrap());

    pair.node.run(|| take(&vip)).unwrap();
    assert_eq!(listed(&pair.node, "vip0", "10.77.0.80/24").len(), 1);

    pair.node.run(|| release(&vip)).unwrap();
    assert!(listed(&pair.node, "vip0", "10.77.0.80/24").is_empty());
    assert!(!pair.node.run(|| is_held(&vip)).unwrap());
    pair.node.run(|| release(&vip)).unwrap();
    // The interface's own address was never touched.
    assert_eq!(listed(&pair.node, "vip0", "10.77.0.1/24").len(), 1);
}

#[test]
fn gratuitous_arp_reaches_the_peer() {
    if !support::netns_available("gratuitous_arp_reaches_the_peer") {
        return;
    }
    let pair = Pair::new();
    // Linux learns from unsolicited ARP only when asked to.
    pair.peer.sysctl("net.ipv4.conf.peer0.arp_accept", "1");
    assert_eq!(pair.peer.neighbour("10.77.0.80", "peer0"), None);

    pair.node
        .run(|| take(&spec("10.77.0.80", 24, "vip0")))
        .unwrap();
    eventually("the peer to learn the virtual IP's MAC", || {
        match pair.peer.neighbour("10.77.0.80", "peer0") {
            Some(mac) if mac == NODE_MAC => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

#[test]
fn announcements_are_well_formed_and_repeated() {
    if !support::netns_available("announcements_are_well_formed_and_repeated") {
        return;
    }
    let pair = Pair::new();
    let capture = pair.peer.run(|| support::arp_capture("peer0"));
    let started = Instant::now();
    pair.node
        .run(|| take(&spec("10.77.0.80", 24, "vip0")))
        .unwrap();

    let rounds = 1 + ANNOUNCE_REPEAT_COUNT as usize;
    let node_mac: Vec<u8> = NODE_MAC
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let vip = [10, 77, 0, 80];
    let (mut requests, mut replies) = (Vec::new(), Vec::new());
    // All rounds are due after (rounds - 1) intervals; then one more interval shows there is no
    // extra round.
    let deadline = started
        + Duration::from_millis(ANNOUNCE_REPEAT_INTERVAL_MS * rounds as u64)
        + Duration::from_millis(support::SETTLE_TIMEOUT_MS);
    let mut quiet_from = None;
    while let Some((frame, at)) = support::next_frame(&capture, quiet_from.unwrap_or(deadline)) {
        assert!(frame.len() >= 14 + 28, "short frame {frame:02x?}");
        let (eth, arp) = frame.split_at(14);
        if arp[14..18] != vip {
            continue; // the peer's own ARP traffic, if any
        }
        assert_eq!(&eth[0..6], &[0xff; 6], "to broadcast");
        assert_eq!(&eth[6..12], &node_mac[..], "from the node's MAC");
        assert_eq!(&eth[12..14], &[0x08, 0x06]);
        assert_eq!(&arp[0..6], &[0, 1, 8, 0, 6, 4]);
        assert_eq!(&arp[8..14], &node_mac[..], "sender MAC");
        assert_eq!(&arp[24..28], &vip, "target IP = sender IP");
        match arp[7] {
            1 => {
                assert_eq!(&arp[18..24], &[0; 6], "request: target MAC zero");
                requests.push(at);
            }
            2 => {
                assert_eq!(
                    &arp[18..24],
                    &node_mac[..],
                    "reply: target MAC = sender MAC"
                );
                replies.push(at);
            }
            op => panic!("ARP operation {op}"),
        }
        if requests.len() == rounds && replies.len() == rounds && quiet_from.is_none() {
            quiet_from =
                Some(Instant::now() + Duration::from_millis(ANNOUNCE_REPEAT_INTERVAL_MS + 50));
        }
    }
    // Arrival times (the kernel's) relative to the first announcement.
    let relative = |times: &[Duration]| -> Vec<Duration> {
        let first = times.first().copied().unwrap_or_default();
        times.iter().map(|t| t.saturating_sub(first)).collect()
    };
    let (requests, replies) = (relative(&requests), relative(&replies));
    assert_eq!(requests.len(), rounds, "requests at {requests:?}");
    assert_eq!(replies.len(), rounds, "replies at {replies:?}");
    // Repeats are spaced, not sent in a burst (half the interval: delivery has jitter under load).
    for pair in requests.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(ANNOUNCE_REPEAT_INTERVAL_MS / 2),
            "requests at {requests:?}"
        );
    }
}

#[test]
fn the_client_follows_the_vip_from_one_node_to_the_other() {
    if !support::netns_available("the_client_follows_the_vip_from_one_node_to_the_other") {
        return;
    }
    // Two nodes and a client on one Ethernet segment: a bridge in the client's namespace.
    let (a, b, client) = (Netns::new(), Netns::new(), Netns::new());
    const A_MAC: &str = "02:00:00:00:01:0a";
    const B_MAC: &str = "02:00:00:00:01:0b";
    support::veth(&a, "eth0", A_MAC, &client, "to-a", "02:00:00:00:01:1a");
    support::veth(&b, "eth0", B_MAC, &client, "to-b", "02:00:00:00:01:1b");
    client.ip(&["link", "add", "br0", "type", "bridge", "forward_delay", "0"]);
    for port in ["to-a", "to-b"] {
        client.ip(&["link", "set", port, "master", "br0"]);
    }
    client.ip(&["link", "set", "br0", "up"]);
    client.ip(&["addr", "add", "10.77.0.10/24", "dev", "br0"]);
    client.sysctl("net.ipv4.conf.br0.arp_accept", "1");
    a.ip(&["addr", "add", "10.77.0.1/24", "dev", "eth0"]);
    b.ip(&["addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    for (ns, interface) in [
        (&a, "eth0"),
        (&b, "eth0"),
        (&client, "to-a"),
        (&client, "to-b"),
        (&client, "br0"),
    ] {
        ns.wait_up(interface);
    }
    let vip = spec("10.77.0.80", 24, "eth0");
    let client_sees = |want: &str| {
        eventually(
            &format!("the client to map the virtual IP to {want}"),
            || match client.neighbour("10.77.0.80", "br0") {
                Some(mac) if mac == want => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
    };

    a.run(|| take(&vip)).unwrap();
    client_sees(A_MAC);

    a.run(|| release(&vip)).unwrap();
    b.run(|| take(&vip)).unwrap();
    client_sees(B_MAC);
    assert!(!a.run(|| is_held(&vip)).unwrap());
    assert!(b.run(|| is_held(&vip)).unwrap());
}

#[test]
fn ipv6_is_added_without_dad_and_announced() {
    if !support::netns_available("ipv6_is_added_without_dad_and_announced") {
        return;
    }
    let pair = Pair::new();
    // The peer has a stale entry for the address, as a client of the previous primary would:
    // the unsolicited advertisement's override flag must replace it.
    pair.peer.ip(&[
        "-6",
        "neigh",
        "replace",
        "2001:db8::80",
        "lladdr",
        PEER_MAC,
        "dev",
        "peer0",
        "nud",
        "stale",
    ]);
    let vip = spec("2001:db8::80", 64, "vip0");

    pair.node.run(|| take(&vip)).unwrap();
    let lines = listed(&pair.node, "vip0", "2001:db8::80/64");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(!lines[0].contains("tentative"), "{lines:?}");
    assert!(pair.node.run(|| is_held(&vip)).unwrap());
    eventually(
        "the peer to map the virtual IP to the node's MAC",
        || match pair.peer.neighbour("2001:db8::80", "peer0") {
            Some(mac) if mac == NODE_MAC => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    pair.node.run(|| take(&vip)).unwrap();
    pair.node.run(|| release(&vip)).unwrap();
    assert!(listed(&pair.node, "vip0", "2001:db8::80/64").is_empty());
    assert!(!pair.node.run(|| is_held(&vip)).unwrap());
    pair.node.run(|| release(&vip)).unwrap();
}

#[test]
fn loopback_is_taken_without_announcement() {
    if !support::netns_available("loopback_is_taken_without_announcement") {
        return;
    }
    let ns = Netns::new();
    let vip = spec("192.0.2.1", 32, "lo");
    ns.run(|| take(&vip)).unwrap();
    assert_eq!(listed(&ns, "lo", "192.0.2.1/32").len(), 1);
    ns.run(|| announce(&vip)).unwrap();
    ns.run(|| release(&vip)).unwrap();
    assert!(listed(&ns, "lo", "192.0.2.1/32").is_empty());
}

#[test]
fn another_prefix_length_is_a_conflict_left_alone() {
    if !support::netns_available("another_prefix_length_is_a_conflict_left_alone") {
        return;
    }
    let pair = Pair::new();
    pair.node
        .ip(&["addr", "add", "10.77.0.80/32", "dev", "vip0"]);
    pair.node
        .ip(&["addr", "add", "2001:db8::80/128", "dev", "vip0", "nodad"]);
    for (addr, prefix_len, held) in [
        ("10.77.0.80", 24, "10.77.0.80/32"),
        ("2001:db8::80", 64, "2001:db8::80/128"),
    ] {
        let vip = spec(addr, prefix_len, "vip0");
        let e = pair.node.run(|| take(&vip)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, VipError::AddressConflict { .. }), "{text}");
        assert!(
            text.contains(&format!("`ip addr del {held} dev vip0`")),
            "{text}"
        );
        assert!(!pair.node.run(|| is_held(&vip)).unwrap());
        pair.node.run(|| release(&vip)).unwrap();
        assert_eq!(
            listed(&pair.node, "vip0", held).len(),
            1,
            "{held} left alone"
        );
    }
}

#[test]
fn without_network_capabilities_permission_is_denied() {
    if !support::netns_available("without_network_capabilities_permission_is_denied") {
        return;
    }
    let pair = Pair::new();
    let vip = spec("10.77.0.80", 24, "vip0");
    let (took, released, announced, held) = pair.node.run(|| {
        support::drop_network_capabilities();
        (take(&vip), release(&vip), announce(&vip), is_held(&vip))
    });
    for (call, result) in [
        ("take", took),
        ("release", released),
        ("announce", announced),
    ] {
        let e = result.expect_err(call);
        let text = e.to_string();
        assert!(
            matches!(e, VipError::PermissionDenied { .. }),
            "{call}: {text}"
        );
        assert!(text.contains("CAP_NET_ADMIN"), "{call}: {text}");
        assert!(text.contains("10.77.0.80/24 on vip0"), "{call}: {text}");
    }
    assert!(!held.unwrap(), "listing needs no privilege");
    assert!(listed(&pair.node, "vip0", "10.77.0.80/24").is_empty());
}
