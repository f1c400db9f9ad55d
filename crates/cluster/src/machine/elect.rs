//! The decisions about roles, from the two nodes' data states alone. Both nodes evaluate the
//! same rules on the same pair of states, so their conclusions are complementary: at most one
//! of them elects itself, and in a conflict exactly one yields.

use super::types::Config;
use crate::generation::{compare, DataState, Relation, Role, Stale};

/// One side of an election.
pub(super) struct Candidate<'a> {
    pub node: &'a str,
    pub data: &'a DataState,
    /// Willing to lead (started, not `second`, no failing checker, not handing over).
    pub eligible: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Elected {
    Local,
    Peer,
    Neither(Blocked),
}

/// Why neither node may lead without an operator (or without the other node's help).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Blocked {
    SplitBrain,
    NeitherConsistent,
    /// The peer holds newer data but will not lead.
    PeerNewerIneligible,
    /// This node holds newer data but will not lead.
    LocalNewerIneligible,
    BothIneligible,
}

/// Who becomes primary when neither node is.
pub(super) fn elect(cfg: &Config, local: &Candidate<'_>, peer: &Candidate<'_>) -> Elected {
    match compare(local.data, peer.data) {
        Relation::LocalNewer { .. } if local.eligible => Elected::Local,
        Relation::LocalNewer { .. } => Elected::Neither(Blocked::LocalNewerIneligible),
        Relation::PeerNewer { .. } if peer.eligible => Elected::Peer,
        Relation::PeerNewer { .. } => Elected::Neither(Blocked::PeerNewerIneligible),
        // A split brain in which one side already yielded (and recorded it): the other keeps
        // the lead it had; the yielded side keeps its data, waiting for an operator.
        Relation::SplitBrain => match (local.data.outdated, peer.data.outdated) {
            (false, true) if local.eligible => Elected::Local,
            (true, false) if peer.eligible => Elected::Peer,
            _ => Elected::Neither(Blocked::SplitBrain),
        },
        Relation::NeitherConsistent => Elected::Neither(Blocked::NeitherConsistent),
        Relation::Same { .. } | Relation::BothNew => match (local.eligible, peer.eligible) {
            (false, false) => Elected::Neither(Blocked::BothIneligible),
            (true, false) => Elected::Local,
            (false, true) => Elected::Peer,
            (true, true) => {
                if local_preferred_on_same_data(cfg, local, peer) {
                    Elected::Local
                } else {
                    Elected::Peer
                }
            }
        },
    }
}

/// On equal data: the default primary if failback is on; else the node that was primary (the
/// application stays where it ran); else the default primary; else the smaller name.
fn local_preferred_on_same_data(cfg: &Config, local: &Candidate<'_>, peer: &Candidate<'_>) -> bool {
    if cfg.failback {
        if let Some(d) = &cfg.default_primary {
            if d == local.node || d == peer.node {
                return d == local.node;
            }
        }
    }
    let local_was = local.data.role == Role::Primary;
    let peer_was = peer.data.role == Role::Primary;
    if local_was != peer_was {
        return local_was;
    }
    local_preferred(cfg, local.node, peer.node)
}

/// The fixed preference used when nothing else decides (split brain, simultaneous claims):
/// the default primary, else the node whose name sorts first.
pub(super) fn local_preferred(cfg: &Config, local: &str, peer: &str) -> bool {
    match &cfg.default_primary {
        Some(d) if d == local => true,
        Some(d) if d == peer => false,
        _ => local < peer,
    }
}

/// This node may follow a primary whose data relates to its own so.
pub(super) fn may_follow(r: Relation) -> bool {
    matches!(
        r,
        Relation::PeerNewer { .. } | Relation::Same { .. } | Relation::BothNew
    )
}

/// A resync into this node must move its differing files aside: it wrote as primary data
/// that the source may lack (split brain, or writes a crash left unacknowledged).
pub(super) fn keep_aside(local: &DataState, source: &DataState, r: Relation) -> bool {
    local.role == Role::Primary && local.current != source.current && !r.incremental()
}

/// Why a node may not become primary while its peer is unreachable.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AloneBlock {
    Stale(Stale),
    /// It was primary with the peer in sync when it stopped: the peer may have taken over.
    PeerMayHaveTakenOver,
    /// The peer was last seen with newer (or divergent) data.
    PeerSeenNewer,
}

/// Whether this node may lead while the peer is unreachable. `may_lead_alone` of the data,
/// plus two rules it does not know: a primary whose peer was in sync cannot tell whether the
/// peer took over since, and what this node last saw of the peer still counts.
pub(super) fn lead_alone(
    data: &DataState,
    last_peer: Option<&DataState>,
) -> Result<(), AloneBlock> {
    data.may_lead_alone().map_err(AloneBlock::Stale)?;
    if data.peer_in_sync {
        return Err(AloneBlock::PeerMayHaveTakenOver);
    }
    if let Some(p) = last_peer {
        if !compare(data, p).local_may_lead() {
            return Err(AloneBlock::PeerSeenNewer);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::GenId;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random_state(rng: &mut StdRng) -> DataState {
        let ids = [None, Some(GenId(1)), Some(GenId(2)), Some(GenId(3))];
        DataState {
            current: ids[rng.gen_range(0..4)],
            bitmap: ids[rng.gen_range(0..4)],
            history: (0..rng.gen_range(0..3))
                .filter_map(|_| ids[rng.gen_range(0..4)])
                .collect(),
            consistent: rng.gen_bool(0.8),
            peer_in_sync: rng.gen_bool(0.5),
            role: [Role::None, Role::Primary, Role::Secondary][rng.gen_range(0..3)],
            unclean: rng.gen_bool(0.3),
            forced: rng.gen_bool(0.1),
            outdated: rng.gen_bool(0.1),
        }
    }

    /// Both nodes run the election on the same pair of states: never do both win, and a
    /// winner on one side is the same node on the other.
    #[test]
    fn election_is_symmetric() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let (a, b) = (random_state(&mut rng), random_state(&mut rng));
            // Circular records (each newer than the other by its record) cannot arise from
            // fresh random generation ids; skip them.
            if a.bitmap.is_some() && a.bitmap == b.current && b.bitmap == a.current {
                continue;
            }
            let mut cfg = Config::new("m", "a", "b");
            cfg.failback = rng.gen_bool(0.5);
            cfg.default_primary =
                [None, Some("a".to_owned()), Some("b".to_owned())][rng.gen_range(0..3)].clone();
            let (ea, eb) = (rng.gen_bool(0.7), rng.gen_bool(0.7));
            let ca = Candidate {
                node: "a",
                data: &a,
                eligible: ea,
            };
            let cb = Candidate {
                node: "b",
                data: &b,
                eligible: eb,
            };
            let from_a = elect(&cfg, &ca, &cb);
            let mut cfg_b = cfg.clone();
            cfg_b.node = "b".to_owned();
            cfg_b.peer = "a".to_owned();
            let from_b = elect(&cfg_b, &cb, &ca);
            match from_a {
                Elected::Local => assert_eq!(from_b, Elected::Peer, "{a:?} {b:?}"),
                Elected::Peer => assert_eq!(from_b, Elected::Local, "{a:?} {b:?}"),
                Elected::Neither(_) => {
                    assert!(matches!(from_b, Elected::Neither(_)), "{a:?} {b:?}")
                }
            }
        }
    }

    #[test]
    fn a_primary_whose_peer_was_in_sync_waits_when_alone() {
        let mut d = DataState {
            consistent: true,
            ..DataState::default()
        };
        d.begin_alone(GenId(1));
        assert_eq!(lead_alone(&d, None), Ok(()));
        d.resync_done_as_source();
        assert_eq!(lead_alone(&d, None), Err(AloneBlock::PeerMayHaveTakenOver));
        d.begin_alone(GenId(2)); // lost its peer, went on alone
        assert_eq!(lead_alone(&d, None), Ok(()));
        let mut newer = d.clone();
        newer.begin_alone(GenId(3));
        assert_eq!(lead_alone(&d, Some(&newer)), Err(AloneBlock::PeerSeenNewer));
    }
}
