//! Managed mode: a cluster manager (the node daemon) drives the engine instead of the engine
//! deciding alone (`mirrorkit mirror`). The differences, all on the side of caution:
//!
//! - **Primary start.** The manager has already persisted the primary generation: the link
//!   takes the persisted state as it is (it refuses a state not held as primary).
//! - **Peer lost.** The link records what the peer may lack, as always, but starts no new
//!   generation itself: it reports [`EngineEvent::PeerOutOfSync`] and holds every write (none is
//!   acknowledged to the application) until the manager has persisted the new generation and
//!   calls `Link::allow_alone`.
//! - **Secondary resync.** Before the first message of a resync is applied, the receiver reports
//!   [`EngineEvent::ResyncStarting`] and applies nothing until the manager answers (it persists
//!   the copy as inconsistent first, or refuses with a reason that ends the session).
//! - **Reports.** The primary reports the peer in sync once the peer confirmed the end of the
//!   synchronisation and that was recorded; the secondary reports its copy in sync once the end
//!   of the resync is durable, and the end of every session.

use mirrorkit_wire::DataState;
use tokio::sync::{mpsc, oneshot};

/// What the engine reports to its manager, tagged with the mirror's name.
#[derive(Debug)]
pub enum EngineEvent {
    /// Primary: the peer holds every write acknowledged so far; writes go to both from now on.
    PeerInSync { mirror: String },
    /// Primary: the session ended. Writes are held until `Link::allow_alone`.
    PeerOutOfSync { mirror: String, reason: String },
    /// Secondary: the primary (data state `source`) is about to resync this copy (`full`:
    /// every chunk compared). Answer `Ok(())` to proceed, `Err(reason)` to refuse.
    ResyncStarting {
        mirror: String,
        source: DataState,
        full: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Secondary: this copy equals the primary's (`source`), durably.
    InSync { mirror: String, source: DataState },
    /// Secondary: the session with the primary ended.
    SyncLost { mirror: String, reason: String },
}

/// Where a managed engine sends its reports.
pub type Events = mpsc::UnboundedSender<EngineEvent>;

/// Longest the receiver waits for the manager's answer to `ResyncStarting` before it refuses
/// the resync itself. Default 30 000 ms.
pub const DECISION_TIMEOUT_MS: u64 = 30_000;
