//! The test network: one network namespace per member slot, each joined by a veth pair to
//! a bridge in a namespace of its own, where the harness's clients live. Nothing is added
//! to the host's own namespace.
//!
//! ```text
//!   ns PREFIX-br:  br0 10.251.0.1/24  (clients, the harness)
//!                   ├─ v0 ══ eth0 10.251.0.10  ns PREFIX-m0 (member slot 0)
//!                   ├─ v1 ══ eth0 10.251.0.11  ns PREFIX-m1
//!                   └─ …
//! ```
//! Partitions are iptables rules in the members' namespaces: a cut `from → to` drops, in
//! `to`'s INPUT chain, every packet from `from`'s address. Clients (10.251.0.1) are never
//! cut off, so a client of a member on the minority side keeps talking to it: that member
//! must then refuse or stall what it cannot serve, never serve it stale.
//!
//! Invariants: every namespace is named `PREFIX-…` where PREFIX is `kc<pid>` of this
//! harness; `destroy` (also on drop) removes them all. Namespaces left by a harness that
//! died (its PID gone) are removed at the next start.

use crate::sys;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);

pub fn member_ip(slot: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 251, 0, 10 + slot as u8)
}

pub struct Net {
    pub prefix: String,
    slots: usize,
    /// The cuts in force: (from slot, to slot).
    cuts: BTreeSet<(usize, usize)>,
    destroyed: bool,
}

impl Net {
    /// Creates the bridge namespace and `slots` member namespaces.
    pub fn create(slots: usize) -> Result<Net, String> {
        assert!(slots <= 200, "slots {slots}");
        for tool in ["ip", "iptables"] {
            if !sys::have(tool) {
                return Err(format!(
                    "`{tool}` not found: keel-chaos needs iproute2 and iptables (ci/deps.sh installs them)"
                ));
            }
        }
        remove_stale_namespaces();
        let net = Net {
            prefix: format!("kc{}", std::process::id()),
            slots,
            cuts: BTreeSet::new(),
            destroyed: false,
        };
        let br = net.bridge_ns();
        sys::run(&["ip", "netns", "add", &br])?;
        sys::run(&["ip", "-n", &br, "link", "set", "lo", "up"])?;
        sys::run(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"])?;
        sys::run(&[
            "ip",
            "-n",
            &br,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "br0",
        ])?;
        sys::run(&["ip", "-n", &br, "link", "set", "br0", "up"])?;
        for slot in 0..slots {
            let ns = net.member_ns(slot);
            let v = format!("v{slot}");
            sys::run(&["ip", "netns", "add", &ns])?;
            sys::run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            sys::run(&[
                "ip", "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            sys::run(&["ip", "-n", &br, "link", "set", &v, "master", "br0"])?;
            sys::run(&["ip", "-n", &br, "link", "set", &v, "up"])?;
            let addr = format!("{}/24", member_ip(slot));
            sys::run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            sys::run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            // Probe that iptables works in this namespace before any fault needs it.
            sys::run(&["ip", "netns", "exec", &ns, "iptables", "-w", "-F", "INPUT"])?;
        }
        Ok(net)
    }

    pub fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    pub fn member_ns(&self, slot: usize) -> String {
        format!("{}-m{slot}", self.prefix)
    }

    /// The cuts in force, as `from→to` pairs.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        self.cuts.iter().copied().collect()
    }

    /// Drops every packet from slot `from` arriving at slot `to`.
    pub fn cut(&mut self, from: usize, to: usize) -> Result<(), String> {
        assert!(from < self.slots && to < self.slots && from != to);
        if !self.cuts.insert((from, to)) {
            return Ok(());
        }
        let ns = self.member_ns(to);
        let src = member_ip(from).to_string();
        sys::run(&[
            "ip", "netns", "exec", &ns, "iptables", "-w", "-A", "INPUT", "-s", &src, "-j", "DROP",
        ])
        .map(|_| ())
    }

    /// Cuts both directions between every member of `a` and every member of `b`.
    pub fn split(&mut self, a: &[usize], b: &[usize]) -> Result<(), String> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> Result<(), String> {
        let targets: BTreeSet<usize> = self.cuts.iter().map(|c| c.1).collect();
        for to in targets {
            let ns = self.member_ns(to);
            sys::run(&["ip", "netns", "exec", &ns, "iptables", "-w", "-F", "INPUT"])?;
        }
        self.cuts.clear();
        Ok(())
    }

    /// Deletes every namespace this harness made (their veths go with them).
    pub fn destroy(&mut self) {
        if self.destroyed {
            return;
        }
        self.destroyed = true;
        for slot in 0..self.slots {
            let _ = sys::run(&["ip", "netns", "del", &self.member_ns(slot)]);
        }
        let _ = sys::run(&["ip", "netns", "del", &self.bridge_ns()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Deletes `kc<pid>-…` namespaces whose harness (that PID) no longer runs.
fn remove_stale_namespaces() {
    let Ok(list) = sys::run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("kc") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sys::run(&["ip", "netns", "del", name]);
        }
    }
}
