//! Never start on stale data (PRODUCT.md, the contract, clause 3), with the roles given on the
//! command line: a node that was secondary refuses to start as primary on its own, and says
//! why; forced (`--force`, the `prim` verb), it runs; when the old primary, which went on
//! writing meanwhile, returns as secondary, the split brain is resolved towards the forced node
//! and nothing of the old primary is lost: its whole tree is kept aside first.

use std::path::Path;
use std::time::Duration;

use mirrorkit_tests::{require_root_and_fuse, tree, wait_for, Mirror, MirrorOpts};

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn stale_node_waits_then_forced_runs_and_the_old_primary_keeps_its_data_aside() {
    if !require_root_and_fuse(
        "stale_node_waits_then_forced_runs_and_the_old_primary_keeps_its_data_aside",
    ) {
        return;
    }
    let mut m = Mirror::start(MirrorOpts {
        peer_timeout_ms: 1000,
        ..MirrorOpts::default()
    });
    std::fs::write(m.primary_dir().join("common"), "shared by both\n").unwrap();

    // The secondary stops; the primary goes on alone, then stops too.
    m.b.stop();
    m.wait_primary_mode("alone", Duration::from_secs(20));
    std::fs::write(
        m.primary_dir().join("common"),
        "changed by the old primary\n",
    )
    .unwrap();
    std::fs::write(
        m.primary_dir().join("only-old-primary"),
        "written while alone\n",
    )
    .unwrap();
    m.a.stop();

    // The old secondary may not lead: its peer wrote after it left.
    m.swap_roles();
    let refused = m
        .start_primary_with(&[])
        .expect_err("a node that was secondary must not start as primary on its own");
    assert!(
        refused.contains("refusing to start as primary")
            && refused.contains("was secondary")
            && refused.contains("--force"),
        "the refusal must say why and what to do:\n{refused}"
    );
    assert_eq!(read(m.primary_dir(), "common"), "shared by both\n");
    assert!(!m.primary_dir().join("only-old-primary").exists());

    // Forced, it runs, and says who forced it.
    m.start_primary_with(&["--force"])
        .unwrap_or_else(|log| panic!("a forced start must run:\n{log}"));
    let log = m.a.log();
    assert!(
        log.contains("primary FORCED by an operator") && log.contains("forced_by="),
        "the forcing must be logged with who did it:\n{log}"
    );
    std::fs::write(
        m.primary_dir().join("common"),
        "changed by the forced node\n",
    )
    .unwrap();
    std::fs::write(m.primary_dir().join("only-forced"), "written after prim\n").unwrap();

    // The old primary returns as secondary: split brain, resolved towards the forced node,
    // with the old primary's divergent data kept aside first.
    m.start_secondary();
    let s = m.wait_primary_mode("in-sync", Duration::from_secs(60));
    assert_eq!(s.sessions, 1, "one resync, not a refusal loop: {s:?}");
    let old = m.b.dirs.state.join("split-brain");
    let kept = wait_for(Duration::from_secs(5), || {
        std::fs::read_dir(&old)
            .ok()?
            .flatten()
            .next()
            .map(|e| e.path())
    })
    .unwrap_or_else(|| panic!("no copy kept aside in {}:\n{}", old.display(), m.b.log()));
    assert_eq!(read(&kept, "common"), "changed by the old primary\n");
    assert_eq!(read(&kept, "only-old-primary"), "written while alone\n");
    assert!(
        m.b.log().contains("split"),
        "the old primary must report the split brain:\n{}",
        m.b.log()
    );
    // Then it holds the forced node's data, exactly.
    assert_eq!(
        read(m.secondary_dir(), "common"),
        "changed by the forced node\n"
    );
    assert!(!m.secondary_dir().join("only-old-primary").exists());
    tree::compare(m.primary_dir(), m.secondary_dir(), 20)
        .unwrap_or_else(|e| panic!("trees differ after the resync: {e}"));
}
