//! `mirrorkit console`: the web console's admin password and API tokens. The console itself
//! runs inside `mirrorkit daemon` (crates/console).

use std::io::BufRead;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use mirrorkit_console::auth::{self, TokenStore};
use mirrorkit_node::config::{self, ClusterFile};

use crate::cluster_cmd::ConfigArg;

#[derive(Subcommand)]
pub enum ConsoleCmd {
    /// Set the console's admin password on this node: reads it from the terminal (twice,
    /// without echo) or the first line of standard input, and writes only its argon2id hash
    /// into the cluster file. Do the same on the other node.
    SetPassword {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// API tokens for scripts (`Authorization: Bearer <token>`), kept hashed in this node's
    /// state directory.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; prints it once (it is stored hashed).
    Create {
        /// A name saying who uses it (recorded with every verb it asks).
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the tokens of this node.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke a token at once.
    Revoke {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(cmd: ConsoleCmd) -> Result<()> {
    match cmd {
        ConsoleCmd::SetPassword { config: c } => set_password(&c.config),
        ConsoleCmd::Token { cmd } => token(cmd),
    }
}

fn set_password(path: &Path) -> Result<()> {
    let cf = ClusterFile::load(path)?;
    let password = read_new_password()?;
    let hash = auth::hash_password(&password).map_err(|e| anyhow!(e))?;
    config::set_admin_password_hash(path, &hash)?;
    println!(
        "The console's admin password of node {} is set ({} holds its argon2id hash only).\n\
         Set the same on node {} (`mirrorkit console set-password` there), or put this line in the\n\
         [console] section of its cluster file:\n\
         \x20 admin_password_hash = \"{hash}\"\n\
         A running console uses it at the next login; a console that was waiting for a password\n\
         starts within 5 s.",
        cf.node,
        path.display(),
        cf.peer()
    );
    Ok(())
}

/// The password from the first line of `text`, checked.
pub fn password_from(text: &str, from: &str) -> Result<String> {
    let line = text.lines().next().unwrap_or("");
    auth::check_password(line).map_err(|e| anyhow!("{from}: {e}"))?;
    Ok(line.to_owned())
}

/// A new password: typed twice without echo on a terminal, else the first line of stdin.
fn read_new_password() -> Result<String> {
    let stdin = std::io::stdin();
    // SAFETY: isatty has no preconditions.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
        let first = read_hidden("New console password (user admin): ")?;
        auth::check_password(&first).map_err(|e| anyhow!(e))?;
        let second = read_hidden("Again: ")?;
        if first != second {
            bail!("the two passwords differ: nothing changed");
        }
        return Ok(first);
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    password_from(&line, "standard input")
}

/// Prompt on stderr and read one line from the terminal on stdin with echo off.
fn read_hidden(prompt: &str) -> Result<String> {
    use std::io::Write;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let fd = libc::STDIN_FILENO;
    // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a terminal (checked by the caller); saved is a valid termios.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        bail!(
            "cannot read the terminal's settings: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above; quiet is a valid termios derived from the current one.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
        bail!(
            "cannot turn the terminal's echo off: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: restoring the settings read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn token(cmd: TokenCmd) -> Result<()> {
    let store = |c: &ConfigArg| -> Result<TokenStore> {
        Ok(TokenStore::in_state_dir(
            &ClusterFile::load(&c.config)?.state,
        ))
    };
    match cmd {
        TokenCmd::Create { name, config } => {
            let s = store(&config)?;
            let secret = s.create(&name).map_err(|e| anyhow!(e))?;
            println!("{secret}");
            eprintln!(
                "Token {name:?} created in {} (stored hashed: this is the only time it is shown).\n\
                 Use it as `Authorization: Bearer <token>` with this node's console; a token is\n\
                 valid on the node that created it (create one on the other node too).",
                s.path().display()
            );
            Ok(())
        }
        TokenCmd::List { config } => {
            let tokens = store(&config)?.list().map_err(|e| anyhow!(e))?;
            if tokens.is_empty() {
                println!("no API tokens on this node");
            }
            for t in tokens {
                println!(
                    "{:<24} created {}",
                    t.name,
                    mirrorkit_scripts::utc_text(t.created_unix_ms)
                );
            }
            Ok(())
        }
        TokenCmd::Revoke { name, config } => {
            store(&config)?.revoke(&name).map_err(|e| anyhow!(e))?;
            println!("token {name:?} revoked");
            Ok(())
        }
    }
}
