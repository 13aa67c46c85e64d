//! etcd's simple tokens: `<16 random letters>.<raft index>`, assigned when an
//! Authenticate entry is applied (so every member, and every core of a member, learns the
//! same token), valid until `--auth-token-ttl` passes without use, dropped when their user
//! is deleted or changes password and all dropped when auth is disabled.
//!
//! Each core keeps its own table ([`SimpleTokens`]) fed by the [`TokenEvent`]s the raft
//! core sends with its rounds, in apply order. A token's TTL runs per core: a token used
//! only on one core may expire on another (the client then authenticates again, as on
//! any "invalid auth token").

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// A change to the token tables, in apply order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenEvent {
    Assign {
        token: String,
        user: String,
    },
    /// The user was deleted or changed its password.
    DropUser(String),
    /// Auth was disabled.
    DropAll,
}

/// The random part of a simple token: 16 ASCII letters, from the system's CSPRNG.
pub fn token_prefix() -> String {
    use ring::rand::SecureRandom;
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(16);
    while out.len() < 16 {
        let mut bytes = [0u8; 32];
        // Linux's getrandom does not fail once booted; zeros instead would be a weak token,
        // so a failure stops loudly.
        rng.fill(&mut bytes)
            .expect("the system random source works");
        // 208 = 4 × 52: bytes above it are dropped so every letter is equally likely.
        let want = 16 - out.len();
        out.extend(
            bytes
                .iter()
                .filter(|&&b| b < 208)
                .map(|&b| LETTERS[b as usize % 52] as char)
                .take(want),
        );
    }
    out
}

/// The token for an Authenticate applied at raft index `index`.
pub fn simple_token(prefix: &str, index: u64) -> String {
    format!("{prefix}.{index}")
}

/// The raft index a well-formed simple token names (`None`: not a simple token).
pub fn simple_token_index(token: &str) -> Option<u64> {
    let (prefix, index) = token.split_once('.')?;
    if prefix.is_empty() || index.contains('.') {
        return None;
    }
    index.parse().ok()
}

struct Entry {
    user: String,
    deadline: Instant,
}

/// One core's simple tokens.
pub struct SimpleTokens {
    ttl: Duration,
    tokens: HashMap<String, Entry>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            tokens: HashMap::new(),
        }
    }

    /// A new TTL for tokens assigned or used from now on.
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    pub fn apply(&mut self, event: &TokenEvent, now: Instant) {
        match event {
            TokenEvent::Assign { token, user } => {
                self.tokens.insert(
                    token.clone(),
                    Entry {
                        user: user.clone(),
                        deadline: now + self.ttl,
                    },
                );
            }
            TokenEvent::DropUser(user) => self.tokens.retain(|_, e| e.user != *user),
            TokenEvent::DropAll => self.tokens.clear(),
        }
    }

    /// The user of a live token, whose TTL starts again (an expired one is dropped).
    pub fn lookup(&mut self, token: &str, now: Instant) -> Option<&str> {
        let live = match self.tokens.get(token) {
            Some(e) => e.deadline > now,
            None => return None,
        };
        if !live {
            self.tokens.remove(token);
            return None;
        }
        let e = self.tokens.get_mut(token).expect("present");
        e.deadline = now + self.ttl;
        Some(&e.user)
    }

    /// Drops expired tokens (called now and then so unused ones do not pile up).
    pub fn sweep(&mut self, now: Instant) {
        self.tokens.retain(|_, e| e.deadline > now);
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_sixteen_random_letters() {
        let a = token_prefix();
        let b = token_prefix();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_alphabetic()), "{a}");
        assert_ne!(a, b);
        let t = simple_token(&a, 42);
        assert_eq!(simple_token_index(&t), Some(42));
        for bad in ["", ".", "abc", "abc.", ".5", "a.b.5", "a.-1", "a.x"] {
            assert_eq!(simple_token_index(bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_expire_without_use_and_are_dropped_by_user_and_all() {
        let t0 = Instant::now();
        let mut t = SimpleTokens::new(Duration::from_secs(10));
        let assign = |token: &str, user: &str| TokenEvent::Assign {
            token: token.into(),
            user: user.into(),
        };
        t.apply(&assign("a.1", "alice"), t0);
        t.apply(&assign("b.2", "bob"), t0);
        t.apply(&assign("c.3", "alice"), t0);
        // Use keeps a token alive past its first deadline.
        assert_eq!(t.lookup("a.1", t0 + Duration::from_secs(8)), Some("alice"));
        assert_eq!(t.lookup("a.1", t0 + Duration::from_secs(16)), Some("alice"));
        assert_eq!(
            t.lookup("b.2", t0 + Duration::from_secs(16)),
            None,
            "expired"
        );
        assert_eq!(t.lookup("b.2", t0), None, "and gone");
        t.apply(&TokenEvent::DropUser("alice".into()), t0);
        assert_eq!(t.lookup("a.1", t0), None);
        assert_eq!(t.lookup("c.3", t0), None);
        t.apply(&assign("d.4", "carol"), t0);
        t.apply(&TokenEvent::DropAll, t0);
        assert!(t.is_empty());
        t.apply(&assign("e.5", "carol"), t0);
        t.sweep(t0 + Duration::from_secs(11));
        assert!(t.is_empty());
        assert_eq!(t.lookup("nope", t0), None);
    }
}
