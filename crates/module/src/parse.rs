//! The module schema read from a parsed document: every field, its type and rule, and the rules
//! between fields. Pure: the files a module names are checked on disk in `load.rs`.
//!
//! Every section is read even when an earlier one had problems, so that one run of the checker
//! reports all of them; a [`ModuleConfig`] is built only when there were none.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::config::*;
use crate::problem::{Positions, Problem};
use crate::rules;
use crate::walk::{suggest, At, Table, Walker};

pub(crate) const TOP_FIELDS: &[&str] = &[
    "name",
    "description",
    "default_primary",
    "failback",
    "autostart",
    "heartbeat",
    "mirror",
    "vip",
    "scripts",
    "env",
    "checker",
    "notify",
    "replication",
];
pub(crate) const MIRROR_FIELDS: &[&str] = &["dir", "include", "exclude"];
pub(crate) const VIP_FIELDS: &[&str] = &["address", "interface"];
pub(crate) const SCRIPT_TABLE_FIELDS: &[&str] = &["path", "timeout_ms"];
pub(crate) const SCRIPT_SLOTS: &[&str] = &[
    "prestart",
    "start_both",
    "start_prim",
    "stop_prim",
    "stop_both",
    "poststop",
];
pub(crate) const CHECKER_FIELDS: &[&str] = &[
    "name",
    "kind",
    "process_name",
    "pid_file",
    "address",
    "script",
    "target",
    "interface",
    "interval_ms",
    "timeout_ms",
    "retries",
    "action",
    "max_restarts",
    "restart_window_ms",
];
/// The fields that belong to one kind of checker only, with that kind.
const CHECKER_KIND_FIELDS: &[(&str, &str)] = &[
    ("process_name", "process"),
    ("pid_file", "process"),
    ("address", "tcp"),
    ("script", "script"),
    ("target", "ping"),
    ("interface", "interface"),
];
pub(crate) const NOTIFY_FIELDS: &[&str] = &["command", "webhook", "timeout_ms"];
pub(crate) const REPLICATION_FIELDS: &[&str] = &["peer_timeout_ms", "resync_limit_mib_per_s"];

/// The outcome of reading one module file: the configuration when there was no problem.
pub(crate) struct Parsed {
    pub config: Option<ModuleConfig>,
    pub positions: Positions,
    pub problems: Vec<Problem>,
}

/// Read and check `src`, the text of `file`. `nodes`: the cluster's node names, when known.
pub(crate) fn parse(src: &str, file: &Path, nodes: Option<&[String]>) -> Parsed {
    let mut w = Walker::new(src, file);
    let (doc, errors) = DeTable::parse_recoverable(src);
    if !errors.is_empty() {
        syntax_problems(&mut w, &errors);
        return finish(w, None);
    }
    let root = w.root(&doc);
    let config = read_module(&mut w, &root, nodes);
    finish(w, config)
}

fn finish(w: Walker<'_>, config: Option<ModuleConfig>) -> Parsed {
    let Walker {
        mut problems,
        positions,
        ..
    } = w;
    let config = if problems.is_empty() {
        if config.is_none() {
            // Every path that leaves a field unset reports a problem; this one is a bug here.
            problems.push(positions.problem(
                "",
                "internal error: the module was not built although no problem was found; \
                 please report it with this module.toml",
            ));
        }
        config
    } else {
        None
    };
    crate::problem::sort(&mut problems);
    Parsed {
        config,
        positions,
        problems,
    }
}

/// TOML syntax errors, at most one per line: after an error the parser's recovery often reports
/// consequences of the same mistake further along that line.
fn syntax_problems(w: &mut Walker<'_>, errors: &[toml::de::Error]) {
    let mut seen_lines = Vec::new();
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        let before = w.problems.len();
        w.report(&span, "", format!("TOML syntax error: {}", e.message()));
        let line = w.problems.last().map(|p| p.line);
        if seen_lines.contains(&line) {
            w.problems.truncate(before);
        } else {
            seen_lines.push(line);
        }
    }
}

/// Apply `rule` to a string field, reporting its message at the field.
fn checked<T>(
    w: &mut Walker<'_>,
    at: At<String>,
    field: &str,
    rule: impl FnOnce(&str) -> Result<T, String>,
) -> Option<At<T>> {
    match rule(&at.value) {
        Ok(value) => Some(At {
            value,
            span: at.span,
        }),
        Err(message) => {
            w.report(&at.span, field, message);
            None
        }
    }
}

/// Apply a `rule` that only accepts or refuses to a string field, keeping the string.
fn valid(
    w: &mut Walker<'_>,
    at: At<String>,
    field: &str,
    rule: impl FnOnce(&str) -> Result<(), String>,
) -> Option<At<String>> {
    match rule(&at.value) {
        Ok(()) => Some(at),
        Err(message) => {
            w.report(&at.span, field, message);
            None
        }
    }
}

/// A string field that must be one of `names`.
fn one_of<T>(
    w: &mut Walker<'_>,
    at: At<String>,
    field: &str,
    what: &str,
    names: &[&str],
    from_name: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    if let Some(v) = from_name(&at.value) {
        return Some(v);
    }
    let hint = match suggest(&at.value, names) {
        Some(s) => format!(": did you mean {s:?}?"),
        None => String::new(),
    };
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    w.report(
        &at.span,
        field,
        format!(
            "unknown {what} {:?}{hint} (one of {})",
            at.value,
            list.join(", ")
        ),
    );
    None
}

/// "line N", for messages that point at another field.
fn line_of(w: &Walker<'_>, field: &str) -> String {
    match w.positions.get(field) {
        Some(p) => format!("line {}", p.line),
        None => "above".to_owned(),
    }
}

fn read_module(
    w: &mut Walker<'_>,
    root: &Table<'_, '_>,
    nodes: Option<&[String]>,
) -> Option<ModuleConfig> {
    w.unknown_keys(root, TOP_FIELDS, "module.toml");

    let name = w
        .required_string(root, "name", "module.toml", "name = \"myapp\"")
        .and_then(|s| valid(w, s, "name", rules::check_name));
    let description = match w.string(root, "description") {
        Some(s) => valid(w, s, "description", rules::check_description).map(|d| d.value),
        None => (!root.has("description")).then(String::new),
    };
    let default_primary = read_default_primary(w, root, nodes);
    let failback = bool_or(w, root, "failback", false);
    if failback == Some(true) && matches!(default_primary, Some(None)) {
        if let Some(v) = root.get("failback") {
            w.report(
                &v.span(),
                "failback",
                "failback = true needs default_primary: name the node the module moves back to \
                 when it returns",
            );
        }
    }
    let autostart = bool_or(w, root, "autostart", true);
    let heartbeat = match w.string(root, "heartbeat") {
        Some(s) => one_of(
            w,
            s,
            "heartbeat",
            "heartbeat profile",
            HeartbeatProfile::NAMES,
            HeartbeatProfile::from_name,
        ),
        None => (!root.has("heartbeat")).then_some(HeartbeatProfile::Default),
    };
    let mirrors = read_mirrors(w, root);
    let vips = read_vips(w, root);
    let scripts = read_scripts(w, root);
    let env = read_env(w, root);
    let checkers = read_checkers(w, root);
    let notify = read_notify(w, root);
    let replication = read_replication(w, root);

    Some(ModuleConfig {
        name: name?.value,
        description: description?,
        default_primary: default_primary?,
        failback: failback?,
        autostart: autostart?,
        heartbeat: heartbeat?,
        mirrors: mirrors?,
        vips: vips?,
        scripts: scripts?,
        env: env?,
        checkers: checkers?,
        notify: notify?,
        replication: replication?,
    })
}

/// `[replication]`, or its defaults when absent; `None` when a problem was reported.
fn read_replication(w: &mut Walker<'_>, root: &Table<'_, '_>) -> Option<Replication> {
    if !root.has("replication") {
        return Some(Replication::default());
    }
    let t = w.table(root, "replication", "replication".to_owned())?;
    w.unknown_keys(&t, REPLICATION_FIELDS, "[replication]");
    let peer_timeout_ms = if t.has("peer_timeout_ms") {
        w.integer(&t, "peer_timeout_ms", PEER_TIMEOUT_MS_RANGE, "milliseconds")
            .map(|v| v.value)
    } else {
        Some(DEFAULT_PEER_TIMEOUT_MS)
    };
    let resync_limit_mib_per_s = if t.has("resync_limit_mib_per_s") {
        w.integer(
            &t,
            "resync_limit_mib_per_s",
            RESYNC_LIMIT_MIB_PER_S_RANGE,
            "MiB per second",
        )
        .map(|v| Some(v.value))
    } else {
        Some(None)
    };
    Some(Replication {
        peer_timeout_ms: peer_timeout_ms?,
        resync_limit_mib_per_s: resync_limit_mib_per_s?,
    })
}

/// A boolean field with a default: `None` when present but not a boolean.
fn bool_or(w: &mut Walker<'_>, t: &Table<'_, '_>, key: &str, default: bool) -> Option<bool> {
    match w.boolean(t, key) {
        Some(b) => Some(b),
        None => (!t.has(key)).then_some(default),
    }
}

/// `Some(None)`: not given; `Some(Some(node))`: valid; `None`: a problem was reported.
fn read_default_primary(
    w: &mut Walker<'_>,
    root: &Table<'_, '_>,
    nodes: Option<&[String]>,
) -> Option<Option<String>> {
    if !root.has("default_primary") {
        return Some(None);
    }
    let at = w.string(root, "default_primary")?;
    let at = valid(w, at, "default_primary", rules::check_node_name)?;
    let node = at.value.clone();
    if let Some(nodes) = nodes {
        if !nodes.contains(&node) {
            let names = if nodes.is_empty() {
                "none given".to_owned()
            } else {
                nodes.join(", ")
            };
            w.report(
                &at.span,
                "default_primary",
                format!("{node:?} is not a node of this cluster (its nodes: {names})"),
            );
            return None;
        }
    }
    Some(Some(node))
}

fn read_mirrors(w: &mut Walker<'_>, root: &Table<'_, '_>) -> Option<Vec<Mirror>> {
    let items = w.table_array(root, "mirror", MAX_MIRRORS);
    let mut ok = true;
    let mut mirrors = Vec::new();
    let mut dirs: Vec<(usize, At<PathBuf>)> = Vec::new();
    for (i, item) in items {
        let Some(t) = w.as_table(item, format!("mirror[{i}]")) else {
            ok = false;
            continue;
        };
        w.unknown_keys(&t, MIRROR_FIELDS, "a [[mirror]] section");
        let dir = w
            .required_string(&t, "dir", "this [[mirror]]", "dir = \"/srv/app/data\"")
            .and_then(|s| checked(w, s, &t.field("dir"), rules::parse_mirror_dir));
        let include = read_patterns(w, &t, "include");
        let exclude = read_patterns(w, &t, "exclude");
        if let Some(dir) = &dir {
            dirs.push((i, dir.clone()));
        }
        match (dir, include, exclude) {
            (Some(dir), Some(include), Some(exclude)) => mirrors.push(Mirror {
                dir: dir.value,
                include: include.unwrap_or_else(|| vec![INCLUDE_ALL.to_owned()]),
                exclude: exclude.unwrap_or_default(),
            }),
            _ => ok = false,
        }
    }
    // One directory, one mirror: the same directory twice, or one inside another, would have two
    // writers of one tree.
    for (j, (jdx, b)) in dirs.iter().enumerate() {
        for (idx, a) in dirs.iter().take(j) {
            let other = format!("mirror[{idx}].dir");
            let at = line_of(w, &other);
            let message = if a.value == b.value {
                format!(
                    "{} is already replicated by {other} ({at}): declare each directory once",
                    b.value.display()
                )
            } else if b.value.starts_with(&a.value) {
                format!(
                    "{} is inside {}, already replicated by {other} ({at}): a directory can \
                     belong to one mirror only (remove this one; use exclude in the other to \
                     leave parts out)",
                    b.value.display(),
                    a.value.display()
                )
            } else if a.value.starts_with(&b.value) {
                format!(
                    "{} contains {}, already replicated by {other} ({at}): a directory can \
                     belong to one mirror only (keep the outer one)",
                    b.value.display(),
                    a.value.display()
                )
            } else {
                continue;
            };
            w.report(&b.span, &format!("mirror[{jdx}].dir"), message);
            ok = false;
            break;
        }
    }
    ok.then_some(mirrors)
}

/// `Some(None)`: not given; `Some(Some(list))`: valid; `None`: a problem was reported.
fn read_patterns(w: &mut Walker<'_>, t: &Table<'_, '_>, key: &str) -> Option<Option<Vec<String>>> {
    if !t.has(key) {
        return Some(None);
    }
    let list = w.strings(t, key)?;
    let field = t.field(key);
    let mut ok = true;
    if key == "include" && list.is_empty() {
        if let Some(v) = t.get(key) {
            w.report(
                &v.span(),
                &field,
                "include is empty, so nothing would be replicated: remove the line to replicate \
                 everything, or list what to replicate",
            );
        }
        ok = false;
    }
    if list.len() > MAX_PATTERNS {
        w.report(
            &list[MAX_PATTERNS].span,
            &format!("{field}[{MAX_PATTERNS}]"),
            format!("{} patterns: at most {MAX_PATTERNS} per list", list.len()),
        );
        ok = false;
    }
    let mut patterns: Vec<String> = Vec::new();
    for (i, p) in list.into_iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(first) = patterns.iter().position(|q| *q == p.value) {
            w.report(
                &p.span,
                &f,
                format!(
                    "{:?} is already {field}[{first}]: remove the repetition",
                    p.value
                ),
            );
            ok = false;
            patterns.push(p.value);
            continue;
        }
        if checked(w, p.clone(), &f, rules::parse_pattern).is_none() {
            ok = false;
        }
        patterns.push(p.value);
    }
    ok.then_some(Some(patterns))
}

fn read_vips(w: &mut Walker<'_>, root: &Table<'_, '_>) -> Option<Vec<Vip>> {
    let items = w.table_array(root, "vip", MAX_VIPS);
    let mut ok = true;
    let mut vips: Vec<Vip> = Vec::new();
    let mut seen: Vec<(usize, IpAddr)> = Vec::new();
    for (i, item) in items {
        let Some(t) = w.as_table(item, format!("vip[{i}]")) else {
            ok = false;
            continue;
        };
        w.unknown_keys(&t, VIP_FIELDS, "a [[vip]] section");
        let address = w
            .required_string(&t, "address", "this [[vip]]", "address = \"192.0.2.10/24\"")
            .and_then(|s| checked(w, s, &t.field("address"), rules::parse_vip_address));
        if let Some(a) = &address {
            if let Some((first, _)) = seen.iter().find(|(_, ip)| *ip == a.value.addr) {
                let other = format!("vip[{first}].address");
                let at = line_of(w, &other);
                w.report(
                    &a.span,
                    &t.field("address"),
                    format!(
                        "{} is already {other} ({at}): declare each virtual IP once",
                        a.value.addr
                    ),
                );
                ok = false;
            } else {
                seen.push((i, a.value.addr));
            }
        }
        let interface = w
            .required_string(&t, "interface", "this [[vip]]", "interface = \"eth0\"")
            .and_then(|s| valid(w, s, &t.field("interface"), rules::check_interface));
        match (address, interface) {
            (Some(a), Some(i)) => vips.push(Vip {
                address: a.value,
                interface: i.value,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(vips)
}

fn read_scripts(w: &mut Walker<'_>, root: &Table<'_, '_>) -> Option<Scripts> {
    if !root.has("scripts") {
        return Some(Scripts::default());
    }
    let t = w.table(root, "scripts", "scripts".to_owned())?;
    w.unknown_keys(&t, SCRIPT_SLOTS, "[scripts]");
    let mut ok = true;
    let mut scripts = Scripts::default();
    for kind in ScriptKind::ALL {
        let key = kind.key();
        let Some(v) = w.value(&t, key) else {
            continue;
        };
        match read_script(w, &t, key, v) {
            Some(s) => scripts.set(kind, s),
            None => ok = false,
        }
    }
    // What a start script starts, its stop script must be able to stop: on a switchover the
    // daemon runs stop_prim here before start_prim there.
    for kind in ScriptKind::ALL {
        let Some(other) = kind.counterpart() else {
            continue;
        };
        if let (Some(v), false) = (t.get(kind.key()), t.has(other.key())) {
            let message = if kind < other {
                format!(
                    "{kind} is declared without {other}: declare {other} too, so that what \
                     {kind} starts is stopped on a stop or a switchover"
                )
            } else {
                format!("{kind} is declared without {other}: declare {other} too, or remove {kind}")
            };
            w.report(&v.span(), &t.field(kind.key()), message);
            ok = false;
        }
    }
    ok.then_some(scripts)
}

fn read_script(
    w: &mut Walker<'_>,
    t: &Table<'_, '_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
) -> Option<Script> {
    let field = t.field(key);
    match v.get_ref() {
        DeValue::String(_) => {
            let s = w.as_string(v, &field)?;
            let path = checked(w, s, &field, rules::parse_module_file)?;
            Some(Script {
                path: path.value,
                timeout_ms: DEFAULT_SCRIPT_TIMEOUT_MS,
            })
        }
        DeValue::Table(_) => {
            let st = w.as_table(v, field.clone())?;
            w.unknown_keys(&st, SCRIPT_TABLE_FIELDS, &format!("scripts.{key}"));
            let path = w
                .required_string(
                    &st,
                    "path",
                    &format!("scripts.{key}"),
                    &format!("path = \"{key}\""),
                )
                .and_then(|s| checked(w, s, &st.field("path"), rules::parse_module_file));
            let timeout_ms = if st.has("timeout_ms") {
                w.integer(&st, "timeout_ms", SCRIPT_TIMEOUT_MS_RANGE, "milliseconds")
                    .map(|t| t.value)
            } else {
                Some(DEFAULT_SCRIPT_TIMEOUT_MS)
            };
            Some(Script {
                path: path?.value,
                timeout_ms: timeout_ms?,
            })
        }
        _ => {
            w.wrong_type(
                v,
                &field,
                &format!(
                    "a file name (\"{key}\") or a table ({{ path = \"{key}\", timeout_ms = 60000 }})"
                ),
            );
            None
        }
    }
}

fn read_env(w: &mut Walker<'_>, root: &Table<'_, '_>) -> Option<BTreeMap<String, String>> {
    if !root.has("env") {
        return Some(BTreeMap::new());
    }
    let t = w.table(root, "env", "env".to_owned())?;
    let mut ok = true;
    let mut env = BTreeMap::new();
    for (n, (key, key_span, v)) in t.entries().enumerate() {
        let field = t.field(key);
        w.value(&t, key);
        if n == MAX_ENV_VARS {
            w.report(
                &key_span,
                &field,
                format!("too many variables: [env] holds at most {MAX_ENV_VARS}"),
            );
            ok = false;
        }
        if let Err(m) = rules::check_env_name(key) {
            w.report(&key_span, &field, m);
            ok = false;
        }
        let value = match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) => {
                let shown = scalar_text(v);
                w.wrong_type(
                    v,
                    &field,
                    &format!("a string (environment values are strings: write \"{shown}\")"),
                );
                None
            }
            _ => {
                w.wrong_type(v, &field, "a string");
                None
            }
        };
        match value.map(|s| (rules::check_env_value(&s), s)) {
            Some((Ok(()), s)) => {
                env.insert(key.to_owned(), s);
            }
            Some((Err(m), _)) => {
                w.report(&v.span(), &field, m);
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(env)
}

/// A scalar as it would be written inside quotes.
fn scalar_text(v: &Spanned<DeValue<'_>>) -> String {
    match v.get_ref() {
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        _ => String::new(),
    }
}

fn read_checkers(w: &mut Walker<'_>, root: &Table<'_, '_>) -> Option<Vec<Checker>> {
    let items = w.table_array(root, "checker", MAX_CHECKERS);
    let mut ok = true;
    let mut checkers = Vec::new();
    let mut names: Vec<(usize, String)> = Vec::new();
    for (i, item) in items {
        let Some(t) = w.as_table(item, format!("checker[{i}]")) else {
            ok = false;
            continue;
        };
        let name = w
            .required_string(&t, "name", "this [[checker]]", "name = \"http\"")
            .and_then(|s| valid(w, s, &t.field("name"), rules::check_name));
        if let Some(n) = &name {
            if let Some((first, _)) = names.iter().find(|(_, m)| *m == n.value) {
                let other = format!("checker[{first}].name");
                let at = line_of(w, &other);
                w.report(
                    &n.span,
                    &t.field("name"),
                    format!(
                        "{:?} is already the name of {other} ({at}): checker names must differ",
                        n.value
                    ),
                );
                ok = false;
            } else {
                names.push((i, n.value.clone()));
            }
        }
        match (name, read_checker(w, &t)) {
            (Some(n), Some(mut c)) => {
                c.name = n.value;
                checkers.push(c);
            }
            _ => ok = false,
        }
    }
    ok.then_some(checkers)
}

/// A checker's fields other than its name (left empty here).
fn read_checker(w: &mut Walker<'_>, t: &Table<'_, '_>) -> Option<Checker> {
    w.unknown_keys(t, CHECKER_FIELDS, "a [[checker]] section");
    let kind = w
        .required_string(t, "kind", "this [[checker]]", "kind = \"tcp\"")
        .and_then(|s| {
            let field = t.field("kind");
            one_of(w, s, &field, "checker kind", Probe::KIND_NAMES, |k| {
                Probe::KIND_NAMES.iter().find(|n| **n == k).copied()
            })
        });
    let probe = kind.and_then(|kind| read_probe(w, t, kind));
    // An unknown kind was reported above; the other fields are then read as an application
    // checker's, the most common.
    let scope = kind.map_or(CheckerScope::Application, CheckerScope::of_kind);

    let interval = if t.has("interval_ms") {
        w.integer(t, "interval_ms", CHECK_INTERVAL_MS_RANGE, "milliseconds")
            .map(|v| v.value)
    } else {
        Some(DEFAULT_CHECK_INTERVAL_MS)
    };
    let timeout = read_check_timeout(w, t, interval);
    let retries = if t.has("retries") {
        w.integer(t, "retries", 0..=u64::from(CHECK_RETRIES_MAX), "retries")
            .map(|v| v.value)
    } else {
        Some(u64::from(DEFAULT_CHECK_RETRIES))
    };
    let action = match w.string(t, "action") {
        Some(s) => {
            let field = t.field("action");
            let span = s.span.clone();
            let action = one_of(
                w,
                s,
                &field,
                "action",
                CheckAction::NAMES,
                CheckAction::from_name,
            );
            match (action, kind) {
                (Some(CheckAction::Restart), Some(kind)) if scope == CheckerScope::Node => {
                    w.report(
                        &span,
                        &field,
                        format!(
                            "{} checker watches this node's network, and restarting the \
                             application does not bring a network back: a node checker gives \
                             the primary role to the peer (action = \"failover\", its default); \
                             remove this line",
                            with_article(kind)
                        ),
                    );
                    None
                }
                _ => action,
            }
        }
        None => (!t.has("action")).then_some(default_check_action(scope)),
    };
    let (max_restarts, window) = match kind {
        Some(kind) if scope == CheckerScope::Node => refuse_restart_policy(
            w,
            t,
            &format!(
                "{} checker is a node checker, which never restarts the application \
                 (restarting it does not bring a network back)",
                with_article(kind)
            ),
            "",
        ),
        _ => read_restart_policy(w, t, action, interval, retries),
    };

    Some(Checker {
        name: String::new(),
        probe: probe?,
        interval_ms: interval?,
        timeout_ms: timeout?,
        retries: u32::try_from(retries?).ok()?,
        action: action?,
        max_restarts: max_restarts?,
        restart_window_ms: window?,
    })
}

fn read_probe(w: &mut Walker<'_>, t: &Table<'_, '_>, kind: &str) -> Option<Probe> {
    let mut ok = true;
    for (key, owner) in CHECKER_KIND_FIELDS {
        if *owner != kind {
            if let Some(v) = t.get(key) {
                w.report(
                    &v.span(),
                    &t.field(key),
                    format!(
                        "{key} applies to kind = \"{owner}\" checkers, and this one is kind = \
                         \"{kind}\": remove it, or change kind"
                    ),
                );
                ok = false;
            }
        }
    }
    let probe = match kind {
        "process" => read_process_target(w, t).map(Probe::Process),
        "tcp" => w
            .required_string(
                t,
                "address",
                "this tcp checker",
                "address = \"127.0.0.1:8080\"",
            )
            .and_then(|s| checked(w, s, &t.field("address"), rules::parse_tcp_address))
            .map(|a| Probe::Tcp { address: a.value }),
        "ping" => w
            .required_string(t, "target", "this ping checker", "target = \"10.0.0.1\"")
            .and_then(|s| checked(w, s, &t.field("target"), rules::parse_ping_target))
            .map(|a| Probe::Ping { target: a.value }),
        "interface" => w
            .required_string(
                t,
                "interface",
                "this interface checker",
                "interface = \"eth0\"",
            )
            .and_then(|s| valid(w, s, &t.field("interface"), rules::check_interface))
            .map(|i| Probe::Interface { interface: i.value }),
        _ => w
            .required_string(t, "script", "this script checker", "script = \"check\"")
            .and_then(|s| checked(w, s, &t.field("script"), rules::parse_module_file))
            .map(|p| Probe::Script { path: p.value }),
    };
    probe.filter(|_| ok)
}

fn read_process_target(w: &mut Walker<'_>, t: &Table<'_, '_>) -> Option<ProcessTarget> {
    match (t.get("process_name"), t.get("pid_file")) {
        (Some(_), Some(v)) => {
            w.report(
                &v.span(),
                &t.field("pid_file"),
                "a process checker takes process_name or pid_file, not both: keep pid_file when \
                 the application writes one (it names exactly one process)",
            );
            None
        }
        (None, None) => {
            w.report(
                &t.span(),
                &t.field("process_name"),
                "this process checker names no process: add pid_file = \"app.pid\" (a file \
                 holding the PID, relative to MIRRORKIT_RUN_DIR) or process_name = \"app\"",
            );
            None
        }
        (Some(_), None) => w
            .string(t, "process_name")
            .and_then(|s| valid(w, s, &t.field("process_name"), rules::check_process_name))
            .map(|n| ProcessTarget::Name(n.value)),
        (None, Some(_)) => w
            .string(t, "pid_file")
            .and_then(|s| checked(w, s, &t.field("pid_file"), rules::parse_pid_file))
            .map(|p| ProcessTarget::PidFile(p.value)),
    }
}

fn read_check_timeout(w: &mut Walker<'_>, t: &Table<'_, '_>, interval: Option<u64>) -> Option<u64> {
    if !t.has("timeout_ms") {
        return interval.map(default_check_timeout_ms);
    }
    let range = CHECK_TIMEOUT_MS_MIN..=*CHECK_INTERVAL_MS_RANGE.end();
    let timeout = w.integer(t, "timeout_ms", range, "milliseconds")?;
    if let Some(interval) = interval {
        if timeout.value > interval {
            w.report(
                &timeout.span,
                &t.field("timeout_ms"),
                format!(
                    "timeout_ms ({}) is longer than interval_ms ({interval}): a check would still \
                     be running when the next one is due; lower timeout_ms or raise interval_ms",
                    timeout.value
                ),
            );
            return None;
        }
    }
    Some(timeout.value)
}

/// `max_restarts` and `restart_window_ms`: only meaningful with `action = "restart"`, and the
/// window must hold at least one detection, or restarts could never add up to the limit.
fn read_restart_policy(
    w: &mut Walker<'_>,
    t: &Table<'_, '_>,
    action: Option<CheckAction>,
    interval: Option<u64>,
    retries: Option<u64>,
) -> (Option<u32>, Option<u64>) {
    if action == Some(CheckAction::Failover) {
        return refuse_restart_policy(
            w,
            t,
            "this checker fails over at once",
            ", or set action = \"restart\"",
        );
    }
    let max_restarts = if t.has("max_restarts") {
        w.integer(
            t,
            "max_restarts",
            0..=u64::from(MAX_RESTARTS_MAX),
            "restarts",
        )
        .and_then(|v| u32::try_from(v.value).ok())
    } else {
        Some(DEFAULT_MAX_RESTARTS)
    };
    let window = if t.has("restart_window_ms") {
        w.integer(
            t,
            "restart_window_ms",
            RESTART_WINDOW_MS_RANGE,
            "milliseconds",
        )
    } else {
        Some(At {
            value: DEFAULT_RESTART_WINDOW_MS,
            span: t.span(),
        })
    };
    if let (Some(win), Some(interval), Some(retries), Some(max)) =
        (&window, interval, retries, max_restarts)
    {
        let detection = interval.saturating_mul(retries + 1);
        if max > 0 && win.value < detection {
            let given = if t.has("restart_window_ms") {
                ""
            } else {
                ", the default"
            };
            w.report(
                &win.span,
                &t.field("restart_window_ms"),
                format!(
                    "restart_window_ms ({}{given}) is shorter than one detection, interval_ms × \
                     (retries + 1) = {detection} ms: restarts could never add up to max_restarts; \
                     raise restart_window_ms to at least {detection}",
                    win.value
                ),
            );
            return (max_restarts, None);
        }
    }
    (max_restarts, window.map(|w| w.value))
}

/// "a ping", "an interface".
fn with_article(word: &str) -> String {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {word}")
    } else {
        format!("a {word}")
    }
}

/// `max_restarts` and `restart_window_ms` refused on a checker that never restarts (`why`, and
/// `or` the other way out); the defaults, unused, when neither is written.
fn refuse_restart_policy(
    w: &mut Walker<'_>,
    t: &Table<'_, '_>,
    why: &str,
    or: &str,
) -> (Option<u32>, Option<u64>) {
    let mut ok = true;
    for key in ["max_restarts", "restart_window_ms"] {
        if let Some(v) = t.get(key) {
            w.report(
                &v.span(),
                &t.field(key),
                format!("{key} applies to action = \"restart\", and {why}: remove {key}{or}"),
            );
            ok = false;
        }
    }
    (
        ok.then_some(DEFAULT_MAX_RESTARTS),
        ok.then_some(DEFAULT_RESTART_WINDOW_MS),
    )
}

/// `Some(None)`: no `[notify]`; `Some(Some(notify))`: valid; `None`: a problem was reported.
fn read_notify(w: &mut Walker<'_>, root: &Table<'_, '_>) -> Option<Option<Notify>> {
    if !root.has("notify") {
        return Some(None);
    }
    let t = w.table(root, "notify", "notify".to_owned())?;
    w.unknown_keys(&t, NOTIFY_FIELDS, "[notify]");
    let command = if t.has("command") {
        w.string(&t, "command")
            .and_then(|s| checked(w, s, &t.field("command"), rules::parse_module_file))
            .map(|p| Some(p.value))
    } else {
        Some(None)
    };
    let webhook = if t.has("webhook") {
        w.string(&t, "webhook")
            .and_then(|s| checked(w, s, &t.field("webhook"), rules::parse_webhook_url))
            .map(|u| Some(u.value))
    } else {
        Some(None)
    };
    let timeout_ms = if t.has("timeout_ms") {
        w.integer(&t, "timeout_ms", NOTIFY_TIMEOUT_MS_RANGE, "milliseconds")
            .map(|v| v.value)
    } else {
        Some(DEFAULT_NOTIFY_TIMEOUT_MS)
    };
    if !t.has("command") && !t.has("webhook") {
        w.report(
            &t.span(),
            "notify",
            "[notify] names nothing to notify: add command = \"notify\" (a file of the module \
             folder, run on every state change) and/or webhook = \"https://ops.example/hook\", \
             or remove [notify]",
        );
        return None;
    }
    Some(Some(Notify {
        command: command?,
        webhook: webhook?,
        timeout_ms: timeout_ms?,
    }))
}
