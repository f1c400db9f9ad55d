//! Read passthrough asked for but unavailable: here the FUSE workers lack CAP_SYS_ADMIN, which
//! the kernel requires to register backing files. The mount works as without passthrough
//! (reads through the engine) and says why.
//!
//! In-process (no peer: the primary runs alone), so that the capability can be dropped from
//! the mounting thread only: the FUSE workers inherit its capabilities, while the mount itself
//! goes through the setuid `fusermount3` when mount(2) is refused.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use mirrorkit_engine::link::LinkConfig;
use mirrorkit_engine::mount::{mount_with, MountOptions};
use mirrorkit_engine::passthrough::NOT_INITIALISED;

const CAP_SYS_ADMIN: u32 = 21;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drop CAP_SYS_ADMIN from this thread's effective set (threads it starts inherit that).
fn drop_sys_admin() -> std::io::Result<()> {
    const V3: u32 = 0x2008_0522;
    let mut hdr = CapHeader {
        version: V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a valid header and two data structs, as capget wants for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    data[0].effective &= !(1 << CAP_SYS_ADMIN);
    // SAFETY: as above; lowering the effective set is always allowed.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn runnable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let fuse = Path::new("/dev/fuse").exists();
    let fusermount = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .any(|p| Path::new(p).exists());
    if root && fuse && fusermount {
        return true;
    }
    let why = format!(
        "passthrough fallback test needs root, /dev/fuse and fusermount3 (root: {root}, \
         /dev/fuse: {fuse}, fusermount3: {fusermount})"
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}; CI is set, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED {why}");
    false
}

#[test]
fn without_cap_sys_admin_reads_go_through_the_engine() {
    if !runnable() {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let data = base.path().join("data");
    let state = base.path().join("state");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(data.join("before"), b"written before the mount").expect("write");

    // In a thread of its own: the capability stays dropped for it and its FUSE workers only.
    let dir = data.clone();
    let result = std::thread::spawn(move || {
        drop_sys_admin().expect("capset");
        let mounted = mount_with(
            "t",
            &dir,
            &state,
            LinkConfig::default(),
            MountOptions {
                read_passthrough: true,
            },
        )
        .expect("mount without CAP_SYS_ADMIN (through fusermount3)");
        let core = mounted.core.clone();
        // FUSE_INIT is answered once the workers run: wait for its verdict.
        let deadline = Instant::now() + Duration::from_secs(10);
        while core.passthrough.reason() == NOT_INITIALISED {
            assert!(Instant::now() < deadline, "FUSE_INIT never answered");
            let _ = std::fs::metadata(&dir);
            std::thread::sleep(Duration::from_millis(20));
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let target = format!(" {} ", dir.display());
        assert!(
            info.lines()
                .any(|l| l.contains(&target) && l.contains(" - fuse")),
            "{} is not a FUSE mount:\n{info}",
            dir.display()
        );
        let active = core.passthrough.active();
        let reason = core.passthrough.reason();

        // Everything works as without passthrough.
        let mut got = String::new();
        std::fs::File::open(dir.join("before"))
            .and_then(|mut f| f.read_to_string(&mut got))
            .expect("read through the mount");
        std::fs::write(dir.join("after"), b"written through the mount").expect("write");
        let after = std::fs::read(dir.join("after")).expect("read back");
        let c = &core.passthrough.counters;
        let counters = (
            c.passthrough_opens
                .load(std::sync::atomic::Ordering::Relaxed),
            c.read_opens_through_engine
                .load(std::sync::atomic::Ordering::Relaxed),
            c.engine_reads.load(std::sync::atomic::Ordering::Relaxed),
        );
        drop(core);
        mounted.unmount().expect("unmount");
        (active, reason, got, after, counters)
    })
    .join()
    .expect("mount thread");

    let (active, reason, got, after, (pt_opens, engine_opens, engine_reads)) = result;
    assert!(!active, "passthrough in force without CAP_SYS_ADMIN");
    assert!(reason.contains("CAP_SYS_ADMIN"), "reason: {reason}");
    assert_eq!(got, "written before the mount");
    assert_eq!(after, b"written through the mount");
    assert_eq!(pt_opens, 0);
    assert_eq!(
        engine_opens, 2,
        "both read-only opens go through the engine"
    );
    assert!(
        engine_reads >= 2,
        "the engine served the reads ({engine_reads})"
    );
    // Unmounted: the real directory shows again, with the file written through the mount.
    assert_eq!(
        std::fs::read(data.join("after")).expect("backing file"),
        b"written through the mount"
    );
}
