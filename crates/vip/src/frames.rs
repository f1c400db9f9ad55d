//! The announcements of an address, built without I/O: gratuitous ARP for IPv4 (RFC 5227 §3,
//! "ARP announcement"), unsolicited neighbour advertisement for IPv6 (RFC 4861 §7.2.6).
//!
//! Each frame is the payload of an Ethernet frame; the kernel adds the Ethernet header (source:
//! the interface's MAC) when it is sent on an `AF_PACKET` `SOCK_DGRAM` socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) type Mac = [u8; 6];

pub(crate) const ETH_P_ARP: u16 = 0x0806;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const BROADCAST_MAC: Mac = [0xff; 6];
/// The Ethernet address of ff02::1, all nodes (RFC 2464 §7: 33:33 + the low 32 bits).
pub(crate) const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
pub(crate) const ARP_BYTES: usize = 28;

const IPV6_HEADER_BYTES: usize = 40;
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// Neighbour advertisement: type, code, checksum, flags, target, one 8-byte option.
const NA_BYTES: usize = 4 + 4 + 16 + 8;
pub(crate) const NA_FRAME_BYTES: usize = IPV6_HEADER_BYTES + NA_BYTES;
/// The override flag: receivers replace the link-layer address they have cached.
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LINK_LAYER_ADDRESS: u8 = 2;
/// Receivers drop neighbour discovery messages that crossed a router.
const ND_HOP_LIMIT: u8 = 255;

/// One frame to send: its EtherType, Ethernet destination and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub ethertype: u16,
    pub dst_mac: Mac,
    pub payload: Vec<u8>,
}

/// The frames that announce `addr` at `mac`.
///
/// IPv4: an ARP request and an ARP reply, both with sender IP = target IP = the address, to
/// broadcast. The request is the RFC 5227 form (target MAC zero); the reply form (target MAC =
/// sender MAC, as Linux requires to treat a reply as gratuitous) is for the devices that only
/// learn from replies. IPv6: one unsolicited neighbour advertisement with the override flag, from
/// the address to all nodes.
pub(crate) fn announcement(mac: Mac, addr: &IpAddr) -> Vec<Frame> {
    match addr {
        IpAddr::V4(ip) => vec![
            Frame {
                ethertype: ETH_P_ARP,
                dst_mac: BROADCAST_MAC,
                payload: gratuitous_arp(ARP_REQUEST, mac, *ip).to_vec(),
            },
            Frame {
                ethertype: ETH_P_ARP,
                dst_mac: BROADCAST_MAC,
                payload: gratuitous_arp(ARP_REPLY, mac, *ip).to_vec(),
            },
        ],
        IpAddr::V6(ip) => vec![Frame {
            ethertype: ETH_P_IPV6,
            dst_mac: ALL_NODES_MAC,
            payload: unsolicited_na(mac, *ip).to_vec(),
        }],
    }
}

fn gratuitous_arp(op: u16, mac: Mac, ip: Ipv4Addr) -> [u8; ARP_BYTES] {
    let target_mac = if op == ARP_REPLY { mac } else { [0; 6] };
    let mut p = [0u8; ARP_BYTES];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    p[4] = 6; // hardware address length
    p[5] = 4; // protocol address length
    p[6..8].copy_from_slice(&op.to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    p[18..24].copy_from_slice(&target_mac);
    p[24..28].copy_from_slice(&ip.octets());
    p
}

fn unsolicited_na(mac: Mac, ip: Ipv6Addr) -> [u8; NA_FRAME_BYTES] {
    let mut p = [0u8; NA_FRAME_BYTES];
    p[0] = 0x60; // version 6, traffic class 0, flow label 0
    p[4..6].copy_from_slice(&(NA_BYTES as u16).to_be_bytes());
    p[6] = IPPROTO_ICMPV6;
    p[7] = ND_HOP_LIMIT;
    p[8..24].copy_from_slice(&ip.octets());
    p[24..40].copy_from_slice(&ALL_NODES.octets());
    let na = &mut p[IPV6_HEADER_BYTES..];
    na[0] = ICMPV6_NEIGHBOUR_ADVERTISEMENT;
    // na[1]: code 0; na[2..4]: checksum, below. Not solicited, not a router: override only.
    na[4] = NA_FLAG_OVERRIDE;
    na[8..24].copy_from_slice(&ip.octets());
    na[24] = ND_OPT_TARGET_LINK_LAYER_ADDRESS;
    na[25] = 1; // option length in units of 8 bytes
    na[26..32].copy_from_slice(&mac);
    let checksum = icmpv6_checksum(&ip, &ALL_NODES, na);
    na[2..4].copy_from_slice(&checksum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071) of an ICMPv6 message and its IPv6 pseudo-header (RFC 8200
/// §8.1), computed with the message's checksum field as it is (zero when building).
pub(crate) fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u64::from);
            sum += hi | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(message.len() as u32).to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(message);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn ipv4_announcement_is_a_gratuitous_request_and_reply() {
        let ip: Ipv4Addr = "192.0.2.80".parse().unwrap();
        let frames = announcement(MAC, &IpAddr::V4(ip));
        assert_eq!(frames.len(), 2);
        let request: Vec<u8> = [
            &[0, 1, 8, 0, 6, 4, 0, 1][..],
            &MAC,
            &[192, 0, 2, 80],
            &[0; 6],
            &[192, 0, 2, 80],
        ]
        .concat();
        let reply: Vec<u8> = [
            &[0, 1, 8, 0, 6, 4, 0, 2][..],
            &MAC,
            &[192, 0, 2, 80],
            &MAC,
            &[192, 0, 2, 80],
        ]
        .concat();
        assert_eq!(frames[0].payload, request);
        assert_eq!(frames[1].payload, reply);
        for frame in &frames {
            assert_eq!(frame.ethertype, ETH_P_ARP);
            assert_eq!(frame.dst_mac, BROADCAST_MAC);
        }
    }

    #[test]
    fn ipv6_announcement_is_an_unsolicited_override_advertisement() {
        let ip: Ipv6Addr = "2001:db8::80".parse().unwrap();
        let frames = announcement(MAC, &IpAddr::V6(ip));
        assert_eq!(frames.len(), 1);
        let frame = &frames[0];
        assert_eq!(frame.ethertype, ETH_P_IPV6);
        assert_eq!(frame.dst_mac, ALL_NODES_MAC);
        let p = &frame.payload;
        assert_eq!(p.len(), NA_FRAME_BYTES);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]) as usize, NA_BYTES);
        assert_eq!((p[6], p[7]), (58, 255));
        assert_eq!(&p[8..24], &ip.octets());
        assert_eq!(&p[24..40], &ALL_NODES.octets());
        let na = &p[40..];
        assert_eq!((na[0], na[1]), (136, 0));
        assert_eq!(
            &na[4..8],
            &[0x20, 0, 0, 0],
            "override, not solicited, not router"
        );
        assert_eq!(&na[8..24], &ip.octets());
        assert_eq!(&na[24..26], &[2, 1]);
        assert_eq!(&na[26..32], &MAC);
        // A correct checksum makes the sum over the whole message (checksum included) 0xffff,
        // i.e. the checksum of it is zero.
        assert_eq!(icmpv6_checksum(&ip, &ALL_NODES, na), 0);
    }

    #[test]
    fn checksum_matches_a_hand_computed_value() {
        // Pseudo-header of :: -> :: with length 2 and next header 58, message [0x12, 0x34]:
        // 0x0002 + 0x003a + 0x1234 = 0x1270, complemented.
        let zero = Ipv6Addr::UNSPECIFIED;
        assert_eq!(icmpv6_checksum(&zero, &zero, &[0x12, 0x34]), !0x1270);
        // An odd length is padded with a zero byte: 0x0001 + 0x003a + 0x1200.
        assert_eq!(icmpv6_checksum(&zero, &zero, &[0x12]), !0x123b);
    }
}
