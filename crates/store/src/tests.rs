use std::os::unix::fs::{MetadataExt, PermissionsExt};

use mirrorkit_wire::{Meta, Op, RelPath, Target, Timespec};

use crate::Store;

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 0,
        gid: 0,
        mtime: Timespec {
            sec: 1_600_000_000,
            nsec: 5,
        },
    }
}

/// A root with a symlink `out` pointing at a directory outside it, and a file outside.
fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"keep").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
    (t, root, outside)
}

#[test]
fn create_write_rename_unlink() {
    let (_t, root, _) = setup();
    let mut s = Store::open(&root).unwrap();
    s.apply(
        &Op::Create {
            path: p("f"),
            meta: meta(0o640),
            excl: true,
            truncate: false,
            handle: Some(1),
        },
        &[],
        &[],
    )
    .unwrap();
    s.apply(
        &Op::Write {
            handle: 1,
            offset: 3,
        },
        b"abc",
        &[],
    )
    .unwrap();
    s.apply(&Op::Close { handle: 1 }, &[], &[]).unwrap();
    let md = std::fs::metadata(root.join("f")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"\0\0\0abc");
    s.apply(
        &Op::Rename {
            from: p("f"),
            to: p("g"),
            flags: 0,
        },
        &[],
        &[],
    )
    .unwrap();
    s.apply(&Op::Unlink { path: p("g") }, &[], &[]).unwrap();
    assert!(!root.join("g").exists());
    assert_eq!(s.open_handles(), 0);
}

#[test]
fn symlinks_never_lead_outside() {
    let (_t, root, outside) = setup();
    let mut s = Store::open(&root).unwrap();
    let attempts = [
        Op::Unlink {
            path: p("out/victim"),
        },
        Op::Create {
            path: p("out/new"),
            meta: meta(0o644),
            excl: true,
            truncate: false,
            handle: None,
        },
        Op::Open {
            path: p("out/victim"),
            handle: 9,
            truncate: true,
        },
        Op::Truncate {
            target: Target::Path(p("out/victim")),
            size: 0,
        },
        Op::SetAttr {
            target: Target::Path(p("out/victim")),
            mode: Some(0o777),
            uid: None,
            gid: None,
            atime: None,
            mtime: None,
        },
        Op::Rename {
            from: p("out/victim"),
            to: p("stolen"),
            flags: 0,
        },
        Op::SyncRemove {
            path: p("out/victim"),
        },
        Op::Mkdir {
            path: p("out/d"),
            meta: meta(0o755),
        },
    ];
    for op in &attempts {
        let e = s.apply(op, &[], &[]).unwrap_err();
        assert_eq!(e.errno(), libc::ELOOP, "{op:?}: {e}");
    }
    // Setting attributes of the symlink itself is fine and does not touch its target.
    s.apply(
        &Op::SetAttr {
            target: Target::Path(p("out")),
            mode: Some(0o777),
            uid: None,
            gid: None,
            atime: None,
            mtime: None,
        },
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
    assert_ne!(
        std::fs::metadata(&outside).unwrap().mode() & 0o777,
        0o777,
        "chmod followed the symlink"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert!(!root.join("stolen").exists());
}

#[test]
fn unknown_handle_is_refused_and_changes_nothing() {
    let (_t, root, _) = setup();
    let mut s = Store::open(&root).unwrap();
    std::fs::write(root.join("f"), b"x").unwrap();
    let e = s
        .apply(
            &Op::Write {
                handle: 42,
                offset: 0,
            },
            b"zz",
            &[],
        )
        .unwrap_err();
    assert!(e.to_string().contains("handle 42"), "{e}");
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"x");
}

#[test]
fn sync_dir_removes_extra_entries_and_sync_file_replaces() {
    let (_t, root, outside) = setup();
    let mut s = Store::open(&root).unwrap();
    std::fs::create_dir(root.join("d")).unwrap();
    std::fs::write(root.join("d/old"), b"old").unwrap();
    std::fs::create_dir_all(root.join("d/olddir/x")).unwrap();
    std::fs::write(root.join("d/keep"), b"k").unwrap();
    std::fs::hard_link(root.join("d/keep"), root.join("d/keep2")).unwrap();
    s.apply(
        &Op::SyncDir {
            path: p("d"),
            meta: meta(0o750),
            entries: vec![b"keep".to_vec()],
            first: true,
            last: false,
        },
        &[],
        &[],
    )
    .unwrap();
    s.apply(
        &Op::SyncDir {
            path: p("d"),
            meta: meta(0o750),
            entries: vec![b"keep2".to_vec()],
            first: false,
            last: true,
        },
        &[],
        &[],
    )
    .unwrap();
    let mut names: Vec<_> = std::fs::read_dir(root.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["keep", "keep2"]);
    // keep2 shares an inode with keep: syncing it must not change keep.
    s.apply(
        &Op::SyncFile {
            path: p("d/keep2"),
            meta: meta(0o600),
            size: 4,
        },
        &[],
        &[],
    )
    .unwrap();
    s.apply(
        &Op::SyncData {
            path: p("d/keep2"),
            offset: 0,
        },
        b"new!",
        &[],
    )
    .unwrap();
    assert_eq!(std::fs::read(root.join("d/keep")).unwrap(), b"k");
    assert_eq!(std::fs::read(root.join("d/keep2")).unwrap(), b"new!");
    assert_eq!(
        std::fs::metadata(root.join("d/keep2")).unwrap().mtime(),
        1_600_000_000
    );
    // The root listing that omits the symlink removes the symlink, not its target.
    s.apply(
        &Op::SyncDir {
            path: RelPath::root(),
            meta: meta(0o755),
            entries: vec![b"d".to_vec()],
            first: true,
            last: true,
        },
        &[],
        &[],
    )
    .unwrap();
    assert!(!root.join("out").exists());
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
}

#[test]
fn unwritten_ranges_of_a_preallocated_file() {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    let t = tempfile::tempdir().unwrap();
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(t.path().join("f"))
        .unwrap();
    crate::sys::fallocate(f.as_fd(), 0, 0, 1 << 20).unwrap();
    // Written but not flushed yet: must not count as unwritten.
    f.write_all_at(&[1u8; 8192], 8192).unwrap();
    let mut buf = [0u8; 4096];
    f.read_exact_at(&mut buf, 65536).unwrap();
    let u = crate::sys::unwritten_ranges(f.as_fd(), 0, 1 << 20).unwrap();
    if u.is_empty() {
        eprintln!("SKIPPED: this file system does not report unwritten extents (no FIEMAP)");
        return;
    }
    assert_eq!(u, [(0, 8192), (16384, 1 << 20)]);
}
