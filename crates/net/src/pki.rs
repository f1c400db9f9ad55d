//! The cluster PKI: one private CA per cluster, one certificate per node.
//!
//! Files in a PKI directory: `ca.pem`, `ca.key`, and `<node>.pem`, `<node>.key` for each node.
//! A node needs `ca.pem` and its own pair; `ca.key` is only needed to issue certificates and can be
//! kept off the nodes.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::RootCertStore;

use crate::NetError;

/// Longest node name: one DNS label.
pub const NODE_NAME_MAX_BYTES: usize = 63;

/// Longest cluster name; keeps the CA common name `<cluster> CA` within the X.520 bound of 64.
pub const CLUSTER_NAME_MAX_BYTES: usize = 60;

/// Certificates are valid this long from their generation.
pub const CERT_VALIDITY_DAYS: u64 = 3650;

/// Certificates are valid from this long before their generation, so that a peer whose clock
/// lags behind the generating machine's still accepts them.
pub const CERT_BACKDATE_SECS: u64 = 24 * 3600;

const SECS_PER_DAY: u64 = 24 * 3600;

/// File stem of the CA files; therefore not a valid node name.
const CA_STEM: &str = "ca";

const KEY_FILE_MODE: u32 = 0o600;
const CERT_FILE_MODE: u32 = 0o644;
const PKI_DIR_MODE: u32 = 0o700;

/// Check that `name` can name a node: it becomes a DNS SAN, a file stem and a TLS server name.
pub fn validate_node_name(name: &str) -> Result<(), NetError> {
    let invalid = |reason| {
        Err(NetError::InvalidNodeName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > NODE_NAME_MAX_BYTES {
        return invalid("it is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("it contains a character other than a-z, 0-9 and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("it starts or ends with '-'");
    }
    if name == CA_STEM {
        return invalid("\"ca\" is reserved for the cluster CA files");
    }
    // TLS refuses server names that could be read as a number (all digits, or 0x and hex digits).
    if DnsName::try_from(name).is_err() {
        return invalid("it could be read as a number (all digits, or 0x and hex digits)");
    }
    Ok(())
}

fn validate_cluster_name(name: &str) -> Result<(), NetError> {
    let invalid = |reason| {
        Err(NetError::InvalidClusterName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.trim().is_empty() {
        return invalid("it is empty");
    }
    if name.len() > CLUSTER_NAME_MAX_BYTES {
        return invalid("it is longer than 60 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return invalid("it contains a character that is not printable ASCII");
    }
    Ok(())
}

fn cert_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.pem"))
}

fn key_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.key"))
}

/// A file to write: its content and its permission bits.
struct PkiFile {
    path: PathBuf,
    contents: String,
    mode: u32,
}

/// Generate a cluster CA and one certificate+key per node, written into `dir`:
/// `ca.pem`, `ca.key`, `<node>.pem`, `<node>.key`.
///
/// Keys are written with mode 0600, certificates with 0644, each created exclusively (`O_EXCL`):
/// existing files are refused unless `overwrite` is true, in which case they are replaced. All
/// names are checked before anything is written, so a refusal leaves `dir` untouched. `dir` is
/// created (mode 0700) if missing.
///
/// Node certificates carry the node name as DNS SAN and CN, are signed by the CA, are valid for
/// [`CERT_VALIDITY_DAYS`] and allow both server and client authentication.
pub fn generate_cluster(
    dir: &Path,
    cluster_name: &str,
    nodes: &[&str],
    overwrite: bool,
) -> Result<(), NetError> {
    generate_cluster_with_addresses(dir, cluster_name, nodes, &[], overwrite)
}

/// As [`generate_cluster`], with the IP addresses of some nodes (`(node, addresses)`) added to
/// their certificates as IP SANs: a browser that trusts the cluster CA then accepts a node's
/// console opened by address (`https://192.0.2.1:9010`), not only by node name. Nodes still
/// authenticate each other by name.
pub fn generate_cluster_with_addresses(
    dir: &Path,
    cluster_name: &str,
    nodes: &[&str],
    addresses: &[(&str, Vec<std::net::IpAddr>)],
    overwrite: bool,
) -> Result<(), NetError> {
    validate_cluster_name(cluster_name)?;
    if nodes.is_empty() {
        return Err(NetError::NoNodes);
    }
    for (i, node) in nodes.iter().enumerate() {
        validate_node_name(node)?;
        if nodes[..i].contains(node) {
            return Err(NetError::DuplicateNode {
                name: (*node).to_owned(),
            });
        }
    }

    let files = generate_files(dir, cluster_name, nodes, addresses)?;

    if !overwrite {
        if let Some(existing) = files.iter().find(|f| f.path.symlink_metadata().is_ok()) {
            return Err(NetError::AlreadyExists {
                path: existing.path.clone(),
            });
        }
    }

    DirBuilder::new()
        .recursive(true)
        .mode(PKI_DIR_MODE)
        .create(dir)
        .map_err(|source| NetError::Io {
            action: "create the PKI directory",
            path: dir.to_owned(),
            source,
        })?;

    for file in &files {
        write_new_file(file, overwrite)?;
    }
    sync_dir(dir)
}

fn generate_files(
    dir: &Path,
    cluster_name: &str,
    nodes: &[&str],
    addresses: &[(&str, Vec<std::net::IpAddr>)],
) -> Result<Vec<PkiFile>, NetError> {
    let now = SystemTime::now();
    let not_before = now - Duration::from_secs(CERT_BACKDATE_SECS);
    let not_after = now + Duration::from_secs(CERT_VALIDITY_DAYS * SECS_PER_DAY);

    let ca_what = || format!("CA of cluster {cluster_name:?}");
    let ca_key = KeyPair::generate().map_err(|source| NetError::CertGeneration {
        what: format!("key of the {}", ca_what()),
        source,
    })?;
    let mut ca_params = CertificateParams::default();
    ca_params.not_before = not_before.into();
    ca_params.not_after = not_after.into();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{cluster_name} CA"));
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "mirrorkit");
    // Path length 0: the CA signs node certificates only, never another CA.
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| NetError::CertGeneration {
            what: format!("certificate of the {}", ca_what()),
            source,
        })?;

    let mut files = vec![
        PkiFile {
            path: cert_path(dir, CA_STEM),
            contents: ca_cert.pem(),
            mode: CERT_FILE_MODE,
        },
        PkiFile {
            path: key_path(dir, CA_STEM),
            contents: ca_key.serialize_pem(),
            mode: KEY_FILE_MODE,
        },
    ];

    let issuer = Issuer::new(ca_params, ca_key);
    for node in nodes {
        let node_what = |part: &str| format!("{part} of node {node:?}");
        let node_key = KeyPair::generate().map_err(|source| NetError::CertGeneration {
            what: node_what("key"),
            source,
        })?;
        let mut params = CertificateParams::new(vec![(*node).to_owned()]).map_err(|source| {
            NetError::CertGeneration {
                what: node_what("certificate"),
                source,
            }
        })?;
        for (_, ips) in addresses.iter().filter(|(n, _)| n == node) {
            for ip in ips {
                let san = SanType::IpAddress(*ip);
                if !params.subject_alt_names.contains(&san) {
                    params.subject_alt_names.push(san);
                }
            }
        }
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *node);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "mirrorkit");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, cluster_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node both accepts and dials, so its one certificate serves both roles.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert =
            params
                .signed_by(&node_key, &issuer)
                .map_err(|source| NetError::CertGeneration {
                    what: node_what("certificate"),
                    source,
                })?;
        files.push(PkiFile {
            path: cert_path(dir, node),
            contents: cert.pem(),
            mode: CERT_FILE_MODE,
        });
        files.push(PkiFile {
            path: key_path(dir, node),
            contents: node_key.serialize_pem(),
            mode: KEY_FILE_MODE,
        });
    }
    Ok(files)
}

/// Whether the certificate in `cert` (PEM) is valid for the IP address `ip` (an IP SAN), as a
/// browser opening `https://<ip>:...` would check it.
pub fn certificate_valid_for_ip(cert: &Path, ip: std::net::IpAddr) -> Result<bool, NetError> {
    let pem = std::fs::read(cert).map_err(|source| NetError::Io {
        action: "read",
        path: cert.to_owned(),
        source,
    })?;
    let parse = |reason: String| NetError::InvalidPem {
        path: cert.to_owned(),
        reason,
    };
    let der = CertificateDer::from_pem_slice(&pem).map_err(|e| parse(e.to_string()))?;
    let end = webpki::EndEntityCert::try_from(&der).map_err(|e| parse(e.to_string()))?;
    Ok(end
        .verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into()))
        .is_ok())
}

fn write_new_file(file: &PkiFile, overwrite: bool) -> Result<(), NetError> {
    let io_err = |action, source| NetError::Io {
        action,
        path: file.path.clone(),
        source,
    };
    if overwrite {
        // Remove rather than truncate: the new file is then created with our mode and owner, and a
        // symlink planted at this path is replaced instead of followed.
        match std::fs::remove_file(&file.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove the old", e)),
        }
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file.mode)
        .open(&file.path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                NetError::AlreadyExists {
                    path: file.path.clone(),
                }
            } else {
                io_err("create", e)
            }
        })?;
    // The mode given to open() is filtered by the umask; set it exactly.
    f.set_permissions(std::fs::Permissions::from_mode(file.mode))
        .map_err(|e| io_err("set permissions of", e))?;
    f.write_all(file.contents.as_bytes())
        .map_err(|e| io_err("write", e))?;
    f.sync_all().map_err(|e| io_err("sync", e))
}

fn sync_dir(dir: &Path) -> Result<(), NetError> {
    let io_err = |action, source| NetError::Io {
        action,
        path: dir.to_owned(),
        source,
    };
    let d = std::fs::File::open(dir).map_err(|e| io_err("open the PKI directory", e))?;
    d.sync_all()
        .map_err(|e| io_err("sync the PKI directory", e))
}

/// A node's credentials, loaded from a PKI directory: its certificate chain and private key, and
/// the cluster CA certificates that peers must chain to.
pub struct NodeIdentity {
    node_name: String,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_name", &self.node_name)
            .field("cert_chain_len", &self.cert_chain.len())
            .field("roots_len", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            node_name: self.node_name.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            roots: Arc::clone(&self.roots),
        }
    }
}

impl NodeIdentity {
    /// Load `ca.pem`, `<node>.pem` and `<node>.key` from `dir`.
    ///
    /// Checks, so that a misconfiguration fails here rather than at the peer's handshake: the key
    /// matches the certificate, and the certificate is signed by the CA, is currently valid, names
    /// `node_name`, and allows both server and client authentication.
    pub fn load(dir: &Path, node_name: &str) -> Result<Self, NetError> {
        validate_node_name(node_name)?;
        let mismatch = |reason: String| NetError::IdentityMismatch {
            node: node_name.to_owned(),
            dir: dir.to_owned(),
            reason,
        };

        let ca_path = cert_path(dir, CA_STEM);
        let ca_certs = read_certs(&ca_path)?;
        let mut roots = RootCertStore::empty();
        for cert in ca_certs {
            roots.add(cert).map_err(|e| NetError::InvalidPem {
                path: ca_path.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let roots = Arc::new(roots);

        let node_cert_path = cert_path(dir, node_name);
        let cert_chain = read_certs(&node_cert_path)?;
        let node_key_path = key_path(dir, node_name);
        let key = read_key(&node_key_path)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::sign::CertifiedKey::from_der(cert_chain.clone(), key.clone_key(), &provider)
            .map_err(|e| {
                mismatch(format!(
                    "{} does not belong to {}: {e}",
                    node_key_path.display(),
                    node_cert_path.display()
                ))
            })?;

        let (end_entity, intermediates) = cert_chain
            .split_first()
            .ok_or_else(|| mismatch(format!("{} is empty", node_cert_path.display())))?;
        let now = UnixTime::now();
        let server_name = ServerName::try_from(node_name.to_owned())
            .map_err(|e| mismatch(format!("{node_name:?} is not a TLS server name: {e}")))?;
        let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| mismatch(format!("cannot use {}: {e}", ca_path.display())))?;
        server_verifier
            .verify_server_cert(end_entity, intermediates, &server_name, &[], now)
            .map_err(|e| {
                mismatch(format!(
                    "{} is not a valid server certificate for {node_name:?} under {}: {e}",
                    node_cert_path.display(),
                    ca_path.display()
                ))
            })?;
        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(|e| mismatch(format!("cannot use {}: {e}", ca_path.display())))?;
        client_verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| {
                mismatch(format!(
                    "{} is not a valid client certificate under {}: {e}",
                    node_cert_path.display(),
                    ca_path.display()
                ))
            })?;

        warn_if_readable_by_others(&node_key_path);

        Ok(Self {
            node_name: node_name.to_owned(),
            cert_chain,
            key,
            roots,
        })
    }

    /// The name this node's certificate carries.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The node's certificate chain (its own certificate first), for TLS outside QUIC (the
    /// console's HTTPS).
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// The node's private key, for TLS outside QUIC (the console's HTTPS).
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The cluster CA: what a peer's certificate must chain to.
    pub fn roots(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, NetError> {
    std::fs::read(path).map_err(|source| NetError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NetError::InvalidPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(NetError::InvalidPem {
            path: path.to_owned(),
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, NetError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| NetError::InvalidPem {
        path: path.to_owned(),
        reason: format!("no usable private key: {e}"),
    })
}

fn warn_if_readable_by_others(key_path: &Path) {
    if let Ok(meta) = std::fs::metadata(key_path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %key_path.display(),
                mode = format_args!("{mode:o}"),
                "private key is readable by group or others; run chmod 600 on it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for ok in ["a", "node-1", "alpha", "n0", &"x".repeat(63)] {
            assert!(validate_node_name(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "Node",
            "a_b",
            "a.b",
            "-a",
            "a-",
            "ca",
            "123",
            "0xab",
            "nœud",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(
                    validate_node_name(bad),
                    Err(NetError::InvalidNodeName { .. })
                ),
                "{bad} should be invalid"
            );
        }
    }

    #[test]
    fn cluster_names() {
        assert!(validate_cluster_name("Prod cluster 1").is_ok());
        for bad in ["", "   ", "tab\there", &"c".repeat(61)] {
            assert!(matches!(
                validate_cluster_name(bad),
                Err(NetError::InvalidClusterName { .. })
            ));
        }
    }

    #[test]
    fn node_certificates_carry_their_addresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a: std::net::IpAddr = "192.0.2.1".parse().expect("ip");
        let b6: std::net::IpAddr = "2001:db8::2".parse().expect("ip");
        generate_cluster_with_addresses(
            dir.path(),
            "c",
            &["alpha", "beta"],
            &[("alpha", vec![a, a]), ("beta", vec![b6])],
            false,
        )
        .expect("generate");
        let valid_for = |node: &str, name: ServerName<'_>| {
            let pem = std::fs::read(cert_path(dir.path(), node)).expect("cert");
            let der = CertificateDer::from_pem_slice(&pem).expect("pem");
            let cert = webpki::EndEntityCert::try_from(&der).expect("parse");
            cert.verify_is_valid_for_subject_name(&name).is_ok()
        };
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().expect("ip").into());
        let dns = |s: &'static str| ServerName::try_from(s).expect("dns");
        assert!(valid_for("alpha", ip("192.0.2.1")));
        assert!(valid_for("alpha", dns("alpha")), "still valid for its name");
        assert!(!valid_for("alpha", ip("2001:db8::2")));
        assert!(valid_for("beta", ip("2001:db8::2")));
        assert!(!valid_for("beta", ip("192.0.2.1")));
        assert!(!valid_for("beta", dns("alpha")));
    }
}
