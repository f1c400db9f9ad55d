//! Every module shipped in `modules/` is valid, alone and together.

use std::path::PathBuf;

use mirrorkit_module::{check_module_set, load_module, ScriptKind};

fn modules_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../modules")
}

#[test]
fn every_shipped_module_passes_the_check() {
    let root = modules_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no module in {}", root.display());

    let mut loaded = Vec::new();
    let mut failures = String::new();
    for dir in &dirs {
        match load_module(dir, None) {
            Ok(m) => loaded.push(m),
            Err(ps) => ps.iter().for_each(|p| failures.push_str(&format!("{p}\n"))),
        }
    }
    assert!(
        failures.is_empty(),
        "shipped modules have problems:\n{failures}"
    );
    let clashes = check_module_set(&loaded);
    assert!(clashes.is_empty(), "shipped modules clash: {clashes:?}");
}

#[test]
fn the_demo_module_starts_and_stops_its_application() {
    let m = load_module(&modules_root().join("demo"), None).expect("the demo module is valid");
    assert_eq!(m.config.name, "demo");
    assert_eq!(m.config.mirrors.len(), 1);
    assert_eq!(m.config.vips.len(), 1);
    for kind in [ScriptKind::StartPrim, ScriptKind::StopPrim] {
        let path = m.script_path(kind).expect("declared");
        assert!(path.is_file(), "{} missing", path.display());
    }
}
