//! Generating and loading the cluster PKI on disk.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mirrorkit_net::pki::{generate_cluster, NodeIdentity};
use mirrorkit_net::NetError;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn writes_ca_and_node_files_with_private_keys_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    generate_cluster(&pki, "prod", &["alpha", "beta"], false).expect("generate");

    for stem in ["ca", "alpha", "beta"] {
        assert_eq!(mode(&pki.join(format!("{stem}.key"))), 0o600, "{stem}.key");
        assert_eq!(mode(&pki.join(format!("{stem}.pem"))), 0o644, "{stem}.pem");
    }
    assert_eq!(mode(&pki), 0o700, "created PKI directory");

    for node in ["alpha", "beta"] {
        let identity = NodeIdentity::load(&pki, node).expect("load");
        assert_eq!(identity.node_name(), node);
    }
}

#[test]
fn refuses_to_overwrite_unless_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate_cluster(dir.path(), "prod", &["alpha", "beta"], false).expect("generate");
    let ca_before = std::fs::read(dir.path().join("ca.pem")).expect("ca.pem");
    let key_before = std::fs::read(dir.path().join("alpha.key")).expect("alpha.key");

    let err = generate_cluster(dir.path(), "prod", &["alpha", "beta"], false)
        .expect_err("existing files must not be overwritten");
    match &err {
        NetError::AlreadyExists { path } => assert_eq!(path, &dir.path().join("ca.pem")),
        other => panic!("expected AlreadyExists, got {other}"),
    }
    assert!(err.to_string().contains("ca.pem"), "{err}");

    // One existing file among new ones is enough to refuse, and nothing is written.
    let err = generate_cluster(dir.path(), "other", &["gamma", "beta"], false)
        .expect_err("beta's files exist");
    assert!(matches!(err, NetError::AlreadyExists { .. }), "{err}");
    assert!(!dir.path().join("gamma.pem").exists());
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca.pem"),
        ca_before
    );

    // A loose key mode is reset on overwrite.
    std::fs::set_permissions(
        dir.path().join("alpha.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    generate_cluster(dir.path(), "prod", &["alpha", "beta"], true).expect("overwrite");
    assert_ne!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca.pem"),
        ca_before
    );
    assert_ne!(
        std::fs::read(dir.path().join("alpha.key")).expect("alpha.key"),
        key_before
    );
    assert_eq!(mode(&dir.path().join("alpha.key")), 0o600);
    NodeIdentity::load(dir.path(), "alpha").expect("load regenerated identity");
}

#[test]
fn invalid_names_are_refused_with_specific_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in [
        "",
        "Alpha",
        "al pha",
        "alpha.example",
        "-alpha",
        "ca",
        "42",
        &"n".repeat(64),
    ] {
        let err = generate_cluster(dir.path(), "prod", &["beta", bad], false)
            .expect_err("invalid node name");
        match &err {
            NetError::InvalidNodeName { name, .. } => assert_eq!(name, bad),
            other => panic!("{bad:?}: expected InvalidNodeName, got {other}"),
        }
    }
    assert!(matches!(
        generate_cluster(dir.path(), "prod", &["beta", "beta"], false),
        Err(NetError::DuplicateNode { name }) if name == "beta"
    ));
    assert!(matches!(
        generate_cluster(dir.path(), "prod", &[], false),
        Err(NetError::NoNodes)
    ));
    assert!(matches!(
        generate_cluster(dir.path(), "", &["alpha"], false),
        Err(NetError::InvalidClusterName { .. })
    ));
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("read_dir").count(),
        0,
        "refusals write nothing"
    );
    assert!(matches!(
        NodeIdentity::load(dir.path(), "Alpha"),
        Err(NetError::InvalidNodeName { .. })
    ));
}

#[test]
fn load_reports_missing_and_mismatched_files() {
    let ours = tempfile::tempdir().expect("tempdir");
    let theirs = tempfile::tempdir().expect("tempdir");
    generate_cluster(ours.path(), "ours", &["alpha", "beta"], false).expect("generate");
    generate_cluster(theirs.path(), "theirs", &["alpha"], false).expect("generate");

    let err = NodeIdentity::load(ours.path(), "gamma").expect_err("no gamma files");
    assert!(matches!(err, NetError::Io { .. }), "{err}");
    assert!(err.to_string().contains("gamma.pem"), "{err}");

    // beta's key with alpha's certificate.
    std::fs::copy(ours.path().join("beta.key"), ours.path().join("alpha.key")).expect("copy");
    let err = NodeIdentity::load(ours.path(), "alpha").expect_err("key does not match");
    assert!(matches!(err, NetError::IdentityMismatch { .. }), "{err}");

    // beta's files renamed to gamma: the certificate does not name gamma.
    for ext in ["pem", "key"] {
        std::fs::copy(
            ours.path().join(format!("beta.{ext}")),
            ours.path().join(format!("gamma.{ext}")),
        )
        .expect("copy");
    }
    let err = NodeIdentity::load(ours.path(), "gamma").expect_err("certificate names beta");
    assert!(matches!(err, NetError::IdentityMismatch { .. }), "{err}");

    // Another cluster's CA.
    std::fs::copy(theirs.path().join("ca.pem"), ours.path().join("ca.pem")).expect("copy");
    let err = NodeIdentity::load(ours.path(), "beta").expect_err("signed by another CA");
    assert!(matches!(err, NetError::IdentityMismatch { .. }), "{err}");

    std::fs::write(ours.path().join("ca.pem"), "not a certificate\n").expect("write");
    let err = NodeIdentity::load(ours.path(), "beta").expect_err("garbage CA file");
    assert!(matches!(err, NetError::InvalidPem { .. }), "{err}");
}
