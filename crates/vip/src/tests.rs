use super::*;

fn spec(addr: &str, prefix_len: u8, interface: &str) -> VipSpec {
    VipSpec {
        addr: addr.parse().unwrap(),
        prefix_len,
        interface: interface.into(),
    }
}

#[test]
fn display_names_address_prefix_and_interface() {
    assert_eq!(
        spec("192.0.2.80", 24, "eth0").to_string(),
        "192.0.2.80/24 on eth0"
    );
    assert_eq!(
        spec("2001:db8::80", 64, "bond0").to_string(),
        "2001:db8::80/64 on bond0"
    );
}

#[test]
fn validate_accepts_usable_specs() {
    for s in [
        spec("192.0.2.80", 24, "eth0"),
        spec("192.0.2.80", 32, "enp0s31f6"),
        spec("2001:db8::80", 128, "br-lan.100"),
        spec("10.0.0.1", 0, "abcdefghijklmno"),
    ] {
        s.validate().unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

#[test]
fn validate_refuses_unusable_specs_with_the_reason() {
    for (s, reason) in [
        (spec("192.0.2.80", 33, "eth0"), "/33 exceeds /32"),
        (spec("2001:db8::80", 129, "eth0"), "/129 exceeds /128"),
        (spec("0.0.0.0", 24, "eth0"), "not a unicast address"),
        (spec("::", 64, "eth0"), "not a unicast address"),
        (spec("224.0.0.1", 24, "eth0"), "not a unicast address"),
        (spec("ff02::1", 64, "eth0"), "not a unicast address"),
        (spec("255.255.255.255", 32, "eth0"), "broadcast"),
        (spec("192.0.2.80", 24, ""), "empty"),
        (spec("192.0.2.80", 24, "abcdefghijklmnop"), "longer than 15"),
        (spec("192.0.2.80", 24, "eth 0"), "white space"),
        (spec("192.0.2.80", 24, "eth/0"), "'/'"),
        (spec("192.0.2.80", 24, "eth\0"), "NUL"),
    ] {
        let e = s.validate().expect_err(&s.to_string());
        let text = e.to_string();
        assert!(matches!(e, VipError::InvalidSpec { .. }), "{text}");
        assert!(text.contains(reason), "{text:?} lacks {reason:?}");
        assert!(text.contains(&s.addr.to_string()), "{text}");
        // Invalid specs are refused before any system call.
        assert!(matches!(take(&s), Err(VipError::InvalidSpec { .. })));
        assert!(matches!(release(&s), Err(VipError::InvalidSpec { .. })));
        assert!(matches!(is_held(&s), Err(VipError::InvalidSpec { .. })));
        assert!(matches!(announce(&s), Err(VipError::InvalidSpec { .. })));
    }
}

#[test]
fn unknown_interface_is_an_error_naming_it() {
    // if_nametoindex needs no privilege: this runs anywhere.
    let s = spec("192.0.2.80", 24, "mkvip-nosuch0");
    let results = [
        ("take", take(&s)),
        ("release", release(&s)),
        ("is_held", is_held(&s).map(drop)),
        ("announce", announce(&s)),
    ];
    for (call, result) in results {
        let e = result.expect_err(call);
        let text = e.to_string();
        assert!(
            matches!(e, VipError::InterfaceMissing { .. }),
            "{call}: {text}"
        );
        assert!(
            text.contains("interface mkvip-nosuch0 does not exist"),
            "{call}: {text}"
        );
        assert!(text.contains("192.0.2.80/24"), "{call}: {text}");
        assert_eq!(e.spec(), &s);
    }
}

#[test]
fn every_error_names_the_address_the_interface_and_what_to_check() {
    let s = spec("192.0.2.80", 24, "eth7");
    let errno = |n| io::Error::from_raw_os_error(n);
    let errors = [
        VipError::InvalidSpec {
            spec: s.clone(),
            reason: "why".into(),
        },
        VipError::InterfaceMissing { spec: s.clone() },
        VipError::PermissionDenied {
            spec: s.clone(),
            action: VipAction::Take,
            source: errno(libc::EPERM),
        },
        VipError::AddressConflict {
            spec: s.clone(),
            held_prefix_len: 32,
        },
        VipError::Kernel {
            spec: s.clone(),
            action: VipAction::Release,
            source: errno(libc::EINVAL),
            detail: Some("Invalid prefix length".into()),
        },
        VipError::System {
            spec: s.clone(),
            action: VipAction::Announce,
            call: "sendto(AF_PACKET)",
            source: errno(libc::ENETDOWN),
        },
        VipError::Timeout {
            spec: s.clone(),
            action: VipAction::Check,
            timeout_ms: NETLINK_REPLY_TIMEOUT_MS,
        },
        VipError::Protocol {
            spec: s.clone(),
            action: VipAction::Check,
            reason: "odd".into(),
        },
    ];
    for e in errors {
        let text = e.to_string();
        assert!(text.contains("192.0.2.80/24 on eth7"), "{text}");
        assert!(
            ["fix", "check", "remove", "must run as root"]
                .iter()
                .any(|hint| text.contains(hint)),
            "no advice in {text:?}"
        );
    }
    let conflict = VipError::AddressConflict {
        spec: s.clone(),
        held_prefix_len: 32,
    };
    assert!(conflict
        .to_string()
        .contains("`ip addr del 192.0.2.80/32 dev eth7`"));
    let kernel = VipError::Kernel {
        spec: s.clone(),
        action: VipAction::Take,
        source: errno(libc::EINVAL),
        detail: Some("Invalid prefix length".into()),
    };
    let text = kernel.to_string();
    assert!(
        text.contains(
            "refused adding the address: Invalid argument (os error 22) (Invalid prefix length)"
        ),
        "{text}"
    );
    let denied = nl_error(
        &s,
        VipAction::Take,
        NlError::Kernel(netlink::KernelError {
            errno: libc::EPERM,
            message: None,
        }),
    );
    assert!(denied.to_string().contains("CAP_NET_ADMIN"), "{denied}");
}
