//! Reactions to everything that is not a verb: the peer's statuses and requests, the
//! heartbeat layer, the results of asynchronous actions, the mirror, the witness, checkers
//! and timers.

use super::*;

impl Machine {
    pub(super) fn on_done(
        &mut self,
        now: u64,
        op: OpId,
        result: Result<(), Failure>,
        out: &mut Vec<Action>,
    ) {
        if let Some(a) = self.node_step.filter(|a| a.op == op) {
            return self.node_step_done(now, a.step, result, out);
        }
        let Some(a) = self.awaiting().filter(|a| a.op == op) else {
            return; // stale: the step was abandoned
        };
        match self.phase {
            Phase::Promoting(_) => self.promotion_step_done(now, a.step, result, out),
            Phase::Restarting(_) => self.restart_step_done(now, a.step, result, out),
            Phase::Demoting(_) => self.demote_step_done(now, a.step, result, out),
            _ => {}
        }
    }

    pub(super) fn on_peer_status(&mut self, now: u64, s: PeerStatus, out: &mut Vec<Action>) {
        if s.node != self.cfg.peer {
            let text = format!(
                "ignored a status from {}: this module's peer is {}",
                s.node, self.cfg.peer
            );
            return self.log(out, Level::Warn, text);
        }
        if let Some(prev) = &self.peer.status {
            if prev.boot == s.boot && s.seq <= prev.seq {
                return; // older than what we hold
            }
        }
        // A claim, or a new generation of the peer's, is answered at once: the peer waits for
        // an answer that has seen it.
        let answer = s.state == StateKind::Promoting && !s.committed
            || self.peer.status.as_ref().map(|p| p.data.current) != Some(s.data.current);
        if let Gate::Tell { seq, .. } = self.gate {
            if s.seen_boot == self.boot && s.seen_seq >= seq {
                self.open_gate(out);
            }
        }
        self.peer.status = Some(s);
        self.peer.fresh = true;
        self.peer_fading = false;
        if self.peer.seen {
            self.failover_eligible = false;
            self.react(now, out);
        }
        if answer {
            self.send_status(out, true);
        }
    }

    pub(super) fn on_peer_seen(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.peer.seen {
            return;
        }
        self.peer.seen = true;
        self.peer_fading = false;
        self.log(out, Level::Info, format!("hears {} again", self.cfg.peer));
        self.send_status(out, true);
        if self.peer.fresh {
            self.failover_eligible = false;
            self.react(now, out);
        }
    }

    pub(super) fn on_peer_lost(&mut self, now: u64, out: &mut Vec<Action>) {
        if !self.peer.seen {
            return;
        }
        self.peer.seen = false;
        self.peer.fresh = false;
        let peer = self.cfg.peer.clone();
        self.log(out, Level::Warn, format!("lost {peer} (no heartbeat)"));
        if self.unarbitrated {
            let what = format!("lost {peer} while the witness is unreachable");
            return self.self_fence(now, what, out);
        }
        if let Gate::Tell { .. } = self.gate {
            // It cannot hear this node any more: a partition, where, without a witness, both
            // nodes may go on (the documented split brain).
            self.open_gate(out);
        }
        match self.phase {
            Phase::Second if self.handover => {
                self.handover = false;
                self.swap_deadline_ms = None;
                let msg = format!(
                    "lost {peer} while handing the application over to it: it may be primary now"
                );
                if self.swap_side() == Some(SwapSide::Giving) {
                    self.finish_verb(out, Err(msg));
                }
                self.decide(now, out);
            }
            Phase::Second => {
                // Failover only if this copy reached the primary's data and the primary's last
                // word was that it had not gone on alone since (same generation, peer in sync).
                let last_ok =
                    self.peer.status.as_ref().is_some_and(|p| {
                        p.data.peer_in_sync && p.data.current == self.data.current
                    });
                self.failover_eligible = self.synced && self.data.consistent && last_ok;
                self.decide(now, out);
            }
            Phase::Wait => self.decide(now, out),
            Phase::Promoting(_) if self.awaiting().is_some_and(|a| a.step == Step::Consent) => {
                let reason = format!("lost {peer} while claiming the primary role; deciding again");
                self.abort_promotion(now, reason, out);
            }
            _ => {}
        }
    }

    pub(super) fn react(&mut self, now: u64, out: &mut Vec<Action>) {
        let Some(p) = self.peer.reachable().cloned() else {
            return;
        };
        let peer = self.cfg.peer.clone();
        match &self.phase {
            // A stopped node that sees the peer ahead remembers it too: it may be started
            // later while the peer is away.
            Phase::Stop => self.note_peer_ahead(compare(&self.data, &p.data), out),
            Phase::Demoting(_) => {}
            Phase::Starting { .. } | Phase::Wait => self.decide(now, out),
            Phase::Second if self.handover => match p.state {
                StateKind::Alone | StateKind::Prim | StateKind::Restarting => {
                    self.handover = false;
                    self.swap_deadline_ms = None;
                    if self.swap_side() == Some(SwapSide::Giving) {
                        self.finish_verb(out, Ok(StateKind::Second));
                    }
                    let reason = format!("secondary of {peer}: it took the application over");
                    self.set_reason(now, reason, out);
                }
                StateKind::Stop | StateKind::Wait => {
                    self.handover = false;
                    self.swap_deadline_ms = None;
                    let msg = format!("{peer} did not take over: {}: {}", p.state, p.reason);
                    self.log(out, Level::Warn, msg.clone());
                    if self.swap_side() == Some(SwapSide::Giving) {
                        self.finish_verb(out, Err(msg));
                    }
                    self.decide(now, out);
                }
                _ => {}
            },
            Phase::Second => {
                if p.state.is_primary() {
                    let r = compare(&self.data, &p.data);
                    if !elect::may_follow(r) {
                        self.decide(now, out);
                    }
                } else if p.state != StateKind::Demoting {
                    self.decide(now, out);
                }
            }
            Phase::Promoting(_) | Phase::Alone | Phase::Prim | Phase::Restarting(_) => {
                if p.state.is_primary() && self.unarbitrated {
                    let what = format!("{peer} claims the primary role while this node holds no grant of the witness");
                    return self.self_fence(now, what, out);
                }
                if p.state.is_primary() {
                    return self.dual_primary(now, &p, out);
                }
                if let Phase::Promoting(pr) = &self.phase {
                    let consent = pr.awaiting.is_some_and(|a| a.step == Step::Consent)
                        && p.seen_boot == self.boot
                        && p.seen_seq >= pr.consent_seq;
                    if consent {
                        return self.after_consent(now, out);
                    }
                }
                let split = compare(&self.data, &p.data) == Relation::SplitBrain;
                if split != self.split_brain {
                    self.split_brain = split;
                    if split {
                        let text = format!(
                            "SPLIT BRAIN with {peer}: both wrote as primary since they last shared data; {peer} waits with its data untouched"
                        );
                        self.log(out, Level::Error, text);
                    }
                    if matches!(self.phase, Phase::Alone | Phase::Prim) {
                        let reason = self.primary_reason(matches!(self.phase, Phase::Prim));
                        self.set_reason(now, reason, out);
                    }
                }
                self.maybe_failback(now, out);
                self.maybe_give_away(now, out);
            }
        }
    }

    /// Both nodes primary (or claiming): exactly one yields (module documentation).
    pub(super) fn dual_primary(&mut self, now: u64, p: &PeerStatus, out: &mut Vec<Action>) {
        let peer = self.cfg.peer.clone();
        let local_committed = self.committed();
        if !local_committed {
            let me = Candidate {
                node: &self.cfg.node,
                data: &self.data,
                eligible: true,
            };
            let them = Candidate {
                node: &self.cfg.peer,
                data: &p.data,
                eligible: true,
            };
            let forced = matches!(&self.phase, Phase::Promoting(pr) if pr.forced);
            let wins = match (forced, p.forced) {
                (true, false) => true,
                (false, true) => false,
                _ => match elect::elect(&self.cfg, &me, &them) {
                    Elected::Local => true,
                    Elected::Peer => false,
                    Elected::Neither(_) => {
                        elect::local_preferred(&self.cfg, &self.cfg.node, &self.cfg.peer)
                    }
                },
            };
            if p.committed || !wins {
                let reason =
                    format!("{peer} is becoming primary at the same time; this node yields");
                self.log(out, Level::Warn, reason.clone());
                self.abort_promotion(now, reason, out);
            }
            return;
        }
        if !p.committed {
            return; // the peer yields
        }
        let r = compare(&self.data, &p.data);
        self.split_brain = r == Relation::SplitBrain;
        let yields = match r {
            Relation::PeerNewer { .. } => true,
            Relation::LocalNewer { .. } => false,
            _ => !elect::local_preferred(&self.cfg, &self.cfg.node, &self.cfg.peer),
        };
        if !yields {
            return;
        }
        let text = format!(
            "TWO PRIMARIES: {peer} is primary too ({}, generation {}; this node: generation {}). This node stops its application and keeps its data untouched; nothing is merged.",
            p.state,
            gen_text(p.data.current),
            gen_text(self.data.current)
        );
        self.log(out, Level::Error, text.clone());
        if self.held.any() {
            self.start_demotion(now, Goal::Decide, false, text, out);
        } else {
            self.abort_promotion(now, text, out);
        }
    }

    pub(super) fn on_swap_request(&mut self, now: u64, who: String, out: &mut Vec<Action>) {
        let peer = self.cfg.peer.clone();
        if matches!(self.phase, Phase::Prim) && self.peer_can_take_over() && self.pending.is_none()
        {
            let why = format!("swap by {who} on {peer}: handing the application over to {peer}");
            self.log(out, Level::Info, why.clone());
            return self.start_demotion(now, Goal::Handover, true, why, out);
        }
        let reason = format!("{} is {}: {}", self.cfg.node, self.state(), self.reason);
        out.push(Action::Send(PeerMsg::SwapRefused { reason }));
    }

    pub(super) fn on_mirror(&mut self, now: u64, m: MirrorEvent, out: &mut Vec<Action>) {
        let peer = self.cfg.peer.clone();
        match m {
            MirrorEvent::PeerInSync => {
                if !self.held.mount {
                    return;
                }
                self.in_sync = true;
                self.progress = None;
                // The peer is back in sync: nothing is held any more, and a late answer to a
                // gate still pending must not release writes after the next loss (that one
                // starts its own gate, with its own new generation).
                self.gate = Gate::Open;
                let mut d = self.data.clone();
                d.resync_done_as_source();
                d.unclean = true;
                self.persist(out, d);
                if matches!(self.phase, Phase::Alone) {
                    let reason = self.primary_reason(true);
                    self.enter(now, Phase::Prim, reason, out);
                }
                self.maybe_failback(now, out);
            }
            MirrorEvent::PeerOutOfSync { reason } => {
                // A fenced mount acknowledges nothing, and one being unmounted is on its way
                // out (a handover's barrier already passed): neither goes on alone.
                let unmounting = matches!(
                    self.awaiting(),
                    Some(Awaiting {
                        step: Step::Unmount | Step::ReleaseVip,
                        ..
                    })
                );
                if !self.held.mount || self.fenced || unmounting {
                    return;
                }
                self.in_sync = false;
                self.progress = None;
                // A new generation even if the peer was not in sync, and even if the last
                // session's gate is still pending: a session may have brought the peer to this
                // node's generation without this node hearing of it, and what this node writes
                // next must not pass for data the peer holds. A pending gate is superseded.
                if self.cfg.witness {
                    let op = self.claim(now, false, out);
                    self.gate = Gate::Check(op);
                } else {
                    self.go_alone(now, out);
                }
                self.log(out, Level::Warn, format!("{peer} is out of sync: {reason}"));
                if matches!(self.phase, Phase::Prim) {
                    let reason = self.primary_reason(false);
                    self.enter(now, Phase::Alone, reason, out);
                }
            }
            MirrorEvent::ResyncProgress(p) => {
                if self.held.mount || (matches!(self.phase, Phase::Second) && !self.in_sync) {
                    self.progress = Some(p);
                }
            }
            MirrorEvent::ResyncStarting { source, full } => {
                if !matches!(self.phase, Phase::Second) || !self.receiver {
                    let reason = format!("{} is {}, not secondary", self.cfg.node, self.state());
                    out.push(Action::RefuseResync { reason });
                    return;
                }
                let r = compare(&self.data, &source);
                if !elect::may_follow(r) {
                    return self.refuse_resync(now, r, &source, out);
                }
                let keep_aside = elect::keep_aside(&self.data, &source, r);
                let mut d = self.data.clone();
                d.begin_resync_as_target();
                self.persist(out, d);
                out.push(Action::ProceedResync { keep_aside });
                self.in_sync = false;
                self.synced = false;
                self.progress = Some(Progress::default());
                let reason = format!(
                    "resync from {peer} ({}) in progress: this copy is incomplete until it ends{}",
                    if full { "full" } else { "incremental" },
                    if keep_aside {
                        "; this node's divergent files are kept aside"
                    } else {
                        ""
                    }
                );
                self.set_reason(now, reason, out);
            }
            MirrorEvent::InSync { source } => {
                if !matches!(self.phase, Phase::Second) || !self.receiver {
                    return;
                }
                let r = compare(&self.data, &source);
                if !elect::may_follow(r) {
                    return self.refuse_resync(now, r, &source, out);
                }
                let mut d = self.data.clone();
                d.resync_done_as_target(&source);
                d.peer_in_sync = false; // a primary's flag, left from this node's own term
                self.persist(out, d);
                self.in_sync = true;
                self.synced = true;
                self.progress = None;
                let reason = if self.handover {
                    self.reason.clone()
                } else {
                    format!("in sync with {peer}: every write it acknowledges is on this node")
                };
                self.set_reason(now, reason, out);
            }
            MirrorEvent::SyncLost { reason } => {
                if !matches!(self.phase, Phase::Second) {
                    return;
                }
                self.in_sync = false;
                self.progress = None;
                if !self.handover {
                    let reason = format!(
                        "secondary of {peer}: the mirror session ended ({reason}); waiting for it to reconnect"
                    );
                    self.set_reason(now, reason, out);
                }
            }
            MirrorEvent::ReceiverFailed { error } => {
                if !matches!(self.phase, Phase::Second) {
                    return;
                }
                self.receiver = false;
                let reason = format!(
                    "the mirror receiver failed: {error}. Retrying every {}.",
                    secs(self.cfg.retry_ms)
                );
                self.wait(now, reason, out);
            }
        }
    }

    pub(super) fn refuse_resync(
        &mut self,
        now: u64,
        r: Relation,
        source: &DataState,
        out: &mut Vec<Action>,
    ) {
        let peer = self.cfg.peer.clone();
        let reason = format!(
            "refused to take {peer}'s data ({}) over this node's ({}): {r:?}. Nothing was overwritten.",
            describe(source),
            describe(&self.data)
        );
        out.push(Action::RefuseResync {
            reason: reason.clone(),
        });
        self.note_peer_ahead(r, out);
        self.log(out, Level::Error, reason);
        self.split_brain = true;
        let reason = self.split_brain_reason(source.current);
        self.wait(now, reason, out);
    }

    /// The running primary's session with its peer ended: a new generation, recorded before
    /// any write the peer misses is acknowledged. `begin_alone` keeps the record's base, so a
    /// peer still at that base resyncs incrementally.
    pub(super) fn go_alone(&mut self, now: u64, out: &mut Vec<Action>) {
        let fresh = self.fresh_gen();
        let mut d = self.data.clone();
        // A live switch, not a restart after a crash: the mirror records every write the peer
        // has not acknowledged from the moment it leaves in-sync mode, so the record covers
        // them and stays trusted (`begin_alone` drops it when `unclean`).
        d.unclean = false;
        d.begin_alone(fresh);
        self.persist(out, d);
        if self.cfg.witness {
            let op = self.claim(now, false, out);
            self.gate = Gate::Confirm(op);
        } else if self.peer.reachable().is_some() {
            self.send_status(out, true);
            let op = self.op();
            self.arm(out, Timer::Step(op), now + self.cfg.step_timeout_ms);
            self.gate = Gate::Tell { op, seq: self.seq };
        } else {
            self.open_gate(out);
        }
    }

    fn open_gate(&mut self, out: &mut Vec<Action>) {
        out.push(Action::AllowAlone);
        self.gate = Gate::Open;
    }

    pub(super) fn on_witness(&mut self, now: u64, w: WitnessEvent, out: &mut Vec<Action>) {
        match w {
            WitnessEvent::Granted { op } => {
                if self.witness_op != Some(op) {
                    return;
                }
                self.witness_held = true;
                if std::mem::take(&mut self.unarbitrated) {
                    self.log(
                        out,
                        Level::Info,
                        "the witness grants the primary role again".to_owned(),
                    );
                }
                match self.awaiting() {
                    Some(Awaiting {
                        step: Step::Claim,
                        op: o,
                    }) if o == op => {
                        return self.commit(now, out);
                    }
                    Some(Awaiting {
                        step: Step::Confirm,
                        op: o,
                    }) if o == op => {
                        return self.engage(now, out);
                    }
                    _ => {}
                }
                match self.gate {
                    Gate::Check(o) if o == op => self.go_alone(now, out),
                    Gate::Confirm(o) if o == op => self.open_gate(out),
                    _ => {}
                }
            }
            WitnessEvent::Refused { op, reason } => self.witness_lost(
                now,
                op,
                format!("the witness refused the primary role: {reason}"),
                out,
            ),
            WitnessEvent::Unreachable { op } => {
                self.witness_lost_as(now, op, "the witness is unreachable".to_owned(), true, out)
            }
        }
    }

    pub(super) fn witness_lost(&mut self, now: u64, op: OpId, what: String, out: &mut Vec<Action>) {
        self.witness_lost_as(now, op, what, false, out)
    }

    /// `unreachable`: the witness did not answer (it may be down); otherwise it refused.
    pub(super) fn witness_lost_as(
        &mut self,
        now: u64,
        op: OpId,
        what: String,
        unreachable: bool,
        out: &mut Vec<Action>,
    ) {
        if self.witness_op != Some(op) {
            return;
        }
        let peer = self.cfg.peer.clone();
        self.witness_held = false;
        // The witness is unreachable (down, or cut off from this node) while the peer is in
        // view: the peer takes over only with the witness's grant, which it asks for only
        // once it lost this node. Go on, unarbitrated, and leave at the first sign of losing
        // the peer, early enough that the peer cannot have declared this node lost yet.
        let in_view = self.peer.seen
            && !self.peer_fading
            && self.peer.reachable().is_some_and(|p| !p.state.is_primary());
        if unreachable
            && in_view
            && self.held.any()
            && matches!(self.phase, Phase::Alone | Phase::Prim)
            && matches!(self.gate, Gate::Open)
        {
            self.witness_op = None;
            if !self.unarbitrated {
                self.unarbitrated = true;
                let text = format!(
                    "{what}: the application goes on, since {peer} is in view and cannot take over without the witness either; this node leaves the primary role as soon as it loses sight of {peer} while the witness is unreachable"
                );
                self.log(out, Level::Warn, text);
            }
            let at = now + self.cfg.retry_ms;
            self.retry_at_ms = Some(at);
            self.arm(out, Timer::Retry, at);
            return;
        }
        if self.held.any() {
            // Without the grant, the witness may grant the peer as soon as this node's lease
            // runs out: stop acknowledging writes now, then leave the role.
            out.push(Action::Fence);
            self.fenced = true;
            self.held.vip = false;
            self.gate = Gate::Open;
            self.witness_op = None;
            let reason = format!(
                "{what}: this node fenced itself (no more acknowledged writes, virtual IP dropped) and stopped its application, because without the witness's grant {peer} may become primary. It leads again when the witness grants it."
            );
            self.log(out, Level::Error, reason.clone());
            if !matches!(self.phase, Phase::Demoting(_)) {
                self.start_demotion(now, Goal::Wait(reason), false, what, out);
            }
            return;
        }
        if matches!(self.phase, Phase::Promoting(_)) {
            let reason = format!(
                "{what}: this node may not become primary without the witness's grant ({peer} may be primary). Retrying every {}.",
                secs(self.cfg.retry_ms)
            );
            self.abort_promotion(now, reason, out);
        }
    }

    /// Unarbitrated primary losing the peer: fence now, then leave the role (WAIT).
    pub(super) fn self_fence(&mut self, now: u64, what: String, out: &mut Vec<Action>) {
        self.unarbitrated = false;
        let op = self.op();
        // Reuse the lost-grant path: it fences, logs and demotes.
        self.witness_op = Some(op);
        self.witness_lost_as(now, op, what, false, out);
    }

    pub(super) fn on_checker_failed(
        &mut self,
        now: u64,
        checker: String,
        policy: CheckerPolicy,
        out: &mut Vec<Action>,
    ) {
        if !matches!(self.phase, Phase::Alone | Phase::Prim) {
            let text = format!(
                "checker {checker} failed while {}: ignored (checkers act on a running primary)",
                self.state()
            );
            return self.log(out, Level::Info, text);
        }
        let peer = self.cfg.peer.clone();
        self.log(
            out,
            Level::Warn,
            format!("checker {checker} failed ({policy:?})"),
        );
        match policy {
            CheckerPolicy::Restart => {
                self.restart_in_place(now, format!("checker {checker} failed"), out);
            }
            CheckerPolicy::Failover
                if matches!(self.phase, Phase::Prim) && self.peer_can_take_over() =>
            {
                let why =
                    format!("checker {checker} failed: handing the application over to {peer}");
                self.start_demotion(now, Goal::Handover, true, why, out);
            }
            CheckerPolicy::Failover => {
                // Never onto stale data, and never stop the application on our own: the best
                // left is a fresh start here.
                let why = format!(
                    "checker {checker} failed and {peer} cannot take over (it is not a secondary in sync with passing checks)"
                );
                self.log(out, Level::Warn, why.clone());
                self.restart_in_place(now, why, out);
            }
        }
    }

    pub(super) fn on_node_health(
        &mut self,
        now: u64,
        problem: Option<String>,
        out: &mut Vec<Action>,
    ) {
        if problem == self.health_block {
            return;
        }
        let was = self.health_block.take();
        self.health_block = problem.clone();
        match (&was, &problem) {
            (_, Some(p)) => self.log(out, Level::Warn, format!("own check fails: {p}")),
            (Some(w), None) => self.log(
                out,
                Level::Info,
                format!("own check passes again (was: {w})"),
            ),
            (None, None) => {}
        }
        match self.phase {
            Phase::Alone | Phase::Prim => {
                let reason = self.primary_reason(matches!(self.phase, Phase::Prim));
                self.set_reason(now, reason, out);
                self.maybe_give_away(now, out);
            }
            Phase::Wait => self.decide(now, out),
            _ => {}
        }
    }

    pub(super) fn on_timer(&mut self, now: u64, t: Timer, out: &mut Vec<Action>) {
        match t {
            Timer::Status => {
                self.send_status(out, true);
                self.arm(out, Timer::Status, now + self.cfg.status_resend_ms);
            }
            Timer::PeerWait => {
                if matches!(self.phase, Phase::Starting { .. }) {
                    self.decide(now, out);
                }
            }
            Timer::Retry => {
                if self.retry_at_ms.is_some_and(|at| at <= now) {
                    self.retry_at_ms = None;
                    if self.unarbitrated && self.witness_op.is_none() {
                        self.claim(now, false, out);
                    }
                    if matches!(self.phase, Phase::Wait) {
                        self.decide(now, out);
                        if matches!(self.phase, Phase::Wait) && self.retry_at_ms.is_none() {
                            let at = now + self.cfg.retry_ms;
                            self.retry_at_ms = Some(at);
                            self.arm(out, Timer::Retry, at);
                        }
                    }
                }
            }
            Timer::Step(op) => {
                if let Some(a) = self.awaiting().filter(|a| a.op == op) {
                    match a.step {
                        Step::Consent => {
                            let reason = format!(
                                "{} did not acknowledge this node's claim within {}; deciding again",
                                self.cfg.peer,
                                secs(self.cfg.step_timeout_ms)
                            );
                            self.abort_promotion(now, reason, out);
                        }
                        Step::Claim | Step::Confirm => {
                            let what = format!(
                                "the witness did not answer within {}",
                                secs(self.cfg.step_timeout_ms)
                            );
                            self.witness_lost(now, op, what, out);
                        }
                        _ => {
                            let timeout = if a.step.runs_scripts() {
                                self.cfg.script_timeout_ms
                            } else {
                                self.cfg.step_timeout_ms
                            };
                            let failure = Failure {
                                detail: format!("no answer within {}", secs(timeout)),
                                exit_status: None,
                            };
                            self.on_done(now, op, Err(failure), out);
                        }
                    }
                } else if self.node_step.is_some_and(|a| a.op == op) {
                    let failure = Failure {
                        detail: format!("no answer within {}", secs(self.cfg.script_timeout_ms)),
                        exit_status: None,
                    };
                    self.on_done(now, op, Err(failure), out);
                } else if matches!(self.gate, Gate::Tell { op: o, .. } if o == op) {
                    let text = format!(
                        "{} did not confirm this node's new generation within {}; going on alone",
                        self.cfg.peer,
                        secs(self.cfg.step_timeout_ms)
                    );
                    self.log(out, Level::Warn, text);
                    self.open_gate(out);
                } else if matches!(self.gate, Gate::Check(o) | Gate::Confirm(o) if o == op) {
                    let what = format!(
                        "the witness did not answer within {}",
                        secs(self.cfg.step_timeout_ms)
                    );
                    self.witness_lost(now, op, what, out);
                }
            }
            Timer::Swap => {
                let Some(at) = self.swap_deadline_ms else {
                    return;
                };
                if now < at {
                    return;
                }
                self.swap_deadline_ms = None;
                let peer = self.cfg.peer.clone();
                let limit = secs(self.cfg.swap_timeout_ms);
                if self.handover {
                    self.handover = false;
                    let msg = format!("{peer} did not take over within {limit}");
                    self.log(out, Level::Warn, msg.clone());
                    if self.swap_side() == Some(SwapSide::Giving) {
                        self.finish_verb(out, Err(msg));
                    }
                    if matches!(self.phase, Phase::Second) {
                        self.decide(now, out);
                    }
                } else if self.swap_side() == Some(SwapSide::Taking)
                    && !matches!(self.phase, Phase::Promoting(_) | Phase::Alone | Phase::Prim)
                {
                    self.finish_verb(out, Err(format!("{peer} did not hand over within {limit}")));
                }
            }
        }
    }
}
