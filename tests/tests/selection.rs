//! `include`/`exclude` patterns (`mirrorkit mirror primary --include/--exclude`, module.toml's
//! `[[mirror]]` fields): what is outside the replicated set stays on its node, what crosses
//! the boundary by a rename reaches or leaves the peer, what cannot cross atomically is
//! refused with EXDEV, and the secondary's own entries outside the set survive the primary's
//! listings, removals and resyncs.

use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use mirrorkit_module::MirrorFilter;
use mirrorkit_tests::{require_root_and_fuse, tree, Mirror, MirrorOpts};

fn opts(include: &[&str], exclude: &[&str]) -> MirrorOpts {
    MirrorOpts {
        peer_timeout_ms: 500,
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
        ..MirrorOpts::default()
    }
}

fn filter(o: &MirrorOpts) -> MirrorFilter {
    let include = if o.include.is_empty() {
        vec!["**".to_string()]
    } else {
        o.include.clone()
    };
    MirrorFilter::from_patterns(&include, &o.exclude).expect("valid patterns")
}

fn exdev(r: std::io::Result<()>, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        other => panic!("{what}: expected EXDEV, got {other:?}"),
    }
}

/// The two files have the same content (a short message if not).
fn same_content(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    if x != y {
        let at = x.iter().zip(&y).position(|(p, q)| p != q);
        panic!(
            "{} ({} bytes) and {} ({} bytes) differ, first at byte {at:?}",
            a.display(),
            x.len(),
            b.display(),
            y.len()
        );
    }
}

fn assert_same(m: &Mirror, f: &MirrorFilter) {
    if let Err(d) = tree::compare_selected(
        m.primary_dir(),
        m.secondary_dir(),
        20,
        f,
        tree::CompareOpts::default(),
    ) {
        panic!("{d}\n--- a log\n{}\n--- b log\n{}", m.a.log(), m.b.log());
    }
}

/// The secondary's own entries outside the set, laid down before the mirror starts.
fn secondary_own(b: &Path) {
    std::fs::create_dir_all(b.join("cache/deep")).unwrap();
    std::fs::write(b.join("cache/deep/own"), b"secondary's cache").unwrap();
    std::fs::write(b.join("own.tmp"), b"secondary's temp").unwrap();
    std::fs::create_dir_all(b.join("work")).unwrap();
    std::fs::write(b.join("work/w.tmp"), b"secondary's work").unwrap();
}

fn assert_secondary_own(b: &Path) {
    assert_eq!(
        std::fs::read(b.join("cache/deep/own")).unwrap(),
        b"secondary's cache"
    );
    assert_eq!(
        std::fs::read(b.join("own.tmp")).unwrap(),
        b"secondary's temp"
    );
}

#[test]
fn excluded_entries_stay_on_their_node_and_renames_cross_the_boundary() {
    if !require_root_and_fuse("excluded_entries_stay_on_their_node_and_renames_cross_the_boundary")
    {
        return;
    }
    let o = opts(&[], &["cache", "**/*.tmp", "app/scratch"]);
    let f = filter(&o);
    let mut m = Mirror::new(o);
    secondary_own(&m.b.dirs.data);
    std::fs::create_dir_all(m.a.dirs.data.join("work")).unwrap();
    m.start_secondary();
    m.start_primary();
    m.wait_primary_mode("in-sync", Duration::from_secs(20));
    // The first synchronisation listed the root and `work` without the secondary's own.
    assert_secondary_own(m.secondary_dir());
    assert!(m.secondary_dir().join("work/w.tmp").exists());

    let (p, s) = (
        m.primary_dir().to_path_buf(),
        m.secondary_dir().to_path_buf(),
    );
    // Outside the set: made, written, changed here only.
    std::fs::create_dir_all(p.join("cache/x")).unwrap();
    std::fs::write(p.join("cache/x/blob"), vec![1u8; 100_000]).unwrap();
    std::fs::write(p.join("a.tmp"), b"temp").unwrap();
    std::fs::set_permissions(
        p.join("a.tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir_all(p.join("app/scratch")).unwrap();
    std::fs::write(p.join("app/scratch/s"), b"scratch").unwrap();
    // Inside: replicated as always.
    std::fs::write(p.join("app/data"), b"data").unwrap();
    std::fs::write(p.join("keep"), b"keep").unwrap();
    assert!(
        !s.join("cache/x").exists(),
        "excluded directory reached the peer"
    );
    assert!(!s.join("a.tmp").exists(), "excluded file reached the peer");
    assert!(!s.join("app/scratch").exists());
    assert_eq!(std::fs::read(s.join("app/data")).unwrap(), b"data");

    // Into the set by a rename (the atomic-save pattern), with the file still open: the
    // content arrives whole, and what is written through the open descriptor afterwards too.
    let mut fh = std::fs::File::create(p.join("doc.tmp")).unwrap();
    fh.write_all(&vec![7u8; 3 << 20]).unwrap();
    fh.write_all_at(b"tail", 5 << 20).unwrap();
    std::fs::rename(p.join("doc.tmp"), p.join("doc")).unwrap();
    same_content(&s.join("doc"), &p.join("doc"));
    fh.write_all_at(b"after the rename", 10).unwrap();
    fh.sync_all().unwrap();
    same_content(&s.join("doc"), &p.join("doc"));
    drop(fh);
    // Replacing a replicated file by a rename from outside.
    std::fs::write(p.join("keep.tmp"), b"new keep").unwrap();
    std::fs::rename(p.join("keep.tmp"), p.join("keep")).unwrap();
    assert_eq!(std::fs::read(s.join("keep")).unwrap(), b"new keep");

    // Out of the set by a rename: gone from the peer, file and directory.
    std::fs::write(p.join("leaving"), b"bye").unwrap();
    assert!(s.join("leaving").exists());
    let mut open = std::fs::OpenOptions::new()
        .write(true)
        .open(p.join("leaving"))
        .unwrap();
    std::fs::rename(p.join("leaving"), p.join("left.tmp")).unwrap();
    assert!(!s.join("leaving").exists());
    open.write_all(b"written after it left").unwrap();
    open.sync_all().unwrap();
    drop(open);
    std::fs::create_dir_all(p.join("dir/sub")).unwrap();
    std::fs::write(p.join("dir/sub/f"), b"f").unwrap();
    assert!(s.join("dir/sub/f").exists());
    std::fs::rename(p.join("dir"), p.join("dir.tmp")).unwrap();
    assert!(!s.join("dir").exists());

    // What cannot cross atomically is refused, and changes nothing.
    exdev(
        std::fs::hard_link(p.join("app/data"), p.join("data.tmp")),
        "hard link out of the set",
    );
    exdev(
        std::fs::hard_link(p.join("a.tmp"), p.join("a")),
        "hard link into the set",
    );
    exdev(
        std::fs::rename(p.join("dir.tmp"), p.join("dir")),
        "directory into the set",
    );
    exdev(
        std::fs::rename(p.join("app"), p.join("app2")),
        "rename that changes what is excluded below",
    );
    assert!(p.join("app/scratch/s").exists() && !p.join("app2").exists());
    std::fs::create_dir(p.join("hl")).unwrap();
    std::fs::write(p.join("hl/f"), b"linked").unwrap();
    std::fs::hard_link(p.join("hl/f"), p.join("hl-f")).unwrap();
    exdev(
        std::fs::rename(p.join("hl"), p.join("hl.tmp")),
        "directory holding a file with several names out of the set",
    );
    // Renames inside the set and outside it work as usual.
    std::fs::rename(p.join("app/data"), p.join("app/data2")).unwrap();
    std::fs::rename(p.join("a.tmp"), p.join("b.tmp")).unwrap();
    std::fs::hard_link(p.join("keep"), p.join("keep2")).unwrap();

    // A directory empty on the primary but holding the secondary's own files is removed
    // on both.
    assert!(p.join("work").is_dir());
    std::fs::remove_dir(p.join("work")).unwrap();
    assert!(!s.join("work").exists(), "the secondary kept work/");

    assert_same(&m, &f);
    assert_secondary_own(&s);
    assert!(!s.join("b.tmp").exists() && !s.join("cache/x").exists());
    m.wait_primary_mode("in-sync", Duration::from_secs(1));
}

#[test]
fn the_selection_holds_through_a_resync() {
    if !require_root_and_fuse("the_selection_holds_through_a_resync") {
        return;
    }
    let o = opts(&["db", "conf"], &["db/tmp"]);
    let f = filter(&o);
    let mut m = Mirror::new(o);
    std::fs::write(m.b.dirs.data.join("own.tmp"), b"secondary's temp").unwrap();
    m.start_secondary();
    m.start_primary();
    m.wait_primary_mode("in-sync", Duration::from_secs(20));
    let p = m.primary_dir().to_path_buf();
    std::fs::create_dir_all(p.join("db/tmp")).unwrap();
    std::fs::create_dir_all(p.join("logs")).unwrap();
    std::fs::write(p.join("db/base"), vec![3u8; 200_000]).unwrap();
    std::fs::write(p.join("conf"), b"conf").unwrap();
    std::fs::write(p.join("logs/l1"), b"log").unwrap();
    // Directories are replicated (empty of unselected files); files only when selected.
    assert!(m.secondary_dir().join("logs").is_dir());
    assert!(!m.secondary_dir().join("logs/l1").exists());
    assert!(!m.secondary_dir().join("db/tmp").exists());
    assert_same(&m, &f);

    // The secondary leaves; the primary goes on alone and records what changes.
    m.b.stop();
    std::fs::write(p.join("db/base2"), b"written alone").unwrap();
    m.wait_primary_mode("alone", Duration::from_secs(10));
    std::fs::write(p.join("db/tmp/t"), b"temp").unwrap();
    std::fs::write(p.join("logs/l2"), b"log 2").unwrap();
    std::fs::write(p.join("db/new.part"), b"part").unwrap();
    std::fs::rename(p.join("logs/l2"), p.join("db/from-logs")).unwrap();
    std::fs::rename(p.join("db/base"), p.join("logs/base-moved")).unwrap();
    std::fs::remove_file(p.join("conf")).unwrap();
    // The secondary's own: an unselected file where the primary has nothing.
    std::fs::write(m.secondary_dir().join("logs/own-log"), b"own").unwrap();

    m.start_secondary();
    m.wait_primary_mode("in-sync", Duration::from_secs(30));
    let s = m.secondary_dir();
    assert_eq!(std::fs::read(s.join("db/from-logs")).unwrap(), b"log 2");
    assert!(!s.join("db/base").exists() && !s.join("logs/base-moved").exists());
    assert!(!s.join("db/tmp/t").exists() && !s.join("conf").exists());
    assert_eq!(std::fs::read(s.join("logs/own-log")).unwrap(), b"own");
    assert_eq!(
        std::fs::read(s.join("own.tmp")).unwrap(),
        b"secondary's temp"
    );
    assert_same(&m, &f);
}
