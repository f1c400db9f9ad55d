//! ICMP echo ("ping") for node checkers, IPv4 and IPv6.
//!
//! One echo request per check, then replies are read until the deadline. The daemon runs as
//! root, so a raw ICMP socket is used: it sees every ICMP message reaching this node, so a reply
//! counts only when it comes from the target with our identifier, sequence number and random
//! payload; everything else is ignored. A raw socket also sees the ICMP errors about our request
//! ("host unreachable" from a router), which end the check at once with what they say. Where raw
//! sockets are refused (no CAP_NET_RAW), an unprivileged ICMP datagram socket is tried (allowed
//! by `net.ipv4.ping_group_range`); the kernel then sets the identifier and routes replies, and
//! errors are not seen (the check waits for its timeout).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_TIME_EXCEEDED: u8 = 3;
const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
/// `setsockopt(SOL_RAW, ICMP_FILTER)` (linux/icmp.h): a bit set drops that ICMP type.
const SOL_RAW: libc::c_int = 255;
const ICMP_FILTER: libc::c_int = 1;
/// `setsockopt(IPPROTO_ICMPV6, ICMP6_FILTER)` (linux/icmpv6.h): a bit set drops that type.
const ICMP6_FILTER: libc::c_int = 1;
/// Random bytes after the echo header, to recognise our reply among others.
const PAYLOAD_BYTES: usize = 16;
const ECHO_HEADER_BYTES: usize = 8;
const RECV_BUFFER_BYTES: usize = 4096;
const IPV6_HEADER_BYTES: usize = 40;

static SEQUENCE: AtomicU16 = AtomicU16::new(0);

/// Which ICMP socket [`ping_with`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingSocket {
    /// A raw socket; if it is refused, an unprivileged datagram socket ([`ping`]).
    Auto,
    /// A raw socket only (needs root or CAP_NET_RAW).
    Raw,
    /// An unprivileged ICMP datagram socket only (needs `net.ipv4.ping_group_range`).
    Datagram,
}

/// Send one ICMP echo request to `target`; `Ok` when its reply comes back within `timeout`.
pub async fn ping(target: IpAddr, timeout: Duration) -> Result<(), String> {
    ping_with(target, timeout, PingSocket::Auto).await
}

/// [`ping`] with a choice of socket.
pub async fn ping_with(target: IpAddr, timeout: Duration, how: PingSocket) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let timeout_ms = timeout.as_millis();
    let (fd, raw) = open(target, how)?;
    let via = if raw {
        ""
    } else {
        " (unprivileged ICMP socket)"
    };
    let payload = random_payload();
    let ident = u16::from_be_bytes([payload[0], payload[1]]);
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let request = echo_request(target, ident, seq, &payload);
    send_to(&fd, &request, target)
        .map_err(|e| format!("cannot send an ICMP echo request to {target}: {e}"))?;
    // SAFETY: an OwnedFd is an open descriptor that it alone closes, and its `as_raw_fd` is the
    // same descriptor for as long as the AsyncFd owns it.
    let fd = unsafe { AsyncFd::register(fd) }
        .map_err(|e| format!("cannot wait for ICMP replies from {target}: {e}"))?;
    let expect = Expected {
        target,
        raw,
        ident,
        seq,
        payload,
    };
    let mut buf = [0u8; RECV_BUFFER_BYTES];
    loop {
        let mut ready = match tokio::time::timeout_at(deadline, fd.readable()).await {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => return Err(format!("cannot wait for ICMP replies from {target}: {e}")),
            Err(_) => {
                return Err(format!(
                    "no ICMP echo reply from {target} within {timeout_ms} ms{via}"
                ))
            }
        };
        let received = match ready.try_io(|fd| recv_from(fd.get_ref(), &mut buf)) {
            Ok(received) => received,
            // Not readable after all: the readiness was cleared, wait again.
            Err(_would_block) => continue,
        };
        let (n, from) = match received {
            Ok(r) => r,
            Err(e) => return Err(format!("cannot receive ICMP replies from {target}: {e}")),
        };
        match expect.classify(&buf[..n.min(buf.len())], from) {
            Seen::Reply => return Ok(()),
            Seen::Error(what) => {
                return Err(format!("no ICMP echo reply from {target}: {what}"));
            }
            Seen::Other => {}
        }
    }
}

/// What our request looks like, to recognise what answers it.
struct Expected {
    target: IpAddr,
    raw: bool,
    ident: u16,
    seq: u16,
    payload: [u8; PAYLOAD_BYTES],
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Reply,
    /// An ICMP error about our request, said for humans.
    Error(String),
    /// Someone else's ICMP.
    Other,
}

impl Expected {
    fn classify(&self, packet: &[u8], from: Option<IpAddr>) -> Seen {
        // A raw IPv4 socket delivers the IP header too; the others start at the ICMP header.
        let icmp = if self.raw && self.target.is_ipv4() {
            match ipv4_payload(packet) {
                Some(p) => p,
                None => return Seen::Other,
            }
        } else {
            packet
        };
        if icmp.len() < ECHO_HEADER_BYTES {
            return Seen::Other;
        }
        let (reply, unreachable, exceeded) = match self.target {
            IpAddr::V4(_) => (ICMP_ECHO_REPLY, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED),
            IpAddr::V6(_) => (ICMP6_ECHO_REPLY, ICMP6_DEST_UNREACH, ICMP6_TIME_EXCEEDED),
        };
        let (kind, code) = (icmp[0], icmp[1]);
        if kind == reply {
            let ours = from == Some(self.target)
                && self.is_our_echo(icmp)
                && icmp.get(ECHO_HEADER_BYTES..ECHO_HEADER_BYTES + PAYLOAD_BYTES)
                    == Some(&self.payload[..]);
            return if ours { Seen::Reply } else { Seen::Other };
        }
        if kind != unreachable && kind != exceeded {
            return Seen::Other;
        }
        // An error quotes the start of the packet it is about: is it our request?
        if !self.quotes_our_request(&icmp[ECHO_HEADER_BYTES..]) {
            return Seen::Other;
        }
        let what = match self.target {
            IpAddr::V4(_) => icmp_error_text(kind, code),
            IpAddr::V6(_) => icmp6_error_text(kind, code),
        };
        match from {
            Some(router) => Seen::Error(format!("{router} reports {what}")),
            None => Seen::Error(what),
        }
    }

    /// The identifier (raw sockets: ours; datagram sockets: the kernel's, already matched by it)
    /// and sequence number of an echo header.
    fn is_our_echo(&self, echo: &[u8]) -> bool {
        let ident = u16::from_be_bytes([echo[4], echo[5]]);
        let seq = u16::from_be_bytes([echo[6], echo[7]]);
        (!self.raw || ident == self.ident) && seq == self.seq
    }

    fn quotes_our_request(&self, quoted: &[u8]) -> bool {
        let (dst_ok, echo) = match self.target {
            IpAddr::V4(t) => {
                let Some(echo) = ipv4_payload(quoted) else {
                    return false;
                };
                let dst = quoted.get(16..20).and_then(|d| <[u8; 4]>::try_from(d).ok());
                (dst == Some(t.octets()), echo)
            }
            IpAddr::V6(t) => {
                let dst = quoted
                    .get(24..40)
                    .and_then(|d| <[u8; 16]>::try_from(d).ok());
                let echo = quoted.get(IPV6_HEADER_BYTES..).unwrap_or_default();
                (dst == Some(t.octets()), echo)
            }
        };
        let request = match self.target {
            IpAddr::V4(_) => ICMP_ECHO_REQUEST,
            IpAddr::V6(_) => ICMP6_ECHO_REQUEST,
        };
        dst_ok && echo.len() >= ECHO_HEADER_BYTES && echo[0] == request && self.is_our_echo(echo)
    }
}

/// The payload of an IPv4 packet (after its header, whose length it states).
fn ipv4_payload(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    if header < 20 {
        return None;
    }
    packet.get(header..)
}

fn icmp_error_text(kind: u8, code: u8) -> String {
    if kind == ICMP_TIME_EXCEEDED {
        return "time to live exceeded in transit (a routing loop?)".to_owned();
    }
    match code {
        0 => "network unreachable".to_owned(),
        1 => "host unreachable".to_owned(),
        2 => "protocol unreachable".to_owned(),
        3 => "port unreachable".to_owned(),
        4 => "fragmentation needed".to_owned(),
        6 => "destination network unknown".to_owned(),
        7 => "destination host unknown".to_owned(),
        9 | 10 | 13 => "communication administratively prohibited (a firewall)".to_owned(),
        _ => format!("destination unreachable (code {code})"),
    }
}

fn icmp6_error_text(kind: u8, code: u8) -> String {
    if kind == ICMP6_TIME_EXCEEDED {
        return "hop limit exceeded in transit (a routing loop?)".to_owned();
    }
    match code {
        0 => "no route to destination".to_owned(),
        1 => "communication administratively prohibited (a firewall)".to_owned(),
        3 => "address unreachable".to_owned(),
        4 => "port unreachable".to_owned(),
        5 => "source address failed ingress/egress policy".to_owned(),
        6 => "reject route to destination".to_owned(),
        _ => format!("destination unreachable (code {code})"),
    }
}

/// An echo request: type, code, checksum, identifier, sequence number, payload.
fn echo_request(target: IpAddr, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let kind = match target {
        IpAddr::V4(_) => ICMP_ECHO_REQUEST,
        IpAddr::V6(_) => ICMP6_ECHO_REQUEST,
    };
    let mut packet = vec![kind, 0, 0, 0];
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(payload);
    // ICMPv6 checksums cover a pseudo-header: the kernel computes them for ICMPv6 sockets.
    if target.is_ipv4() {
        let sum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// RFC 1071.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Bytes no other ping on this node will send (std's randomly keyed SipHash of the time).
fn random_payload() -> [u8; PAYLOAD_BYTES] {
    let state = RandomState::new();
    let mut out = [0u8; PAYLOAD_BYTES];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_be_bytes()[..chunk.len()]);
    }
    out
}

/// An ICMP socket for `target`'s family: `(socket, is_raw)`.
fn open(target: IpAddr, how: PingSocket) -> Result<(OwnedFd, bool), String> {
    let (family, proto, name) = match target {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, "ICMP"),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, "ICMPv6"),
    };
    let raw_error = if how == PingSocket::Datagram {
        None
    } else {
        match socket(family, libc::SOCK_RAW, proto) {
            Ok(fd) => {
                filter_raw(&fd, target);
                return Ok((fd, true));
            }
            Err(e) => {
                let refused = matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES));
                if how == PingSocket::Raw || !refused {
                    let hint = if refused {
                        " (the daemon needs root or CAP_NET_RAW)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "cannot open a raw {name} socket to ping {target}: {e}{hint}"
                    ));
                }
                Some(e)
            }
        }
    };
    match socket(family, libc::SOCK_DGRAM, proto) {
        Ok(fd) => Ok((fd, false)),
        Err(e) => {
            let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
                .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|_| "unreadable".to_owned());
            let group = unsafe_getegid();
            let dgram = format!(
                "an unprivileged {name} socket was refused too ({e}: net.ipv4.ping_group_range \
                 is \"{range}\", and the daemon's group is {group})"
            );
            Err(match raw_error {
                Some(raw) => format!(
                    "cannot ping {target}: a raw {name} socket was refused ({raw}: the daemon \
                     needs root or CAP_NET_RAW), and {dgram}"
                ),
                None => format!("cannot ping {target}: {dgram}"),
            })
        }
    }
}

fn unsafe_getegid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

fn socket(family: libc::c_int, kind: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; a valid descriptor is owned by the OwnedFd.
    let fd = unsafe {
        libc::socket(
            family,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Let through only echo replies and the errors that may be about our request (best effort:
/// without the filter, the matching ignores the rest anyway).
fn filter_raw(fd: &OwnedFd, target: IpAddr) {
    let result = match target {
        IpAddr::V4(_) => {
            let pass: u32 =
                (1 << ICMP_ECHO_REPLY) | (1 << ICMP_DEST_UNREACH) | (1 << ICMP_TIME_EXCEEDED);
            setsockopt(fd, SOL_RAW, ICMP_FILTER, &!pass)
        }
        IpAddr::V6(_) => {
            let mut block = [u32::MAX; 8];
            for kind in [ICMP6_ECHO_REPLY, ICMP6_DEST_UNREACH, ICMP6_TIME_EXCEEDED] {
                block[usize::from(kind >> 5)] &= !(1u32 << (kind & 31));
            }
            setsockopt(fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &block)
        }
    };
    if let Err(e) = result {
        tracing::debug!(%target, error = %e, "cannot filter the raw ICMP socket; unrelated messages are read and ignored");
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `value` points to `len` readable bytes for the duration of the call.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send_to(fd: &OwnedFd, packet: &[u8], target: IpAddr) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_storage is a valid value; the family-specific view written
    // below fits in it (sockaddr_storage is large enough and aligned for every family).
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match target {
        IpAddr::V4(ip) => {
            let sin = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
            // SAFETY: see above.
            unsafe {
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                };
            }
            mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(ip) => {
            let sin6 = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
            // SAFETY: see above.
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_addr = libc::in6_addr {
                    s6_addr: ip.octets(),
                };
            }
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let len = libc::socklen_t::try_from(len).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `packet` and `storage` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram and the address it came from.
fn recv_from(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Option<IpAddr>)> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = libc::socklen_t::try_from(mem::size_of::<libc::sockaddr_storage>())
        .unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `buf` and `storage` are valid for writing for the lengths given.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in, as ss_family says.
            let sin =
                unsafe { *(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(
                sin.sin_addr.s_addr.to_ne_bytes(),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6, as ss_family says.
            let sin6 = unsafe {
                *(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    };
    Ok((usize::try_from(n).unwrap_or(0), from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(target: &str, raw: bool) -> Expected {
        Expected {
            target: target.parse().expect("ip"),
            raw,
            ident: 0x1234,
            seq: 7,
            payload: [0xab; PAYLOAD_BYTES],
        }
    }

    fn ipv4_header(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h
    }

    fn echo(kind: u8, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![kind, 0, 0, 0];
        p.extend_from_slice(&ident.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn checksums_verify() {
        let packet = echo_request("10.0.0.1".parse().expect("ip"), 1, 2, &[9; 16]);
        assert_eq!(internet_checksum(&packet), 0);
        assert_eq!(internet_checksum(&[0x45, 0x00, 0x00]), !0x4500);
    }

    #[test]
    fn only_our_reply_counts() {
        let e = expected("10.0.0.1", true);
        let from = Some("10.0.0.1".parse().expect("ip"));
        let mut ours = ipv4_header([10, 0, 0, 1], [10, 0, 0, 2]);
        ours.extend(echo(ICMP_ECHO_REPLY, 0x1234, 7, &[0xab; 16]));
        assert_eq!(e.classify(&ours, from), Seen::Reply);
        // From another host, another identifier, sequence or payload, or our own request.
        assert_eq!(
            e.classify(&ours, Some("10.0.0.9".parse().expect("ip"))),
            Seen::Other
        );
        for packet in [
            echo(ICMP_ECHO_REPLY, 0x1235, 7, &[0xab; 16]),
            echo(ICMP_ECHO_REPLY, 0x1234, 8, &[0xab; 16]),
            echo(ICMP_ECHO_REPLY, 0x1234, 7, &[0xac; 16]),
            echo(ICMP_ECHO_REPLY, 0x1234, 7, &[0xab; 3]),
            echo(ICMP_ECHO_REQUEST, 0x1234, 7, &[0xab; 16]),
        ] {
            let mut p = ipv4_header([10, 0, 0, 1], [10, 0, 0, 2]);
            p.extend(packet);
            assert_eq!(e.classify(&p, from), Seen::Other);
        }
        assert_eq!(e.classify(&[0x45], from), Seen::Other);
        assert_eq!(e.classify(&[], from), Seen::Other);
        // A datagram socket: no IP header, and the kernel's identifier.
        let e = expected("10.0.0.1", false);
        let p = echo(ICMP_ECHO_REPLY, 0x9999, 7, &[0xab; 16]);
        assert_eq!(e.classify(&p, from), Seen::Reply);
    }

    #[test]
    fn errors_about_our_request_say_what_happened() {
        let e = expected("10.0.0.1", true);
        let router = Some("192.0.2.254".parse().expect("ip"));
        let mut quoted = ipv4_header([10, 0, 0, 2], [10, 0, 0, 1]);
        quoted.extend(echo(ICMP_ECHO_REQUEST, 0x1234, 7, &[]));
        let mut p = ipv4_header([192, 0, 2, 254], [10, 0, 0, 2]);
        p.extend([ICMP_DEST_UNREACH, 1, 0, 0, 0, 0, 0, 0]);
        p.extend(&quoted);
        assert_eq!(
            e.classify(&p, router),
            Seen::Error("192.0.2.254 reports host unreachable".into())
        );
        // About someone else's request: ignored.
        let mut other = ipv4_header([192, 0, 2, 254], [10, 0, 0, 2]);
        other.extend([ICMP_DEST_UNREACH, 1, 0, 0, 0, 0, 0, 0]);
        let mut quoted = ipv4_header([10, 0, 0, 2], [10, 0, 0, 1]);
        quoted.extend(echo(ICMP_ECHO_REQUEST, 0x4321, 7, &[]));
        other.extend(&quoted);
        assert_eq!(e.classify(&other, router), Seen::Other);

        let e = expected("2001:db8::1", true);
        let mut quoted = vec![0x60, 0, 0, 0, 0, 24, 58, 64];
        quoted.extend("2001:db8::2".parse::<Ipv6Addr>().expect("ip").octets());
        quoted.extend("2001:db8::1".parse::<Ipv6Addr>().expect("ip").octets());
        quoted.extend(echo(ICMP6_ECHO_REQUEST, 0x1234, 7, &[]));
        let mut p = vec![ICMP6_DEST_UNREACH, 3, 0, 0, 0, 0, 0, 0];
        p.extend(&quoted);
        let router = Some("2001:db8::fe".parse().expect("ip"));
        assert_eq!(
            e.classify(&p, router),
            Seen::Error("2001:db8::fe reports address unreachable".into())
        );
        let reply = echo(ICMP6_ECHO_REPLY, 0x1234, 7, &[0xab; 16]);
        assert_eq!(
            e.classify(&reply, Some("2001:db8::1".parse().expect("ip"))),
            Seen::Reply
        );
    }

    #[test]
    fn payloads_differ() {
        assert_ne!(random_payload(), random_payload());
    }
}
