//! The watcher on a real folder: inotify events, settling, re-checking.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use mirrorkit_module::{ModuleWatcher, WatchUpdate};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(100);

fn module_toml(description: &str, extra: &str) -> String {
    format!(
        "name = \"w\"\ndescription = \"{description}\"\n{extra}\n[scripts]\nstart_prim = \"start\"\nstop_prim = \"stop\"\n"
    )
}

/// Replace module.toml the way editors save: write a temporary file, rename it over the old one.
fn save(dir: &Path, text: &str) {
    let tmp = dir.join(".module.toml.swp");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, dir.join("module.toml")).expect("rename");
}

fn script(dir: &Path, name: &str, mode: u32) {
    let p = dir.join(name);
    fs::write(&p, "#!/bin/sh\nexit 0\n").expect("write script");
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn valid_changes_are_yielded_and_invalid_ones_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    script(dir, "start", 0o755);
    script(dir, "stop", 0o755);
    save(dir, &module_toml("one", ""));

    let mut w = ModuleWatcher::new(dir, None)
        .expect("watch")
        .with_quiet_period(QUIET);
    match w.current() {
        Ok(m) => assert_eq!(m.config.description, "one"),
        Err(ps) => panic!("initial check failed: {ps:?}"),
    }
    assert_eq!(
        w.next_update(Duration::from_millis(300)).expect("watch"),
        None
    );

    // A valid change: the new configuration.
    save(dir, &module_toml("two", ""));
    match w.next_update(WAIT).expect("watch") {
        Some(WatchUpdate::Valid(m)) => assert_eq!(m.config.description, "two"),
        other => panic!("expected the new configuration, got {other:?}"),
    }

    // An invalid change: its problems, with line and field; the caller keeps "two".
    save(dir, &module_toml("three", "failback = \"yes\""));
    match w.next_update(WAIT).expect("watch") {
        Some(WatchUpdate::Invalid(ps)) => {
            assert_eq!(ps.len(), 1, "{ps:?}");
            assert_eq!((ps[0].line, ps[0].field.as_str()), (3, "failback"));
        }
        other => panic!("expected problems, got {other:?}"),
    }

    // Fixed again: valid, even though only the problem went away.
    save(dir, &module_toml("three", "# fixed"));
    match w.next_update(WAIT).expect("watch") {
        Some(WatchUpdate::Valid(m)) => assert_eq!(m.config.description, "three"),
        other => panic!("expected the fixed configuration, got {other:?}"),
    }

    // A change that leaves the module as it was yields nothing.
    save(dir, &module_toml("three", "# another comment"));
    assert_eq!(w.next_update(Duration::from_secs(1)).expect("watch"), None);

    // A script of the folder that stops being executable is a change too.
    fs::set_permissions(dir.join("stop"), fs::Permissions::from_mode(0o644)).expect("chmod");
    match w.next_update(WAIT).expect("watch") {
        Some(WatchUpdate::Invalid(ps)) => {
            assert_eq!(ps.len(), 1, "{ps:?}");
            assert_eq!(ps[0].field, "scripts.stop_prim");
            assert!(ps[0].message.contains("chmod +x"), "{}", ps[0]);
        }
        other => panic!("expected the script problem, got {other:?}"),
    }
}
