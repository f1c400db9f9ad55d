//! The system calls: a private rtnetlink socket, an `AF_PACKET` socket to send announcements,
//! interface lookups. Sockets live in the network namespace of the thread that opened them.

use std::ffi::CString;
use std::io;
use std::mem;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::frames::{Frame, Mac};
use crate::netlink::{self, AddrChange, AddrDump, AddrEntry, KernelError, Malformed, ReplyError};

/// Longest wait for the kernel's reply to one netlink request (it answers in microseconds; this
/// only bounds a wedged kernel or a lost reply).
pub const NETLINK_REPLY_TIMEOUT_MS: u64 = 2_000;
/// Receive buffer of the netlink socket. The kernel sizes dump datagrams to at most 32 KiB.
const NETLINK_RECV_BUFFER_BYTES: usize = 64 << 10;
/// Dumps repeated when the kernel flags one as interrupted by a concurrent change.
const MAX_DUMP_ATTEMPTS: u32 = 3;

/// What a netlink request can end in, short of success.
#[derive(Debug)]
pub(crate) enum NlError {
    Os {
        call: &'static str,
        source: io::Error,
    },
    Kernel(KernelError),
    Malformed(Malformed),
    Timeout,
}

impl From<ReplyError> for NlError {
    fn from(e: ReplyError) -> Self {
        match e {
            ReplyError::Kernel(k) => NlError::Kernel(k),
            ReplyError::Malformed(m) => NlError::Malformed(m),
        }
    }
}

fn os(call: &'static str) -> NlError {
    NlError::Os {
        call,
        source: io::Error::last_os_error(),
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN))
}

/// A `NETLINK_ROUTE` socket of our own: replies on it are to our requests only.
pub(crate) struct RouteSocket {
    fd: OwnedFd,
    next_seq: u32,
    buf: Vec<u8>,
}

impl RouteSocket {
    pub(crate) fn open() -> Result<Self, NlError> {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(os("socket(AF_NETLINK)"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Extended acks give the kernel's own words in errors; capped acks don't echo our
        // request back. Both are optional (older kernels): failures are ignored.
        for option in [libc::NETLINK_EXT_ACK, libc::NETLINK_CAP_ACK] {
            let one: libc::c_int = 1;
            // SAFETY: the option value is a c_int that outlives the call.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    option,
                    (&one as *const libc::c_int).cast(),
                    mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        let addr = kernel_address();
        // SAFETY: `addr` is a valid sockaddr_nl (port 0: the kernel picks ours).
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(os("bind(AF_NETLINK)"));
        }
        Ok(RouteSocket {
            fd,
            next_seq: 1,
            buf: vec![0; NETLINK_RECV_BUFFER_BYTES],
        })
    }

    fn seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    fn send(&self, message: &[u8]) -> Result<(), NlError> {
        let addr = kernel_address();
        loop {
            // SAFETY: `message` and `addr` are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if retryable(&e) {
                    continue;
                }
                return Err(NlError::Os {
                    call: "sendto(AF_NETLINK)",
                    source: e,
                });
            }
            if n as usize != message.len() {
                return Err(NlError::Os {
                    call: "sendto(AF_NETLINK)",
                    source: io::Error::new(io::ErrorKind::WriteZero, "request sent in part"),
                });
            }
            return Ok(());
        }
    }

    /// Receives one datagram from the kernel into `self.buf`; returns its length.
    fn recv(&mut self, deadline: Instant) -> Result<usize, NlError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NlError::Timeout);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout_ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if retryable(&e) {
                    continue;
                }
                return Err(NlError::Os {
                    call: "poll(AF_NETLINK)",
                    source: e,
                });
            }
            if rc == 0 {
                continue; // the deadline check above ends the wait
            }
            // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
            let mut from: libc::sockaddr_nl = unsafe { mem::zeroed() };
            let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: the buffer and address are valid for the lengths given. MSG_TRUNC makes
            // the call return the datagram's real length, so a truncation is detected.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if retryable(&e) {
                    continue;
                }
                return Err(NlError::Os {
                    call: "recvfrom(AF_NETLINK)",
                    source: e,
                });
            }
            let len = n as usize;
            if len > self.buf.len() {
                return Err(NlError::Malformed(Malformed::Truncated {
                    len,
                    capacity: self.buf.len(),
                }));
            }
            if from.nl_pid != 0 {
                continue; // not from the kernel
            }
            return Ok(len);
        }
    }

    /// Adds or removes an address and waits for the kernel's acknowledgement.
    pub(crate) fn change_addr(
        &mut self,
        change: AddrChange,
        ifindex: u32,
        addr: &IpAddr,
        prefix_len: u8,
    ) -> Result<(), NlError> {
        let seq = self.seq();
        self.send(&netlink::encode_addr_change(
            change, seq, ifindex, addr, prefix_len,
        ))?;
        let deadline = Instant::now() + Duration::from_millis(NETLINK_REPLY_TIMEOUT_MS);
        loop {
            let len = self.recv(deadline)?;
            let datagram = self.buf.get(..len).unwrap_or_default();
            match netlink::scan_ack(datagram, seq).map_err(NlError::Malformed)? {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => return Err(NlError::Kernel(e)),
                None => {}
            }
        }
    }

    /// Every address of `family` on every interface.
    pub(crate) fn dump_addrs(&mut self, family: u8) -> Result<Vec<AddrEntry>, NlError> {
        let mut attempt = 1;
        loop {
            let seq = self.seq();
            self.send(&netlink::encode_addr_dump(seq, family))?;
            let deadline = Instant::now() + Duration::from_millis(NETLINK_REPLY_TIMEOUT_MS);
            let mut dump = AddrDump::new(seq);
            loop {
                let len = self.recv(deadline)?;
                if dump.feed(self.buf.get(..len).unwrap_or_default())? {
                    break;
                }
            }
            let (entries, interrupted) = dump.finish();
            if !interrupted || attempt >= MAX_DUMP_ATTEMPTS {
                // A dump still interrupted after the last attempt lists real addresses; at worst
                // it misses one being changed, which the add that follows would meet as EEXIST.
                return Ok(entries);
            }
            attempt += 1;
        }
    }
}

fn kernel_address() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

/// The index of interface `name` in this thread's network namespace; `None` if it has none.
pub(crate) fn interface_index(name: &CString) -> io::Result<Option<u32>> {
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index != 0 {
        return Ok(Some(index));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::ENOENT) => Ok(None),
        _ => Err(e),
    }
}

/// An interface's link-layer address, as `SIOCGIFHWADDR` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkAddress {
    Ethernet(Mac),
    /// Not Ethernet (loopback, tunnels, InfiniBand...), or no address: the `ARPHRD_*` type.
    Other(u16),
}

/// `SIOCGIFHWADDR` on a datagram socket (no privilege needed). `ENODEV` if the interface is gone.
pub(crate) fn link_address(name: &CString) -> io::Result<LinkAddress> {
    // SAFETY: plain socket(2); the result is checked before it is owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes the hardware address into `ifr`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFHWADDR the union holds `ifru_hwaddr`.
    let hw = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, &src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = src as u8;
    }
    if hw.sa_family == libc::ARPHRD_ETHER && mac != [0; 6] {
        Ok(LinkAddress::Ethernet(mac))
    } else {
        Ok(LinkAddress::Other(hw.sa_family))
    }
}

/// A send-only `AF_PACKET` `SOCK_DGRAM` socket (protocol 0: it receives nothing, so nothing
/// queues up on it while it lives).
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        Ok(PacketSocket {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// Sends one frame out of interface `ifindex`.
    pub(crate) fn send(&self, ifindex: u32, frame: &Frame) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = frame.ethertype.to_be();
        addr.sll_ifindex = ifindex as libc::c_int;
        addr.sll_halen = frame.dst_mac.len() as u8;
        addr.sll_addr[..6].copy_from_slice(&frame.dst_mac);
        loop {
            // SAFETY: the payload and address are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.payload.as_ptr().cast(),
                    frame.payload.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            if n as usize != frame.payload.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "frame sent in part",
                ));
            }
            return Ok(());
        }
    }
}
