use super::*;

const EEXIST: i32 = 17;
const EPERM: i32 = 1;

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse().unwrap())
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse().unwrap())
}

fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&((ATTR_HDR_BYTES + value.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(value);
    a.resize(align4(a.len()), 0);
    a
}

fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((NLMSG_HDR_BYTES + payload.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&4242u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m.resize(align4(m.len()), 0);
    m
}

/// An `NLMSG_ERROR` as the kernel sends it with capped acks, extended-ack attributes appended.
fn error_message(seq: u32, code: i32, tlvs: &[u8]) -> Vec<u8> {
    let mut payload = code.to_ne_bytes().to_vec();
    payload.extend_from_slice(&message(RTM_NEWADDR, NLM_F_REQUEST, seq, &[])); // echoed header
    payload.extend_from_slice(tlvs);
    let flags = if tlvs.is_empty() {
        NLM_F_CAPPED
    } else {
        NLM_F_CAPPED | NLM_F_ACK_TLVS
    };
    message(NLMSG_ERROR, flags, seq, &payload)
}

fn addr_entry_message(
    seq: u32,
    flags: u16,
    family: u8,
    prefix_len: u8,
    ifindex: u32,
    attrs: &[Vec<u8>],
) -> Vec<u8> {
    let mut payload = vec![family, prefix_len, 0, 0];
    payload.extend_from_slice(&ifindex.to_ne_bytes());
    for a in attrs {
        payload.extend_from_slice(a);
    }
    message(RTM_NEWADDR, NLM_F_MULTI | flags, seq, &payload)
}

const NLM_F_MULTI: u16 = 0x2;

fn done(seq: u32, code: i32) -> Vec<u8> {
    message(NLMSG_DONE, NLM_F_MULTI, seq, &code.to_ne_bytes())
}

#[test]
fn ipv4_add_request_is_laid_out_as_the_kernel_expects() {
    let m = encode_addr_change(AddrChange::Add, 7, 3, &v4("192.0.2.80"), 24);
    let mut expected = Vec::new();
    expected.extend_from_slice(&40u32.to_ne_bytes());
    expected.extend_from_slice(&RTM_NEWADDR.to_ne_bytes());
    expected.extend_from_slice(&(0x1u16 | 0x4 | 0x400 | 0x200).to_ne_bytes());
    expected.extend_from_slice(&7u32.to_ne_bytes());
    expected.extend_from_slice(&0u32.to_ne_bytes());
    expected.extend_from_slice(&[AF_INET, 24, 0, 0]);
    expected.extend_from_slice(&3u32.to_ne_bytes());
    expected.extend_from_slice(&attr(IFA_LOCAL, &[192, 0, 2, 80]));
    expected.extend_from_slice(&attr(IFA_ADDRESS, &[192, 0, 2, 80]));
    assert_eq!(m, expected);
}

#[test]
fn ipv6_add_skips_dad_and_remove_only_asks_for_an_ack() {
    let addr = v6("2001:db8::80");
    let add = encode_addr_change(AddrChange::Add, 1, 9, &addr, 64);
    assert_eq!(add.len(), NLMSG_HDR_BYTES + IFADDRMSG_BYTES + 2 * 20);
    assert_eq!(&add[16..20], &[AF_INET6, 64, IFA_F_NODAD, 0]);
    let remove = encode_addr_change(AddrChange::Remove, 2, 9, &addr, 64);
    assert_eq!(u16_at(&remove, 4), Some(RTM_DELADDR));
    assert_eq!(u16_at(&remove, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
    assert_eq!(&remove[16..20], &[AF_INET6, 64, 0, 0]);
    assert_eq!(&remove[28..44], &addr_octets(&addr));
    // Our own requests parse back as well-formed messages.
    for m in [&add, &remove] {
        let parsed: Vec<_> = messages(m).collect();
        assert_eq!(parsed.len(), 1);
        assert!(parsed[0].is_ok());
    }
}

fn addr_octets(addr: &IpAddr) -> Vec<u8> {
    octets(addr)
}

#[test]
fn dump_request_asks_for_one_family() {
    let m = encode_addr_dump(5, AF_INET6);
    assert_eq!(m.len(), NLMSG_HDR_BYTES + IFADDRMSG_BYTES);
    assert_eq!(u32_at(&m, 0), Some(24));
    assert_eq!(u16_at(&m, 4), Some(RTM_GETADDR));
    assert_eq!(u16_at(&m, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
    assert_eq!(u32_at(&m, 8), Some(5));
    assert_eq!(m[16], AF_INET6);
}

#[test]
fn ack_and_errors_are_read() {
    assert_eq!(scan_ack(&error_message(3, 0, &[]), 3), Ok(Some(Ok(()))));
    assert_eq!(
        scan_ack(&error_message(3, -EEXIST, &[]), 3),
        Ok(Some(Err(KernelError {
            errno: EEXIST,
            message: None
        })))
    );
    let tlvs = attr(NLMSGERR_ATTR_MSG, b"Invalid prefix length\0");
    assert_eq!(
        scan_ack(&error_message(3, -EPERM, &tlvs), 3),
        Ok(Some(Err(KernelError {
            errno: EPERM,
            message: Some("Invalid prefix length".into())
        })))
    );
}

#[test]
fn extended_ack_after_an_uncapped_echo_is_found() {
    let request = encode_addr_change(AddrChange::Add, 4, 2, &v4("192.0.2.1"), 24);
    let mut payload = (-EEXIST).to_ne_bytes().to_vec();
    payload.extend_from_slice(&request);
    payload.extend_from_slice(&attr(NLMSGERR_ATTR_MSG, b"exists\0"));
    let m = message(NLMSG_ERROR, NLM_F_ACK_TLVS, 4, &payload);
    assert_eq!(
        scan_ack(&m, 4),
        Ok(Some(Err(KernelError {
            errno: EEXIST,
            message: Some("exists".into())
        })))
    );
}

#[test]
fn odd_extended_ack_still_reports_the_errno() {
    // TLV flag set but the attribute area is garbage, or the echoed length points past the end.
    let mut payload = (-EPERM).to_ne_bytes().to_vec();
    payload.extend_from_slice(&message(RTM_NEWADDR, 0, 1, &[]));
    payload.extend_from_slice(&[0xff, 0xff, 1, 0, 9]);
    let m = message(NLMSG_ERROR, NLM_F_ACK_TLVS | NLM_F_CAPPED, 1, &payload);
    assert_eq!(
        scan_ack(&m, 1),
        Ok(Some(Err(KernelError {
            errno: EPERM,
            message: None
        })))
    );
    let mut payload = (-EPERM).to_ne_bytes().to_vec();
    payload.extend_from_slice(&10_000u32.to_ne_bytes());
    payload.extend_from_slice(&[0; 12]);
    let m = message(NLMSG_ERROR, NLM_F_ACK_TLVS, 1, &payload);
    assert_eq!(
        scan_ack(&m, 1),
        Ok(Some(Err(KernelError {
            errno: EPERM,
            message: None
        })))
    );
}

#[test]
fn impossible_error_codes_are_malformed() {
    assert_eq!(
        scan_ack(&error_message(1, 5, &[]), 1),
        Err(Malformed::BadErrorCode(5))
    );
    assert_eq!(
        scan_ack(&error_message(1, i32::MIN, &[]), 1),
        Err(Malformed::BadErrorCode(i32::MIN))
    );
    let short = message(NLMSG_ERROR, 0, 1, &[0, 0]);
    assert!(matches!(
        scan_ack(&short, 1),
        Err(Malformed::ShortPayload { .. })
    ));
}

#[test]
fn acks_of_other_requests_and_noops_are_skipped() {
    let mut datagram = error_message(2, -EEXIST, &[]);
    datagram.extend_from_slice(&message(NLMSG_NOOP, 0, 3, &[]));
    assert_eq!(scan_ack(&datagram, 3), Ok(None));
    datagram.extend_from_slice(&error_message(3, 0, &[]));
    assert_eq!(scan_ack(&datagram, 3), Ok(Some(Ok(()))));
    assert_eq!(
        scan_ack(&message(RTM_NEWADDR, 0, 3, &[]), 3),
        Err(Malformed::UnexpectedType(RTM_NEWADDR))
    );
    assert_eq!(
        scan_ack(&message(NLMSG_OVERRUN, 0, 3, &[]), 3),
        Err(Malformed::Overrun)
    );
}

#[test]
fn a_dump_over_several_datagrams_is_collected_and_judged() {
    let seq = 11;
    let vip = [192, 0, 2, 80];
    let mut first = addr_entry_message(
        seq,
        0,
        AF_INET,
        8,
        1,
        &[
            attr(IFA_ADDRESS, &[127, 0, 0, 1]),
            attr(IFA_LOCAL, &[127, 0, 0, 1]),
        ],
    );
    // A point-to-point entry: IFA_ADDRESS is the peer, IFA_LOCAL ours.
    first.extend_from_slice(&addr_entry_message(
        seq,
        0,
        AF_INET,
        32,
        2,
        &[
            attr(IFA_ADDRESS, &[10, 9, 9, 9]),
            attr(IFA_LOCAL, &[10, 0, 0, 1]),
            attr(3, b"ppp0\0"), // IFA_LABEL: ignored
        ],
    ));
    let mut second = addr_entry_message(
        seq,
        0,
        AF_INET,
        24,
        3,
        &[attr(IFA_LOCAL, &vip), attr(IFA_ADDRESS, &vip)],
    );
    // An IPv6 entry has only IFA_ADDRESS.
    second.extend_from_slice(&addr_entry_message(
        seq,
        0,
        AF_INET6,
        64,
        3,
        &[attr(IFA_ADDRESS, &v6_octets("2001:db8::80"))],
    ));
    second.extend_from_slice(&done(seq, 0));

    let mut dump = AddrDump::new(seq);
    assert_eq!(dump.feed(&first), Ok(false));
    assert_eq!(dump.feed(&second), Ok(true));
    let (entries, interrupted) = dump.finish();
    assert!(!interrupted);
    assert_eq!(
        entries,
        vec![
            AddrEntry {
                ifindex: 1,
                prefix_len: 8,
                addr: v4("127.0.0.1")
            },
            AddrEntry {
                ifindex: 2,
                prefix_len: 32,
                addr: v4("10.0.0.1")
            },
            AddrEntry {
                ifindex: 3,
                prefix_len: 24,
                addr: v4("192.0.2.80")
            },
            AddrEntry {
                ifindex: 3,
                prefix_len: 64,
                addr: v6("2001:db8::80")
            },
        ]
    );
    let vip = v4("192.0.2.80");
    assert_eq!(holding(&entries, 3, &vip, 24), Holding::Held);
    assert_eq!(holding(&entries, 3, &vip, 32), Holding::HeldAsPrefix(24));
    assert_eq!(holding(&entries, 4, &vip, 24), Holding::Absent);
    assert_eq!(holding(&entries, 3, &v6("2001:db8::80"), 64), Holding::Held);
    assert_eq!(holding(&entries, 2, &v4("10.9.9.9"), 32), Holding::Absent);
}

fn v6_octets(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

#[test]
fn holding_prefers_the_wanted_prefix_among_several() {
    let entries = [
        AddrEntry {
            ifindex: 3,
            prefix_len: 32,
            addr: v4("192.0.2.80"),
        },
        AddrEntry {
            ifindex: 3,
            prefix_len: 24,
            addr: v4("192.0.2.80"),
        },
    ];
    assert_eq!(holding(&entries, 3, &v4("192.0.2.80"), 24), Holding::Held);
    assert_eq!(
        holding(&entries, 3, &v4("192.0.2.80"), 16),
        Holding::HeldAsPrefix(32)
    );
}

#[test]
fn dump_flags_interruptions_and_errors() {
    let mut dump = AddrDump::new(1);
    let entry = addr_entry_message(
        1,
        NLM_F_DUMP_INTR,
        AF_INET,
        24,
        3,
        &[attr(IFA_LOCAL, &[1, 2, 3, 4])],
    );
    assert_eq!(dump.feed(&entry), Ok(false));
    assert_eq!(dump.feed(&done(1, 0)), Ok(true));
    assert!(dump.finish().1);

    let mut dump = AddrDump::new(1);
    assert_eq!(
        dump.feed(&done(1, -EPERM)),
        Err(ReplyError::Kernel(KernelError {
            errno: EPERM,
            message: None
        }))
    );
    let mut dump = AddrDump::new(1);
    assert_eq!(
        dump.feed(&error_message(1, -EPERM, &[])),
        Err(ReplyError::Kernel(KernelError {
            errno: EPERM,
            message: None
        }))
    );
    // Entries of other families are skipped; entries of another dump are ignored.
    let mut dump = AddrDump::new(1);
    let mut datagram = addr_entry_message(1, 0, 17, 0, 3, &[attr(IFA_LOCAL, &[1, 2, 3, 4])]);
    datagram.extend_from_slice(&addr_entry_message(
        2,
        0,
        AF_INET,
        24,
        3,
        &[attr(IFA_LOCAL, &[1, 2, 3, 4])],
    ));
    datagram.extend_from_slice(&done(1, 0));
    assert_eq!(dump.feed(&datagram), Ok(true));
    assert!(dump.finish().0.is_empty());
}

#[test]
fn bad_lengths_are_malformed_not_panics() {
    // Declared length shorter than a header, longer than the datagram, datagram shorter than a
    // header.
    let mut m = done(1, 0);
    m[..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(matches!(
        AddrDump::new(1).feed(&m),
        Err(ReplyError::Malformed(Malformed::BadMessageLength {
            declared: 8,
            ..
        }))
    ));
    let mut m = done(1, 0);
    m[..4].copy_from_slice(&100u32.to_ne_bytes());
    assert!(matches!(
        scan_ack(&m, 1),
        Err(Malformed::BadMessageLength { declared: 100, .. })
    ));
    assert_eq!(
        scan_ack(&[1, 2, 3], 1),
        Err(Malformed::ShortHeader { remaining: 3 })
    );
    // An attribute shorter than its header, longer than what remains, an address of the wrong
    // size, an entry shorter than ifaddrmsg.
    for bad_attr in [
        vec![2u8, 0, 2, 0],
        vec![40u8, 0, 2, 0, 1, 2, 3, 4],
        attr(IFA_LOCAL, &[1, 2, 3]),
    ] {
        let m = addr_entry_message(1, 0, AF_INET, 24, 3, &[bad_attr]);
        assert!(matches!(
            AddrDump::new(1).feed(&m),
            Err(ReplyError::Malformed(
                Malformed::BadAttributeLength { .. } | Malformed::BadAddressLength { .. }
            ))
        ));
    }
    let m = message(RTM_NEWADDR, 0, 1, &[AF_INET, 24]);
    assert!(matches!(
        AddrDump::new(1).feed(&m),
        Err(ReplyError::Malformed(Malformed::ShortPayload { .. }))
    ));
}

#[test]
fn every_truncation_of_valid_replies_is_handled() {
    let mut dump = addr_entry_message(
        1,
        0,
        AF_INET,
        24,
        3,
        &[
            attr(IFA_LOCAL, &[192, 0, 2, 80]),
            attr(IFA_ADDRESS, &[192, 0, 2, 80]),
        ],
    );
    dump.extend_from_slice(&done(1, 0));
    let ack = error_message(1, -EEXIST, &attr(NLMSGERR_ATTR_MSG, b"exists\0"));
    for datagram in [&dump, &ack] {
        for cut in 0..datagram.len() {
            let part = &datagram[..cut];
            let _ = scan_ack(part, 1);
            let _ = AddrDump::new(1).feed(part);
            let _ = messages(part).count();
        }
    }
    // A dump cut inside its first message is an error, never a success with a wrong answer.
    for cut in 1..NLMSG_HDR_BYTES + 12 {
        assert!(AddrDump::new(1).feed(&dump[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn garbage_never_panics() {
    // A small deterministic generator: the same garbage on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 96) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Make many of them look plausible enough to reach the inner parsers.
        if buf.len() >= 16 && next() % 2 == 0 {
            let declared = (16 + next() % (buf.len() as u64 - 15)) as u32;
            buf[..4].copy_from_slice(&declared.to_ne_bytes());
            let kind = [NLMSG_ERROR, NLMSG_DONE, RTM_NEWADDR, NLMSG_NOOP][(next() % 4) as usize];
            buf[4..6].copy_from_slice(&kind.to_ne_bytes());
            buf[8..12].copy_from_slice(&1u32.to_ne_bytes());
            if kind == RTM_NEWADDR && buf.len() > 16 {
                buf[16] = [AF_INET, AF_INET6][(next() % 2) as usize];
            }
        }
        let _ = scan_ack(&buf, 1);
        let mut dump = AddrDump::new(1);
        let _ = dump.feed(&buf);
        let _ = dump.finish();
    }
}
