//! Virtual IPs: the address clients use to reach a module, held by whichever node is primary.
//!
//! Owns: adding an address to an interface and removing it (rtnetlink `RTM_NEWADDR` /
//! `RTM_DELADDR`, each acknowledged by the kernel), telling whether an interface holds it
//! (`RTM_GETADDR` dump), and announcing it so that switches and clients send its traffic to this
//! node (gratuitous ARP for IPv4, unsolicited neighbour advertisement for IPv6, on an `AF_PACKET`
//! socket). The netlink and frame layouts are pure functions (`netlink`, `frames`), tested
//! without root; `sys` holds every system call.
//!
//! Never does: decide who should hold an address (the cluster manager does), touch routes, rules
//! or other addresses than the one it is given, run `ip` or any other program, or keep state
//! between calls: every call opens its own sockets in the calling thread's network namespace, and
//! asks the kernel rather than remembering.
//!
//! Semantics, so that the cluster manager can call these blindly at every transition:
//! - [`take`] and [`release`] are idempotent. An address is held when the interface has it with
//!   the spec's prefix length; the same address with another prefix length is an
//!   [`VipError::AddressConflict`] for `take`, is not held for [`is_held`], and is left alone by
//!   `release` (it was not ours).
//! - `take` returns once the kernel has acknowledged the address and the first announcement is
//!   sent; [`ANNOUNCE_REPEAT_COUNT`] more follow from a background thread, every
//!   [`ANNOUNCE_REPEAT_INTERVAL_MS`], each only while the address is still held, so that caches
//!   follow even if the first announcement is lost.
//! - A failed announcement is logged (warn) and does not fail `take`: the address is held, and
//!   traffic will find it when caches expire. [`announce`] alone reports it as an error.
//! - Interfaces without an Ethernet address (loopback, tunnels) are not announced on.
//! - IPv6 addresses are added with `IFA_F_NODAD`: usable at once, no duplicate address detection
//!   (who holds the address is the cluster manager's decision), then announced.
//!
//! Worth knowing when several IPv4 addresses of one subnet share an interface: the first becomes
//! the subnet's primary address, and removing it removes the others too unless
//! `net.ipv4.conf.<interface>.promote_secondaries=1`. Give virtual IPs a /32 prefix, or give the
//! interface a fixed address in their subnet, or set that sysctl.

mod frames;
mod netlink;
mod sys;

use std::ffi::CString;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink::{AddrChange, Holding};
use sys::{LinkAddress, NlError, PacketSocket, RouteSocket};

pub use sys::NETLINK_REPLY_TIMEOUT_MS;

/// Announcements sent by the background thread after the first one, which `take` sends itself.
pub const ANNOUNCE_REPEAT_COUNT: u32 = 2;
/// Interval between two announcements of one `take`.
pub const ANNOUNCE_REPEAT_INTERVAL_MS: u64 = 200;
/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
pub const MAX_INTERFACE_NAME_BYTES: usize = 15;

/// A virtual IP: an address, its prefix length, and the interface that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VipSpec {
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub interface: String,
}

impl fmt::Display for VipSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} on {}", self.addr, self.prefix_len, self.interface)
    }
}

impl VipSpec {
    /// Checks what can be checked without the system: a usable unicast address, a prefix length
    /// within the family's, an interface name the kernel could have.
    pub fn validate(&self) -> Result<(), VipError> {
        let invalid = |reason: String| VipError::InvalidSpec {
            spec: self.clone(),
            reason,
        };
        let max_prefix_len = match self.addr {
            IpAddr::V4(a) => {
                if a.is_broadcast() {
                    return Err(invalid("the broadcast address cannot be held".into()));
                }
                32
            }
            IpAddr::V6(_) => 128,
        };
        if self.addr.is_unspecified() || self.addr.is_multicast() {
            return Err(invalid(format!("{} is not a unicast address", self.addr)));
        }
        if self.prefix_len > max_prefix_len {
            return Err(invalid(format!(
                "prefix length /{} exceeds /{max_prefix_len}",
                self.prefix_len
            )));
        }
        let name = &self.interface;
        if name.is_empty() {
            return Err(invalid("the interface name is empty".into()));
        }
        if name.len() > MAX_INTERFACE_NAME_BYTES {
            return Err(invalid(format!(
                "the interface name {name:?} is longer than {MAX_INTERFACE_NAME_BYTES} bytes"
            )));
        }
        if name
            .chars()
            .any(|c| c == '/' || c == '\0' || c.is_whitespace())
        {
            return Err(invalid(format!(
                "the interface name {name:?} contains '/', a NUL or white space"
            )));
        }
        Ok(())
    }
}

/// What was being done when an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipAction {
    Take,
    Release,
    Check,
    Announce,
}

impl fmt::Display for VipAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VipAction::Take => "adding the address",
            VipAction::Release => "removing the address",
            VipAction::Check => "listing the interface's addresses",
            VipAction::Announce => "announcing the address",
        })
    }
}

/// Why a virtual IP could not be taken, released, checked or announced. Every message names the
/// address and the interface, and what to check.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("virtual IP {spec} is invalid: {reason}; fix the module's [[vip]] entry")]
    InvalidSpec { spec: VipSpec, reason: String },
    #[error(
        "virtual IP {spec}: interface {} does not exist on this node; check the interface \
         name in the module's [[vip]] entry against `ip link`",
        spec.interface
    )]
    InterfaceMissing { spec: VipSpec },
    #[error(
        "virtual IP {spec}: permission denied while {action}; mirrorkit must run as root or \
         with CAP_NET_ADMIN (and CAP_NET_RAW to announce the address)"
    )]
    PermissionDenied {
        spec: VipSpec,
        action: VipAction,
        #[source]
        source: io::Error,
    },
    #[error(
        "virtual IP {spec}: {} already holds {}/{held_prefix_len}, with another prefix \
         length; remove it (`ip addr del {}/{held_prefix_len} dev {}`) or give the module's \
         [[vip]] entry that prefix length",
        spec.interface, spec.addr, spec.addr, spec.interface
    )]
    AddressConflict { spec: VipSpec, held_prefix_len: u8 },
    #[error(
        "virtual IP {spec}: the kernel refused {action}: {source}{}; check `ip addr show dev \
         {}` and the kernel log",
        detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(), spec.interface
    )]
    Kernel {
        spec: VipSpec,
        action: VipAction,
        #[source]
        source: io::Error,
        /// The kernel's own explanation (netlink extended ack), when it gave one.
        detail: Option<String>,
    },
    #[error(
        "virtual IP {spec}: {call} failed while {action}: {source}; check the interface \
         (`ip link show {}`) and the node's resources (open files, memory)",
        spec.interface
    )]
    System {
        spec: VipSpec,
        action: VipAction,
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "virtual IP {spec}: no reply from the kernel within {timeout_ms} ms while {action}; \
         check `ip addr show dev {}` and the node's load",
        spec.interface
    )]
    Timeout {
        spec: VipSpec,
        action: VipAction,
        timeout_ms: u64,
    },
    #[error(
        "virtual IP {spec}: unreadable netlink reply while {action} ({reason}); check `ip addr \
         show dev {}`, and report this: mirrorkit does not understand this kernel",
        spec.interface
    )]
    Protocol {
        spec: VipSpec,
        action: VipAction,
        reason: String,
    },
}

impl VipError {
    /// The virtual IP concerned.
    pub fn spec(&self) -> &VipSpec {
        match self {
            VipError::InvalidSpec { spec, .. }
            | VipError::InterfaceMissing { spec }
            | VipError::PermissionDenied { spec, .. }
            | VipError::AddressConflict { spec, .. }
            | VipError::Kernel { spec, .. }
            | VipError::System { spec, .. }
            | VipError::Timeout { spec, .. }
            | VipError::Protocol { spec, .. } => spec,
        }
    }
}

fn is_permission_error(errno: i32) -> bool {
    errno == libc::EPERM || errno == libc::EACCES
}

/// An OS error of a system call, classified.
fn os_error(spec: &VipSpec, action: VipAction, call: &'static str, source: io::Error) -> VipError {
    match source.raw_os_error() {
        Some(errno) if is_permission_error(errno) => VipError::PermissionDenied {
            spec: spec.clone(),
            action,
            source,
        },
        Some(libc::ENODEV) | Some(libc::ENXIO) => VipError::InterfaceMissing { spec: spec.clone() },
        _ => VipError::System {
            spec: spec.clone(),
            action,
            call,
            source,
        },
    }
}

fn nl_error(spec: &VipSpec, action: VipAction, e: NlError) -> VipError {
    match e {
        NlError::Os { call, source } => os_error(spec, action, call, source),
        NlError::Kernel(k) if is_permission_error(k.errno) => VipError::PermissionDenied {
            spec: spec.clone(),
            action,
            source: io::Error::from_raw_os_error(k.errno),
        },
        NlError::Kernel(k) if k.errno == libc::ENODEV => {
            VipError::InterfaceMissing { spec: spec.clone() }
        }
        NlError::Kernel(k) => VipError::Kernel {
            spec: spec.clone(),
            action,
            source: io::Error::from_raw_os_error(k.errno),
            detail: k.message,
        },
        NlError::Malformed(m) => VipError::Protocol {
            spec: spec.clone(),
            action,
            reason: m.to_string(),
        },
        NlError::Timeout => VipError::Timeout {
            spec: spec.clone(),
            action,
            timeout_ms: NETLINK_REPLY_TIMEOUT_MS,
        },
    }
}

/// The spec validated, its interface name as a C string, and the interface's index.
struct Resolved {
    name: CString,
    ifindex: u32,
}

fn resolve(spec: &VipSpec, action: VipAction) -> Result<Resolved, VipError> {
    spec.validate()?;
    let name = CString::new(spec.interface.as_bytes()).map_err(|_| VipError::InvalidSpec {
        spec: spec.clone(),
        reason: "the interface name contains a NUL".into(),
    })?;
    match sys::interface_index(&name) {
        Ok(Some(ifindex)) => Ok(Resolved { name, ifindex }),
        Ok(None) => Err(VipError::InterfaceMissing { spec: spec.clone() }),
        Err(e) => Err(os_error(spec, action, "if_nametoindex", e)),
    }
}

fn holding(
    route: &mut RouteSocket,
    spec: &VipSpec,
    ifindex: u32,
    action: VipAction,
) -> Result<Holding, VipError> {
    let entries = route
        .dump_addrs(netlink::family_of(&spec.addr))
        .map_err(|e| nl_error(spec, action, e))?;
    Ok(netlink::holding(
        &entries,
        ifindex,
        &spec.addr,
        spec.prefix_len,
    ))
}

fn open_route(spec: &VipSpec, action: VipAction) -> Result<RouteSocket, VipError> {
    RouteSocket::open().map_err(|e| nl_error(spec, action, e))
}

/// Adds the address to the interface (idempotent: already held is fine) and announces it.
///
/// Returns once the kernel has acknowledged the address and the first announcement is sent;
/// [`ANNOUNCE_REPEAT_COUNT`] more follow from a background thread. An announcement that fails is
/// logged, not returned: the address is held.
pub fn take(spec: &VipSpec) -> Result<(), VipError> {
    let action = VipAction::Take;
    let resolved = resolve(spec, action)?;
    let mut route = open_route(spec, action)?;
    let added = match holding(&mut route, spec, resolved.ifindex, action)? {
        Holding::Held => false,
        Holding::HeldAsPrefix(held_prefix_len) => {
            return Err(VipError::AddressConflict {
                spec: spec.clone(),
                held_prefix_len,
            })
        }
        Holding::Absent => match route.change_addr(
            AddrChange::Add,
            resolved.ifindex,
            &spec.addr,
            spec.prefix_len,
        ) {
            Ok(()) => true,
            // Added meanwhile by someone else, or present in a form the dump did not show
            // (IPv6 refuses a second prefix length of one address): look again.
            Err(NlError::Kernel(k)) if k.errno == libc::EEXIST => {
                match holding(&mut route, spec, resolved.ifindex, action)? {
                    Holding::Held => false,
                    Holding::HeldAsPrefix(held_prefix_len) => {
                        return Err(VipError::AddressConflict {
                            spec: spec.clone(),
                            held_prefix_len,
                        })
                    }
                    Holding::Absent => return Err(nl_error(spec, action, NlError::Kernel(k))),
                }
            }
            Err(e) => return Err(nl_error(spec, action, e)),
        },
    };
    if added {
        tracing::info!(vip = %spec.addr, prefix_len = spec.prefix_len, interface = %spec.interface, "virtual IP taken");
    } else {
        tracing::debug!(vip = %spec.addr, prefix_len = spec.prefix_len, interface = %spec.interface, "virtual IP already held; announcing it again");
    }
    match Announcer::prepare(spec, &resolved) {
        Ok(Some(announcer)) => {
            if let Err(e) = announcer.send(spec) {
                tracing::warn!(vip = %spec.addr, interface = %spec.interface, error = %e, "virtual IP held but its first announcement failed; repeating it");
            }
            announcer.repeat_in_background(spec.clone(), resolved.ifindex, route);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(vip = %spec.addr, interface = %spec.interface, error = %e, "virtual IP held but not announced");
        }
    }
    Ok(())
}

/// Removes the address from the interface (idempotent: absent is fine).
pub fn release(spec: &VipSpec) -> Result<(), VipError> {
    let action = VipAction::Release;
    let resolved = resolve(spec, action)?;
    let mut route = open_route(spec, action)?;
    match route.change_addr(
        AddrChange::Remove,
        resolved.ifindex,
        &spec.addr,
        spec.prefix_len,
    ) {
        Ok(()) => {
            tracing::info!(vip = %spec.addr, prefix_len = spec.prefix_len, interface = %spec.interface, "virtual IP released");
            Ok(())
        }
        Err(NlError::Kernel(k)) if k.errno == libc::EADDRNOTAVAIL => {
            tracing::debug!(vip = %spec.addr, prefix_len = spec.prefix_len, interface = %spec.interface, "virtual IP already released");
            Ok(())
        }
        Err(e) => Err(nl_error(spec, action, e)),
    }
}

/// Whether the interface holds the address, with the spec's prefix length, now.
pub fn is_held(spec: &VipSpec) -> Result<bool, VipError> {
    let action = VipAction::Check;
    let resolved = resolve(spec, action)?;
    let mut route = open_route(spec, action)?;
    Ok(holding(&mut route, spec, resolved.ifindex, action)? == Holding::Held)
}

/// Sends one announcement of the address (gratuitous ARP, or unsolicited neighbour
/// advertisement), whether or not the interface holds it. Interfaces without an Ethernet address
/// are skipped (logged at debug), not an error.
pub fn announce(spec: &VipSpec) -> Result<(), VipError> {
    let resolved = resolve(spec, VipAction::Announce)?;
    match Announcer::prepare(spec, &resolved)? {
        Some(announcer) => announcer.send(spec),
        None => Ok(()),
    }
}

/// The frames announcing one address and the socket to send them, on one interface.
struct Announcer {
    socket: PacketSocket,
    ifindex: u32,
    frames: Vec<frames::Frame>,
}

impl Announcer {
    /// `None` when the interface has no Ethernet address to announce.
    fn prepare(spec: &VipSpec, resolved: &Resolved) -> Result<Option<Self>, VipError> {
        let action = VipAction::Announce;
        let mac = match sys::link_address(&resolved.name) {
            Ok(LinkAddress::Ethernet(mac)) => mac,
            Ok(LinkAddress::Other(hw_type)) => {
                tracing::debug!(vip = %spec.addr, interface = %spec.interface, hw_type, "interface has no Ethernet address; virtual IP not announced");
                return Ok(None);
            }
            Err(e) => return Err(os_error(spec, action, "ioctl(SIOCGIFHWADDR)", e)),
        };
        let socket =
            PacketSocket::open().map_err(|e| os_error(spec, action, "socket(AF_PACKET)", e))?;
        Ok(Some(Announcer {
            socket,
            ifindex: resolved.ifindex,
            frames: frames::announcement(mac, &spec.addr),
        }))
    }

    /// Sends every frame; reports the first failure after trying them all.
    fn send(&self, spec: &VipSpec) -> Result<(), VipError> {
        let mut first_error = None;
        for frame in &self.frames {
            if let Err(e) = self.socket.send(self.ifindex, frame) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(os_error(spec, VipAction::Announce, "sendto(AF_PACKET)", e)),
        }
    }

    /// Repeats the announcement while the address is held. The thread keeps the sockets opened
    /// by the caller, so it works in the caller's network namespace whatever its own.
    fn repeat_in_background(self, spec: VipSpec, ifindex: u32, mut route: RouteSocket) {
        let (addr, interface) = (spec.addr, spec.interface.clone());
        let spawned = std::thread::Builder::new()
            .name("vip-announce".into())
            .spawn(move || {
                for _ in 0..ANNOUNCE_REPEAT_COUNT {
                    std::thread::sleep(Duration::from_millis(ANNOUNCE_REPEAT_INTERVAL_MS));
                    match holding(&mut route, &spec, ifindex, VipAction::Check) {
                        Ok(Holding::Held) => {}
                        Ok(_) => {
                            tracing::debug!(vip = %spec.addr, interface = %spec.interface, "virtual IP no longer held; announcements stopped");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(vip = %spec.addr, interface = %spec.interface, error = %e, "announcements of the virtual IP stopped");
                            return;
                        }
                    }
                    if let Err(e) = self.send(&spec) {
                        tracing::warn!(vip = %spec.addr, interface = %spec.interface, error = %e, "repeated announcement of the virtual IP failed");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(vip = %addr, %interface, error = %e, "cannot start the thread that repeats virtual IP announcements; announced once");
        }
    }
}

#[cfg(test)]
mod tests;
