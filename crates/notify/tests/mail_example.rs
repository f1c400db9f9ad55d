//! The demo module's example notify command, `modules/demo/notify-mail.sh`, run for real through
//! a `Notifier`, with a fake sendmail that keeps what it is given.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorkit_notify::{Notification, Notifier, NotifyConfig};

fn mail_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../modules/demo/notify-mail.sh")
        .canonicalize()
        .expect("modules/demo/notify-mail.sh exists")
}

/// What came out of one state change: the mail (if any), sendmail's arguments, the failures.
struct Outcome {
    mail: Option<String>,
    args: Option<String>,
    failures: Vec<String>,
}

async fn notify_mail(old: &str, new: &str, sendmail: Option<&str>) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("sendmail");
    fs::write(
        &fake,
        "#!/bin/sh\nprintf '%s\\n' \"$*\" > \"$FAKE_MAIL_DIR/args\"\ncat > \"$FAKE_MAIL_DIR/mail\"\n",
    )
    .expect("write the fake sendmail");
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod");
    let sendmail = sendmail.map_or_else(|| fake.display().to_string(), str::to_owned);
    let cfg = NotifyConfig {
        command: Some(mail_script()),
        webhook: None,
        timeout_ms: 5_000,
        working_dir: mail_script().parent().map(Path::to_owned),
        env: vec![
            ("NOTIFY_SENDMAIL".into(), sendmail),
            ("NOTIFY_MAIL_TO".into(), "ops@example.com".into()),
            ("FAKE_MAIL_DIR".into(), dir.path().display().to_string()),
        ],
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let notifier = Notifier::start(cfg, move |text| {
        sink.lock().expect("failures lock").push(text)
    });
    let reason = "peer node-a lost: no heartbeat for 3000 ms";
    let n = Notification::new("prod", "demo", "node-b", old, new, reason).at(1_795_971_600_123);
    notifier.notify(n);
    assert!(notifier.flush(Duration::from_secs(10)).await);
    let failures = seen.lock().expect("failures lock").clone();
    Outcome {
        mail: fs::read_to_string(dir.path().join("mail")).ok(),
        args: fs::read_to_string(dir.path().join("args")).ok(),
        failures,
    }
}

fn header<'a>(mail: &'a str, name: &str) -> Option<&'a str> {
    mail.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[tokio::test]
async fn take_over_sends_a_mail() {
    for old in ["SECOND", "WAIT", "STARTING", "PROMOTING"] {
        for new in ["ALONE", "PRIM"] {
            let out = notify_mail(old, new, None).await;
            assert_eq!(out.failures, Vec::<String>::new());
            let mail = out.mail.expect("a mail for a take-over");
            assert_eq!(out.args.as_deref(), Some("-t -oi\n"));
            assert_eq!(
                header(&mail, "Subject"),
                Some(format!("[mirrorkit] demo: node-b took over ({new})").as_str())
            );
            assert_eq!(header(&mail, "To"), Some("ops@example.com"));
            assert!(header(&mail, "From").is_some_and(|f| f.starts_with("mirrorkit@")));
            assert!(header(&mail, "Date").is_some_and(|d| d.ends_with(" +0000")));
            let (_, body) = mail.split_once("\n\n").expect("headers, then a body");
            for line in [
                "Module:  demo".to_owned(),
                "Node:    node-b".to_owned(),
                format!("State:   {old} -> {new}"),
                "Reason:  peer node-a lost: no heartbeat for 3000 ms".to_owned(),
                "Time:    2026-11-29T17:00:00.123Z".to_owned(),
                "Cluster: prod".to_owned(),
            ] {
                assert!(body.lines().any(|l| l == line), "{line:?} not in {body}");
            }
        }
    }
}

#[tokio::test]
async fn back_on_stand_by_sends_a_mail() {
    let out = notify_mail("DEMOTING", "SECOND", None).await;
    assert_eq!(out.failures, Vec::<String>::new());
    let mail = out.mail.expect("a mail for back on stand-by");
    assert_eq!(
        header(&mail, "Subject"),
        Some("[mirrorkit] demo: node-b is back on stand-by")
    );
    assert!(mail.contains("State:   DEMOTING -> SECOND\n"));
}

#[tokio::test]
async fn other_transitions_send_nothing() {
    for (old, new) in [
        ("PRIM", "DEMOTING"),
        ("ALONE", "PRIM"),
        ("PRIM", "ALONE"),
        ("STOP", "STARTING"),
        ("SECOND", "STOP"),
    ] {
        let out = notify_mail(old, new, None).await;
        assert_eq!(out.failures, Vec::<String>::new(), "{old} -> {new}");
        assert_eq!(out.mail, None, "{old} -> {new} sent a mail");
    }
}

#[tokio::test]
async fn missing_sendmail_is_a_reported_failure() {
    let out = notify_mail("SECOND", "ALONE", Some("/nonexistent/sendmail")).await;
    assert_eq!(out.mail, None);
    assert_eq!(
        out.failures,
        [format!(
            "notify command {} exited with status 1: notify-mail.sh: sendmail program \
             /nonexistent/sendmail not found (install a mail transfer agent, or set \
             NOTIFY_SENDMAIL in the module's [env])",
            mail_script().display()
        )]
    );
}
