//! Data generations: which node holds the newest copy of a mirror, and how to bring the other
//! one up to date. In the spirit of DRBD's generation identifiers.
//!
//! Every node persists a [`DataState`]. Its `current` generation names the data it holds; a
//! new generation starts whenever a node becomes primary without its peer (it starts writing
//! what the peer will not have). `bitmap` is set while the node records its changes for a peer
//! that holds generation `bitmap`: the node's dirty record (regions and names) holds every
//! change since then. `history` lists the generations the data descends from.
//!
//! On reconnection, [`compare`] decides from the two states alone:
//!
//! | condition | relation |
//! | --- | --- |
//! | same `current` | [`Relation::Same`] |
//! | local `bitmap` = peer `current` | peer is behind by the local record: incremental |
//! | peer `current` in local history | peer is behind, the record does not cover it: full |
//! | (and symmetrically) | local is behind |
//! | anything else | [`Relation::SplitBrain`]: both wrote since they last shared data |
//!
//! Never is a node's copy trusted when it is inconsistent (a resync into it was interrupted),
//! and never is a record trusted when a crash may have left writes it does not hold (`unclean`).
//!
//! Everything here is pure: random identifiers are passed in by the caller.

use serde::{Deserialize, Serialize};

/// Identifier of a generation: random, chosen when the generation starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GenId(pub u64);

impl std::fmt::Display for GenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Most ancestors kept in a history.
pub const HISTORY_LEN: usize = 16;

/// The role in which a node last held its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Never primary nor secondary with this data (a new or wiped node).
    #[default]
    None,
    Primary,
    Secondary,
}

/// What a node persists about its copy of one mirror.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataState {
    /// The generation of this node's data; `None` for a node that has no history (new,
    /// wiped, or whose record was lost).
    pub current: Option<GenId>,
    /// Set while this node records its changes for a peer that holds generation `bitmap`.
    pub bitmap: Option<GenId>,
    /// Generations this data descends from, newest first, at most `HISTORY_LEN`.
    pub history: Vec<GenId>,
    /// This node's copy is a state the primary actually passed through: false from the first
    /// message of a resync into it until the end of that resync.
    pub consistent: bool,
    /// As primary: the peer holds every write this node acknowledged. Cleared, durably,
    /// before the first write the peer misses is acknowledged.
    pub peer_in_sync: bool,
    /// The role in which this node last held the data.
    pub role: Role,
    /// This node runs, or ran and did not stop cleanly, as primary with its peer in sync: it
    /// may hold writes that the peer never acknowledged and its record does not list. The next
    /// resync between the two, in either direction, compares all data.
    pub unclean: bool,
    /// An operator made this data the reference (`prim`) since its last resync as source: a
    /// peer in split brain with it yields to it, keeping its own divergent data aside.
    pub forced: bool,
    /// This node saw its peer hold newer data, or data that diverged from its own, and has
    /// not taken the peer's data since (DRBD's "outdated"): it may not lead without the peer,
    /// even after a restart, unless an operator forces it.
    pub outdated: bool,
}

/// How two nodes' data relate, seen from the local node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// Neither node has a history (a new cluster): either may be the source; compare all.
    BothNew,
    /// Same generation. `compare_all`: a crash may have left writes on one of them that the
    /// other lacks; the resync towards the secondary must compare all data.
    Same { compare_all: bool },
    /// The local data is newer. `incremental`: the local record holds every change the peer
    /// lacks; else every file must be compared.
    LocalNewer { incremental: bool },
    /// The peer's data is newer.
    PeerNewer { incremental: bool },
    /// Both nodes wrote since they last shared data (or they never did): an operator chooses
    /// the survivor; the other's divergent files are kept aside.
    SplitBrain,
    /// Neither copy is consistent: each was the target of an interrupted resync.
    NeitherConsistent,
}

impl Relation {
    /// Whether the local node may be the source of a resync towards the peer (and so be
    /// primary while the peer is connected) without an operator forcing it.
    pub fn local_may_lead(self) -> bool {
        matches!(
            self,
            Relation::BothNew | Relation::Same { .. } | Relation::LocalNewer { .. }
        )
    }

    /// Whether the resync from the newer side may send only its recorded changes.
    pub fn incremental(self) -> bool {
        matches!(
            self,
            Relation::Same { compare_all: false }
                | Relation::LocalNewer { incremental: true }
                | Relation::PeerNewer { incremental: true }
        )
    }
}

/// Decide how `local` and `peer` relate.
pub fn compare(local: &DataState, peer: &DataState) -> Relation {
    match (local.consistent, peer.consistent) {
        // Two nodes that never held the data (a new cluster): nothing to protect on either.
        (false, false) if local.is_new() && peer.is_new() => return Relation::BothNew,
        (false, false) => return Relation::NeitherConsistent,
        // An inconsistent copy is never a source, whatever its generation says.
        (false, true) => {
            return Relation::PeerNewer {
                incremental: peer.current.is_some()
                    && peer.bitmap.is_some()
                    && peer.bitmap == local.current
                    && !peer.unclean
                    && !local.unclean,
            };
        }
        (true, false) => {
            return Relation::LocalNewer {
                incremental: local.current.is_some()
                    && local.bitmap.is_some()
                    && local.bitmap == peer.current
                    && !local.unclean
                    && !peer.unclean,
            };
        }
        (true, true) => {}
    }
    let (Some(l), Some(p)) = (local.current, peer.current) else {
        return match (local.current, peer.current) {
            (None, None) => Relation::BothNew,
            (Some(_), None) => Relation::LocalNewer { incremental: false },
            _ => Relation::PeerNewer { incremental: false },
        };
    };
    let unclean = local.unclean || peer.unclean;
    if l == p {
        return Relation::Same {
            compare_all: unclean,
        };
    }
    if local.bitmap == Some(p) {
        return Relation::LocalNewer {
            incremental: !unclean,
        };
    }
    if peer.bitmap == Some(l) {
        return Relation::PeerNewer {
            incremental: !unclean,
        };
    }
    let local_descends = local.history.contains(&p);
    let peer_descends = peer.history.contains(&l);
    match (local_descends, peer_descends) {
        (true, false) => Relation::LocalNewer { incremental: false },
        (false, true) => Relation::PeerNewer { incremental: false },
        _ => Relation::SplitBrain,
    }
}

/// Why a node may not become primary without its peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stale {
    /// A resync into this node did not finish: its copy is a mix of old and new.
    Inconsistent,
    /// This node was secondary: the peer may have gone on writing since.
    WasSecondary,
    /// This node has no data history (new or wiped).
    NoHistory,
    /// This node saw the peer with newer (or divergent) data and has not resynced since.
    Outdated,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stale::Inconsistent => {
                "a resync into this node did not finish: its copy mixes old and new data"
            }
            Stale::WasSecondary => {
                "this node was secondary when it last ran: the peer may hold newer data"
            }
            Stale::NoHistory => "this node has no data history (new or wiped node)",
            Stale::Outdated => {
                "this node saw the peer with newer data, or data that diverged from its own, and has not resynced since"
            }
        })
    }
}

impl DataState {
    /// A node that never held this data in any role (new or wiped): it has nothing to lose,
    /// and nothing to give.
    pub fn is_new(&self) -> bool {
        self.current.is_none() && self.role == Role::None
    }

    /// A node may become primary without seeing its peer only if it is consistent and was
    /// primary itself when it last held the data. Otherwise it waits for the peer, or for an
    /// operator to force it (`prim`).
    pub fn may_lead_alone(&self) -> Result<(), Stale> {
        if !self.consistent {
            return Err(Stale::Inconsistent);
        }
        if self.outdated {
            return Err(Stale::Outdated);
        }
        match self.role {
            Role::Primary => Ok(()),
            Role::Secondary => Err(Stale::WasSecondary),
            Role::None => Err(Stale::NoHistory),
        }
    }

    fn push_history(&mut self, g: GenId) {
        if self.history.first() != Some(&g) {
            self.history.insert(0, g);
            self.history.truncate(HISTORY_LEN);
        }
    }

    /// This node starts writing as primary without its peer (it starts alone, loses its peer,
    /// or is forced): a new generation `fresh` begins. The dirty record keeps covering every
    /// change since the peer's last known generation.
    pub fn begin_alone(&mut self, fresh: GenId) {
        // Stopped without recording what the peer missed: the record does not cover it.
        let trusted = !self.unclean;
        if !trusted {
            self.bitmap = None;
            self.unclean = false;
        }
        if let Some(cur) = self.current {
            // The peer holds `cur` if it was in sync with this primary, or if this node was its
            // secondary (then it took this node's data from it).
            if trusted
                && self.bitmap.is_none()
                && (self.peer_in_sync || self.role == Role::Secondary)
            {
                self.bitmap = Some(cur);
            }
            self.push_history(cur);
        }
        self.current = Some(fresh);
        self.peer_in_sync = false;
        self.consistent = true;
        self.outdated = false;
        self.role = Role::Primary;
    }

    /// The running primary lost its peer and has just recorded every change the peer may lack
    /// (operations in flight and acknowledged since its last flush): unlike a restart after a
    /// crash, its record is complete, so the next resync may be incremental.
    pub fn peer_lost(&mut self, fresh: GenId) {
        self.unclean = false;
        self.begin_alone(fresh);
    }

    /// Forced primary (`prim`) on data that may be stale or inconsistent: it becomes the
    /// reference. The record is not trusted (it may not cover what the peer holds).
    pub fn force_lead(&mut self, fresh: GenId) {
        if let Some(cur) = self.current {
            self.push_history(cur);
        }
        self.current = Some(fresh);
        self.bitmap = None;
        self.peer_in_sync = false;
        self.consistent = true;
        self.unclean = false;
        self.forced = true;
        self.outdated = false;
        self.role = Role::Primary;
    }

    /// As primary, a resync brought the peer to this node's data: the record can start over.
    pub fn resync_done_as_source(&mut self) {
        self.bitmap = None;
        self.forced = false;
        self.peer_in_sync = true;
        self.role = Role::Primary;
    }

    /// This node, primary, handed its data over to its peer (a swap, or a stop with the peer in
    /// sync) after a barrier proved that the peer holds every write: from now on it is
    /// secondary, and its copy equals the peer's.
    pub fn handed_over(&mut self) {
        self.role = Role::Secondary;
        self.bitmap = None;
        self.peer_in_sync = false;
        self.unclean = false;
    }

    /// An operator chose this node's data over the peer's generation `other` (`prim` in a
    /// split brain, or on data older than the peer's): a node holding `other` is now behind
    /// this one and resyncs from it in full, keeping its divergent files aside.
    pub fn supersede(&mut self, other: GenId) {
        if self.current != Some(other) && !self.history.contains(&other) {
            self.history.insert(0, other);
            self.history.truncate(HISTORY_LEN);
        }
    }

    /// A resync into this node starts: its copy is inconsistent until it ends.
    pub fn begin_resync_as_target(&mut self) {
        self.consistent = false;
        self.peer_in_sync = false;
        self.role = Role::Secondary;
    }

    /// A resync into this node ended: it holds the source's generation.
    pub fn resync_done_as_target(&mut self, source: &DataState) {
        self.current = source.current;
        self.history = source.history.clone();
        self.bitmap = None;
        self.consistent = true;
        self.unclean = false;
        self.forced = false;
        self.outdated = false;
        self.role = Role::Secondary;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> DataState {
        DataState {
            consistent: true,
            ..DataState::default()
        }
    }

    /// Two nodes in sync on one generation.
    fn pair() -> (DataState, DataState) {
        let mut a = node();
        a.begin_alone(GenId(1));
        let mut b = node();
        b.begin_resync_as_target();
        b.resync_done_as_target(&a);
        a.resync_done_as_source();
        (a, b)
    }

    #[test]
    fn new_cluster_then_in_sync() {
        assert_eq!(compare(&node(), &node()), Relation::BothNew);
        let (a, b) = pair();
        assert_eq!(compare(&a, &b), Relation::Same { compare_all: false });
        assert!(a.may_lead_alone().is_ok());
        assert_eq!(b.may_lead_alone(), Err(Stale::WasSecondary));
    }

    #[test]
    fn primary_alone_is_newer_by_its_record() {
        let (mut a, b) = pair();
        a.begin_alone(GenId(2));
        assert_eq!(a.bitmap, Some(GenId(1)));
        assert_eq!(compare(&a, &b), Relation::LocalNewer { incremental: true });
        assert_eq!(compare(&b, &a), Relation::PeerNewer { incremental: true });
        // Restarting alone again keeps the record's base.
        a.begin_alone(GenId(3));
        assert_eq!(a.bitmap, Some(GenId(1)));
        assert_eq!(compare(&a, &b), Relation::LocalNewer { incremental: true });
    }

    #[test]
    fn interrupted_resync_resumes_from_the_same_record() {
        let (mut a, mut b) = pair();
        a.begin_alone(GenId(2));
        b.begin_resync_as_target();
        assert!(!b.consistent);
        assert_eq!(b.may_lead_alone(), Err(Stale::Inconsistent));
        assert_eq!(compare(&a, &b), Relation::LocalNewer { incremental: true });
        assert!(!compare(&b, &a).local_may_lead());
        b.resync_done_as_target(&a);
        a.resync_done_as_source();
        assert_eq!(compare(&a, &b), Relation::Same { compare_all: false });
    }

    #[test]
    fn failover_makes_the_old_secondary_newer() {
        let (mut a, mut b) = pair();
        a.unclean = true; // crashed while primary in sync
        b.begin_alone(GenId(2)); // failover
        assert_eq!(compare(&b, &a), Relation::LocalNewer { incremental: false });
        // The crashed node, restarted as primary alone, drops its record.
        let mut a2 = a.clone();
        a2.begin_alone(GenId(9));
        assert_eq!(a2.bitmap, None);
        assert!(!a2.unclean);
        a.unclean = false; // a clean switchover instead
        assert_eq!(compare(&b, &a), Relation::LocalNewer { incremental: true });
        assert_eq!(compare(&a, &b), Relation::PeerNewer { incremental: true });
    }

    #[test]
    fn both_alone_is_split_brain() {
        let (mut a, mut b) = pair();
        a.begin_alone(GenId(2));
        b.force_lead(GenId(3));
        assert_eq!(compare(&a, &b), Relation::SplitBrain);
        assert_eq!(compare(&b, &a), Relation::SplitBrain);
        // The operator chooses a: after the resync, b holds a's generation.
        b.begin_resync_as_target();
        b.resync_done_as_target(&a);
        a.resync_done_as_source();
        assert_eq!(compare(&a, &b), Relation::Same { compare_all: false });
    }

    #[test]
    fn operator_choice_ends_a_split_brain() {
        let (mut a, mut b) = pair();
        a.begin_alone(GenId(2));
        b.begin_alone(GenId(3));
        assert_eq!(compare(&a, &b), Relation::SplitBrain);
        a.supersede(GenId(3));
        assert_eq!(compare(&a, &b), Relation::LocalNewer { incremental: false });
        assert_eq!(compare(&b, &a), Relation::PeerNewer { incremental: false });
        // Superseding twice, or one's own generation, changes nothing.
        let before = a.clone();
        a.supersede(GenId(3));
        a.supersede(GenId(2));
        assert_eq!(a, before);
    }

    #[test]
    fn handover_makes_the_old_primary_an_incremental_target() {
        let (mut a, mut b) = pair();
        a.unclean = true;
        a.handed_over();
        assert_eq!(a.may_lead_alone(), Err(Stale::WasSecondary));
        b.begin_alone(GenId(2));
        assert_eq!(compare(&a, &b), Relation::PeerNewer { incremental: true });
    }

    #[test]
    fn a_running_primary_that_loses_its_peer_keeps_an_incremental_record() {
        let mut a = DataState::default();
        a.begin_alone(GenId(1));
        let mut b = DataState::default();
        b.begin_resync_as_target();
        b.resync_done_as_target(&a);
        a.resync_done_as_source();
        a.unclean = true; // running in sync
        a.peer_lost(GenId(2));
        assert_eq!(a.bitmap, Some(GenId(1)));
        assert_eq!(compare(&a, &b), Relation::LocalNewer { incremental: true });
        // The same node restarted after a crash in sync: the record is not trusted.
        let mut c = a.clone();
        c.resync_done_as_source();
        c.unclean = true;
        c.begin_alone(GenId(3));
        assert_eq!(c.bitmap, None);
        assert_eq!(compare(&c, &b), Relation::LocalNewer { incremental: false });
    }

    #[test]
    fn an_outdated_node_waits_until_it_takes_the_peers_data_or_is_forced() {
        let (mut a, mut b) = pair();
        a.begin_alone(GenId(2));
        b.begin_alone(GenId(3)); // split brain; a yields and learns it is outdated
        a.outdated = true;
        assert_eq!(a.may_lead_alone(), Err(Stale::Outdated));
        let mut forced = a.clone();
        forced.force_lead(GenId(4));
        assert_eq!(forced.may_lead_alone(), Ok(()));
        a.begin_resync_as_target();
        a.resync_done_as_target(&b);
        assert!(!a.outdated);
    }

    #[test]
    fn ancestry_without_record_is_a_full_resync() {
        let (mut a, b) = pair();
        a.force_lead(GenId(2)); // record dropped
        a.begin_alone(GenId(3));
        assert_eq!(compare(&a, &b), Relation::LocalNewer { incremental: false });
        assert_eq!(compare(&b, &a), Relation::PeerNewer { incremental: false });
    }

    #[test]
    fn empty_peer_gets_everything() {
        let (a, _) = pair();
        assert_eq!(
            compare(&a, &node()),
            Relation::LocalNewer { incremental: false }
        );
        // Targets of interrupted first resyncs: neither holds anything trustworthy.
        let mut c = node();
        c.begin_resync_as_target();
        let mut d = node();
        d.begin_resync_as_target();
        assert_eq!(compare(&c, &d), Relation::NeitherConsistent);
        // Two nodes that never held the data (as persisted before anything happened).
        let fresh = DataState::default();
        assert_eq!(compare(&fresh, &fresh), Relation::BothNew);
        assert_eq!(compare(&fresh, &c), Relation::NeitherConsistent);
    }
}
