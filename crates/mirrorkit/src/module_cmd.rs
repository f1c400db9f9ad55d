//! `mirrorkit module ...`: module folders from the command line.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use mirrorkit_module::{check_module_set, load_module, ModuleConfig};

#[derive(Subcommand)]
pub enum ModuleCmd {
    /// Check module folders: print every problem as FILE:LINE:COLUMN: FIELD: MESSAGE and exit
    /// with status 1, or print a summary of each module and exit with status 0.
    Check {
        /// Module folders, each holding a module.toml. Several are also checked against each
        /// other (names, replicated directories and virtual IPs must differ).
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// The cluster's node names, comma separated: default_primary must be one of them.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
    },
}

pub fn run(cmd: ModuleCmd) -> Result<()> {
    match cmd {
        ModuleCmd::Check { dirs, nodes } => check(&dirs, nodes),
    }
}

fn check(dirs: &[PathBuf], nodes: Vec<String>) -> Result<()> {
    let nodes = (!nodes.is_empty()).then_some(nodes);
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for dir in dirs {
        match load_module(dir, nodes.as_deref()) {
            Ok(m) => loaded.push(m),
            Err(ps) => problems.extend(ps),
        }
    }
    problems.extend(check_module_set(&loaded));

    let mut out = std::io::stdout().lock();
    for p in &problems {
        writeln!(out, "{p}").context("cannot write to standard output")?;
    }
    if problems.is_empty() {
        for m in &loaded {
            writeln!(
                out,
                "{}: module {:?} is valid: {}",
                m.file.display(),
                m.config.name,
                summary(&m.config)
            )
            .context("cannot write to standard output")?;
            for why in mirrorkit_node::unsupported(m) {
                writeln!(out, "warning: {why}; the daemon would not start it")
                    .context("cannot write to standard output")?;
            }
        }
        return Ok(());
    }
    out.flush().context("cannot write to standard output")?;
    let files: BTreeSet<&Path> = problems.iter().map(|p| p.file.as_path()).collect();
    eprintln!(
        "mirrorkit module check: {} in {} of {}",
        count(problems.len(), "problem", "problems"),
        files.len(),
        count(dirs.len(), "module folder", "module folders"),
    );
    // The problems are the output; exit status 1 says "invalid" without a second error message.
    std::process::exit(1);
}

fn summary(c: &ModuleConfig) -> String {
    [
        count(
            c.mirrors.len(),
            "replicated directory",
            "replicated directories",
        ),
        count(c.vips.len(), "virtual IP", "virtual IPs"),
        count(c.scripts.iter().count(), "script", "scripts"),
        count(c.checkers.len(), "checker", "checkers"),
    ]
    .join(", ")
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
