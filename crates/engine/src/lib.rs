//! mirrorkit replication engine.
//!
//! Owns: the FUSE file system mounted over a replicated directory on the primary (`fs`,
//! `core`), the primary's end of the replication link (`link`) and its connection driver
//! (`primary`), read passthrough (`passthrough`), the synchronisation of a peer (`sync`, `progress`), the dirty record
//! (`record`), and the secondary's receiver
//! (`secondary`).
//!
//! Never does: decide who is primary (the cluster manager does), or resolve a path from the
//! network itself (mirrorkit-store does, beneath the root).

pub mod control;
pub mod core;
pub mod frames;
pub mod fs;
pub mod link;
pub mod managed;
pub mod mount;
pub mod passthrough;
pub mod primary;
pub mod progress;
pub mod record;
pub mod secondary;
pub mod selection;
pub mod status;
pub mod sync;
pub mod verify;
