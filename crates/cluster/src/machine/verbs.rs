//! The operators' verbs: what each one does from each state, and when it is settled (the
//! table "Verbs and the states they end in" in the module documentation).

use super::*;

impl Machine {
    pub(super) fn finish_verb(&mut self, out: &mut Vec<Action>, result: Result<StateKind, String>) {
        let Some(p) = self.pending.take() else { return };
        let (level, text) = match &result {
            Ok(state) => (
                Level::Info,
                format!("`{}` by {} done: {state}", p.verb, p.who),
            ),
            Err(e) => (
                Level::Warn,
                format!("`{}` by {} failed: {e}", p.verb, p.who),
            ),
        };
        self.log(out, level, text);
        out.push(Action::VerbDone {
            verb: p.verb,
            who: p.who,
            result,
        });
    }

    pub(super) fn refuse(&self, verb: Verb, who: String, reason: String, out: &mut Vec<Action>) {
        self.log(
            out,
            Level::Warn,
            format!("`{verb}` by {who} refused: {reason}"),
        );
        out.push(Action::VerbDone {
            verb,
            who,
            result: Err(reason),
        });
    }

    /// The documented end states of the pending verb (module documentation, "Verbs").
    pub(super) fn check_pending(&mut self, out: &mut Vec<Action>) {
        let Some(p) = &self.pending else { return };
        use StateKind as S;
        let state = self.state();
        let ok = match (p.verb, p.swap) {
            (Verb::Start | Verb::Restart, _) => match state {
                S::Alone | S::Prim | S::Second | S::Wait => Some(true),
                S::Stop => Some(false),
                _ => None,
            },
            (Verb::Stop | Verb::Forcestop, _) => (state == S::Stop).then_some(true),
            (Verb::Prim, _) => match state {
                S::Alone | S::Prim => Some(true),
                S::Stop | S::Wait | S::Second => Some(false),
                _ => None,
            },
            (Verb::Second, _) => match state {
                S::Second | S::Wait => Some(true),
                S::Stop | S::Alone | S::Prim => Some(false),
                _ => None,
            },
            (Verb::Swap, Some(SwapSide::Taking)) => match state {
                S::Alone | S::Prim => Some(true),
                S::Stop | S::Wait => Some(false),
                _ => None,
            },
            (Verb::Swap, _) => matches!(state, S::Stop | S::Wait).then_some(false),
        };
        match ok {
            Some(true) => self.finish_verb(out, Ok(state)),
            Some(false) => {
                let msg = format!("ended in {state}: {}", self.reason);
                self.finish_verb(out, Err(msg));
            }
            None => {}
        }
    }

    pub(super) fn on_verb(&mut self, now: u64, verb: Verb, who: String, out: &mut Vec<Action>) {
        self.log(out, Level::Info, format!("`{verb}` requested by {who}"));
        if let Some(p) = &self.pending {
            if !matches!(verb, Verb::Stop | Verb::Forcestop) {
                let reason = format!("busy: `{}` by {} is in progress", p.verb, p.who);
                return self.refuse(verb, who, reason, out);
            }
            self.finish_verb(out, Err(format!("interrupted by `{verb}` from {who}")));
        }
        let pending = |swap| {
            Some(Pending {
                verb,
                who: who.clone(),
                swap,
            })
        };
        let busy = format!(
            "the module is {}: {}; try again when it is done",
            self.state(),
            self.reason
        );
        match verb {
            Verb::Start => {
                if !matches!(self.phase, Phase::Stop) {
                    let reason = format!(
                        "already started: {}: {}. `restart` restarts it.",
                        self.state(),
                        self.reason
                    );
                    return self.refuse(verb, who, reason, out);
                }
                self.pending = pending(None);
                self.begin_start(now, &who, false, out);
            }
            Verb::Stop => self.verb_stop(now, who, out),
            Verb::Restart => match self.phase {
                Phase::Stop | Phase::Starting { .. } | Phase::Wait | Phase::Second => {
                    self.pending = pending(None);
                    self.stop_local(out);
                    self.begin_start(now, &who, false, out);
                }
                Phase::Alone | Phase::Prim => {
                    self.pending = pending(None);
                    self.restart_in_place(now, format!("restarted by {who}"), out);
                }
                _ => self.refuse(verb, who, busy, out),
            },
            Verb::Swap => {
                let peer_prim = self
                    .peer
                    .reachable()
                    .is_some_and(|p| p.state == StateKind::Prim);
                match self.phase {
                    Phase::Prim if self.peer_can_take_over() => {
                        self.pending = pending(Some(SwapSide::Giving));
                        let why = format!(
                            "swap by {who}: handing the application over to {}",
                            self.cfg.peer
                        );
                        self.start_demotion(now, Goal::Handover, true, why, out);
                    }
                    Phase::Second if self.in_sync && peer_prim && !self.handover => {
                        self.pending = pending(Some(SwapSide::Taking));
                        out.push(Action::Send(PeerMsg::SwapRequest { who: who.clone() }));
                        let at = now + self.cfg.swap_timeout_ms;
                        self.swap_deadline_ms = Some(at);
                        self.arm(out, Timer::Swap, at);
                    }
                    _ => {
                        let peer = match self.peer.reachable() {
                            Some(p) => format!(
                                "{} is {}{}",
                                self.cfg.peer,
                                p.state,
                                if p.in_sync { " (in sync)" } else { "" }
                            ),
                            None => format!("{} is unreachable", self.cfg.peer),
                        };
                        let reason = format!(
                            "swap needs one node PRIM and the other SECOND in sync; this node is {} ({}), {peer}",
                            self.state(),
                            self.reason
                        );
                        self.refuse(verb, who, reason, out);
                    }
                }
            }
            Verb::Prim => self.verb_prim(now, who, busy, out),
            Verb::Second => match self.phase {
                Phase::Stop => {
                    self.pending = pending(None);
                    self.begin_start(now, &who, true, out);
                }
                Phase::Starting { .. } | Phase::Wait => {
                    self.pending = pending(None);
                    self.second_only = true;
                    self.hold_off = None;
                    self.phase = Phase::Wait;
                    self.decide(now, out);
                }
                Phase::Second => {
                    out.push(Action::VerbDone {
                        verb,
                        who,
                        result: Ok(StateKind::Second),
                    });
                }
                Phase::Prim if self.peer_can_take_over() => {
                    self.pending = pending(None);
                    let why = format!(
                        "`second` by {who}: handing the application over to {}",
                        self.cfg.peer
                    );
                    self.start_demotion(now, Goal::Handover, true, why, out);
                }
                Phase::Alone | Phase::Prim => {
                    self.pending = pending(None);
                    self.second_only = true;
                    let reason = self.second_only_reason();
                    self.start_demotion(
                        now,
                        Goal::Wait(reason),
                        false,
                        format!("`second` by {who}"),
                        out,
                    );
                }
                _ => self.refuse(verb, who, busy, out),
            },
            Verb::Forcestop => {
                if matches!(self.phase, Phase::Stop) {
                    out.push(Action::VerbDone {
                        verb,
                        who,
                        result: Ok(StateKind::Stop),
                    });
                    return;
                }
                self.pending = pending(None);
                if self.held.any() || self.held.node() || self.receiver {
                    out.push(Action::ForceStop);
                }
                self.held = Held::default();
                self.node_step = None;
                self.deferred = false;
                self.receiver = false;
                self.stop_local(out);
                let reason = format!(
                    "force-stopped by {who}: the application was killed and the mirror detached, without scripts"
                );
                self.enter(now, Phase::Stop, reason, out);
            }
        }
    }

    /// Forget what a started module knew about its own course (not about the peer).
    pub(super) fn stop_local(&mut self, out: &mut Vec<Action>) {
        self.stop_receiver(out);
        self.release_witness(out);
        self.gate = Gate::Open;
        self.handover = false;
        self.second_only = false;
        self.hold_off = None;
        self.failover_eligible = false;
        self.swap_deadline_ms = None;
        self.split_brain = false;
    }

    pub(super) fn begin_start(
        &mut self,
        now: u64,
        who: &str,
        second_only: bool,
        out: &mut Vec<Action>,
    ) {
        self.stop_local(out);
        self.second_only = second_only;
        let deadline = now + self.cfg.peer_wait_ms;
        self.arm(out, Timer::PeerWait, deadline);
        let reason = format!(
            "started by {who}{}; waiting up to {} to hear from {} before choosing a role",
            if second_only {
                " as secondary (`second`)"
            } else {
                ""
            },
            secs(self.cfg.peer_wait_ms),
            self.cfg.peer
        );
        self.enter(
            now,
            Phase::Starting {
                deadline_ms: deadline,
            },
            reason,
            out,
        );
        self.decide(now, out);
    }

    pub(super) fn verb_stop(&mut self, now: u64, who: String, out: &mut Vec<Action>) {
        let reason = format!("stopped by {who}");
        let pending = Some(Pending {
            verb: Verb::Stop,
            who: who.clone(),
            swap: None,
        });
        match self.phase {
            Phase::Stop => out.push(Action::VerbDone {
                verb: Verb::Stop,
                who,
                result: Ok(StateKind::Stop),
            }),
            Phase::Starting { .. } | Phase::Wait | Phase::Second if self.held.node() => {
                // The node's own scripts ran: `stop_both`, the data released, `poststop`.
                self.pending = pending;
                self.release_witness(out);
                self.start_demotion(now, Goal::Stop(reason.clone()), false, reason, out);
            }
            Phase::Starting { .. } | Phase::Wait | Phase::Second => {
                self.pending = pending;
                self.stop_local(out);
                self.enter(now, Phase::Stop, reason, out);
            }
            Phase::Promoting(_) if !self.held.any() && self.held.node() => {
                self.pending = pending;
                self.release_witness(out);
                self.start_demotion(now, Goal::Stop(reason.clone()), false, reason, out);
            }
            Phase::Promoting(_) if !self.held.any() => {
                self.pending = pending;
                self.stop_local(out);
                self.enter(now, Phase::Stop, reason, out);
            }
            Phase::Promoting(_) | Phase::Restarting(_) | Phase::Alone | Phase::Prim => {
                self.pending = pending;
                let barrier = matches!(self.phase, Phase::Prim) && self.peer_can_take_over();
                self.start_demotion(now, Goal::Stop(reason.clone()), barrier, reason, out);
            }
            Phase::Demoting(_) => {
                if let Phase::Demoting(d) = &mut self.phase {
                    d.goal = Goal::Stop(reason);
                }
                self.pending = pending;
            }
        }
    }

    pub(super) fn verb_prim(&mut self, now: u64, who: String, busy: String, out: &mut Vec<Action>) {
        let peer = self.cfg.peer.clone();
        match self.phase {
            Phase::Alone | Phase::Prim | Phase::Restarting(_) => {
                let diverged = self.peer.reachable().and_then(|p| {
                    let r = compare(&self.data, &p.data);
                    (!r.local_may_lead() && !p.state.is_primary()).then_some(p.data.current)
                });
                if let Some(other) = diverged {
                    // A fresh generation too: the superseded one may itself supersede this
                    // node's (an earlier `prim` there); the latest choice must be strictly newer.
                    let fresh = self.fresh_gen();
                    let mut d = self.data.clone();
                    d.force_lead(fresh);
                    if let Some(g) = other {
                        d.supersede(g);
                    }
                    self.persist(out, d);
                    self.split_brain = false;
                    let text = format!(
                        "`prim` by {who} at {now} ms: this node's data is kept; {peer} resyncs from it in full and keeps its divergent files aside"
                    );
                    self.log(out, Level::Warn, text);
                    let reason = self.primary_reason(matches!(self.phase, Phase::Prim));
                    self.set_reason(now, reason, out);
                }
                out.push(Action::VerbDone {
                    verb: Verb::Prim,
                    who,
                    result: Ok(self.state()),
                });
            }
            // An attempt of the machine's own that holds nothing yet gives way to the operator.
            Phase::Promoting(ref p) if !p.committed && !self.held.any() => {
                self.release_witness(out);
                self.phase = Phase::Wait;
                self.verb_prim(now, who, busy, out);
            }
            Phase::Promoting(_) | Phase::Demoting(_) => self.refuse(Verb::Prim, who, busy, out),
            Phase::Stop | Phase::Starting { .. } | Phase::Wait | Phase::Second => {
                // A claim of the peer's own that holds nothing yet does not stop an operator.
                let primary = |p: &&PeerStatus| p.state.is_primary() && (p.committed || p.forced);
                if let Some(p) = self.peer.reachable().filter(primary) {
                    let reason = format!(
                        "{peer} is {}: `swap` moves the application here; or stop the module on {peer} first, then `prim` here",
                        p.state
                    );
                    return self.refuse(Verb::Prim, who, reason, out);
                }
                let last = self.peer.status.as_ref().map(|p| p.data.clone());
                let supersede = last.as_ref().and_then(|p| {
                    (!compare(&self.data, p).local_may_lead())
                        .then_some(p.current)
                        .flatten()
                });
                let loss = match (&last, supersede) {
                    (_, Some(g)) => format!(
                        "what {peer} wrote in generation {g} and since is not on this node and will be set aside on {peer}"
                    ),
                    (None, _) => format!("{peer}'s data is unknown; anything newer there will be set aside"),
                    (Some(_), None) => format!("this node's data is not older than what {peer} last reported"),
                };
                self.log(
                    out,
                    Level::Warn,
                    format!(
                        "FORCED primary by {who} at {now} ms on {}: {loss}",
                        describe(&self.data)
                    ),
                );
                self.pending = Some(Pending {
                    verb: Verb::Prim,
                    who: who.clone(),
                    swap: None,
                });
                self.stop_local(out);
                let why = format!("forced by {who} with `prim` at {now} ms");
                self.start_promotion(now, why, true, supersede, out);
            }
        }
    }
}
