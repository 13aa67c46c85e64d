//! The raft core's `Ready` handling: append and sync the WAL, send messages, apply
//! committed entries to the store in log order, reply to this member's proposals, send
//! every core its round, and commit the db and mark snapshots when due.
//!
//! Runs on: the raft core. Invariants: entries are applied in index order, each once
//! (`Store::apply_at` skips what the db already holds); a reply leaves only with the
//! round that applied its entry.

use super::*;
use crate::metrics;

/// A round of applied entries slower than this counts in `etcd_server_slow_apply_total`
/// (etcd warns of applies over 100 ms).
const SLOW_APPLY: Duration = Duration::from_millis(100);

/// Counts an applied write as etcd's mvcc metrics do: each put, delete range and range
/// of it, and the txn itself when it did more than one of them.
fn count_applied(res: &Result<OpResponse, mvcc::Error>) {
    fn walk(ops: &[mvcc::ResponseOp], n: &mut [u64; 3]) {
        for op in ops {
            match op {
                mvcc::ResponseOp::ResponseRange(_) => n[0] += 1,
                mvcc::ResponseOp::ResponsePut(_) => n[1] += 1,
                mvcc::ResponseOp::ResponseDeleteRange(_) => n[2] += 1,
                mvcc::ResponseOp::ResponseTxn(t) => walk(&t.responses, n),
            }
        }
    }
    let mut n = [0u64; 3];
    match res {
        Ok(OpResponse::Put(_)) => n[1] = 1,
        Ok(OpResponse::DeleteRange(_)) => n[2] = 1,
        Ok(OpResponse::Txn(t)) => {
            walk(&t.responses, &mut n);
            if n.iter().sum::<u64>() > 1 {
                metrics::inc(metrics::Counter::MvccTxn);
            }
        }
        _ => return,
    }
    metrics::add(metrics::Counter::MvccRange, n[0]);
    metrics::add(metrics::Counter::MvccPut, n[1]);
    metrics::add(metrics::Counter::MvccDelete, n[2]);
}

impl RaftCore {
    /// The WAL's writer made the `Ready`s up to `number` durable: raft counts them as
    /// this member's persisted log (which may commit entries for the next `process_ready`)
    /// and the messages held for them leave.
    pub(super) fn on_persisted(&mut self, number: u64) {
        self.node.on_persist_ready(number);
        while self.held.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, msgs)) = self.held.pop_front() {
                self.send_messages(msgs);
            }
        }
    }

    /// Takes the writer's answer: `Persisted` moves raft on, a failure stops the member.
    pub(super) fn on_wal_done(&mut self, done: persist::Done) -> Result<(), BootError> {
        match done {
            persist::Done::Persisted(n) => {
                self.on_persisted(n);
                Ok(())
            }
            // Markers are awaited where they are written (`mark_durable`).
            persist::Done::Marked => Ok(()),
            persist::Done::Failed(e) => Err(boot_err(e)),
        }
    }

    /// Waits until everything handed to the WAL's writer is durable, processing what that
    /// commits (the tests' turns; the loop takes the writer's answers as they come).
    pub async fn settle(&mut self, out: &dyn ReplySink) -> Result<(), BootError> {
        while self.wal.pending() {
            let done = self.wal.next().await;
            self.on_wal_done(done)?;
            self.process_ready(out).await?;
        }
        Ok(())
    }

    /// Writes a snapshot marker and waits until it is durable (answers that arrive first
    /// are taken as the loop would).
    pub(super) async fn mark_durable(&mut self, m: wal::SnapshotMarker) -> Result<(), BootError> {
        self.wal.mark(m);
        loop {
            match self.wal.next().await {
                persist::Done::Marked => return Ok(()),
                other => self.on_wal_done(other)?,
            }
        }
    }

    /// Runs every `Ready` raft has: applies what it commits and hands its entries and
    /// hard state to the WAL's writer (`persist.rs`), without waiting for the disk.
    pub async fn process_ready(&mut self, out: &dyn ReplySink) -> Result<(), BootError> {
        // A member that applied its own removal stops driving raft (raft-rs keeps no
        // progress for a removed leader, and `advance` would look it up): it answers what
        // it applied and leaves.
        while self.exit != Some(Exit::Removed) {
            // Applying the bootstrap conf changes can make this member the only voter, and
            // a new leader's first commit unblocks ReadIndex: check both every round.
            self.campaign_if_alone();
            self.propose_held(out);
            self.request_read_index();
            if !self.node.has_ready() {
                break;
            }
            let mut rd = self.node.ready();
            self.send_messages(rd.take_messages());
            if !rd.snapshot().is_empty() {
                // Snapshots from the leader are installed by the transport as a new db
                // and the member restarts on it; raft only sees their message when it
                // holds nothing new.
                return Err(boot_err(format!(
                    "raft: unexpected snapshot at index {} in a ready",
                    rd.snapshot().get_metadata().index
                )));
            }
            let committed = rd.take_committed_entries();
            self.apply(committed)?;
            if self.exit == Some(Exit::Removed) {
                break;
            }
            for rs in rd.take_read_states() {
                let ctx = rs
                    .request_ctx
                    .as_slice()
                    .try_into()
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                if let Some((_, reads)) = self.reads.requested.remove(&ctx) {
                    self.reads.indexed.push((rs.index, reads));
                }
            }
            // The entries go into raft's log now (raft reads them back from there) and to
            // the WAL's writer, which syncs them while this loop goes on; raft counts them
            // as this member's persisted log only at `on_persisted`.
            let entries: Vec<wal::Entry> = rd.entries().iter().map(to_wal_entry).collect();
            if !rd.entries().is_empty() {
                self.node.mut_store().append(rd.entries());
            }
            let hard_state = rd.hs().map(|hs| {
                self.node.mut_store().set_hard_state(hs.clone());
                wal::HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: hs.commit,
                }
            });
            let number = rd.number();
            self.wal
                .persist(number, entries, hard_state, rd.must_sync());
            let held = rd.take_persisted_messages();
            if !held.is_empty() {
                self.held.push_back((number, held));
            }
            self.node.advance_append_async(rd);
            self.node.advance_apply();
        }
        self.store.publish();
        self.node
            .mut_store()
            .set_snapshot_source(self.applied_index, self.store.consistent_term());
        if let Some(t) = &self.transport {
            t.set_applied_index(self.applied_index);
        }
        self.broadcast(out);
        self.serve_indexed_reads(out);
        self.check_move_leader(out);
        self.maybe_publish();
        self.set_gauges();
        Ok(())
    }

    /// The raft core's gauges, as of this turn (a few stores into this core's cells).
    fn set_gauges(&self) {
        use metrics::{set, Gauge};
        let raft = &self.node.raft;
        set(
            Gauge::HasLeader,
            f64::from(u8::from(raft.leader_id != ::raft::INVALID_ID)),
        );
        set(
            Gauge::IsLeader,
            f64::from(u8::from(raft.state == StateRole::Leader)),
        );
        set(Gauge::IsLearner, f64::from(u8::from(self.is_learner())));
        set(Gauge::ProposalsCommitted, raft.raft_log.committed as f64);
        set(Gauge::ProposalsApplied, self.applied_index as f64);
        set(Gauge::ProposalsPending, self.writes.waiting.len() as f64);
        let db = self.store.backend();
        set(Gauge::DbTotalBytes, db.size_bytes() as f64);
        set(Gauge::DbInUseBytes, db.in_use_bytes() as f64);
        set(Gauge::Keys, self.store.index().live_key_count() as f64);
        set(Gauge::CurrentRevision, self.store.current_revision() as f64);
        set(Gauge::CompactRevision, self.store.compact_revision() as f64);
    }

    /// Logs a leader change as etcd does, and fails this member's proposals still waiting:
    /// those forwarded to a leader that is gone would only time out later (etcd's
    /// "possibly due to previous leader failure"; they may or may not have been applied).
    pub(super) fn leader_changed(&mut self, leader: u64, out: &dyn ReplySink) {
        if leader == self.known_leader {
            return;
        }
        let me = self.opts.member_id;
        let term = self.node.raft.term;
        if leader == ::raft::INVALID_ID {
            crate::runtime::log::info(
                "raft",
                &format!(
                    "raft.node: {me:x} lost leader {:x} at term {term}",
                    self.known_leader
                ),
            );
        } else {
            crate::runtime::log::info(
                "raft",
                &format!("raft.node: {me:x} elected leader {leader:x} at term {term}"),
            );
        }
        if leader != ::raft::INVALID_ID {
            metrics::inc(metrics::Counter::LeaderChanges);
        }
        let old = std::mem::replace(&mut self.known_leader, leader);
        if old != ::raft::INVALID_ID && old != me && !self.writes.waiting.is_empty() {
            let waiting: Vec<Origin> = self.writes.waiting.drain().map(|(k, _)| k).collect();
            for origin in waiting {
                self.fail(out, origin, ServerError::TimeoutDueToLeaderFail);
            }
        }
    }

    /// Sends the round's changes, published snapshot and write replies to every core,
    /// when anything was applied (or the cores have not heard from the raft core yet).
    pub(super) fn broadcast(&mut self, out: &dyn ReplySink) {
        let leader = self.node.raft.leader_id;
        let learner = self.is_learner();
        let db_bytes = self.store.backend().size_bytes();
        if self.round.sent_index == Some(self.applied_index)
            && self.round.replies.is_empty()
            && self.round.sent_leader == (leader, learner)
            && self.round.sent_db_bytes == db_bytes
            && !self.round.refresh
        {
            return;
        }
        self.round.refresh = false;
        self.round.sent_db_bytes = db_bytes;
        self.round.sent_leader = (leader, learner);
        let splits = match self.round.sent_index {
            None => Some(self.round.splits.clone()),
            Some(_) => None,
        };
        let splits_first = splits.is_some();
        self.round.sent_index = Some(self.applied_index);
        let mut replies = std::mem::take(&mut self.round.replies);
        if replies.iter().any(|(to, _)| *to == cluster::FORWARDED) {
            let (fwd, local): (Vec<_>, Vec<_>) = replies
                .into_iter()
                .partition(|(to, _)| *to == cluster::FORWARDED);
            for (_, r) in fwd {
                self.reply_forwarded(r);
            }
            replies = local;
        }
        let changes = self.store.take_changes();
        // A rebalance step rides after the round's changes.
        let moves = self.rebalance_round(&changes, !splits_first);
        let round = Applied {
            index: self.applied_index,
            revision: self.store.current_revision(),
            compact_revision: self.store.compact_revision(),
            raft_term: self.node.raft.term,
            leader,
            learner,
            changes: vec![std::sync::Arc::new(changes)],
            snapshot: self.store.backend().snapshot(),
            replies: Vec::new(),
            splits,
            moves: moves.into_iter().map(|m| (1, m)).collect(),
            revoked_leases: std::sync::Arc::new(std::mem::take(&mut self.leases.round_revoked)),
            auth: self.auth.take_round(splits_first),
            alarms: self.alarms.list.clone(),
            db_bytes,
        };
        out.applied(round, replies);
    }

    /// A member that is the only voter elects itself at once instead of waiting out an
    /// election timeout (etcd fast-forwards its ticks for the same reason).
    pub(super) fn campaign_if_alone(&mut self) {
        let cs = self.node.store().conf_state();
        if cs.voters.len() == 1
            && cs.voters[0] == self.opts.member_id
            && self.node.raft.state != StateRole::Leader
            && self.node.raft.state != StateRole::Candidate
        {
            let _ = self.node.campaign();
        }
    }

    pub(super) fn send_messages(&mut self, mut msgs: Vec<RaftMessage>) {
        let Some(t) = &self.transport else { return };
        for m in &msgs {
            if m.get_msg_type() == ::raft::eraftpb::MessageType::MsgHeartbeat {
                metrics::heartbeat_sent(m.to);
            }
        }
        // A snapshot message travels with the db on its own connection.
        if msgs
            .iter()
            .any(|m| m.get_msg_type() == ::raft::eraftpb::MessageType::MsgSnapshot)
        {
            let (snaps, rest): (Vec<_>, Vec<_>) = msgs
                .into_iter()
                .partition(|m| m.get_msg_type() == ::raft::eraftpb::MessageType::MsgSnapshot);
            for m in snaps {
                t.send_snapshot(m, self.store.backend().snapshot());
            }
            msgs = rest;
        }
        t.send(msgs);
    }

    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), BootError> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let applied = self.apply_entries(entries);
        let took = started.elapsed();
        metrics::observe(metrics::Hist::StageApply, took);
        if took >= SLOW_APPLY {
            metrics::inc(metrics::Counter::SlowApply);
        }
        applied
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), BootError> {
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&e)?,
                EntryType::EntryConfChange => self.apply_conf_change(&e)?,
                EntryType::EntryConfChangeV2 => {
                    return Err(boot_err("raft: joint consensus entries are not built yet"))
                }
            }
            self.applied_index = e.index;
        }
        Ok(())
    }

    pub(super) fn apply_normal(&mut self, e: &Entry) -> Result<(), BootError> {
        if e.data.is_empty() {
            // A new leader's empty entry: nothing to apply but the index.
            if e.index > self.store.consistent_index() {
                self.store.set_consistent_index(e.index, e.term);
            }
            // Once the leader has applied its term's first entry it times the leases,
            // each extended by an election timeout (etcd's Promote).
            if self.node.raft.state == StateRole::Leader && e.term == self.node.raft.term {
                let extend = Duration::from_millis(self.opts.election_timeout_ms);
                self.leases
                    .lessor
                    .promote(self.store.leases(), extend, Instant::now());
            }
            return Ok(());
        }
        let decoded = match entry::decode_shared_entry(&e.data) {
            Ok(d) => d,
            Err(what) => {
                return Err(boot_err(format!(
                    "raft entry {} does not decode: {what}",
                    e.index
                )))
            }
        };
        let caller = decoded.caller;
        let op = match decoded.op {
            entry::EntryOp::Op(op) => op,
            entry::EntryOp::Member(m) => return self.apply_member_entry(e, m),
            entry::EntryOp::Auth(a) => return self.apply_auth_entry(e, caller.as_ref(), &a),
            entry::EntryOp::Alarm(a) => return self.apply_alarm_entry(e, &a),
        };
        if e.index <= self.store.consistent_index() {
            return Ok(());
        }
        // A client's write is checked against the auth state as of its place in the log,
        // with the auth revision it was proposed under (etcd's authApplierV3).
        // Then the alarms (etcd's capped and corrupt appliers sit below auth).
        if let Err(denied) = self
            .auth_check_op(caller.as_ref(), &op)
            .and_then(|()| self.alarm_check_op(&op))
        {
            self.store.set_consistent_index(e.index, e.term);
            self.reply_to_entry::<OpResponse>(e, Err(denied));
            return Ok(());
        }
        let Some(res) = self.store.apply_at(e.index, e.term, &op) else {
            return Ok(());
        };
        count_applied(&res);
        match (&op, &res) {
            (Op::LeaseGrant(g), Ok(_)) => self.leases.lessor.granted(g.id, g.ttl, Instant::now()),
            (Op::LeaseRevoke(r), Ok(_)) => {
                self.leases.lessor.revoked(r.id);
                self.leases.round_revoked.push(r.id);
            }
            _ => {}
        }
        let res = match res {
            Ok(r) => Ok(r),
            Err(err @ (mvcc::Error::Db(_) | mvcc::Error::Corrupt { .. })) => {
                return Err(boot_err(format!("applying entry {}: {err}", e.index)))
            }
            Err(err) => Err(ServerError::Mvcc(err)),
        };
        // A physical Compact's answer waits for its sweep; a refused one goes at once.
        let physical = matches!(&op, Op::Compaction(c) if c.physical) && res.is_ok();
        if physical && self.store.compaction_pending() {
            if let Some(held) = self.entry_reply::<OpResponse>(e, res) {
                self.hold_physical_compact(held);
            }
            return Ok(());
        }
        self.reply_to_entry::<OpResponse>(e, res);
        Ok(())
    }

    pub(super) fn apply_conf_change(&mut self, e: &Entry) -> Result<(), BootError> {
        if e.index <= self.store.consistent_index() {
            return Ok(());
        }
        let cc = ConfChange::parse_from_bytes(&e.data)
            .map_err(|err| boot_err(format!("raft entry {}: conf change: {err}", e.index)))?;
        let cs = self
            .node
            .apply_conf_change(&cc)
            .map_err(|err| boot_err(format!("raft entry {}: {err}", e.index)))?;
        let cs_bytes = cs.write_to_bytes().expect("ConfState encodes");
        let key = cc.node_id.to_be_bytes();
        // The record: the proposer's, merged into the existing one for a promotion (which
        // keeps the published name and client URLs).
        let mut record = MemberRecord::decode(&cc.context[..]).unwrap_or_default();
        record.id = cc.node_id;
        if let Some(old) = self
            .store
            .backend()
            .get(TreeId::Member, &key)
            .map_err(|err| boot_err(format!("raft entry {}: {err}", e.index)))?
            .and_then(|v| MemberRecord::decode(v).ok())
        {
            record = MemberRecord {
                is_learner: cc.get_change_type() == ConfChangeType::AddLearnerNode,
                ..old
            };
        }
        let backend = self.store.backend_mut();
        let res = match cc.get_change_type() {
            ConfChangeType::RemoveNode => backend
                .remove(TreeId::Member, &key)
                .and_then(|_| backend.insert(TreeId::Meta, &cluster::removed_key(cc.node_id), &[])),
            _ => backend.insert(TreeId::Member, &key, &record.encode_to_vec()),
        }
        .and_then(|_| backend.insert(TreeId::Meta, META_CONF_STATE_KEY, &cs_bytes));
        res.map_err(|err| boot_err(format!("db: {err}")))?;
        self.node.mut_store().set_conf_state(cs);
        self.store.set_consistent_index(e.index, e.term);
        let removed = cc.get_change_type() == ConfChangeType::RemoveNode;
        crate::runtime::log::info(
            "etcdserver/membership",
            &format!(
                "{} member {:x} ({}) in cluster {:x}",
                match cc.get_change_type() {
                    ConfChangeType::AddNode => "added or promoted",
                    ConfChangeType::AddLearnerNode => "added learner",
                    ConfChangeType::RemoveNode => "removed",
                },
                cc.node_id,
                record.peer_urls.join(","),
                self.opts.cluster_id
            ),
        );
        self.membership_changed();
        if removed && cc.node_id == self.opts.member_id {
            crate::runtime::log::error(
                "etcdserver",
                "the member has been permanently removed from the cluster",
            );
            self.exit = Some(Exit::Removed);
        }
        let member = (!removed).then(|| cluster::member_info(&record));
        let members = self
            .members()
            .map_err(|err| boot_err(format!("raft entry {}: {err}", e.index)))?;
        if removed {
            self.answer_forwarded_removal(cc.node_id, &members);
        }
        self.reply_to_entry(e, Ok(MemberChanged { member, members }));
        Ok(())
    }

    /// Queues the reply to an applied entry when this member (this boot) proposed it. The
    /// entry's kind gives the reply's: a store write answers `Propose` with an
    /// `OpResponse`, a membership entry answers `Member` with `MemberChanged`.
    pub(super) fn reply_to_entry<T: ReplyKind>(&mut self, e: &Entry, body: Result<T, ServerError>) {
        if let Some((origin, reply)) = self.entry_reply(e, body) {
            self.round.replies.push((origin.from, reply));
        }
    }

    /// The reply to an applied entry, when this member (this boot) proposed it; the
    /// request no longer waits to be applied.
    pub(super) fn entry_reply<T: ReplyKind>(
        &mut self,
        e: &Entry,
        body: Result<T, ServerError>,
    ) -> Option<(Origin, Reply)> {
        let (member, incarnation, origin) = decode_context(&e.context)?;
        if member != self.opts.member_id || incarnation != self.incarnation {
            return None;
        }
        self.writes.waiting.remove(&origin);
        let to = ReplyTo::<T>::new(origin.from, origin.seq);
        let reply = to.reply(body, self.node.raft.term, self.node.raft.leader_id);
        Some((origin, reply))
    }

    /// Commits the db when it is due, then marks a snapshot and releases WAL segments when
    /// `snapshot_count` entries have been applied since the last one.
    pub async fn maybe_commit(&mut self, now: Instant, force: bool) -> Result<(), BootError> {
        let dirty = self.store.consistent_index() > self.db_committed_index
            || self.store.sweep_uncommitted();
        let log_bytes = self.node.store().bytes();
        metrics::set(metrics::Gauge::RaftLogBytes, log_bytes as f64);
        let log_full = log_bytes >= self.opts.snapshot_bytes;
        let due = now.duration_since(self.last_db_commit) >= DB_COMMIT_INTERVAL
            || self.store.consistent_index() - self.db_committed_index >= DB_COMMIT_ENTRIES_MAX
            || log_full;
        if !dirty {
            return Ok(());
        }
        if !(due || force) {
            self.maybe_start_db_writeback(now);
            return Ok(());
        }
        self.commit_db(now).await?;
        if self.db_committed_index - self.snapshot_index >= self.opts.snapshot_count.max(1)
            || (log_full && self.db_committed_index > self.snapshot_index)
        {
            self.snapshot().await?;
        }
        Ok(())
    }

    /// Between commits, every `DB_WRITEBACK_INTERVAL`, asks the kernel to start writing the
    /// db pages written so far, on glommio's blocking pool (issue 22: the commit's data
    /// fdatasync used to flush 100 ms of page copies at once, 3–7 ms at 64 clients, while
    /// the loop waited). Only a hint: the commit's fdatasync is what makes pages durable
    /// and what reports errors, so a failure here is ignored.
    fn maybe_start_db_writeback(&mut self, now: Instant) {
        // The `skip-db-sync` mutant is the db without its data pages' durability step, so
        // without this hint too: early writeback puts most pages on the disk before the
        // meta anyway, which would hide the missing sync from most power cuts.
        if self.db_writeback_running.get()
            || now.duration_since(self.last_db_writeback) < DB_WRITEBACK_INTERVAL
            || crate::failpoint::is_on(crate::failpoint::Point::SkipDbSync)
        {
            return;
        }
        self.last_db_writeback = now;
        self.db_writeback_running.set(true);
        let running = self.db_writeback_running.clone();
        let path = self.store.backend().path().to_path_buf();
        glommio::spawn_local(async move {
            let _ = glommio::executor()
                .spawn_blocking(move || crate::mvcc::db::start_writeback(&path))
                .await;
            running.set(false);
        })
        .detach();
    }

    /// Commits the db now (a failed commit stops the member: the db refuses writes then).
    pub(super) async fn commit_db(&mut self, now: Instant) -> Result<(), BootError> {
        let started = Instant::now();
        self.store
            .commit()
            .await
            .map_err(|e| boot_err(format!("db commit: {e}; stopping")))?;
        let took = started.elapsed();
        metrics::observe(metrics::Hist::BackendCommit, took);
        metrics::observe(metrics::Hist::StageDbCommit, took);
        self.db_committed_index = self.store.consistent_index();
        self.last_db_commit = now;
        Ok(())
    }

    pub(super) async fn snapshot(&mut self) -> Result<(), BootError> {
        let index = self.db_committed_index;
        let term = self.store.consistent_term();
        self.mark_durable(wal::SnapshotMarker { index, term })
            .await?;
        self.snapshot_index = index;
        // Entries kept for followers a little behind: etcd's 5,000, and at most a quarter
        // of `--snapshot-bytes` of them (large values).
        let keep_from = index.saturating_sub(SNAPSHOT_CATCH_UP_ENTRIES).max(
            self.node
                .store()
                .first_index_within(index, self.opts.snapshot_bytes / 4),
        );
        if keep_from > self.node.store().first_index_raw() {
            let dropped = self.node.mut_store().compact(keep_from - 1);
            // Freed on glommio's blocking thread pool: ~30 ms for 100,000 entries, which
            // on the loop was every write's stall (issue 22).
            glommio::spawn_local(glommio::executor().spawn_blocking(move || drop(dropped)))
                .detach();
        }
        // The old segments' unlinks and directory fsyncs run beside the loop too.
        self.wal.release(keep_from);
        Ok(())
    }
}
