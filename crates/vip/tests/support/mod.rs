//! Network namespaces for the virtual IP tests: each test builds its own small network (names
//! unique to the process and the test), runs the crate's functions inside it from a dedicated
//! thread, and deletes it when done, even on failure.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a test waits for something the kernel does asynchronously (a link coming up, an
/// announcement reaching a neighbour table). They take milliseconds; this bounds a failure.
pub const SETTLE_TIMEOUT_MS: u64 = 3_000;
const POLL_INTERVAL_MS: u64 = 10;

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

/// Whether this test can build namespaces. When it cannot, it prints why and the test returns,
/// unless `CI` is set: there, a skipped test would hide a broken environment, so it fails.
pub fn netns_available(test: &str) -> bool {
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root".to_string())
    } else {
        match Command::new("ip").args(["netns", "list"]).output() {
            Err(e) => Some(format!("cannot run `ip`: {e}")),
            Ok(out) if !out.status.success() => Some(format!(
                "`ip netns list` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(_) => None,
        }
    };
    match reason {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!("{test} needs root and `ip netns`: {reason} (CI is set: failing, not skipping)")
        }
        Some(reason) => {
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "mkvip-{}-{}",
            std::process::id(),
            NEXT_NETNS.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args...`, which must succeed; its output.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` in a thread that has entered this namespace: sockets it opens live here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on a namespace file descriptor; affects this thread only.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Sets a sysctl of this namespace (`/proc/sys/net` is per namespace of the reader).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| fs::write(&path, value))
            .unwrap_or_else(|e| panic!("{}: write {path}: {e}", self.name));
    }

    /// Waits until `interface` is up with its queue attached (until then the kernel silently
    /// drops what is sent on it).
    pub fn wait_up(&self, interface: &str) {
        eventually(&format!("{interface} up in {}", self.name), || {
            let line = self.ip(&["-o", "link", "show", "dev", interface]);
            (line.contains("state UP") && !line.contains("qdisc noop"))
                .then_some(())
                .ok_or(line)
        });
    }

    /// The link-layer address of `addr` in the neighbour table of `interface`, if any.
    pub fn neighbour(&self, addr: &str, interface: &str) -> Option<String> {
        let out = self.ip(&["neigh", "show", "to", addr, "dev", interface]);
        let mut words = out.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_string)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cannot delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("cannot delete netns {}: {e}", self.name),
        }
    }
}

/// A veth pair from `a`'s `a_if` to `b`'s `b_if`, created directly in the namespaces (no name is
/// ever taken in the host's), with fixed MACs, brought up.
pub fn veth(a: &Netns, a_if: &str, a_mac: &str, b: &Netns, b_if: &str, b_mac: &str) {
    run(
        "ip",
        &[
            "link", "add", a_if, "address", a_mac, "netns", &a.name, "type", "veth", "peer",
            "name", b_if, "address", b_mac, "netns", &b.name,
        ],
    );
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// Polls `check` until it succeeds; panics with its last observation after `SETTLE_TIMEOUT_MS`.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_millis(SETTLE_TIMEOUT_MS);
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!(
                    "timed out after {SETTLE_TIMEOUT_MS} ms waiting for {what}; last seen: {seen}"
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS)),
        }
    }
}

/// Two hosts on one link: `node` (interface `vip0`, 10.77.0.1/24) and `peer` (interface
/// `peer0`, 10.77.0.2/24).
pub struct Pair {
    pub node: Netns,
    pub peer: Netns,
}

pub const NODE_MAC: &str = "02:00:00:00:00:0a";
pub const PEER_MAC: &str = "02:00:00:00:00:0b";

impl Pair {
    pub fn new() -> Pair {
        let pair = Pair {
            node: Netns::new(),
            peer: Netns::new(),
        };
        veth(&pair.node, "vip0", NODE_MAC, &pair.peer, "peer0", PEER_MAC);
        pair.node
            .ip(&["addr", "add", "10.77.0.1/24", "dev", "vip0"]);
        pair.peer
            .ip(&["addr", "add", "10.77.0.2/24", "dev", "peer0"]);
        pair.node.wait_up("vip0");
        pair.peer.wait_up("peer0");
        pair
    }
}

/// A socket in the calling thread's namespace that receives every ARP frame of `interface`.
pub fn arp_capture(interface: &str) -> OwnedFd {
    let protocol = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2), checked.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(interface).unwrap();
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(
        ifindex,
        0,
        "{interface}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    fd
}

/// `SIOCGSTAMP`: the kernel's receive time of the last frame read from a socket.
const SIOCGSTAMP: libc::c_ulong = 0x8906;

/// The next frame on `fd` (Ethernet header included) and the kernel's time of its arrival
/// (unaffected by how late this thread reads it), or `None` once `deadline` passes.
pub fn next_frame(fd: &OwnedFd, deadline: Instant) -> Option<(Vec<u8>, Duration)> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
    if rc <= 0 {
        return None;
    }
    let mut buf = vec![0u8; 2048];
    // SAFETY: a valid buffer of the length given.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(n >= 0, "recv: {}", std::io::Error::last_os_error());
    buf.truncate(n as usize);
    let mut stamp = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: SIOCGSTAMP writes one timeval.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMP, &mut stamp) };
    assert_eq!(rc, 0, "SIOCGSTAMP: {}", std::io::Error::last_os_error());
    let at = Duration::new(stamp.tv_sec as u64, stamp.tv_usec as u32 * 1_000);
    Some((buf, at))
}

/// Drops CAP_NET_ADMIN and CAP_NET_RAW from the calling thread's effective capabilities (the
/// raw syscall changes this thread only).
pub fn drop_network_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_NET_RAW: u32 = 13;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data words, as the kernel expects.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0,
            "capget: {}",
            std::io::Error::last_os_error()
        );
        data[0].effective &= !((1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW));
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0,
            "capset: {}",
            std::io::Error::last_os_error()
        );
    }
}
