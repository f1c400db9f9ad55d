//! The mirror as the shell would run it: sessions between a primary's mount and a
//! secondary's receiver, resyncs (full or nothing, by the ground truth), and the reports to
//! each side, in order.

use super::*;

impl World {
    pub(super) fn can_serve(&self, p: usize) -> bool {
        self.nodes[p].acting_primary()
    }

    pub(super) fn maybe_connect(&mut self) {
        if self.session.is_some() || !self.link_up || self.mirror_broken {
            return;
        }
        for p in 0..2 {
            let q = 1 - p;
            if self.can_serve(p) && self.nodes[q].alive && self.nodes[q].receiver {
                self.session_epoch += 1;
                // After every report of the previous session has reached both nodes.
                let at = (self.now + self.delay(5, 50))
                    .max(self.nodes[p].last_mirror_at + 1)
                    .max(self.nodes[q].last_mirror_at + 1);
                let epoch = self.session_epoch;
                self.schedule(at, Payload::Connect { epoch });
                return;
            }
        }
    }

    pub(super) fn connect(&mut self, epoch: u64) {
        if epoch != self.session_epoch
            || self.session.is_some()
            || !self.link_up
            || self.mirror_broken
        {
            return;
        }
        let Some(p) = (0..2)
            .find(|&p| self.can_serve(p) && self.nodes[1 - p].alive && self.nodes[1 - p].receiver)
        else {
            return;
        };
        let q = 1 - p;
        self.session_epoch += 1;
        let epoch = self.session_epoch;
        self.note(|| format!("mirror session {epoch}: {} -> {}", NAMES[p], NAMES[q]));
        // A correct mirror sends nothing when the copies are equal; anything else is a resync.
        let equal = self.nodes[p].data == self.nodes[q].data && !self.nodes[q].partial;
        self.session = Some(Session {
            primary: p,
            epoch,
            mode: if equal {
                Mode::AwaitInSync
            } else {
                Mode::AwaitStart
            },
        });
        let at = self.now + self.delay(1, 10);
        if equal {
            self.schedule(at, Payload::SessionInSync { epoch });
        } else {
            self.schedule(at, Payload::SessionStart { epoch });
        }
    }

    pub(super) fn live_session(&self, epoch: u64, mode: Mode) -> Option<usize> {
        self.session
            .as_ref()
            .filter(|s| s.epoch == epoch && s.mode == mode)
            .map(|s| s.primary)
    }

    pub(super) fn session_start(&mut self, epoch: u64) {
        let Some(p) = self.live_session(epoch, Mode::AwaitStart) else {
            return;
        };
        let q = 1 - p;
        let source = self.nodes[p].persisted.clone();
        let full = !compare(&self.nodes[q].persisted, &source).incremental();
        self.deliver(
            q,
            Event::Mirror(MirrorEvent::ResyncStarting { source, full }),
        );
        // The answer (`ProceedResync` or `RefuseResync`) was performed during delivery.
        if self.live_session(epoch, Mode::AwaitStart).is_some() {
            self.break_session("secondary did not answer the resync", true);
        }
    }

    pub(super) fn resync_end(&mut self, epoch: u64) {
        let Some(p) = self.live_session(epoch, Mode::Resyncing) else {
            return;
        };
        let q = 1 - p;
        if self.setup.sabotage != Sabotage::ResyncCopiesNothing {
            self.nodes[q].data = self.nodes[p].data.clone();
        }
        self.nodes[q].partial = false;
        if let Some(s) = &mut self.session {
            s.mode = Mode::AwaitInSync;
        }
        self.session_in_sync(epoch);
    }

    pub(super) fn session_in_sync(&mut self, epoch: u64) {
        let Some(p) = self.live_session(epoch, Mode::AwaitInSync) else {
            return;
        };
        let q = 1 - p;
        let source = self.nodes[p].persisted.clone();
        self.deliver(q, Event::Mirror(MirrorEvent::InSync { source }));
        if self.live_session(epoch, Mode::AwaitInSync).is_none() {
            return; // refused
        }
        if self.setup.sabotage != Sabotage::ResyncCopiesNothing {
            // Writes acknowledged alone since the end of the copy went with the catch-up.
            self.nodes[q].data = self.nodes[p].data.clone();
        }
        if let Some(s) = &mut self.session {
            s.mode = Mode::InSync;
        }
        self.split = false; // one branch won: the copies are one again
        let at = (self.now + self.delay(1, 10)).max(self.nodes[p].last_mirror_at);
        self.nodes[p].last_mirror_at = at;
        self.schedule(at, Payload::PeerInSync { epoch });
    }

    /// The session ends; each side notices soon if the link and the other side are up (the
    /// end is announced), else after the mirror's peer timeout.
    pub(super) fn break_session(&mut self, why: &str, announced: bool) {
        let Some(s) = self.session.take() else { return };
        let p = s.primary;
        let q = 1 - p;
        self.note(|| format!("mirror session {} ends: {why}", s.epoch));
        self.nodes[p].alone_allowed = false;
        let quick = announced && self.link_up;
        let timeout = self.setup.peer_timeout_ms;
        if self.nodes[p].acting_primary() {
            let d = if quick { self.delay(1, 20) } else { timeout };
            let reason = why.to_owned();
            self.schedule_mirror(p, d, Event::Mirror(MirrorEvent::PeerOutOfSync { reason }));
        }
        if self.nodes[q].alive && self.nodes[q].receiver {
            let d = if quick { self.delay(1, 20) } else { timeout };
            let reason = why.to_owned();
            self.schedule_mirror(q, d, Event::Mirror(MirrorEvent::SyncLost { reason }));
        }
        self.maybe_connect();
    }

    /// The mirror session fails while the link is up (a refused message, a timeout under
    /// load): both sides notice at once.
    pub fn session_error(&mut self) {
        self.break_session("session error", true);
    }
}
