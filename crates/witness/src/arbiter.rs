//! The witness's decision for one module: who may be primary, and on which data. Pure: no
//! I/O, no clock (the time, in milliseconds on the witness's monotonic clock, is passed in).
//!
//! The shell (`server`) asks [`Arbiter::decide`]; on [`Decision::Grant`] it makes the new
//! durable state (if any) durable, then calls [`Arbiter::apply_grant`]; on
//! [`Decision::RetryAt`] it holds the request and asks again, with `waited`, at that time.
//! Releases go the same way ([`Arbiter::release`], then [`Arbiter::apply_release`]).

use std::collections::HashMap;

use mirrorkit_cluster::generation::GenId;
use serde::{Deserialize, Serialize};

use crate::protocol::check_lease;

/// What the witness keeps durably about one module.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// The node that was last granted the role and has not released it.
    pub holder: Option<String>,
    /// The holder's lease length: after a restart the holder is treated as holding a lease of
    /// this length from the restart.
    pub lease_ms: u32,
    /// The data of the last granted claim: the latest data that may have acknowledged writes.
    pub recorded: Option<GenId>,
}

/// A claim, as the arbiter needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub current: Option<GenId>,
    pub history: Vec<GenId>,
    pub force: bool,
    pub lease_ms: u32,
}

/// Which request of which client (incarnation, sequence number): a request older than one
/// already applied from the same incarnation changes nothing (QUIC streams are not ordered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub incarnation: u64,
    pub seq: u64,
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Grant. `persist`: the durable state to record first, if it changes.
    Grant {
        persist: Option<Durable>,
    },
    Refuse(String),
    /// Another node's lease is valid until then: hold the claim and decide again at that time
    /// (with `waited`).
    RetryAt(u64),
    /// A later request of the same client was already applied: this one changes nothing.
    Superseded,
}

/// The answer to a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseDecision {
    /// The node holds the role: record `persist`, then apply.
    Release {
        persist: Durable,
    },
    /// The node does not hold the role: nothing to do.
    Ignore,
    Superseded,
}

/// The state of one module at the witness.
#[derive(Clone, Debug)]
pub struct Arbiter {
    module: String,
    durable: Durable,
    /// The holder's lease runs until then (exclusive).
    expires_at: u64,
    /// Per node, the latest request applied.
    applied: HashMap<String, Tag>,
}

impl Arbiter {
    /// A module the witness has never granted.
    pub fn new(module: &str) -> Self {
        Self::restored(module, Durable::default())
    }

    /// A module as persisted, at the start of the witness (time 0): a persisted holder holds a
    /// lease of its persisted length from now, since it may still believe it holds its grant.
    pub fn restored(module: &str, durable: Durable) -> Self {
        let expires_at = if durable.holder.is_some() {
            u64::from(durable.lease_ms)
        } else {
            0
        };
        Self {
            module: module.to_owned(),
            durable,
            expires_at,
            applied: HashMap::new(),
        }
    }

    pub fn module(&self) -> &str {
        &self.module
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    pub fn holder(&self) -> Option<&str> {
        self.durable.holder.as_deref()
    }

    pub fn recorded(&self) -> Option<GenId> {
        self.durable.recorded
    }

    /// When the holder's lease ends (meaningless without a holder).
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The node holding a valid lease at `now`, if any.
    pub fn valid_holder(&self, now: u64) -> Option<&str> {
        self.holder().filter(|_| now < self.expires_at)
    }

    fn superseded(&self, node: &str, tag: Tag) -> bool {
        self.applied
            .get(node)
            .is_some_and(|t| t.incarnation == tag.incarnation && t.seq > tag.seq)
    }

    /// Decide a claim of `node` at `now`. `waited`: the claim was held until the lease that
    /// blocked it expired, and is decided for the last time.
    pub fn decide(&self, node: &str, tag: Tag, claim: &Claim, now: u64, waited: bool) -> Decision {
        if self.superseded(node, tag) {
            return Decision::Superseded;
        }
        if let Err(reason) = check_lease(claim.lease_ms) {
            return Decision::Refuse(reason);
        }
        if let Some(h) = self.valid_holder(now).filter(|h| *h != node) {
            return if waited {
                Decision::Refuse(format!(
                    "{h} holds module {} (it renewed its lease)",
                    self.module
                ))
            } else {
                Decision::RetryAt(self.expires_at)
            };
        }
        let is_holder = self.holder() == Some(node);
        if let Some(r) = self.durable.recorded {
            if !is_holder && !claim.force && claim.current != Some(r) && !claim.history.contains(&r)
            {
                return Decision::Refuse(format!(
                    "outdated: the latest data that may have acknowledged writes is generation {r}; {node}'s data is {}",
                    gen_text(claim.current)
                ));
            }
        }
        let next = self.durable_after_grant(node, claim);
        Decision::Grant {
            persist: (next != self.durable).then_some(next),
        }
    }

    fn durable_after_grant(&self, node: &str, claim: &Claim) -> Durable {
        let lease_ms = if self.holder() == Some(node) {
            // Never shorten the holder's lease: its client may count on the longer one.
            self.durable.lease_ms.max(claim.lease_ms)
        } else {
            claim.lease_ms
        };
        Durable {
            holder: Some(node.to_owned()),
            lease_ms,
            recorded: claim.current,
        }
    }

    /// Grant `claim` to `node` at `now`, after [`Decision::Grant`] (and its `persist`, done).
    /// Returns the previous holder.
    pub fn apply_grant(&mut self, node: &str, tag: Tag, claim: &Claim, now: u64) -> Option<String> {
        let same = self.holder() == Some(node);
        let until = now.saturating_add(u64::from(claim.lease_ms));
        self.expires_at = if same {
            self.expires_at.max(until)
        } else {
            until
        };
        let next = self.durable_after_grant(node, claim);
        let previous = std::mem::replace(&mut self.durable, next).holder;
        self.applied.insert(node.to_owned(), tag);
        previous
    }

    /// Decide a release by `node`.
    pub fn release(&self, node: &str, tag: Tag) -> ReleaseDecision {
        if self.superseded(node, tag) {
            return ReleaseDecision::Superseded;
        }
        if self.holder() != Some(node) {
            return ReleaseDecision::Ignore;
        }
        ReleaseDecision::Release {
            persist: Durable {
                holder: None,
                ..self.durable.clone()
            },
        }
    }

    /// Apply a release after [`ReleaseDecision::Release`] (its `persist` done).
    pub fn apply_release(&mut self, node: &str, tag: Tag) {
        if self.holder() == Some(node) {
            self.durable.holder = None;
            self.expires_at = 0;
        }
        self.applied.insert(node.to_owned(), tag);
    }
}

/// A generation for messages: its id, or "none".
pub fn gen_text(g: Option<GenId>) -> String {
    g.map_or_else(|| "none (no history)".to_owned(), |g| g.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: u32 = 1000;

    fn claim(current: u64, history: &[u64]) -> Claim {
        Claim {
            current: Some(GenId(current)),
            history: history.iter().map(|&g| GenId(g)).collect(),
            force: false,
            lease_ms: LEASE,
        }
    }

    fn tag(seq: u64) -> Tag {
        Tag {
            incarnation: 1,
            seq,
        }
    }

    /// Decide and, on a grant, apply it; returns the decision.
    fn claim_at(
        a: &mut Arbiter,
        node: &str,
        seq: u64,
        c: &Claim,
        now: u64,
        waited: bool,
    ) -> Decision {
        let d = a.decide(node, tag(seq), c, now, waited);
        if let Decision::Grant { .. } = d {
            a.apply_grant(node, tag(seq), c, now);
        }
        d
    }

    fn is_grant(d: &Decision) -> bool {
        matches!(d, Decision::Grant { .. })
    }

    #[test]
    fn grants_a_free_module_and_persists_only_changes() {
        let mut a = Arbiter::new("shop");
        let c = claim(1, &[]);
        let d = a.decide("alpha", tag(1), &c, 0, false);
        assert_eq!(
            d,
            Decision::Grant {
                persist: Some(Durable {
                    holder: Some("alpha".into()),
                    lease_ms: LEASE,
                    recorded: Some(GenId(1)),
                })
            }
        );
        assert_eq!(a.apply_grant("alpha", tag(1), &c, 0), None);
        assert_eq!(a.valid_holder(999), Some("alpha"));
        assert_eq!(a.valid_holder(1000), None);
        // A renewal changes nothing durable.
        assert_eq!(
            a.decide("alpha", tag(2), &c, 500, false),
            Decision::Grant { persist: None }
        );
        a.apply_grant("alpha", tag(2), &c, 500);
        assert_eq!(a.expires_at(), 1500);
        // A new generation of the holder is recorded.
        let c2 = claim(2, &[1]);
        assert!(matches!(
            a.decide("alpha", tag(3), &c2, 600, false),
            Decision::Grant {
                persist: Some(Durable {
                    recorded: Some(GenId(2)),
                    ..
                })
            }
        ));
    }

    #[test]
    fn another_holder_makes_the_claim_wait_then_it_is_granted_once_expired() {
        let mut a = Arbiter::new("shop");
        assert!(is_grant(&claim_at(
            &mut a,
            "alpha",
            1,
            &claim(1, &[]),
            0,
            false
        )));
        let b = claim(1, &[]);
        assert_eq!(
            claim_at(&mut a, "beta", 1, &b, 100, false),
            Decision::RetryAt(1000)
        );
        // Forced claims wait too: a valid grant of the other node always wins.
        let forced = Claim {
            force: true,
            ..claim(9, &[])
        };
        assert_eq!(
            claim_at(&mut a, "beta", 2, &forced, 200, false),
            Decision::RetryAt(1000)
        );
        let d = claim_at(&mut a, "beta", 1, &b, 1000, true);
        assert!(is_grant(&d), "{d:?}");
        assert_eq!(a.holder(), Some("beta"));
        assert_eq!(a.expires_at(), 2000);
    }

    #[test]
    fn a_renewal_by_the_holder_meanwhile_refuses_the_waiting_claim() {
        let mut a = Arbiter::new("shop");
        let c = claim(1, &[]);
        claim_at(&mut a, "alpha", 1, &c, 0, false);
        assert_eq!(
            claim_at(&mut a, "beta", 1, &c, 10, false),
            Decision::RetryAt(1000)
        );
        assert!(is_grant(&claim_at(&mut a, "alpha", 2, &c, 400, false)));
        match claim_at(&mut a, "beta", 1, &c, 1000, true) {
            Decision::Refuse(r) => assert!(r.contains("alpha holds module shop"), "{r}"),
            d => panic!("{d:?}"),
        }
        assert_eq!(a.holder(), Some("alpha"));
    }

    #[test]
    fn outdated_claims_are_refused_and_descendants_granted() {
        let mut a = Arbiter::new("shop");
        claim_at(&mut a, "alpha", 1, &claim(2, &[1]), 0, false);
        // Expired lease; beta holds generation 1, older than the recorded 2.
        match claim_at(&mut a, "beta", 1, &claim(1, &[]), 5000, false) {
            Decision::Refuse(r) => {
                assert!(r.starts_with("outdated"), "{r}");
                assert!(r.contains(&GenId(2).to_string()), "{r}");
                assert!(r.contains(&GenId(1).to_string()), "{r}");
            }
            d => panic!("{d:?}"),
        }
        let none = Claim {
            current: None,
            ..claim(0, &[])
        };
        assert!(matches!(
            claim_at(&mut a, "beta", 2, &none, 5000, false),
            Decision::Refuse(_)
        ));
        // Data that descends from generation 2 may take over.
        assert!(is_grant(&claim_at(
            &mut a,
            "beta",
            3,
            &claim(3, &[2, 1]),
            5000,
            false
        )));
        // The same generation may too.
        let mut a2 = Arbiter::new("shop");
        claim_at(&mut a2, "alpha", 1, &claim(2, &[1]), 0, false);
        assert!(is_grant(&claim_at(
            &mut a2,
            "beta",
            1,
            &claim(2, &[1]),
            5000,
            false
        )));
    }

    #[test]
    fn the_holder_itself_is_never_outdated() {
        let mut a = Arbiter::new("shop");
        claim_at(&mut a, "alpha", 1, &claim(2, &[1]), 0, false);
        // Expired, but still the holder: it may come back with any data.
        assert!(is_grant(&claim_at(
            &mut a,
            "alpha",
            2,
            &claim(7, &[]),
            5000,
            false
        )));
    }

    #[test]
    fn force_overrides_outdated_but_not_a_valid_lease() {
        let mut a = Arbiter::new("shop");
        claim_at(&mut a, "alpha", 1, &claim(2, &[1]), 0, false);
        let forced = Claim {
            force: true,
            ..claim(1, &[])
        };
        assert_eq!(
            claim_at(&mut a, "beta", 1, &forced, 10, false),
            Decision::RetryAt(1000)
        );
        // Alpha renews; the forced claim, decided again, is refused.
        claim_at(&mut a, "alpha", 2, &claim(2, &[1]), 500, false);
        assert!(matches!(
            claim_at(&mut a, "beta", 1, &forced, 1000, true),
            Decision::Refuse(_)
        ));
        // Once alpha's lease ran out, the forced claim wins over the recorded generation.
        assert!(is_grant(&claim_at(&mut a, "beta", 2, &forced, 1500, false)));
        assert_eq!(a.recorded(), Some(GenId(1)));
    }

    #[test]
    fn release_by_the_holder_frees_the_module_others_are_ignored() {
        let mut a = Arbiter::new("shop");
        let c = claim(1, &[]);
        claim_at(&mut a, "alpha", 1, &c, 0, false);
        assert_eq!(a.release("beta", tag(1)), ReleaseDecision::Ignore);
        match a.release("alpha", tag(2)) {
            ReleaseDecision::Release { persist } => {
                assert_eq!(persist.holder, None);
                assert_eq!(persist.recorded, Some(GenId(1)));
            }
            d => panic!("{d:?}"),
        }
        a.apply_release("alpha", tag(2));
        assert_eq!(a.holder(), None);
        // Free at once, well within alpha's former lease.
        assert!(is_grant(&claim_at(&mut a, "beta", 2, &c, 10, false)));
        // The recorded generation survives the release.
        let mut a = Arbiter::new("shop");
        claim_at(&mut a, "alpha", 1, &claim(2, &[]), 0, false);
        a.apply_release("alpha", tag(2));
        assert!(matches!(
            claim_at(&mut a, "beta", 1, &claim(1, &[]), 10, false),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn older_requests_of_the_same_client_are_superseded() {
        let mut a = Arbiter::new("shop");
        claim_at(&mut a, "alpha", 5, &claim(2, &[1]), 0, false);
        // A renewal for the older generation, overtaken by the claim for the newer one.
        assert_eq!(
            a.decide("alpha", tag(4), &claim(1, &[]), 10, false),
            Decision::Superseded
        );
        assert_eq!(a.recorded(), Some(GenId(2)));
        // A release overtaken by a later claim does not undo it.
        assert_eq!(a.release("alpha", tag(3)), ReleaseDecision::Superseded);
        // Another incarnation (the node's daemon restarted) is not compared.
        let other = Tag {
            incarnation: 2,
            seq: 1,
        };
        assert!(is_grant(&a.decide(
            "alpha",
            other,
            &claim(2, &[1]),
            10,
            false
        )));
    }

    #[test]
    fn lease_bounds() {
        let a = Arbiter::new("shop");
        for lease_ms in [0, 199, 60_001] {
            let c = Claim {
                lease_ms,
                ..claim(1, &[])
            };
            assert!(matches!(
                a.decide("alpha", tag(1), &c, 0, false),
                Decision::Refuse(_)
            ));
        }
    }

    #[test]
    fn the_holder_lease_never_shrinks() {
        let mut a = Arbiter::new("shop");
        claim_at(&mut a, "alpha", 1, &claim(1, &[]), 0, false);
        let short = Claim {
            lease_ms: 200,
            ..claim(1, &[])
        };
        claim_at(&mut a, "alpha", 2, &short, 100, false);
        assert_eq!(a.expires_at(), 1000);
        assert_eq!(a.durable().lease_ms, LEASE);
    }

    #[test]
    fn a_restart_honours_the_persisted_holder_lease() {
        let mut a = Arbiter::new("shop");
        claim_at(&mut a, "alpha", 1, &claim(2, &[1]), 0, false);
        let durable = a.durable().clone();
        // The witness restarts (its clock starts again at 0).
        let mut r = Arbiter::restored("shop", durable);
        assert_eq!(r.valid_holder(0), Some("alpha"));
        assert_eq!(
            claim_at(&mut r, "beta", 1, &claim(2, &[1]), 0, false),
            Decision::RetryAt(u64::from(LEASE))
        );
        // The holder itself may renew at once.
        assert!(is_grant(&claim_at(
            &mut r,
            "alpha",
            1,
            &claim(2, &[1]),
            1,
            false
        )));
        // An outdated claim is still refused after the restart, once the lease is over.
        let r2 = Arbiter::restored("shop", a.durable().clone());
        assert!(matches!(
            r2.decide("beta", tag(1), &claim(1, &[]), u64::from(LEASE), false),
            Decision::Refuse(_)
        ));
        // No holder persisted: free at once.
        let mut durable = a.durable().clone();
        durable.holder = None;
        let r3 = Arbiter::restored("shop", durable);
        assert_eq!(r3.valid_holder(0), None);
    }
}
