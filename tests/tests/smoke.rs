//! The first thing to break if the mirror does not mirror: a handful of operations through a
//! real mount, then both trees must be identical.

use std::time::Duration;

use mirrorkit_tests::{require_root_and_fuse, tree, Mirror, MirrorOpts};

#[test]
fn basic_operations_reach_the_secondary() {
    if !require_root_and_fuse("basic_operations_reach_the_secondary") {
        return;
    }
    let m = Mirror::start(MirrorOpts::default());
    let p = m.primary_dir();
    std::fs::write(p.join("f"), b"hello").unwrap();
    std::fs::create_dir_all(p.join("d/e")).unwrap();
    std::fs::write(p.join("d/e/g"), vec![7u8; 300_000]).unwrap();
    std::fs::rename(p.join("d"), p.join("d2")).unwrap();
    std::os::unix::fs::symlink("f", p.join("s")).unwrap();
    std::fs::hard_link(p.join("f"), p.join("h")).unwrap();
    assert_eq!(
        std::fs::read(m.secondary_dir().join("d2/e/g")).unwrap(),
        vec![7u8; 300_000]
    );
    tree::compare(m.primary_dir(), m.secondary_dir(), 20).unwrap();
    m.wait_primary_mode("in-sync", Duration::from_secs(1));
}
