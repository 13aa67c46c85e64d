//! Auth on the raft core: the authoritative `AuthState` (loaded from the db's auth tree at
//! boot, changed only by applied Auth entries, written back in the same db transaction as
//! the entry's index), the check of every client write at apply against the auth
//! revision its entry carries, and the auth part of each round (new view, token events).
//!
//! Runs on: the raft core. Invariant: the view the cores get is always built from the
//! state as of the round's applied index, and token events reach them in apply order.

use super::*;
use crate::auth::tokens::TokenEvent;
use crate::auth::{AuthOp, AuthOutcome, AuthState, AuthView, Caller};
use crate::mesh::AuthRound;
use std::sync::Arc;

/// The raft core's auth state and what the next round owes the cores.
pub(super) struct AuthDuty {
    pub(super) state: AuthState,
    pub(super) view: Arc<AuthView>,
    /// The view changed since the last round (the first round always carries it).
    view_changed: bool,
    tokens: Vec<TokenEvent>,
}

impl AuthDuty {
    /// The auth tree's state (empty: auth never used).
    pub(super) fn load(store: &Store) -> Result<AuthDuty, BootError> {
        let db = store.backend();
        let mut records = Vec::new();
        for r in db.range(TreeId::Auth, b"", b"") {
            let (k, v) = r.map_err(|e| boot_err(format!("auth tree: {e}")))?;
            records.push((k.to_vec(), v.to_vec()));
        }
        let state =
            AuthState::from_records(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
                .map_err(|e| boot_err(format!("auth tree: {e}")))?;
        Ok(AuthDuty {
            view: Arc::new(state.view()),
            state,
            view_changed: true,
            tokens: Vec::new(),
        })
    }

    /// The auth part of the next round (the first one always carries the view).
    pub(super) fn take_round(&mut self, first: bool) -> AuthRound {
        let view = (first || self.view_changed).then(|| self.view.clone());
        self.view_changed = false;
        AuthRound {
            view,
            tokens: (!self.tokens.is_empty()).then(|| Arc::new(std::mem::take(&mut self.tokens))),
        }
    }
}

impl RaftCore {
    /// Whether `caller` may apply `op` (`None`: the member's own entry). A refused entry
    /// still takes its index; the store does not see it.
    pub(super) fn auth_check_op(
        &self,
        caller: Option<&Caller>,
        op: &Op,
    ) -> Result<(), ServerError> {
        let Some(caller) = caller else { return Ok(()) };
        let leases = self.store.leases();
        let lease_keys = |id: i64| -> Vec<Vec<u8>> {
            leases
                .get(id)
                .map(|l| l.keys.iter().cloned().collect())
                .unwrap_or_default()
        };
        self.auth
            .view
            .check_op(caller, op, &lease_keys)
            .map_err(ServerError::Auth)
    }

    /// Applies an Auth entry: the state, its records in the db, the round's view and
    /// token events, and the reply to the proposer.
    pub(super) fn apply_auth_entry(
        &mut self,
        e: &Entry,
        caller: Option<&Caller>,
        op: &AuthOp,
    ) -> Result<(), BootError> {
        if e.index <= self.store.consistent_index() {
            return Ok(());
        }
        let res = self.auth.state.apply_op(caller, op, e.index);
        let reply: Result<AuthOutcome, ServerError> = match res {
            Ok((outcome, applied)) => {
                if applied.changed {
                    self.persist_auth()
                        .map_err(|err| boot_err(format!("applying entry {}: {err}", e.index)))?;
                    self.auth.view = Arc::new(self.auth.state.view());
                    self.auth.view_changed = true;
                }
                self.auth.tokens.extend(applied.tokens);
                Ok(outcome)
            }
            Err(err) => Err(ServerError::Auth(err)),
        };
        self.store.set_consistent_index(e.index, e.term);
        self.reply_to_entry(e, reply);
        Ok(())
    }

    /// Rewrites the auth tree from the state (auth changes are rare and the tree small).
    fn persist_auth(&mut self) -> Result<(), mvcc::db::Error> {
        let records = self.auth.state.records();
        let db = self.store.backend_mut();
        db.retain(TreeId::Auth, b"", b"", &mut |_| false)?;
        for (k, v) in &records {
            db.insert(TreeId::Auth, k, v)?;
        }
        Ok(())
    }
}
