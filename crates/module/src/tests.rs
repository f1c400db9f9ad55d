//! The rules of `docs/modules.md`, one test (or more) each, asserting the line and the field path
//! every problem is reported at.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::*;

const FILE: &str = "/m/module.toml";

fn check(src: &str) -> Result<ModuleConfig, Vec<Problem>> {
    check_module_source(src, Path::new(FILE), None).map(|(c, _)| c)
}

#[track_caller]
fn valid(src: &str) -> ModuleConfig {
    match check(src) {
        Ok(c) => c,
        Err(ps) => panic!("expected a valid module, got:\n{}", render(&ps)),
    }
}

#[track_caller]
fn problems(src: &str) -> Vec<Problem> {
    match check(src) {
        Ok(c) => panic!("expected problems, the module is valid: {c:?}"),
        Err(ps) => ps,
    }
}

fn render(ps: &[Problem]) -> String {
    ps.iter().map(|p| format!("{p}\n")).collect()
}

/// Assert that `ps` holds a problem at `line` about `field` whose message contains `text`.
#[track_caller]
fn has(ps: &[Problem], line: u32, field: &str, text: &str) {
    assert!(
        ps.iter()
            .any(|p| p.line == line && p.field == field && p.message.contains(text)),
        "no problem at line {line}, field {field:?}, containing {text:?}; problems:\n{}",
        render(ps)
    );
}

/// Assert that `src` has exactly one problem, at `line` and `field`, containing `text`.
#[track_caller]
fn only(src: &str, line: u32, field: &str, text: &str) {
    let ps = problems(src);
    has(&ps, line, field, text);
    assert_eq!(ps.len(), 1, "expected one problem, got:\n{}", render(&ps));
}

const FULL: &str = r#"name = "shop"
description = "The shop's web application"
default_primary = "alpha"
failback = true
autostart = false
heartbeat = "fast"

[[mirror]]
dir = "/srv/shop/data/"
exclude = ["cache", "**/*.tmp"]

[[mirror]]
dir = "/srv/shop/uploads"
include = ["images", "docs/*.pdf"]

[[vip]]
address = "192.0.2.10/24"
interface = "eth0"

[[vip]]
address = "2001:db8::10/64"
interface = "eth1"

[scripts]
prestart = "bin/prestart"
start_prim = { path = "start_prim", timeout_ms = 120000 }
stop_prim = "stop_prim"

[env]
SHOP_PORT = "8080"

[[checker]]
name = "http"
kind = "tcp"
address = "127.0.0.1:8080"
interval_ms = 1000

[[checker]]
name = "daemon"
kind = "process"
pid_file = "shop.pid"
action = "failover"
retries = 0

[[checker]]
name = "deep"
kind = "script"
script = "check"
timeout_ms = 4000
max_restarts = 5
restart_window_ms = 3600000

[[checker]]
name = "gateway"
kind = "ping"
target = "192.0.2.1"
interval_ms = 1000
timeout_ms = 500
retries = 3

[[checker]]
name = "uplink"
kind = "interface"
interface = "eth0"

[notify]
command = "bin/notify"
webhook = "https://ops.example/hook"
timeout_ms = 5000

[replication]
peer_timeout_ms = 5000
resync_limit_mib_per_s = 40
"#;

#[test]
fn a_full_module_reads_back_every_field() {
    let c = valid(FULL);
    assert_eq!(c.name, "shop");
    assert_eq!(c.description, "The shop's web application");
    assert_eq!(c.default_primary.as_deref(), Some("alpha"));
    assert!(c.failback);
    assert!(!c.autostart);
    assert_eq!(c.heartbeat, HeartbeatProfile::Fast);
    assert_eq!(c.mirrors.len(), 2);
    assert_eq!(c.mirrors[0].dir, PathBuf::from("/srv/shop/data"));
    assert_eq!(c.mirrors[0].include, vec!["**"]);
    assert_eq!(c.mirrors[0].exclude, vec!["cache", "**/*.tmp"]);
    assert_eq!(c.mirrors[1].include, vec!["images", "docs/*.pdf"]);
    assert!(c.mirrors[1].exclude.is_empty());
    assert_eq!(c.vips[0].address.to_string(), "192.0.2.10/24");
    assert_eq!(c.vips[1].interface, "eth1");
    let prestart = c.scripts.get(ScriptKind::Prestart).expect("prestart");
    assert_eq!(prestart.path, PathBuf::from("bin/prestart"));
    assert_eq!(prestart.timeout_ms, DEFAULT_SCRIPT_TIMEOUT_MS);
    let start = c.scripts.get(ScriptKind::StartPrim).expect("start_prim");
    assert_eq!(start.timeout_ms, 120_000);
    assert!(c.scripts.get(ScriptKind::StartBoth).is_none());
    assert_eq!(c.env.get("SHOP_PORT").map(String::as_str), Some("8080"));

    let http = &c.checkers[0];
    assert_eq!(
        http.probe,
        Probe::Tcp {
            address: "127.0.0.1:8080".parse().expect("addr")
        }
    );
    assert_eq!(http.interval_ms, 1000);
    // The default timeout (2000) is capped at the interval.
    assert_eq!(http.timeout_ms, 1000);
    assert_eq!(http.retries, DEFAULT_CHECK_RETRIES);
    assert_eq!(http.action, CheckAction::Restart);
    assert_eq!(http.max_restarts, DEFAULT_MAX_RESTARTS);
    let daemon = &c.checkers[1];
    assert_eq!(
        daemon.probe,
        Probe::Process(ProcessTarget::PidFile("shop.pid".into()))
    );
    assert_eq!(daemon.action, CheckAction::Failover);
    assert_eq!(daemon.retries, 0);
    assert_eq!(daemon.timeout_ms, DEFAULT_CHECK_TIMEOUT_MS);
    let deep = &c.checkers[2];
    assert_eq!(
        deep.probe,
        Probe::Script {
            path: "check".into()
        }
    );
    assert_eq!(
        (deep.timeout_ms, deep.max_restarts, deep.restart_window_ms),
        (4000, 5, 3_600_000)
    );
    assert_eq!(deep.scope(), CheckerScope::Application);
    let gateway = &c.checkers[3];
    assert_eq!(
        gateway.probe,
        Probe::Ping {
            target: "192.0.2.1".parse().expect("ip")
        }
    );
    assert_eq!(gateway.scope(), CheckerScope::Node);
    // Node checkers fail over by default: they never restart the application.
    assert_eq!(gateway.action, CheckAction::Failover);
    assert_eq!(
        (gateway.interval_ms, gateway.timeout_ms, gateway.retries),
        (1000, 500, 3)
    );
    let uplink = &c.checkers[4];
    assert_eq!(
        uplink.probe,
        Probe::Interface {
            interface: "eth0".into()
        }
    );
    assert_eq!(uplink.scope(), CheckerScope::Node);
    assert_eq!(uplink.action, CheckAction::Failover);
    assert_eq!(uplink.timeout_ms, DEFAULT_CHECK_TIMEOUT_MS);

    let notify = c.notify.expect("[notify]");
    assert_eq!(notify.command, Some(PathBuf::from("bin/notify")));
    let webhook = notify.webhook.expect("webhook");
    assert_eq!(webhook.as_str(), "https://ops.example/hook");
    assert_eq!((webhook.host(), webhook.port()), ("ops.example", 443));
    assert_eq!(notify.timeout_ms, 5000);
    assert_eq!(c.replication.peer_timeout_ms, 5000);
    assert_eq!(c.replication.resync_bytes_per_sec(), Some(40 << 20));
}

#[test]
fn replication_settings_are_checked() {
    let c = valid("name = \"m\"\n[replication]\nresync_limit_mib_per_s = 100\n");
    assert_eq!(c.replication.peer_timeout_ms, DEFAULT_PEER_TIMEOUT_MS);
    assert_eq!(c.replication.resync_limit_mib_per_s, Some(100));
    only(
        "name = \"m\"\n[replication]\npeer_timeout_ms = 100\n",
        3,
        "replication.peer_timeout_ms",
        "from 500 to 600000",
    );
    only(
        "name = \"m\"\n[replication]\nresync_limit_mib_per_s = 0\n",
        3,
        "replication.resync_limit_mib_per_s",
        "MiB per second from 1",
    );
    only(
        "name = \"m\"\n[replication]\nresync_limit = 10\n",
        3,
        "replication.resync_limit",
        "resync_limit_mib_per_s",
    );
}

#[test]
fn a_minimal_module_takes_the_defaults() {
    let c = valid("name = \"m\"\n");
    assert_eq!(c.description, "");
    assert_eq!(c.default_primary, None);
    assert!(!c.failback);
    assert!(c.autostart);
    assert_eq!(c.heartbeat, HeartbeatProfile::Default);
    assert!(c.mirrors.is_empty() && c.vips.is_empty() && c.checkers.is_empty());
    assert_eq!(c.scripts, Scripts::default());
    assert_eq!(c.notify, None);
    assert_eq!(c.replication, Replication::default());
}

#[test]
fn the_checker_and_serde_read_the_schema_alike() {
    let checked = valid(FULL);
    let via_serde: ModuleConfig = match toml::from_str(FULL) {
        Ok(c) => c,
        Err(e) => panic!("serde cannot read the full example: {e}"),
    };
    // serde does not normalise paths; the checker does ("/srv/shop/data/" above).
    let mut expected = checked.clone();
    expected.mirrors[0].dir = "/srv/shop/data/".into();
    assert_eq!(via_serde, expected);

    // What serde writes, the checker reads back to the same configuration.
    let written = match toml::to_string(&checked) {
        Ok(s) => s,
        Err(e) => panic!("cannot serialise: {e}"),
    };
    assert_eq!(valid(&written), checked, "written as:\n{written}");
}

#[test]
fn syntax_errors_have_a_line_and_column_and_stop_the_check() {
    let ps = problems("name = \"m\"\nfailback = tru\n");
    assert_eq!(ps.len(), 1, "{}", render(&ps));
    has(&ps, 2, "", "TOML syntax error");
    assert_eq!(ps[0].column, 12);

    let ps = problems("name = \"m\"\nname = \"n\"\n");
    has(&ps, 2, "", "duplicate key");

    // Two broken lines: one problem each.
    let ps = problems("name = \"m\nx = [1,,2]\n");
    assert!(ps
        .iter()
        .all(|p| p.message.starts_with("TOML syntax error")));
    assert!(ps.iter().any(|p| p.line == 1), "{}", render(&ps));
}

#[test]
fn unknown_fields_are_refused_with_the_likely_name() {
    only(
        "name = \"m\"\ndefault-primary = \"alpha\"\n",
        2,
        "default-primary",
        "did you mean \"default_primary\"?",
    );
    only(
        "name = \"m\"\ncolour = 1\n",
        2,
        "colour",
        "the fields are: name, description",
    );
    let src =
        "name = \"m\"\n[[mirror]]\ndir = \"/a\"\n[[mirror]]\ndir = \"/b\"\nexlude = [\"x\"]\n";
    only(src, 6, "mirror[1].exlude", "did you mean \"exclude\"?");
    let src = "name = \"m\"\n[scripts]\nstart_primary = \"s\"\n";
    only(
        src,
        3,
        "scripts.start_primary",
        "did you mean \"start_prim\"?",
    );
    let src = "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = 500\n";
    only(
        src,
        6,
        "checker[0].interval",
        "did you mean \"interval_ms\"?",
    );
}

#[test]
fn wrong_types_say_what_to_write() {
    only(
        "name = 5\n",
        1,
        "name",
        "expected a string, found an integer",
    );
    only(
        "name = \"m\"\nfailback = \"true\"\n",
        2,
        "failback",
        "write true without quotes",
    );
    only(
        "name = \"m\"\nautostart = 1\n",
        2,
        "autostart",
        "expected a boolean",
    );
    only(
        "name = \"m\"\n[mirror]\ndir = \"/a\"\n",
        2,
        "mirror",
        "write [[mirror]]",
    );
    only(
        "name = \"m\"\nscripts = [\"a\"]\n",
        2,
        "scripts",
        "write [scripts] once",
    );
    only(
        "name = \"m\"\n[[mirror]]\ndir = \"/a\"\ninclude = \"db\"\n",
        4,
        "mirror[0].include",
        "write [\"db\"]",
    );
    only(
        "name = \"m\"\n[[mirror]]\ndir = \"/a\"\nexclude = [\"a\", 2]\n",
        4,
        "mirror[0].exclude[1]",
        "expected a string",
    );
    only("name = \"m\"\nvip = [1]\n", 2, "vip[0]", "expected a table");
    let src = "name = \"m\"\nmirror = [1, { dir = \"a\" }]\n";
    let ps = problems(src);
    has(&ps, 2, "mirror[0]", "expected a table");
    has(&ps, 2, "mirror[1].dir", "relative path");
}

#[test]
fn name_is_required_and_safe() {
    only(
        "description = \"x\"\n",
        1,
        "name",
        "module.toml has no \"name\"",
    );
    only("name = \"My App\"\n", 1, "name", "contains 'M'");
    only("name = \"my app\"\n", 1, "name", "contains ' '");
    only("name = \"Shop\"\n", 1, "name", "write \"shop\"");
    only("name = \"\"\n", 1, "name", "empty");
}

#[test]
fn description_is_one_short_line() {
    only(
        "name = \"m\"\ndescription = \"a\\nb\"\n",
        2,
        "description",
        "one line",
    );
    let long = format!("name = \"m\"\ndescription = \"{}\"\n", "x".repeat(201));
    only(&long, 2, "description", "201 characters");
}

#[test]
fn default_primary_is_a_node_of_the_cluster() {
    only(
        "name = \"m\"\ndefault_primary = \"Alpha\"\n",
        2,
        "default_primary",
        "not a valid node name",
    );
    let nodes = ["alpha".to_owned(), "beta".to_owned()];
    let src = "name = \"m\"\n\ndefault_primary = \"gamma\"\n";
    let ps = check_module_source(src, Path::new(FILE), Some(&nodes)).expect_err("gamma");
    has(
        &ps,
        3,
        "default_primary",
        "not a node of this cluster (its nodes: alpha, beta)",
    );
    let src = "name = \"m\"\ndefault_primary = \"beta\"\n";
    assert!(check_module_source(src, Path::new(FILE), Some(&nodes)).is_ok());
    // Without a node list, any valid node name passes.
    valid("name = \"m\"\ndefault_primary = \"gamma\"\n");
}

#[test]
fn failback_needs_a_default_primary() {
    only(
        "name = \"m\"\nfailback = true\n",
        2,
        "failback",
        "needs default_primary",
    );
    valid("name = \"m\"\nfailback = false\n");
}

#[test]
fn heartbeat_is_a_known_profile() {
    only(
        "name = \"m\"\nheartbeat = \"fst\"\n",
        2,
        "heartbeat",
        "did you mean \"fast\"?",
    );
    only(
        "name = \"m\"\nheartbeat = \"slow\"\n",
        2,
        "heartbeat",
        "one of \"default\", \"fast\"",
    );
}

#[test]
fn mirror_dirs_are_absolute_and_present() {
    only(
        "name = \"m\"\n\n[[mirror]]\ninclude = [\"a\"]\n",
        3,
        "mirror[0].dir",
        "this [[mirror]] has no \"dir\"",
    );
    only(
        "name = \"m\"\n[[mirror]]\ndir = \"srv/data\"\n",
        3,
        "mirror[0].dir",
        "relative path",
    );
    only(
        "name = \"m\"\n[[mirror]]\ndir = \"/srv/../data\"\n",
        3,
        "mirror[0].dir",
        "'..'",
    );
    only(
        "name = \"m\"\n[[mirror]]\ndir = \"/\"\n",
        3,
        "mirror[0].dir",
        "cannot be replicated",
    );
    only(
        "name = \"m\"\n[[mirror]]\ndir = \"/sys/x\"\n",
        3,
        "mirror[0].dir",
        "kernel file system",
    );
}

#[test]
fn mirror_dirs_are_distinct_and_not_nested() {
    let src = "name = \"m\"\n[[mirror]]\ndir = \"/srv/a\"\n[[mirror]]\ndir = \"/srv/a/\"\n";
    only(
        src,
        5,
        "mirror[1].dir",
        "already replicated by mirror[0].dir (line 3)",
    );
    let src = "name = \"m\"\n[[mirror]]\ndir = \"/srv/a\"\n[[mirror]]\ndir = \"/srv/a/b\"\n";
    only(
        src,
        5,
        "mirror[1].dir",
        "is inside /srv/a, already replicated by mirror[0].dir (line 3)",
    );
    let src = "name = \"m\"\n[[mirror]]\ndir = \"/srv/a/b\"\n[[mirror]]\ndir = \"/srv/a\"\n";
    only(src, 5, "mirror[1].dir", "contains /srv/a/b");
    // A common prefix that is not a parent directory is fine.
    valid("name = \"m\"\n[[mirror]]\ndir = \"/srv/a\"\n[[mirror]]\ndir = \"/srv/ab\"\n");
}

#[test]
fn mirror_patterns_are_valid_globs() {
    let src = "name = \"m\"\n[[mirror]]\ndir = \"/a\"\n[[mirror]]\ndir = \"/b\"\ninclude = [\"db\", \"[z-\"]\n";
    only(src, 6, "mirror[1].include[1]", "not a valid glob");
    let src = "name = \"m\"\n[[mirror]]\ndir = \"/a\"\nexclude = [\"/tmp\"]\n";
    only(src, 4, "mirror[0].exclude[0]", "write \"tmp\"");
    let src = "name = \"m\"\n[[mirror]]\ndir = \"/a\"\nexclude = [\"x\", \"y\", \"x\"]\n";
    only(
        src,
        4,
        "mirror[0].exclude[2]",
        "already mirror[0].exclude[0]",
    );
    let src = "name = \"m\"\n[[mirror]]\ndir = \"/a\"\ninclude = []\n";
    only(src, 4, "mirror[0].include", "nothing would be replicated");
    let src = format!(
        "name = \"m\"\n[[mirror]]\ndir = \"/a\"\nexclude = [{}]\n",
        (0..=MAX_PATTERNS)
            .map(|i| format!("\"p{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    only(&src, 4, "mirror[0].exclude[256]", "at most 256");
}

#[test]
fn too_many_entries_are_refused() {
    let mut src = String::from("name = \"m\"\n");
    for i in 0..=MAX_MIRRORS {
        src.push_str(&format!("[[mirror]]\ndir = \"/d{i}\"\n"));
    }
    only(&src, 2 + 2 * MAX_MIRRORS as u32, "mirror[16]", "at most 16");
}

#[test]
fn vips_are_usable_addresses_on_valid_interfaces() {
    let src = "name = \"m\"\n[[vip]]\naddress = \"192.0.2.10\"\ninterface = \"eth0\"\n";
    only(src, 3, "vip[0].address", "\"192.0.2.10/24\"");
    let src = "name = \"m\"\n[[vip]]\naddress = \"192.0.2.10/24\"\ninterface = \"averyveryverylongname\"\n";
    only(src, 4, "vip[0].interface", "at most 15");
    let src = "name = \"m\"\n[[vip]]\naddress = \"192.0.2.10/24\"\ninterface = \"eth0:1\"\n";
    only(src, 4, "vip[0].interface", "alias");
    let src = "name = \"m\"\n[[vip]]\naddress = \"192.0.2.10/24\"\n";
    only(src, 2, "vip[0].interface", "has no \"interface\"");
    let src = "name = \"m\"\n[[vip]]\naddress = \"192.0.2.255/24\"\ninterface = \"eth0\"\n";
    only(
        src,
        3,
        "vip[0].address",
        "broadcast address of 192.0.2.0/24",
    );
}

#[test]
fn vips_are_distinct() {
    let src = "name = \"m\"\n[[vip]]\naddress = \"192.0.2.10/24\"\ninterface = \"eth0\"\n\
               [[vip]]\naddress = \"192.0.2.10/32\"\ninterface = \"eth1\"\n";
    only(src, 6, "vip[1].address", "already vip[0].address (line 3)");
}

#[test]
fn scripts_are_files_of_the_module_folder() {
    let src = "name = \"m\"\n[scripts]\nstart_prim = \"/usr/bin/start\"\nstop_prim = \"stop\"\n";
    only(src, 3, "scripts.start_prim", "is absolute");
    let src = "name = \"m\"\n[scripts]\nstart_prim = \"../start\"\nstop_prim = \"stop\"\n";
    only(src, 3, "scripts.start_prim", "'..'");
    let src = "name = \"m\"\n[scripts]\nprestart = 5\n";
    only(src, 3, "scripts.prestart", "expected a file name");
    let src = "name = \"m\"\n[scripts]\nprestart = { timeout_ms = 1000 }\n";
    only(src, 3, "scripts.prestart.path", "has no \"path\"");
    let src = "name = \"m\"\n[scripts]\nprestart = { path = \"p\", timeout = 1000 }\n";
    only(
        src,
        3,
        "scripts.prestart.timeout",
        "did you mean \"timeout_ms\"?",
    );
    let src = "name = \"m\"\n[scripts.poststop]\npath = \"p\"\ntimeout_ms = 50\n";
    only(
        src,
        4,
        "scripts.poststop.timeout_ms",
        "from 100 to 86400000",
    );
    let src = "name = \"m\"\n[scripts.poststop]\npath = \"p\"\ntimeout_ms = 1.5\n";
    only(
        src,
        4,
        "scripts.poststop.timeout_ms",
        "whole number of milliseconds",
    );
}

#[test]
fn start_and_stop_scripts_come_in_pairs() {
    only(
        "name = \"m\"\n[scripts]\nstart_prim = \"s\"\n",
        3,
        "scripts.start_prim",
        "declare stop_prim too",
    );
    only(
        "name = \"m\"\n[scripts]\nstop_both = \"s\"\n",
        3,
        "scripts.stop_both",
        "declare start_both too, or remove stop_both",
    );
    valid("name = \"m\"\n[scripts]\nprestart = \"a\"\npoststop = \"b\"\nstart_both = \"c\"\nstop_both = \"d\"\n");
}

#[test]
fn env_vars_are_shell_names_with_string_values() {
    only(
        "name = \"m\"\n[env]\n1X = \"a\"\n",
        3,
        "env.1X",
        "not starting with a digit",
    );
    only(
        "name = \"m\"\n[env]\nMIRRORKIT_NODE = \"a\"\n",
        3,
        "env.MIRRORKIT_NODE",
        "reserved",
    );
    only(
        "name = \"m\"\n[env]\nPORT = 8080\n",
        3,
        "env.PORT",
        "write \"8080\"), found an integer",
    );
    only(
        "name = \"m\"\n[env]\nX = \"a\\u0000b\"\n",
        3,
        "env.X",
        "NUL",
    );
    only(
        "name = \"m\"\nenv = \"PORT=1\"\n",
        2,
        "env",
        "expected a table",
    );
}

const TCP: &str =
    "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"tcp\"\naddress = \"127.0.0.1:80\"\n";

#[test]
fn checkers_have_a_unique_name_and_a_known_kind() {
    only(
        "name = \"m\"\n[[checker]]\nkind = \"tcp\"\naddress = \"127.0.0.1:80\"\n",
        2,
        "checker[0].name",
        "has no \"name\"",
    );
    let src =
        format!("{TCP}[[checker]]\nname = \"c\"\nkind = \"tcp\"\naddress = \"127.0.0.1:81\"\n");
    only(
        &src,
        7,
        "checker[1].name",
        "already the name of checker[0].name (line 3)",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"c\"\n",
        2,
        "checker[0].kind",
        "has no \"kind\"",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"tpc\"\n",
        4,
        "checker[0].kind",
        "did you mean \"tcp\"?",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"proc\"\n",
        4,
        "checker[0].kind",
        "did you mean \"process\"?",
    );
}

#[test]
fn kind_specific_fields_belong_to_their_kind() {
    only(
        "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"process\"\nprocess_name = \"x\"\naddress = \"127.0.0.1:80\"\n",
        6,
        "checker[0].address",
        "applies to kind = \"tcp\" checkers, and this one is kind = \"process\"",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"process\"\n",
        2,
        "checker[0].process_name",
        "names no process",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"process\"\nprocess_name = \"x\"\npid_file = \"x.pid\"\n",
        6,
        "checker[0].pid_file",
        "not both",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"process\"\nprocess_name = \"mirrorkit-demo-app\"\n",
        5,
        "checker[0].process_name",
        "first 15 bytes",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"tcp\"\naddress = \"db:5432\"\n",
        5,
        "checker[0].address",
        "not IP:PORT",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"tcp\"\n",
        2,
        "checker[0].address",
        "has no \"address\"",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"c\"\nkind = \"script\"\nscript = \"/bin/true\"\n",
        5,
        "checker[0].script",
        "is absolute",
    );
}

#[test]
fn checker_timing_is_consistent() {
    only(
        &format!("{TCP}interval_ms = 50\n"),
        6,
        "checker[0].interval_ms",
        "from 100 to 86400000",
    );
    only(
        &format!("{TCP}interval_ms = 1000\ntimeout_ms = 3000\n"),
        7,
        "checker[0].timeout_ms",
        "longer than interval_ms (1000)",
    );
    only(
        &format!("{TCP}timeout_ms = 5\n"),
        6,
        "checker[0].timeout_ms",
        "from 10 to",
    );
    only(
        &format!("{TCP}retries = -1\n"),
        6,
        "checker[0].retries",
        "-1 is out of range",
    );
    only(
        &format!("{TCP}retries = 101\n"),
        6,
        "checker[0].retries",
        "from 0 to 100",
    );
    only(
        &format!("{TCP}action = \"reboot\"\n"),
        6,
        "checker[0].action",
        "one of \"restart\", \"failover\"",
    );
    only(
        &format!("{TCP}action = \"failover\"\nmax_restarts = 2\n"),
        7,
        "checker[0].max_restarts",
        "applies to action = \"restart\"",
    );
    only(
        &format!("{TCP}interval_ms = 10000\nretries = 9\nrestart_window_ms = 60000\n"),
        8,
        "checker[0].restart_window_ms",
        "at least 100000",
    );
    // The default window is too short for a slow checker: reported at the section's header.
    only(
        &format!("{TCP}interval_ms = 600000\n"),
        2,
        "checker[0].restart_window_ms",
        "restart_window_ms (600000, the default) is shorter",
    );
    // With no restarts allowed, the window does not matter.
    valid(&format!("{TCP}interval_ms = 600000\nmax_restarts = 0\n"));
}

const PING: &str =
    "name = \"m\"\n[[checker]]\nname = \"gw\"\nkind = \"ping\"\ntarget = \"10.0.0.1\"\n";
const IFACE: &str =
    "name = \"m\"\n[[checker]]\nname = \"nic\"\nkind = \"interface\"\ninterface = \"eth0\"\n";

#[test]
fn node_checkers_watch_an_address_or_an_interface() {
    let c = valid(PING);
    assert_eq!(
        c.checkers[0].probe,
        Probe::Ping {
            target: "10.0.0.1".parse().expect("ip")
        }
    );
    assert_eq!(c.checkers[0].action, CheckAction::Failover);
    assert_eq!(c.checkers[0].scope(), CheckerScope::Node);
    let c = valid(&format!("{IFACE}action = \"failover\"\n"));
    assert_eq!(c.checkers[0].action, CheckAction::Failover);
    valid("name = \"m\"\n[[checker]]\nname = \"gw6\"\nkind = \"ping\"\ntarget = \"2001:db8::1\"\n");

    only(
        "name = \"m\"\n[[checker]]\nname = \"gw\"\nkind = \"ping\"\n",
        2,
        "checker[0].target",
        "this ping checker has no \"target\"",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"nic\"\nkind = \"interface\"\n",
        2,
        "checker[0].interface",
        "this interface checker has no \"interface\"",
    );
    // The field path names the checker's index in the file.
    let src =
        format!("{TCP}[[checker]]\nname = \"gw\"\nkind = \"ping\"\ntarget = \"gateway.lan\"\n");
    only(&src, 9, "checker[1].target", "host names are not resolved");
    only(
        "name = \"m\"\n[[checker]]\nname = \"gw\"\nkind = \"ping\"\ntarget = \"224.0.0.1\"\n",
        5,
        "checker[0].target",
        "multicast",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"gw\"\nkind = \"ping\"\ntarget = \"0.0.0.0\"\n",
        5,
        "checker[0].target",
        "unspecified",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"nic\"\nkind = \"interface\"\ninterface = \"eth0:1\"\n",
        5,
        "checker[0].interface",
        "alias",
    );
    only(
        "name = \"m\"\n[[checker]]\nname = \"nic\"\nkind = \"interface\"\ninterface = \"averyveryverylongname\"\n",
        5,
        "checker[0].interface",
        "at most 15",
    );
    // Kind-specific fields stay with their kind.
    only(
        &format!("{TCP}target = \"10.0.0.1\"\n"),
        6,
        "checker[0].target",
        "applies to kind = \"ping\" checkers, and this one is kind = \"tcp\"",
    );
    only(
        &format!("{PING}interface = \"eth0\"\n"),
        6,
        "checker[0].interface",
        "applies to kind = \"interface\" checkers, and this one is kind = \"ping\"",
    );
    only(
        &format!("{IFACE}address = \"127.0.0.1:80\"\n"),
        6,
        "checker[0].address",
        "applies to kind = \"tcp\" checkers, and this one is kind = \"interface\"",
    );
}

#[test]
fn node_checkers_never_restart_the_application() {
    only(
        &format!("{PING}action = \"restart\"\n"),
        6,
        "checker[0].action",
        "restarting the application does not bring a network back",
    );
    only(
        &format!("{IFACE}action = \"restart\"\n"),
        6,
        "checker[0].action",
        "action = \"failover\", its default",
    );
    only(
        &format!("{PING}max_restarts = 2\n"),
        6,
        "checker[0].max_restarts",
        "a ping checker is a node checker, which never restarts the application",
    );
    only(
        &format!("{IFACE}restart_window_ms = 60000\n"),
        6,
        "checker[0].restart_window_ms",
        "an interface checker is a node checker",
    );
    let ps = problems(&format!(
        "{PING}action = \"restart\"\nmax_restarts = 1\nrestart_window_ms = 60000\n"
    ));
    let fields: Vec<&str> = ps.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "checker[0].action",
            "checker[0].max_restarts",
            "checker[0].restart_window_ms"
        ],
        "{}",
        render(&ps)
    );
    // Timing rules are the same as for application checkers.
    only(
        &format!("{PING}interval_ms = 1000\ntimeout_ms = 3000\n"),
        7,
        "checker[0].timeout_ms",
        "longer than interval_ms (1000)",
    );
}

const NOTIFY: &str = "name = \"m\"\n[notify]\n";

#[test]
fn notify_takes_a_command_and_or_a_webhook() {
    let c = valid(&format!("{NOTIFY}command = \"./notify\"\n"));
    let n = c.notify.expect("notify");
    assert_eq!(n.command, Some(PathBuf::from("notify")));
    assert_eq!(n.webhook, None);
    assert_eq!(n.timeout_ms, DEFAULT_NOTIFY_TIMEOUT_MS);
    let c = valid(&format!(
        "{NOTIFY}webhook = \"http://[2001:db8::5]:8080/hook?k=v\"\ntimeout_ms = 120000\n"
    ));
    let n = c.notify.expect("notify");
    assert_eq!(n.command, None);
    let w = n.webhook.expect("webhook");
    assert!(!w.is_https());
    assert_eq!((w.host(), w.port()), ("2001:db8::5", 8080));
    assert_eq!(w.path_and_query(), "/hook?k=v");
    assert_eq!(n.timeout_ms, 120_000);
    // Inline form.
    valid("name = \"m\"\nnotify = { webhook = \"https://ops.example/hook\" }\n");
    // A password in the URL is accepted (it is sent as written) but kept out of Display.
    let c = valid(&format!(
        "{NOTIFY}webhook = \"https://bot:s3cret@ops.example/hook\"\n"
    ));
    let w = c.notify.and_then(|n| n.webhook).expect("webhook");
    assert_eq!(w.userinfo(), Some("bot:s3cret"));
    assert_eq!(w.to_string(), "https://bot:***@ops.example/hook");
}

#[test]
fn notify_problems_name_their_field() {
    only(NOTIFY, 2, "notify", "names nothing to notify");
    only(
        &format!("{NOTIFY}timeout_ms = 5000\n"),
        2,
        "notify",
        "names nothing to notify",
    );
    only(
        &format!("{NOTIFY}webhook = \"ops.example/hook\"\n"),
        3,
        "notify.webhook",
        "has no scheme: write the full URL, such as \"https://ops.example/hook\"",
    );
    only(
        &format!("{NOTIFY}webhook = \"https://ops.example/my hook\"\n"),
        3,
        "notify.webhook",
        "%20",
    );
    only(
        &format!("{NOTIFY}webhook = \"ftp://ops.example/\"\n"),
        3,
        "notify.webhook",
        "not supported",
    );
    only(
        &format!("{NOTIFY}webhook = \"https://ops.example/hook\"\nwebhok = \"x\"\n"),
        4,
        "notify.webhok",
        "did you mean \"webhook\"?",
    );
    only(
        &format!("{NOTIFY}command = \"/usr/local/bin/notify\"\n"),
        3,
        "notify.command",
        "is absolute",
    );
    only(
        &format!("{NOTIFY}command = \"../notify\"\n"),
        3,
        "notify.command",
        "'..'",
    );
    only(
        &format!("{NOTIFY}command = \"n\"\ntimeout_ms = 50\n"),
        4,
        "notify.timeout_ms",
        "from 100 to 120000",
    );
    only(
        &format!("{NOTIFY}command = \"n\"\ntimeout_ms = 120001\n"),
        4,
        "notify.timeout_ms",
        "from 100 to 120000",
    );
    only(
        &format!("{NOTIFY}command = 5\n"),
        3,
        "notify.command",
        "expected a string",
    );
    only(
        "name = \"m\"\nnotify = \"https://ops.example/hook\"\n",
        2,
        "notify",
        "expected a table",
    );
    only(
        "name = \"m\"\n[[notify]]\ncommand = \"n\"\n",
        2,
        "notify",
        "write [notify] once",
    );
    // Every problem of the table at once.
    let ps = problems(&format!(
        "{NOTIFY}command = \"/n\"\nwebhook = \"https://\"\ntimeout_ms = 0\n"
    ));
    let fields: Vec<(u32, &str)> = ps.iter().map(|p| (p.line, p.field.as_str())).collect();
    assert_eq!(
        fields,
        [
            (3, "notify.command"),
            (4, "notify.webhook"),
            (5, "notify.timeout_ms")
        ],
        "{}",
        render(&ps)
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let src = r#"name = "Bad Name"
heartbeat = "fastest"

[[mirror]]
dir = "relative"
exclude = ["[x"]

[[vip]]
address = "192.0.2.10"
interface = "eth0/1"

[scripts]
start_prim = "../up"

[[checker]]
name = "c"
kind = "tcp"
address = "nowhere"
retries = 1000
"#;
    let ps = problems(src);
    let fields: Vec<(u32, &str)> = ps.iter().map(|p| (p.line, p.field.as_str())).collect();
    assert_eq!(
        fields,
        vec![
            (1, "name"),
            (2, "heartbeat"),
            (5, "mirror[0].dir"),
            (6, "mirror[0].exclude[0]"),
            (9, "vip[0].address"),
            (10, "vip[0].interface"),
            (13, "scripts.start_prim"),
            (13, "scripts.start_prim"),
            (18, "checker[0].address"),
            (19, "checker[0].retries"),
        ],
        "{}",
        render(&ps)
    );
    assert!(ps
        .iter()
        .all(|p| p.file == Path::new(FILE) && p.column >= 1));
}

// ----- on disk

fn write(path: &Path, text: &str, mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, text).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn module_dir(toml: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("module.toml"), toml, 0o644);
    tmp
}

#[test]
fn a_folder_without_module_toml_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ps = check_module_dir(tmp.path(), None).expect_err("no module.toml");
    assert_eq!(ps.len(), 1);
    assert_eq!((ps[0].line, ps[0].field.as_str()), (0, ""));
    assert!(
        ps[0].message.contains("there is no module.toml"),
        "{}",
        ps[0]
    );
    let ps = check_module_dir(&tmp.path().join("nope"), None).expect_err("no folder");
    assert!(
        ps[0].message.contains("cannot open the module folder"),
        "{}",
        ps[0]
    );
}

#[test]
fn a_module_file_that_is_not_utf8_is_refused_at_its_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(
        tmp.path().join("module.toml"),
        b"name = \"m\"\ndescription = \"caf\xe9\"\n",
    )
    .expect("write");
    let ps = check_module_dir(tmp.path(), None).expect_err("latin-1");
    assert_eq!((ps[0].line, ps[0].column), (2, 19), "{}", ps[0]);
    assert!(ps[0].message.contains("UTF-8"));
}

#[test]
fn scripts_are_checked_on_disk_at_their_line() {
    let tmp = module_dir(
        "name = \"m\"\n[scripts]\nstart_prim = \"start\"\nstop_prim = { path = \"bin/stop\" }\n\
         [[checker]]\nname = \"c\"\nkind = \"script\"\nscript = \"check\"\n",
    );
    write(&tmp.path().join("start"), "#!/bin/sh\n", 0o644);
    let ps = check_module_dir(tmp.path(), None).expect_err("problems");
    has(&ps, 3, "scripts.start_prim", "not executable: run chmod +x");
    has(
        &ps,
        4,
        "scripts.stop_prim.path",
        "bin/stop does not exist in the module folder",
    );
    has(&ps, 8, "checker[0].script", "check does not exist");
    assert_eq!(ps.len(), 3, "{}", render(&ps));
    assert!(ps.iter().all(|p| p.file == tmp.path().join("module.toml")));

    write(&tmp.path().join("start"), "#!/bin/sh\n", 0o755);
    write(&tmp.path().join("bin/stop"), "#!/bin/sh\n", 0o700);
    write(&tmp.path().join("check"), "#!/bin/sh\n", 0o755);
    let m = load_module(tmp.path(), None).expect("valid");
    let dir = fs::canonicalize(tmp.path()).expect("canonical");
    assert_eq!(m.dir, dir);
    assert_eq!(
        m.script_path(ScriptKind::StopPrim),
        Some(dir.join("bin/stop"))
    );
    assert_eq!(m.script_path(ScriptKind::Prestart), None);
}

#[test]
fn the_notify_command_is_checked_on_disk_at_its_line() {
    let tmp = module_dir("name = \"m\"\n\n[notify]\ncommand = \"notify\"\n");
    let ps = check_module_dir(tmp.path(), None).expect_err("missing");
    only_problem(
        &ps,
        4,
        "notify.command",
        "notify does not exist in the module folder",
    );
    write(&tmp.path().join("notify"), "#!/bin/sh\n", 0o644);
    let ps = check_module_dir(tmp.path(), None).expect_err("not executable");
    only_problem(&ps, 4, "notify.command", "not executable: run chmod +x");
    write(&tmp.path().join("notify"), "#!/bin/sh\n", 0o755);
    let m = load_module(tmp.path(), None).expect("valid");
    let dir = fs::canonicalize(tmp.path()).expect("canonical");
    assert_eq!(m.notify_command_path(), Some(dir.join("notify")));
}

#[track_caller]
fn only_problem(ps: &[Problem], line: u32, field: &str, text: &str) {
    has(ps, line, field, text);
    assert_eq!(ps.len(), 1, "expected one problem, got:\n{}", render(ps));
}

#[test]
fn world_writable_module_files_are_refused() {
    let tmp = module_dir("name = \"m\"\n");
    fs::set_permissions(
        tmp.path().join("module.toml"),
        fs::Permissions::from_mode(0o666),
    )
    .expect("chmod");
    let ps = check_module_dir(tmp.path(), None).expect_err("o+w");
    assert!(ps[0].message.contains("chmod o-w"), "{}", ps[0]);
}

#[test]
fn replicated_dirs_stay_out_of_the_module_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = fs::canonicalize(tmp.path()).expect("canonical");
    let module = base.join("m");
    write(
        &module.join("module.toml"),
        &format!(
            "name = \"m\"\n[[mirror]]\ndir = \"{}\"\n",
            module.join("data").display()
        ),
        0o644,
    );
    let ps = check_module_dir(&module, None).expect_err("inside");
    has(&ps, 3, "mirror[0].dir", "inside the module folder");
}

fn loaded(dir: &Path, toml: &str) -> LoadedModule {
    write(&dir.join("module.toml"), toml, 0o644);
    load_module(dir, None).expect("valid module")
}

#[test]
fn modules_of_one_node_do_not_clash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = loaded(
        &tmp.path().join("a"),
        "name = \"a\"\n[[mirror]]\ndir = \"/srv/a\"\n[[vip]]\naddress = \"192.0.2.10/24\"\ninterface = \"eth0\"\n",
    );
    let b = loaded(
        &tmp.path().join("b"),
        "name = \"a\"\n[[mirror]]\ndir = \"/srv/a/b\"\n[[vip]]\naddress = \"192.0.2.10/24\"\ninterface = \"eth1\"\n",
    );
    let c = loaded(
        &tmp.path().join("c"),
        "name = \"c\"\n[[mirror]]\ndir = \"/srv/c\"\n",
    );
    let ps = check_module_set(&[a.clone(), b.clone(), c.clone()]);
    has(&ps, 1, "name", "already used by");
    has(
        &ps,
        3,
        "mirror[0].dir",
        "is inside a directory replicated by module \"a\"",
    );
    has(
        &ps,
        5,
        "vip[0].address",
        "also a virtual IP of module \"a\"",
    );
    assert_eq!(ps.len(), 3, "{}", render(&ps));
    assert!(ps.iter().all(|p| p.file == b.file));
    assert!(check_module_set(&[a, c]).is_empty());
}

#[test]
fn the_reference_documents_every_field_and_variable() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/modules.md");
    let doc = fs::read_to_string(&path).expect("docs/modules.md");
    let lists = [
        crate::parse::TOP_FIELDS,
        crate::parse::MIRROR_FIELDS,
        crate::parse::VIP_FIELDS,
        crate::parse::SCRIPT_TABLE_FIELDS,
        crate::parse::SCRIPT_SLOTS,
        crate::parse::CHECKER_FIELDS,
        crate::parse::NOTIFY_FIELDS,
        crate::parse::REPLICATION_FIELDS,
        SCRIPT_ENV_VARS,
        NOTIFY_ENV_VARS,
        Probe::KIND_NAMES,
        CheckAction::NAMES,
    ];
    let missing: Vec<&str> = lists
        .iter()
        .flat_map(|l| l.iter())
        .copied()
        .filter(|name| {
            ![
                format!("`{name}`"),
                format!("`\"{name}\"`"),
                format!("`[{name}]`"),
                format!("`[[{name}]]`"),
            ]
            .iter()
            .any(|form| doc.contains(form.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/modules.md does not mention {missing:?}"
    );
    for name in HeartbeatProfile::NAMES {
        let p = HeartbeatProfile::from_name(name).expect("known profile");
        let row = format!(
            "| `{name}` | {} ms | {} ms",
            p.interval_ms(),
            p.peer_lost_after_ms()
        );
        assert!(doc.contains(&row), "docs/modules.md has no row {row:?}");
    }
    for value in [
        DEFAULT_SCRIPT_TIMEOUT_MS,
        SCRIPT_KILL_GRACE_MS,
        DEFAULT_CHECK_INTERVAL_MS,
        DEFAULT_CHECK_TIMEOUT_MS,
        DEFAULT_RESTART_WINDOW_MS,
        *SCRIPT_TIMEOUT_MS_RANGE.end(),
        *RESTART_WINDOW_MS_RANGE.end(),
        DEFAULT_NOTIFY_TIMEOUT_MS,
        *NOTIFY_TIMEOUT_MS_RANGE.start(),
        *NOTIFY_TIMEOUT_MS_RANGE.end(),
        NOTIFY_QUEUE_MAX as u64,
    ] {
        assert!(
            doc.contains(&value.to_string()),
            "docs/modules.md does not state {value}"
        );
    }
    assert!(
        doc.contains(SCRIPT_DEFAULT_PATH),
        "docs/modules.md does not state the scripts' PATH"
    );
}
