//! The self-fence guard. With a witness, a primary that holds no grant and no longer sees its
//! peer must stop acknowledging writes and drop its virtual IPs before the witness may grant the
//! peer (its client reports the loss a margin before the lease runs out). The state machine
//! decides that in the daemon's loop; the guard enforces it a second time outside that loop,
//! straight from the witness client's events and the heartbeat watcher, so that a loop busy for
//! a moment (a `forcestop` waiting for processes to die, a state file retried on a failing disk)
//! cannot delay a fence past the lease.
//!
//! It only ever cuts off (drops virtual IPs, aborts the FUSE connection, fences the link); it
//! never takes anything. The machine then sees the same loss and demotes as usual.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use mirrorkit_cluster::machine::WitnessEvent;
use mirrorkit_engine::core::Core;
use mirrorkit_module::HeartbeatProfile;
use mirrorkit_vip::VipSpec;
use tracing::error;

/// Whether a module must be cut off now: it holds its mount (it may acknowledge writes), the
/// witness does not grant it, and the peer is out of sight (it may be claiming).
pub(crate) fn must_cut(mounted: bool, granted: bool, peer_in_view: bool) -> bool {
    mounted && !granted && !peer_in_view
}

#[derive(Default)]
struct Target {
    profile: HeartbeatProfile,
    vips: Vec<VipSpec>,
    /// The module's mounts (one per mirror): each engine and its FUSE device.
    mounts: Vec<(Arc<Core>, Option<u64>)>,
    granted: bool,
    cut: bool,
}

#[derive(Default)]
struct Inner {
    /// The cluster has a witness: without one, a primary alone goes on (documented split brain).
    enabled: bool,
    modules: HashMap<String, Target>,
    /// Per heartbeat profile: the peer heard within the early-warning time.
    in_view: HashMap<HeartbeatProfile, bool>,
}

#[derive(Clone, Default)]
pub(crate) struct Guard {
    inner: Arc<Mutex<Inner>>,
}

impl Guard {
    /// A guard that acts only if the cluster has a witness.
    pub(crate) fn new(witness: bool) -> Guard {
        let g = Guard::default();
        g.lock().enabled = witness;
        g
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The module's virtual IPs and heartbeat profile (at load, and on every applied change).
    pub(crate) fn set_module(&self, module: &str, profile: HeartbeatProfile, vips: &[VipSpec]) {
        let mut g = self.lock();
        let t = g.modules.entry(module.to_owned()).or_default();
        t.profile = profile;
        t.vips = vips.to_vec();
    }

    pub(crate) fn mounted(&self, module: &str, mounts: Vec<(Arc<Core>, Option<u64>)>) {
        let mut g = self.lock();
        let t = g.modules.entry(module.to_owned()).or_default();
        t.mounts = mounts;
        t.cut = false;
    }

    pub(crate) fn unmounted(&self, module: &str) {
        if let Some(t) = self.lock().modules.get_mut(module) {
            t.mounts.clear();
        }
    }

    /// The module gave its grant back (`WitnessRelease`).
    pub(crate) fn released(&self, module: &str) {
        if let Some(t) = self.lock().modules.get_mut(module) {
            t.granted = false;
        }
    }

    /// An event of the witness client, before the daemon's loop sees it.
    pub(crate) fn witness_event(&self, module: &str, ev: &WitnessEvent) {
        let mut g = self.lock();
        if !g.enabled {
            return;
        }
        let Some(profile) = g.modules.get(module).map(|t| t.profile) else {
            return;
        };
        let in_view = g.in_view.get(&profile).copied().unwrap_or(false);
        let Some(t) = g.modules.get_mut(module) else {
            return;
        };
        t.granted = matches!(ev, WitnessEvent::Granted { .. });
        if must_cut(!t.mounts.is_empty(), t.granted, in_view) {
            cut(
                module,
                t,
                "the witness's grant is lost and the peer is out of sight",
            );
        }
    }

    /// The heartbeat watcher of `profile`: the peer heard again, or silent for the early-warning
    /// time (`PeerFading`).
    pub(crate) fn peer_in_view(&self, profile: HeartbeatProfile, in_view: bool) {
        let mut g = self.lock();
        g.in_view.insert(profile, in_view);
        if in_view || !g.enabled {
            return;
        }
        for (module, t) in g.modules.iter_mut() {
            if t.profile == profile && must_cut(!t.mounts.is_empty(), t.granted, false) {
                cut(
                    module,
                    t,
                    "the peer is out of sight and the witness grants nothing",
                );
            }
        }
    }
}

fn cut(module: &str, t: &mut Target, why: &str) {
    if t.cut {
        return;
    }
    t.cut = true;
    error!(module = %module, "self-fence guard: {why}: virtual IPs dropped, writes failed from now on");
    for v in &t.vips {
        if let Err(e) = mirrorkit_vip::release(v) {
            error!(module = %module, "self-fence guard: cannot drop the virtual IP {v}: {e}");
        }
    }
    for (_, dev) in &t.mounts {
        if let Some(dev) = dev {
            crate::fence::abort_fuse(*dev);
        }
    }
    for (core, _) in &t.mounts {
        core.link.fence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_only_a_mounted_primary_without_grant_and_without_peer() {
        for mounted in [false, true] {
            for granted in [false, true] {
                for in_view in [false, true] {
                    assert_eq!(
                        must_cut(mounted, granted, in_view),
                        mounted && !granted && !in_view,
                        "{mounted} {granted} {in_view}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_lost_grant_with_the_peer_in_view_cuts_nothing_until_the_peer_fades() {
        let g = Guard::new(true);
        g.set_module("m", HeartbeatProfile::Fast, &[]);
        g.peer_in_view(HeartbeatProfile::Fast, true);
        g.witness_event("m", &WitnessEvent::Granted { op: 1 });
        // Not mounted: nothing to cut whatever happens.
        g.witness_event("m", &WitnessEvent::Unreachable { op: 1 });
        g.peer_in_view(HeartbeatProfile::Fast, false);
        assert!(!g.lock().modules["m"].cut);
    }
}
