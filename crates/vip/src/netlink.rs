//! rtnetlink messages for interface addresses, encoded and decoded without I/O.
//!
//! Everything the kernel sends is treated as untrusted bytes: every length is checked against what
//! is left before it is used, every read goes through `get`, and nothing here can panic on any
//! input. The layouts are the kernel's (`linux/netlink.h`, `linux/rtnetlink.h`,
//! `linux/if_addr.h`): integers in host byte order, addresses in network byte order, every message
//! and attribute padded to 4 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `struct nlmsghdr`: u32 len, u16 type, u16 flags, u32 seq, u32 port id.
pub(crate) const NLMSG_HDR_BYTES: usize = 16;
/// `struct ifaddrmsg`: u8 family, u8 prefix length, u8 flags, u8 scope, u32 interface index.
const IFADDRMSG_BYTES: usize = 8;
/// `struct rtattr` / `struct nlattr`: u16 len, u16 type.
const ATTR_HDR_BYTES: usize = 4;
/// Most addresses one dump may list before it is refused as unreasonable (a bound on memory).
pub(crate) const MAX_DUMP_ENTRIES: usize = 65_536;
/// Longest kernel extended-ack message kept for an error.
const MAX_KERNEL_MESSAGE_BYTES: usize = 256;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// On `NLMSG_ERROR`: the echoed request is only its header.
const NLM_F_CAPPED: u16 = 0x100;
/// On `NLMSG_ERROR`: extended-ack attributes follow the echoed request.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// The top two bits of an attribute type are flags (nested, network byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// Don't run duplicate address detection: the address is usable (and announceable) at once.
const IFA_F_NODAD: u8 = 0x02;

pub(crate) const AF_INET: u8 = 2;
pub(crate) const AF_INET6: u8 = 10;

/// A reply that does not follow the netlink layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("{remaining} trailing bytes are too short for a message header")]
    ShortHeader { remaining: usize },
    #[error("a message declares {declared} bytes but {remaining} remain")]
    BadMessageLength { declared: usize, remaining: usize },
    #[error("a message of type {kind} has {got} bytes of payload, expected at least {need}")]
    ShortPayload { kind: u16, need: usize, got: usize },
    #[error("an attribute declares {declared} bytes but {remaining} remain")]
    BadAttributeLength { declared: usize, remaining: usize },
    #[error("an address attribute of family {family} has {len} bytes")]
    BadAddressLength { family: u8, len: usize },
    #[error("an error message carries the positive code {0}")]
    BadErrorCode(i32),
    #[error("unexpected message of type {0}")]
    UnexpectedType(u16),
    #[error("the kernel dropped replies (receive buffer overrun)")]
    Overrun,
    #[error("a reply of {len} bytes did not fit the {capacity}-byte receive buffer")]
    Truncated { len: usize, capacity: usize },
    #[error("the dump lists more than {MAX_DUMP_ENTRIES} addresses")]
    TooManyEntries,
}

/// The kernel's answer to a request: a negative errno and, with extended acks, its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelError {
    pub errno: i32,
    pub message: Option<String>,
}

/// Either the kernel refused, or it said something we cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplyError {
    Kernel(KernelError),
    Malformed(Malformed),
}

impl From<Malformed> for ReplyError {
    fn from(m: Malformed) -> Self {
        ReplyError::Malformed(m)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddrChange {
    Add,
    Remove,
}

/// One address of one interface, from an `RTM_NEWADDR` dump entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddrEntry {
    pub ifindex: u32,
    pub prefix_len: u8,
    pub addr: IpAddr,
}

/// How an interface holds an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding {
    /// With the wanted prefix length.
    Held,
    /// With another prefix length (the first found).
    HeldAsPrefix(u8),
    Absent,
}

pub(crate) fn family_of(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// Builds one request: header, fixed part, attributes; fixes the length at the end.
struct Request(Vec<u8>);

impl Request {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills in ours
        Request(buf)
    }

    fn ifaddrmsg(mut self, family: u8, prefix_len: u8, flags: u8, ifindex: u32) -> Self {
        self.0.extend_from_slice(&[family, prefix_len, flags, 0]); // scope 0: universe
        self.0.extend_from_slice(&ifindex.to_ne_bytes());
        self
    }

    fn attr(mut self, kind: u16, value: &[u8]) -> Self {
        // Attribute values here are addresses (at most 16 bytes): the u16 length cannot overflow.
        let len = (ATTR_HDR_BYTES + value.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(align4(self.0.len()), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() as u32).to_ne_bytes();
        self.0[..4].copy_from_slice(&len);
        self.0
    }
}

fn octets(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `RTM_NEWADDR` (create, fail if it exists) or `RTM_DELADDR`, acknowledged either way.
///
/// IPv6 addresses are added with `IFA_F_NODAD`: the cluster manager, not duplicate address
/// detection, decides who holds a virtual IP, and DAD would delay its use (and our unsolicited
/// neighbour advertisement, which a tentative address may not send) by about a second.
pub(crate) fn encode_addr_change(
    change: AddrChange,
    seq: u32,
    ifindex: u32,
    addr: &IpAddr,
    prefix_len: u8,
) -> Vec<u8> {
    let (kind, flags) = match change {
        AddrChange::Add => (
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ),
        AddrChange::Remove => (RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK),
    };
    let family = family_of(addr);
    let ifa_flags = if change == AddrChange::Add && family == AF_INET6 {
        IFA_F_NODAD
    } else {
        0
    };
    let bytes = octets(addr);
    Request::new(kind, flags, seq)
        .ifaddrmsg(family, prefix_len, ifa_flags, ifindex)
        .attr(IFA_LOCAL, &bytes)
        .attr(IFA_ADDRESS, &bytes)
        .finish()
}

/// `RTM_GETADDR` dump of every address of one family (filtered by interface on our side: the
/// kernel filters by index only under strict checking).
pub(crate) fn encode_addr_dump(seq: u32, family: u8) -> Vec<u8> {
    Request::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq)
        .ifaddrmsg(family, 0, 0, 0)
        .finish()
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// The messages of one datagram, in order; stops after the first malformed one.
pub(crate) struct Messages<'a> {
    rest: &'a [u8],
}

pub(crate) fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages { rest: datagram }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let remaining = rest.len();
        let (Some(len), Some(kind), Some(flags), Some(seq), true) = (
            u32_at(rest, 0),
            u16_at(rest, 4),
            u16_at(rest, 6),
            u32_at(rest, 8),
            remaining >= NLMSG_HDR_BYTES,
        ) else {
            return Some(Err(Malformed::ShortHeader { remaining }));
        };
        let declared = len as usize;
        if declared < NLMSG_HDR_BYTES || declared > remaining {
            return Some(Err(Malformed::BadMessageLength {
                declared,
                remaining,
            }));
        }
        let payload = rest.get(NLMSG_HDR_BYTES..declared).unwrap_or_default();
        // The last message of a datagram may lack its padding.
        self.rest = rest.get(align4(declared)..).unwrap_or_default();
        Some(Ok(Message {
            kind,
            flags,
            seq,
            payload,
        }))
    }
}

/// The attributes of a payload, as (type without flag bits, value); stops after a malformed one.
struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let remaining = rest.len();
        let (Some(len), Some(kind)) = (u16_at(rest, 0), u16_at(rest, 2)) else {
            return Some(Err(Malformed::BadAttributeLength {
                declared: 0,
                remaining,
            }));
        };
        let declared = len as usize;
        if declared < ATTR_HDR_BYTES || declared > remaining {
            return Some(Err(Malformed::BadAttributeLength {
                declared,
                remaining,
            }));
        }
        let value = rest.get(ATTR_HDR_BYTES..declared).unwrap_or_default();
        self.rest = rest.get(align4(declared)..).unwrap_or_default();
        Some(Ok((kind & NLA_TYPE_MASK, value)))
    }
}

fn attributes(buf: &[u8]) -> Attributes<'_> {
    Attributes { rest: buf }
}

/// An `NLMSG_ERROR` payload: `Ok` for an acknowledgement (code 0), else the kernel's refusal.
pub(crate) fn parse_error(
    flags: u16,
    payload: &[u8],
) -> Result<Result<(), KernelError>, Malformed> {
    let need = 4 + NLMSG_HDR_BYTES;
    let short = Malformed::ShortPayload {
        kind: NLMSG_ERROR,
        need,
        got: payload.len(),
    };
    let code = u32_at(payload, 0).ok_or(short.clone())? as i32;
    let echoed_len = u32_at(payload, 4).ok_or(short)? as usize;
    if code == 0 {
        return Ok(Ok(()));
    }
    let errno = code.checked_neg().ok_or(Malformed::BadErrorCode(code))?;
    if errno < 0 {
        return Err(Malformed::BadErrorCode(code));
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // Extended acks are an explanation, never a reason to fail: if their layout is odd, the
        // errno alone is reported.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDR_BYTES
        } else {
            align4(echoed_len)
        };
        if let Some(tlvs) = payload.get(4usize.saturating_add(echoed)..) {
            for (kind, value) in attributes(tlvs).map_while(Result::ok) {
                if kind == NLMSGERR_ATTR_MSG {
                    let text = value.split(|&b| b == 0).next().unwrap_or_default();
                    let text = text.get(..MAX_KERNEL_MESSAGE_BYTES).unwrap_or(text);
                    let text = String::from_utf8_lossy(text).trim().to_string();
                    if !text.is_empty() {
                        message = Some(text);
                    }
                }
            }
        }
    }
    Ok(Err(KernelError { errno, message }))
}

/// Looks for the acknowledgement of request `seq` in one datagram: `None` if it is not there
/// (messages of other sequence numbers are stale and skipped).
pub(crate) fn scan_ack(
    datagram: &[u8],
    seq: u32,
) -> Result<Option<Result<(), KernelError>>, Malformed> {
    for message in messages(datagram) {
        let message = message?;
        if message.seq != seq {
            continue;
        }
        match message.kind {
            NLMSG_ERROR => return parse_error(message.flags, message.payload).map(Some),
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => return Err(Malformed::Overrun),
            other => return Err(Malformed::UnexpectedType(other)),
        }
    }
    Ok(None)
}

fn parse_addr(family: u8, value: &[u8]) -> Result<IpAddr, Malformed> {
    let bad = Malformed::BadAddressLength {
        family,
        len: value.len(),
    };
    match family {
        AF_INET => {
            let octets: [u8; 4] = value.try_into().map_err(|_| bad)?;
            Ok(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        _ => {
            let octets: [u8; 16] = value.try_into().map_err(|_| bad)?;
            Ok(IpAddr::V6(Ipv6Addr::from(octets)))
        }
    }
}

/// One dump entry. `None` for families other than IPv4/IPv6 and entries without an address.
/// The local address is `IFA_LOCAL` when present (IPv4, and point-to-point IPv6), else
/// `IFA_ADDRESS`.
pub(crate) fn parse_addr_entry(payload: &[u8]) -> Result<Option<AddrEntry>, Malformed> {
    let short = Malformed::ShortPayload {
        kind: RTM_NEWADDR,
        need: IFADDRMSG_BYTES,
        got: payload.len(),
    };
    let (Some(&family), Some(&prefix_len), Some(ifindex)) =
        (payload.first(), payload.get(1), u32_at(payload, 4))
    else {
        return Err(short);
    };
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    let mut local = None;
    let mut address = None;
    for attr in attributes(payload.get(IFADDRMSG_BYTES..).unwrap_or_default()) {
        let (kind, value) = attr?;
        match kind {
            IFA_LOCAL => local = Some(parse_addr(family, value)?),
            IFA_ADDRESS => address = Some(parse_addr(family, value)?),
            _ => {}
        }
    }
    Ok(local.or(address).map(|addr| AddrEntry {
        ifindex,
        prefix_len,
        addr,
    }))
}

/// Collects the replies to an `RTM_GETADDR` dump, one datagram at a time.
#[derive(Debug)]
pub(crate) struct AddrDump {
    seq: u32,
    entries: Vec<AddrEntry>,
    interrupted: bool,
}

impl AddrDump {
    pub(crate) fn new(seq: u32) -> Self {
        AddrDump {
            seq,
            entries: Vec::new(),
            interrupted: false,
        }
    }

    /// Takes one datagram; `Ok(true)` once the dump is complete.
    pub(crate) fn feed(&mut self, datagram: &[u8]) -> Result<bool, ReplyError> {
        for message in messages(datagram) {
            let message = message?;
            if message.seq != self.seq {
                continue;
            }
            if message.flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match message.kind {
                RTM_NEWADDR => {
                    if let Some(entry) = parse_addr_entry(message.payload)? {
                        if self.entries.len() >= MAX_DUMP_ENTRIES {
                            return Err(Malformed::TooManyEntries.into());
                        }
                        self.entries.push(entry);
                    }
                }
                NLMSG_DONE => {
                    // Since Linux 4.x, DONE carries the dump's status: a negative errno on failure.
                    let code = u32_at(message.payload, 0).map_or(0, |c| c as i32);
                    if code < 0 {
                        return Err(ReplyError::Kernel(KernelError {
                            errno: code.checked_neg().unwrap_or(i32::MAX),
                            message: None,
                        }));
                    }
                    return Ok(true);
                }
                NLMSG_ERROR => {
                    return match parse_error(message.flags, message.payload)? {
                        Ok(()) => Ok(true),
                        Err(e) => Err(ReplyError::Kernel(e)),
                    };
                }
                NLMSG_NOOP => {}
                NLMSG_OVERRUN => return Err(Malformed::Overrun.into()),
                other => return Err(Malformed::UnexpectedType(other).into()),
            }
        }
        Ok(false)
    }

    /// The entries, and whether the kernel flagged the dump as interrupted by a change (it may
    /// then be inconsistent and is worth repeating).
    pub(crate) fn finish(self) -> (Vec<AddrEntry>, bool) {
        (self.entries, self.interrupted)
    }
}

/// How interface `ifindex` holds `addr`, judged from a dump.
pub(crate) fn holding(
    entries: &[AddrEntry],
    ifindex: u32,
    addr: &IpAddr,
    prefix_len: u8,
) -> Holding {
    let mut found = Holding::Absent;
    for entry in entries
        .iter()
        .filter(|e| e.ifindex == ifindex && e.addr == *addr)
    {
        if entry.prefix_len == prefix_len {
            return Holding::Held;
        }
        if found == Holding::Absent {
            found = Holding::HeldAsPrefix(entry.prefix_len);
        }
    }
    found
}

#[cfg(test)]
mod tests;
