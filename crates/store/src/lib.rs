//! mirrorkit store: everything that touches a replicated tree on disk, on either node.
//!
//! Owns: safe, descriptor-relative access beneath a replicated root (`sys`), the secondary's
//! applier that performs the primary's operations in order (`apply`), and the persisted state
//! of a mirror on a node (`state`).
//!
//! Never does: networking, or resolving a path from the network without `RESOLVE_BENEATH` and
//! the refusal of symlinks on the way (see `apply` for the rule).

pub mod apply;
pub mod digest;
pub mod state;
pub mod sys;

pub use apply::{ApplyError, Store};
pub use state::{MirrorState, StateError, StateFile};

#[cfg(test)]
mod tests;
