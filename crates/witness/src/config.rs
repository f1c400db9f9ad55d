//! The witness's configuration file (`/etc/mirrorkit/witness.toml` by default, written by
//! `mirrorkit cluster init`):
//!
//! ```toml
//! cluster = "shop"                     # the cluster's name
//! name = "witness"                     # the name in the witness's certificate
//! listen = "0.0.0.0:7450"              # QUIC (UDP) address the nodes dial
//! certs = "/etc/mirrorkit/certs"       # ca.pem, <name>.pem, <name>.key
//! state_dir = "/var/lib/mirrorkit-witness"  # one state file per module
//! nodes = ["alpha", "beta"]            # the nodes it arbitrates between
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::WitnessError;

/// Everything the witness needs to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The cluster's name (recorded in every state file, which another cluster's witness
    /// refuses).
    pub cluster: String,
    /// The name in the witness's certificate.
    pub name: String,
    pub listen: SocketAddr,
    /// The PKI directory: `ca.pem`, `<name>.pem`, `<name>.key`.
    pub certs: PathBuf,
    pub state_dir: PathBuf,
    /// The nodes whose certificates may claim modules.
    pub nodes: Vec<String>,
}

impl ServerConfig {
    /// Read and check the file at `path`. Errors name the file, and the line and column or the
    /// field concerned.
    pub fn load(path: &Path) -> Result<Self, WitnessError> {
        let text = std::fs::read_to_string(path).map_err(|source| WitnessError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parse and check `text`, the content of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, WitnessError> {
        let cfg: ServerConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| line_col(text, s.start));
            WitnessError::ConfigSyntax {
                path: path.to_owned(),
                at: at.map_or_else(String::new, |(l, c)| format!("{l}:{c}:")),
                reason: e.message().trim().to_owned(),
            }
        })?;
        cfg.check()
            .map_err(|(field, reason)| WitnessError::ConfigField {
                path: path.display().to_string(),
                field,
                reason,
            })?;
        Ok(cfg)
    }

    /// Check the fields' values; on a problem, the field and what is wrong.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        use mirrorkit_net::pki::validate_node_name;
        if self.cluster.trim().is_empty() {
            return Err(("cluster", "the cluster name is empty".to_owned()));
        }
        validate_node_name(&self.name).map_err(|e| ("name", e.to_string()))?;
        if self.certs.as_os_str().is_empty() {
            return Err(("certs", "the path is empty".to_owned()));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(("state_dir", "the path is empty".to_owned()));
        }
        if self.nodes.is_empty() {
            return Err((
                "nodes",
                "no node is listed: list the cluster's two nodes".to_owned(),
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            validate_node_name(node).map_err(|e| ("nodes", e.to_string()))?;
            if self.nodes[..i].contains(node) {
                return Err(("nodes", format!("{node:?} is listed twice")));
            }
            if *node == self.name {
                return Err((
                    "nodes",
                    format!("{node:?} is the witness's own name: the witness is not a node"),
                ));
            }
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before, |nl| &before[nl + 1..])
        .chars()
        .count()
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "shop"
name = "witness"
listen = "0.0.0.0:7450"
certs = "/etc/mirrorkit/certs"
state_dir = "/var/lib/mirrorkit-witness"
nodes = ["alpha", "beta"]
"#;

    fn err(text: &str) -> String {
        ServerConfig::parse(Path::new("/etc/w.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_the_file_cluster_init_writes() {
        let c = ServerConfig::parse(Path::new("w.toml"), GOOD).unwrap();
        assert_eq!(c.nodes, ["alpha", "beta"]);
        assert_eq!(c.listen.port(), 7450);
    }

    #[test]
    fn errors_name_the_file_and_the_place_or_field() {
        let e = err(&GOOD.replace("nodes", "nodez"));
        assert!(e.starts_with("/etc/w.toml:"), "{e}");
        assert!(e.contains("nodez"), "{e}");
        let e = err(&GOOD.replace("0.0.0.0:7450", "nowhere"));
        assert!(e.starts_with("/etc/w.toml:4:"), "{e}");
        let e = err(&GOOD.replace("\"beta\"", "\"alpha\""));
        assert!(e.contains("/etc/w.toml: nodes:"), "{e}");
        assert!(e.contains("twice"), "{e}");
        let e = err(&GOOD.replace("\"beta\"", "\"witness\""));
        assert!(e.contains("nodes"), "{e}");
        let e = err(&GOOD.replace("name = \"witness\"", "name = \"Witness\""));
        assert!(e.contains("/etc/w.toml: name:"), "{e}");
        let e = ServerConfig::load(Path::new("/nonexistent/w.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/w.toml"), "{e}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé\nx", 7), (3, 1));
        assert_eq!(line_col("ab\ncé", 6), (2, 3));
        assert_eq!(line_col("ab\ncé", 5), (2, 2));
        assert_eq!(line_col("", 10), (1, 1));
    }
}
