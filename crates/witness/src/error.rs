//! The one error type of this crate. Each variant names the file, field, node or address
//! concerned, so that an operator can tell what to fix without reading code.

use std::net::SocketAddr;
use std::path::PathBuf;

use mirrorkit_net::NetError;

/// Everything that can keep the witness from starting or running.
#[derive(thiserror::Error, Debug)]
pub enum WitnessError {
    #[error("cannot read the witness configuration {}: {source}", path.display())]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}:{at} {reason}", path.display())]
    ConfigSyntax {
        path: PathBuf,
        /// `LINE:COL:` or empty.
        at: String,
        reason: String,
    },

    #[error("{path}: {field}: {reason}")]
    ConfigField {
        /// The file, or "the witness configuration" for one built in code.
        path: String,
        field: &'static str,
        reason: String,
    },

    #[error("cannot load the witness's certificate {name:?} from {}: {source}", dir.display())]
    Identity {
        name: String,
        dir: PathBuf,
        #[source]
        source: Box<NetError>,
    },

    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: Box<NetError>,
    },

    #[error("cannot {action} {}: {source}", path.display())]
    StateIo {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "witness state file {} is not usable: {reason}. The witness refuses to start rather than \
         forget a recorded generation: repair the file, or remove it if the module's data on both \
         nodes is known to be the latest",
        path.display()
    )]
    StateFile { path: PathBuf, reason: String },

    #[error("another witness process uses the state directory (it holds the lock {})", path.display())]
    StateLocked { path: PathBuf },
}
