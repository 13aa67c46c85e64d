//! Alarms on the raft core (etcd's `alarm.AlarmStore` and capped/corrupt appliers): the
//! cluster's active alarms, changed only by applied Maintenance.Alarm entries, written to
//! the db's Meta tree in the same transaction as the entry's index, loaded at boot, and
//! sent to every core with each round. While NOSPACE is active, entries that would grow
//! the db (Put, a Txn with a put in either branch, LeaseGrant) are refused at apply with
//! etcd's "database space exceeded"; while CORRUPT is active, every KV and lease write is
//! refused with "corrupt cluster". Both refusals are decided from replicated state at the
//! entry's place in the log, so every member decides the same.
//!
//! Runs on: the raft core. Invariant: `list` equals the `alarm/` records of the Meta tree
//! as of the applied index; the cores' copy is the one of their latest round.

use super::*;
use crate::mesh::{Alarm, AlarmList, ALARM_CORRUPT, ALARM_NOSPACE};
use crate::pb::etcdserverpb as pb;
use std::sync::Arc;

/// Meta-tree key prefix of an alarm record: `alarm/` + member ID (8 bytes BE) + alarm
/// type (4 bytes BE); the value is empty.
const ALARM_PREFIX: &[u8] = b"alarm/";

/// The Meta-tree key of an alarm record.
pub(crate) fn alarm_key(a: Alarm) -> Vec<u8> {
    let mut k = ALARM_PREFIX.to_vec();
    k.extend_from_slice(&a.member.to_be_bytes());
    k.extend_from_slice(&a.kind.to_be_bytes());
    k
}

/// The alarm a Meta-tree key records, if it is an alarm record.
pub(crate) fn decode_alarm_key(k: &[u8]) -> Option<Alarm> {
    let rest = k.strip_prefix(ALARM_PREFIX)?;
    if rest.len() != 12 {
        return None;
    }
    Some(Alarm {
        member: u64::from_be_bytes(rest[..8].try_into().ok()?),
        kind: i32::from_be_bytes(rest[8..].try_into().ok()?),
    })
}

/// The raft core's alarms and the list the cores last got.
pub(super) struct AlarmDuty {
    /// Active alarms, sorted.
    pub(super) list: Arc<Vec<Alarm>>,
}

impl AlarmDuty {
    pub(super) fn load(store: &Store) -> Result<AlarmDuty, BootError> {
        let mut end = ALARM_PREFIX.to_vec();
        *end.last_mut().expect("non-empty prefix") += 1;
        let mut list = Vec::new();
        for r in store.backend().range(TreeId::Meta, ALARM_PREFIX, &end) {
            let (k, _) = r.map_err(|e| boot_err(format!("alarms: {e}")))?;
            match decode_alarm_key(k) {
                Some(a) => list.push(a),
                None => return Err(boot_err(format!("alarms: bad record key {k:?}"))),
            }
        }
        if !list.is_empty() {
            crate::runtime::log::warning(
                "etcdserver",
                &format!("active alarms at boot: {}", describe(&list)),
            );
        }
        Ok(AlarmDuty {
            list: Arc::new(list),
        })
    }

    pub(super) fn active(&self, kind: i32) -> bool {
        self.list.iter().any(|a| a.kind == kind)
    }
}

/// "memberID:… alarm:…" for logs.
pub(crate) fn describe(list: &[Alarm]) -> String {
    list.iter()
        .map(|a| format!("memberID:{:x} alarm:{}", a.member, alarm_name(a.kind)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn alarm_name(kind: i32) -> &'static str {
    match kind {
        ALARM_NOSPACE => "NOSPACE",
        ALARM_CORRUPT => "CORRUPT",
        0 => "NONE",
        _ => "UNKNOWN",
    }
}

/// Whether NOSPACE refuses `op` (etcd's capped applier: Put, LeaseGrant, and a Txn
/// unless every op of both branches is a range — etcd's `isTxnReadonly`).
fn refused_when_nospace(op: &Op) -> bool {
    match op {
        Op::Put(_) | Op::LeaseGrant(_) => true,
        Op::Txn(t) => t
            .success
            .iter()
            .chain(t.failure.iter())
            .any(|o| !matches!(o, mvcc::RequestOp::RequestRange(_))),
        _ => false,
    }
}

/// Whether `op` is refused under CORRUPT (etcd: every KV and lease request).
fn refused_when_corrupt(op: &Op) -> bool {
    matches!(
        op,
        Op::Put(_)
            | Op::DeleteRange(_)
            | Op::Txn(_)
            | Op::Compaction(_)
            | Op::LeaseGrant(_)
            | Op::LeaseRevoke(_)
    )
}

impl RaftCore {
    /// The refusal an active alarm gives `op` at apply, if any.
    pub(super) fn alarm_check_op(&self, op: &Op) -> Result<(), ServerError> {
        if self.alarms.list.is_empty() {
            return Ok(());
        }
        if self.alarms.active(ALARM_CORRUPT) && refused_when_corrupt(op) {
            return Err(ServerError::Corrupt("the CORRUPT alarm is active".into()));
        }
        if self.alarms.active(ALARM_NOSPACE) && refused_when_nospace(op) {
            return Err(ServerError::NoSpace);
        }
        Ok(())
    }

    /// Applies a Maintenance.Alarm entry (etcd's applier `Alarm`): GET lists (all, or one
    /// type), ACTIVATE raises (type NONE does nothing), DEACTIVATE clears.
    pub(super) fn apply_alarm_entry(
        &mut self,
        e: &Entry,
        req: &pb::AlarmRequest,
    ) -> Result<(), BootError> {
        if e.index <= self.store.consistent_index() {
            return Ok(());
        }
        let wanted = Alarm {
            member: req.member_id,
            kind: req.alarm,
        };
        let mut answer = Vec::new();
        let reply = match (req.action, req.alarm) {
            (_, kind) if !(0..=ALARM_CORRUPT).contains(&kind) => {
                Err(ServerError::Internal(format!("invalid alarm type {kind}")))
            }
            // GET
            (0, 0) => {
                answer = self.alarms.list.to_vec();
                Ok(())
            }
            (0, kind) => {
                answer = self
                    .alarms
                    .list
                    .iter()
                    .filter(|a| a.kind == kind)
                    .copied()
                    .collect();
                Ok(())
            }
            // ACTIVATE
            (1, 0) => Ok(()),
            (1, _) => {
                if !self.alarms.list.contains(&wanted) {
                    self.store
                        .backend_mut()
                        .insert(TreeId::Meta, &alarm_key(wanted), &[])
                        .map_err(|err| boot_err(format!("applying entry {}: {err}", e.index)))?;
                    let mut list = self.alarms.list.to_vec();
                    list.push(wanted);
                    list.sort();
                    self.alarms.list = Arc::new(list);
                    crate::runtime::log::warning(
                        "etcdserver",
                        &format!(
                            "alarm raised: memberID:{:x} alarm:{}",
                            wanted.member,
                            alarm_name(wanted.kind)
                        ),
                    );
                }
                answer.push(wanted);
                Ok(())
            }
            // DEACTIVATE
            (2, _) => {
                if self.alarms.list.contains(&wanted) {
                    self.store
                        .backend_mut()
                        .remove(TreeId::Meta, &alarm_key(wanted))
                        .map_err(|err| boot_err(format!("applying entry {}: {err}", e.index)))?;
                    let list: Vec<Alarm> = self
                        .alarms
                        .list
                        .iter()
                        .copied()
                        .filter(|a| *a != wanted)
                        .collect();
                    self.alarms.list = Arc::new(list);
                    crate::runtime::log::info(
                        "etcdserver",
                        &format!(
                            "alarm cleared: memberID:{:x} alarm:{}",
                            wanted.member,
                            alarm_name(wanted.kind)
                        ),
                    );
                    answer.push(wanted);
                }
                Ok(())
            }
            (action, _) => Err(ServerError::Internal(format!(
                "invalid alarm action {action}"
            ))),
        };
        self.store.set_consistent_index(e.index, e.term);
        self.reply_to_entry(e, reply.map(|()| AlarmList(answer)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_keys_round_trip() {
        for a in [
            Alarm { member: 0, kind: 1 },
            Alarm {
                member: u64::MAX,
                kind: 2,
            },
            Alarm {
                member: 0x8e9e05c52164694d,
                kind: 1,
            },
        ] {
            assert_eq!(decode_alarm_key(&alarm_key(a)), Some(a));
        }
        assert_eq!(decode_alarm_key(b"alarm/short"), None);
        assert_eq!(decode_alarm_key(b"other/0123456789ab"), None);
    }
}
