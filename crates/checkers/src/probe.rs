//! The probes: one check each, giving `Ok(())` or a detail an operator understands.

use std::fs;
use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mirrorkit_module::{Checker, Probe, ProcessTarget};
use mirrorkit_scripts::Runner;
use tokio::net::TcpStream;

use crate::ping;

/// Bytes of a pid file read: a PID is on its first line (some applications write more lines).
const PID_FILE_MAX_BYTES: u64 = 4096;
/// Where Linux shows network interfaces.
const SYS_CLASS_NET: &str = "/sys/class/net";
/// `IFF_UP` of `/sys/class/net/NAME/flags`.
const IFF_UP: u64 = 0x1;

/// Run one check of `checker`, within its `timeout_ms`. `runner` gives the module's script
/// environment (run directory, module folder) and runs script checkers.
pub async fn check(checker: &Checker, runner: &Runner) -> Result<(), String> {
    let timeout_ms = checker.timeout_ms;
    match &checker.probe {
        // The runner enforces the timeout itself: it kills the script's process group.
        Probe::Script { path } => runner.run_checker(&checker.name, path, timeout_ms).await,
        Probe::Tcp { address } => check_tcp(*address, timeout_ms).await,
        Probe::Ping { target } => ping::ping(*target, Duration::from_millis(timeout_ms)).await,
        Probe::Process(target) => {
            let target = target.clone();
            let run_dir = runner.env().run_dir.clone();
            blocking(timeout_ms, "process", move || {
                check_process(&target, &run_dir)
            })
            .await
        }
        Probe::Interface { interface } => {
            let interface = interface.clone();
            blocking(timeout_ms, "interface", move || check_interface(&interface)).await
        }
    }
}

/// A quick look at `/proc` or `/sys`, off the async workers, within the timeout.
async fn blocking(
    timeout_ms: u64,
    what: &str,
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let task = tokio::task::spawn_blocking(f);
    match tokio::time::timeout(Duration::from_millis(timeout_ms), task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!("the {what} check could not run: {e}")),
        Err(_) => Err(format!(
            "the {what} check did not finish within {timeout_ms} ms (the kernel's /proc or /sys \
             is slow to answer)"
        )),
    }
}

/// A process checker: the process its pid file names is alive, or some process has its name.
/// A relative pid file is in `run_dir` (`MIRRORKIT_RUN_DIR`).
pub fn check_process(target: &ProcessTarget, run_dir: &Path) -> Result<(), String> {
    match target {
        ProcessTarget::PidFile(file) => check_pid_file(&run_dir.join(file)),
        ProcessTarget::Name(name) => check_process_name(Path::new("/proc"), name),
    }
}

/// The pid file holds, on its first line, the PID of a living process (not a zombie).
pub fn check_pid_file(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let mut text = String::new();
    let read = fs::File::open(path).and_then(|f| {
        f.take(PID_FILE_MAX_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidData => io::Error::new(e.kind(), "it is not text"),
                _ => e,
            })
    });
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(format!("pid file {shown} does not exist"))
        }
        Err(e) => return Err(format!("cannot read pid file {shown}: {e}")),
    }
    let first = text.lines().next().unwrap_or_default().trim();
    if first.is_empty() {
        return Err(format!("pid file {shown} is empty"));
    }
    let pid = match first.parse::<i32>() {
        Ok(pid) if pid > 0 => pid,
        _ => {
            let shown_text: String = first.chars().take(40).collect();
            return Err(format!(
                "pid file {shown} does not hold a PID (its first line is {shown_text:?})"
            ));
        }
    };
    match process_state(Path::new("/proc"), pid) {
        Some(ProcState { state: 'Z', .. }) => Err(format!(
            "process {pid} (from {shown}) has exited: it is a zombie that its parent has not \
             reaped yet"
        )),
        Some(ProcState { state: 'X', .. }) | None => {
            Err(format!("no process with PID {pid} (from {shown})"))
        }
        Some(_) => Ok(()),
    }
}

/// Some process (not a zombie) has `name` as its `comm`.
fn check_process_name(proc_root: &Path, name: &str) -> Result<(), String> {
    let entries =
        fs::read_dir(proc_root).map_err(|e| format!("cannot list {}: {e}", proc_root.display()))?;
    let mut zombie = None;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // A process may exit while the list is read: it is then simply not there.
        let Some(p) = process_state(proc_root, pid) else {
            continue;
        };
        if p.comm != name {
            continue;
        }
        match p.state {
            'Z' | 'X' => zombie = Some(pid),
            _ => return Ok(()),
        }
    }
    Err(match zombie {
        Some(pid) => format!(
            "no running process named {name:?}: process {pid} of that name has exited (a zombie)"
        ),
        None => format!("no process named {name:?} (as in /proc/PID/comm)"),
    })
}

struct ProcState {
    comm: String,
    state: char,
}

/// The name and state of process `pid`, from `/proc/PID/stat`; `None` when it does not exist.
fn process_state(proc_root: &Path, pid: i32) -> Option<ProcState> {
    let stat = fs::read(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let stat = String::from_utf8_lossy(&stat);
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so cut at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some(ProcState { comm, state })
}

/// A TCP checker: a connection to `address` is accepted within `timeout_ms`.
pub async fn check_tcp(address: SocketAddr, timeout_ms: u64) -> Result<(), String> {
    let timeout = Duration::from_millis(timeout_ms);
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(_connection)) => Ok(()),
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
            Err(format!("connection to {address} refused"))
        }
        Ok(Err(e)) => Err(format!("cannot connect to {address}: {e}")),
        Err(_) => Err(format!(
            "connection to {address} not accepted within {timeout_ms} ms"
        )),
    }
}

/// An interface checker: `/sys/class/net/NAME/operstate` is `up`, or `unknown` with a carrier.
pub fn check_interface(name: &str) -> Result<(), String> {
    check_interface_in(Path::new(SYS_CLASS_NET), name)
}

fn check_interface_in(root: &Path, name: &str) -> Result<(), String> {
    let dir: PathBuf = root.join(name);
    let operstate = match fs::read_to_string(dir.join("operstate")) {
        Ok(s) => s.trim().to_owned(),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(format!("interface {name} does not exist"))
        }
        Err(e) => {
            return Err(format!(
                "cannot read {}: {e}",
                dir.join("operstate").display()
            ))
        }
    };
    match operstate.as_str() {
        "up" => Ok(()),
        "unknown" => match fs::read_to_string(dir.join("carrier")) {
            Ok(c) if c.trim() == "1" => Ok(()),
            Ok(_) => Err(format!(
                "interface {name} has no carrier (no link: a cable, or the other end, is down)"
            )),
            // The kernel refuses to read the carrier of an interface that is down.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(down(&dir, name)),
            Err(e) => Err(format!(
                "cannot read {}: {e}",
                dir.join("carrier").display()
            )),
        },
        "down" => Err(down(&dir, name)),
        "lowerlayerdown" => Err(format!(
            "interface {name} is down: the interface it is built on (its lower layer) is down"
        )),
        "dormant" => Err(format!(
            "interface {name} is dormant (up, waiting for an external event such as 802.1X \
             authentication)"
        )),
        "notpresent" => Err(format!(
            "interface {name} is not present (its device is missing)"
        )),
        "testing" => Err(format!("interface {name} is in testing mode")),
        other => Err(format!("interface {name} is in state {other:?}")),
    }
}

/// "interface X is down", with why when the flags tell.
fn down(dir: &Path, name: &str) -> String {
    let flags = fs::read_to_string(dir.join("flags"))
        .ok()
        .and_then(|f| u64::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok());
    match flags {
        Some(f) if f & IFF_UP == 0 => {
            format!("interface {name} is down (set down administratively: ip link set {name} up)")
        }
        Some(_) => {
            format!("interface {name} is down (no link: a cable, or the other end, is down)")
        }
        None => format!("interface {name} is down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_interface(root: &Path, name: &str, files: &[(&str, &str)]) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        for (file, text) in files {
            fs::write(dir.join(file), format!("{text}\n")).expect("write");
        }
    }

    #[test]
    fn interface_states_read_well() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        fake_interface(root, "up0", &[("operstate", "up")]);
        fake_interface(root, "virt0", &[("operstate", "unknown"), ("carrier", "1")]);
        fake_interface(root, "virt1", &[("operstate", "unknown"), ("carrier", "0")]);
        fake_interface(
            root,
            "admin0",
            &[("operstate", "down"), ("flags", "0x1002")],
        );
        fake_interface(
            root,
            "cable0",
            &[("operstate", "down"), ("flags", "0x1003")],
        );
        fake_interface(root, "vlan0", &[("operstate", "lowerlayerdown")]);
        assert_eq!(check_interface_in(root, "up0"), Ok(()));
        assert_eq!(check_interface_in(root, "virt0"), Ok(()));
        let err = |n: &str| check_interface_in(root, n).expect_err(n);
        assert!(err("virt1").contains("has no carrier"));
        assert_eq!(
            err("admin0"),
            "interface admin0 is down (set down administratively: ip link set admin0 up)"
        );
        assert!(err("cable0").starts_with("interface cable0 is down (no link"));
        assert!(err("vlan0").contains("lower layer"));
        assert_eq!(err("eth9"), "interface eth9 does not exist");
    }

    #[test]
    fn process_names_are_found_in_proc() {
        let me = process_state(Path::new("/proc"), std::process::id() as i32).expect("self");
        assert_eq!(check_process_name(Path::new("/proc"), &me.comm), Ok(()));
        assert_eq!(
            check_process_name(Path::new("/proc"), "no-such-proc"),
            Err("no process named \"no-such-proc\" (as in /proc/PID/comm)".into())
        );
    }

    #[test]
    fn stat_with_odd_names_parses() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(tmp.path().join("7")).expect("mkdir");
        fs::write(tmp.path().join("7/stat"), "7 (a) b (c) Z 1 7 7 0").expect("write");
        let p = process_state(tmp.path(), 7).expect("parsed");
        assert_eq!((p.comm.as_str(), p.state), ("a) b (c", 'Z'));
        assert!(process_state(tmp.path(), 8).is_none());
    }

    #[test]
    fn pid_files_that_name_no_process_say_so() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("app.pid");
        let shown = file.display().to_string();
        assert_eq!(
            check_pid_file(&file),
            Err(format!("pid file {shown} does not exist"))
        );
        fs::write(&file, "\n").expect("write");
        assert_eq!(
            check_pid_file(&file),
            Err(format!("pid file {shown} is empty"))
        );
        fs::write(&file, "abc\n").expect("write");
        assert!(check_pid_file(&file)
            .expect_err("abc")
            .ends_with("does not hold a PID (its first line is \"abc\")"));
        fs::write(&file, "-3").expect("write");
        assert!(check_pid_file(&file).is_err());
        // Like postgres.pid: the PID on the first line, more after it.
        fs::write(&file, format!("{}\n/var/lib/pg\n", std::process::id())).expect("write");
        assert_eq!(check_pid_file(&file), Ok(()));
        // The largest PID Linux can give is 4194304.
        fs::write(&file, "2147483647\n").expect("write");
        assert_eq!(
            check_pid_file(&file),
            Err(format!("no process with PID 2147483647 (from {shown})"))
        );
    }
}
