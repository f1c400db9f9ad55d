//! The witness and each node's witness client: leases granted to one node at a time, a
//! recorded generation that refuses outdated claims, renewals, and the loss of a lease
//! reported no later than the lease the client was granted.

use super::*;

impl World {
    pub(super) fn send_claim(&mut self, i: usize) {
        let Some(c) = self.nodes[i].wc.claim.clone() else {
            return;
        };
        if !self.witness.link[i] {
            return;
        }
        let at = self.now + self.delay(1, 10);
        let inc = self.nodes[i].inc;
        self.schedule(
            at,
            Payload::WitnessReq {
                from: i,
                inc,
                req: Some(c),
                sent_at: self.now,
            },
        );
    }

    pub(super) fn arm_renew(&mut self, i: usize) {
        if !self.nodes[i].wc.renew_armed {
            self.nodes[i].wc.renew_armed = true;
            let inc = self.nodes[i].inc;
            self.schedule(self.now + RENEW_MS, Payload::Renew { node: i, inc });
        }
    }

    pub(super) fn witness_request(
        &mut self,
        from: usize,
        inc: u32,
        req: Option<Claim>,
        sent_at: u64,
    ) {
        if !self.witness.link[from] {
            return;
        }
        let w = &mut self.witness;
        let Some(c) = req else {
            if w.holder == Some(from) {
                w.holder = None;
            }
            return;
        };
        let other_holds = w.holder.is_some_and(|h| h != from) && self.now < w.expires_at;
        let result = if other_holds && self.setup.sabotage != Sabotage::WitnessIgnoresLeases {
            Err(format!("{} holds the module", NAMES[1 - from]))
        } else if w.holder != Some(from)
            && !c.force
            && w.recorded.is_some()
            && w.recorded != c.current
            && !w.recorded.is_some_and(|r| c.history.contains(&r))
        {
            Err(format!(
                "outdated: the latest data is generation {}",
                w.recorded.map(|g| g.to_string()).unwrap_or_default()
            ))
        } else {
            w.holder = Some(from);
            w.expires_at = self.now + LEASE_MS;
            w.recorded = c.current;
            Ok(())
        };
        if result.is_err() {
            self.stats.witness_refusals += 1;
        }
        let (holder, recorded) = (self.witness.holder, self.witness.recorded);
        self.note(|| {
            format!(
                "witness: claim {} by {} for {}{}: {:?} (holder {:?}, recorded {})",
                c.op,
                NAMES[from],
                gen_text(c.current),
                if c.force { " forced" } else { "" },
                result,
                holder.map(|h| NAMES[h]),
                gen_text(recorded)
            )
        });
        let at = self.now + self.delay(1, 10);
        self.schedule(
            at,
            Payload::WitnessReply {
                to: from,
                inc,
                op: c.op,
                sent_at,
                result,
            },
        );
    }

    pub(super) fn client_reply(
        &mut self,
        i: usize,
        op: OpId,
        sent_at: u64,
        result: Result<(), String>,
    ) {
        let c = &mut self.nodes[i].wc;
        if c.claim.as_ref().map(|c| c.op) != Some(op) {
            return;
        }
        match result {
            Ok(()) => {
                // The witness's lease runs from when it received the request, later than this.
                c.deadline = c.deadline.max(sent_at + LEASE_MS);
                c.holding = true;
                let (deadline, first) = (c.deadline, std::mem::take(&mut c.awaiting));
                let inc = self.nodes[i].inc;
                self.schedule(deadline, Payload::Expiry { node: i, inc });
                self.arm_renew(i);
                if first {
                    self.deliver(i, Event::Witness(WitnessEvent::Granted { op }));
                }
            }
            Err(reason) => {
                c.awaiting = false;
                c.holding = false;
                self.deliver(i, Event::Witness(WitnessEvent::Refused { op, reason }));
            }
        }
    }
}
