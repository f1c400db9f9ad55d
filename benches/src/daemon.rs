//! Which `mirrorkit` binary the benchmark runs, and making sure it is the current code.
//!
//! The harness (`mirrorkit-tests`) starts `$MIRRORKIT_BIN`, else the `mirrorkit` next to the
//! running executable. Cargo does not build another package's binary for `cargo run -p
//! mirrorkit-benches`, and a stale binary there would be measured silently; so unless told
//! which binary to use, the benchmark first runs `cargo build --bin mirrorkit` with its own
//! profile and target directory (a no-op when up to date), then points the harness at it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The binary chosen and how.
pub struct Daemon {
    pub path: PathBuf,
    pub how: String,
}

/// Choose the binary (explicit path, `$MIRRORKIT_BIN`, or the sibling built here) and set
/// `MIRRORKIT_BIN` so that the harness starts exactly that one.
pub fn resolve(explicit: Option<PathBuf>, build: bool) -> Result<Daemon> {
    let given = explicit
        .map(|p| (p, "--mirrorkit-bin"))
        .or_else(|| std::env::var_os("MIRRORKIT_BIN").map(|p| (PathBuf::from(p), "MIRRORKIT_BIN")));
    let daemon = match given {
        Some((path, from)) => {
            if !path.is_file() {
                bail!("{from} {}: no such file", path.display());
            }
            Daemon {
                path,
                how: format!("from {from}, not rebuilt"),
            }
        }
        None => sibling(build)?,
    };
    let path = std::fs::canonicalize(&daemon.path)
        .with_context(|| format!("mirrorkit binary {}", daemon.path.display()))?;
    // Set before any node starts, while this process has a single thread.
    std::env::set_var("MIRRORKIT_BIN", &path);
    Ok(Daemon { path, ..daemon })
}

fn sibling(build: bool) -> Result<Daemon> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let mut dir = exe
        .parent()
        .context("executable without a directory")?
        .to_path_buf();
    // Test executables live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("mirrorkit");
    let rebuild_hint = "build it (cargo build --release --bin mirrorkit, with the same \
                        CARGO_TARGET_DIR) or name one with --mirrorkit-bin / MIRRORKIT_BIN";
    if !build {
        if !bin.is_file() {
            bail!("{} not found: {rebuild_hint}", bin.display());
        }
        return Ok(Daemon {
            path: bin,
            how: "next to this executable, not rebuilt (--no-build)".into(),
        });
    }
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(p) => p.to_string(),
        None => bail!("cannot tell the cargo profile of {}", exe.display()),
    };
    let target_dir = dir
        .parent()
        .context("executable not in a cargo target directory")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    // `cargo run` and `cargo test` tell their children which cargo they are.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "building the mirrorkit binary ({profile} profile) into {}",
        target_dir.display()
    );
    let status = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "--bin",
            "mirrorkit",
            "--profile",
            &profile,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            bail!("cargo build --bin mirrorkit failed ({s}): fix the build, or {rebuild_hint}")
        }
        Err(e) if bin.is_file() => {
            eprintln!(
                "WARNING: cannot run cargo ({e}); using {} as it is, which may be older than the source",
                bin.display()
            );
            return Ok(Daemon {
                path: bin,
                how: "next to this executable, NOT rebuilt (cargo unavailable)".into(),
            });
        }
        Err(e) => bail!(
            "cannot run cargo ({e}) and {} does not exist: {rebuild_hint}",
            bin.display()
        ),
    }
    if !bin.is_file() {
        bail!(
            "cargo built mirrorkit but not at {} (a --target build?): {rebuild_hint}",
            bin.display()
        );
    }
    Ok(Daemon {
        path: bin,
        how: format!("next to this executable, built with cargo ({profile} profile)"),
    })
}
