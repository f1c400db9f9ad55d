//! The I/O edge of the checker: reading a module folder and checking on disk what the file names
//! (scripts present, executable, inside the folder; replicated directories apart from the
//! module's own files). Everything about the text itself is in `parse.rs`.

use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{ModuleConfig, Probe, ScriptKind, MODULE_FILE, MODULE_FILE_MAX_BYTES};
use crate::parse;
use crate::problem::{LineIndex, Positions, Problem};

/// How many bytes of a script are read to find its `#!` line.
const SHEBANG_MAX_BYTES: usize = 256;

/// A module read from its folder and found valid, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedModule {
    /// The module folder, canonical (absolute, symbolic links resolved).
    pub dir: PathBuf,
    /// Its `module.toml`, as the caller named it (for messages).
    pub file: PathBuf,
    pub config: ModuleConfig,
    /// Where each field was written, to place problems found later (by the daemon, or by
    /// [`crate::check_module_set`]) on the right line.
    pub positions: Positions,
}

impl LoadedModule {
    /// The absolute path of a declared script.
    pub fn script_path(&self, kind: ScriptKind) -> Option<PathBuf> {
        self.config
            .scripts
            .get(kind)
            .map(|s| self.dir.join(&s.path))
    }

    /// The absolute path of the `[notify]` command, if any.
    pub fn notify_command_path(&self) -> Option<PathBuf> {
        self.config
            .notify
            .as_ref()
            .and_then(|n| n.command.as_ref())
            .map(|c| self.dir.join(c))
    }

    /// A problem about `field` of this module's file.
    pub fn problem(&self, field: &str, message: impl Into<String>) -> Problem {
        self.positions.problem(field, message)
    }
}

/// Read `dir/module.toml`, check it and the files it names. `nodes`: the cluster's node names,
/// when known (then `default_primary` must be one of them). Returns every problem found.
pub fn load_module(dir: &Path, nodes: Option<&[String]>) -> Result<LoadedModule, Vec<Problem>> {
    let file = dir.join(MODULE_FILE);
    let whole_file = |message: String| Problem {
        file: file.clone(),
        line: 0,
        column: 0,
        field: String::new(),
        message,
    };
    let canon = match fs::canonicalize(dir) {
        Ok(c) if c.is_dir() => c,
        Ok(_) => {
            return Err(vec![whole_file(format!(
                "{} is not a directory: a module is a folder holding module.toml and its scripts",
                dir.display()
            ))])
        }
        Err(e) => {
            return Err(vec![whole_file(format!(
                "cannot open the module folder {}: {e}",
                dir.display()
            ))])
        }
    };
    let src = read_module_file(&file).map_err(|p| vec![p])?;

    let parsed = parse::parse(&src, &file, nodes);
    let mut problems = parsed.problems;
    for (path, what) in [(dir, "the module folder"), (file.as_path(), "module.toml")] {
        if let Some(m) = world_writable(path, what) {
            problems.push(whole_file(m));
        }
    }
    if let Some(config) = &parsed.config {
        check_on_disk(config, &canon, dir, &parsed.positions, &mut problems);
    }
    crate::problem::sort(&mut problems);
    match parsed.config {
        Some(config) if problems.is_empty() => Ok(LoadedModule {
            dir: canon,
            file,
            config,
            positions: parsed.positions,
        }),
        _ => Err(problems),
    }
}

/// The text of `module.toml`, refused when missing, too large or not UTF-8.
fn read_module_file(file: &Path) -> Result<String, Problem> {
    let problem = |line: u32, column: u32, message: String| Problem {
        file: file.to_path_buf(),
        line,
        column,
        field: String::new(),
        message,
    };
    let f = fs::File::open(file).map_err(|e| {
        let message = if e.kind() == ErrorKind::NotFound {
            format!(
                "there is no {MODULE_FILE} in this folder: a module folder holds {MODULE_FILE} and \
                 its scripts (see docs/modules.md)"
            )
        } else {
            format!("cannot read {MODULE_FILE}: {e}")
        };
        problem(0, 0, message)
    })?;
    let mut bytes = Vec::new();
    f.take(MODULE_FILE_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| problem(0, 0, format!("cannot read {MODULE_FILE}: {e}")))?;
    if bytes.len() as u64 > MODULE_FILE_MAX_BYTES {
        return Err(problem(
            0,
            0,
            format!("{MODULE_FILE} is larger than {MODULE_FILE_MAX_BYTES} bytes: is this the right file?"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(&e.as_bytes()[..good]).into_owned();
        let p = LineIndex::new(&text).position(good);
        problem(
            p.line,
            p.column,
            "this is not UTF-8 text: save the file as UTF-8".to_owned(),
        )
    })
}

/// Files the daemon runs as root must not be writable by every user.
fn world_writable(path: &Path, what: &str) -> Option<String> {
    let mode = fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o002 != 0).then(|| {
        format!(
            "{what} {} is writable by every user, and the daemon runs the module's scripts as \
             root: run chmod o-w {}",
            path.display(),
            path.display()
        )
    })
}

/// `dir`: the module folder, canonical; `named`: as the caller named it, for messages.
fn check_on_disk(
    config: &ModuleConfig,
    dir: &Path,
    named: &Path,
    positions: &Positions,
    problems: &mut Vec<Problem>,
) {
    for (kind, script) in config.scripts.iter() {
        let table_form = format!("scripts.{}.path", kind.key());
        let field = if positions.has(&table_form) {
            table_form
        } else {
            format!("scripts.{}", kind.key())
        };
        if let Err(m) = check_module_file(dir, named, &script.path) {
            problems.push(positions.problem(&field, m));
        }
    }
    for (i, c) in config.checkers.iter().enumerate() {
        if let Probe::Script { path } = &c.probe {
            if let Err(m) = check_module_file(dir, named, path) {
                problems.push(positions.problem(&format!("checker[{i}].script"), m));
            }
        }
    }
    if let Some(command) = config.notify.as_ref().and_then(|n| n.command.as_ref()) {
        if let Err(m) = check_module_file(dir, named, command) {
            problems.push(positions.problem("notify.command", m));
        }
    }
    for (i, m) in config.mirrors.iter().enumerate() {
        if let Err(message) = check_mirror_dir(dir, &m.dir) {
            problems.push(positions.problem(&format!("mirror[{i}].dir"), message));
        }
    }
}

/// A file of the module folder that the daemon will execute. `dir` is the folder, canonical;
/// `named`, the folder as the operator named it (messages show paths they can paste).
fn check_module_file(dir: &Path, named: &Path, rel: &Path) -> Result<(), String> {
    let path = dir.join(rel);
    let named_path = named.join(rel);
    let shown = rel.display();
    match fs::symlink_metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(format!(
                "{shown} does not exist in the module folder {}",
                named.display()
            ))
        }
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    }
    let real = fs::canonicalize(&path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            format!("{shown} is a symbolic link to a file that does not exist")
        } else {
            format!("cannot resolve {}: {e}", path.display())
        }
    })?;
    if !real.starts_with(dir) {
        return Err(format!(
            "{shown} resolves to {}, outside the module folder {}: keep scripts inside the folder \
             (copy the file in, or write a script there that calls it)",
            real.display(),
            named.display()
        ));
    }
    let meta =
        fs::metadata(&real).map_err(|e| format!("cannot inspect {}: {e}", real.display()))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(format!(
            "{shown} is not executable: run chmod +x {}",
            named_path.display()
        ));
    }
    if mode & 0o002 != 0 {
        return Err(format!(
            "{shown} is writable by every user, and the daemon runs it as root: run chmod o-w {}",
            named_path.display()
        ));
    }
    check_interpreter(&real, &shown.to_string())
}

/// A script needs a `#!` line naming an interpreter present here, unless it is a binary.
fn check_interpreter(path: &Path, shown: &str) -> Result<(), String> {
    let mut head = Vec::with_capacity(SHEBANG_MAX_BYTES);
    fs::File::open(path)
        .and_then(|f| f.take(SHEBANG_MAX_BYTES as u64).read_to_end(&mut head))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if head.starts_with(b"\x7fELF") {
        return Ok(());
    }
    let Some(rest) = head.strip_prefix(b"#!") else {
        return Err(format!(
            "{shown} has no #! line and is not a binary, so it cannot be executed: start it with \
             #!/bin/sh"
        ));
    };
    let line = rest.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let Some(interpreter) = line.split_whitespace().next() else {
        return Err(format!("{shown}: the #! line names no interpreter"));
    };
    if !Path::new(interpreter).is_absolute() {
        return Err(format!(
            "{shown}: the #! line names {interpreter:?}, which is not an absolute path"
        ));
    }
    if !Path::new(interpreter).exists() {
        return Err(format!(
            "{shown}: its interpreter {interpreter} (#! line) does not exist on this machine"
        ));
    }
    Ok(())
}

/// A replicated directory must stay apart from the module's own files and, when it exists
/// already, be a directory reached without symbolic links (so that comparing paths, here and
/// between modules, compares directories).
fn check_mirror_dir(module_dir: &Path, mirror: &Path) -> Result<(), String> {
    if module_dir.starts_with(mirror) {
        return Err(format!(
            "the module folder {} is inside this replicated directory: keep the module's files \
             out of replicated data (the peer's copy would change under its own daemon)",
            module_dir.display()
        ));
    }
    if mirror.starts_with(module_dir) {
        return Err(format!(
            "{} is inside the module folder {}: keep application data out of the module folder",
            mirror.display(),
            module_dir.display()
        ));
    }
    match fs::canonicalize(mirror) {
        Ok(real) => {
            if !real.is_dir() {
                return Err(format!(
                    "{} exists and is not a directory",
                    mirror.display()
                ));
            }
            if real != mirror {
                return Err(format!(
                    "{} leads through a symbolic link to {}: write the real path",
                    mirror.display(),
                    real.display()
                ));
            }
            Ok(())
        }
        // Not created yet: the module can still be checked on a machine where it is not
        // installed; the daemon refuses to start it until the directory exists.
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot inspect {}: {e}", mirror.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, body).expect("write script");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn module_files_on_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = fs::canonicalize(tmp.path()).expect("canonical");
        let outside = tempfile::tempdir().expect("tempdir");
        script(&dir, "ok", "#!/bin/sh\nexit 0\n", 0o755);
        script(&dir, "noexec", "#!/bin/sh\n", 0o644);
        script(&dir, "open", "#!/bin/sh\n", 0o777);
        script(&dir, "noshebang", "exit 0\n", 0o755);
        script(&dir, "badinterp", "#!/nonexistent/sh\n", 0o755);
        script(&dir, "relinterp", "#!sh\n", 0o755);
        let far = script(outside.path(), "far", "#!/bin/sh\n", 0o755);
        symlink(&far, dir.join("escape")).expect("symlink");
        symlink(dir.join("ok"), dir.join("inside")).expect("symlink");
        symlink(dir.join("gone"), dir.join("dangling")).expect("symlink");
        fs::create_dir(dir.join("sub")).expect("mkdir");

        let err = |name: &str| check_module_file(&dir, &dir, Path::new(name)).expect_err(name);
        assert!(check_module_file(&dir, &dir, Path::new("ok")).is_ok());
        assert!(check_module_file(&dir, &dir, Path::new("inside")).is_ok());
        assert!(err("missing").contains("does not exist in the module folder"));
        assert!(err("noexec").contains("chmod +x"));
        assert!(err("open").contains("chmod o-w"));
        assert!(err("noshebang").contains("no #! line"));
        assert!(err("badinterp").contains("/nonexistent/sh"));
        assert!(err("relinterp").contains("not an absolute path"));
        assert!(err("escape").contains("outside the module folder"));
        assert!(err("dangling").contains("does not exist"));
        assert!(err("sub").contains("not a regular file"));
    }

    #[test]
    fn mirror_dirs_on_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = fs::canonicalize(tmp.path()).expect("canonical");
        let module = base.join("module");
        fs::create_dir(&module).expect("mkdir");
        fs::create_dir(base.join("data")).expect("mkdir");
        fs::write(base.join("file"), "").expect("write");
        symlink(base.join("data"), base.join("link")).expect("symlink");

        assert!(check_mirror_dir(&module, &base.join("data")).is_ok());
        assert!(check_mirror_dir(&module, &base.join("not-yet")).is_ok());
        let err = |p: PathBuf| check_mirror_dir(&module, &p).expect_err("problem");
        assert!(err(base.clone()).contains("module folder"));
        assert!(err(module.join("data")).contains("inside the module folder"));
        assert!(err(base.join("file")).contains("not a directory"));
        assert!(err(base.join("link")).contains("symbolic link"));
    }
}
