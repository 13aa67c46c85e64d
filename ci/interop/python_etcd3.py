"""Python etcd3 (grpcio) against a Keel endpoint: KV, txn, errors, status, members, watch,
leases and python-etcd3's own lock recipe.

usage: python3 python_etcd3.py HOST PORT   (exit 0 and "python etcd3: N checks passed")

With KEEL_TLS_DIR set, over mutual TLS: ca.pem, client.pem and client-key.pem from that
directory; then a client without a certificate must be refused.
"""
import os
import sys
import threading
import time

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
import etcd3  # noqa: E402

host, port = sys.argv[1], int(sys.argv[2])
tls = os.environ.get("KEEL_TLS_DIR")
creds = {}
if tls:
    creds = dict(
        ca_cert=f"{tls}/ca.pem",
        cert_cert=f"{tls}/client.pem",
        cert_key=f"{tls}/client-key.pem",
    )
c = etcd3.client(host=host, port=port, timeout=10, **creds)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"python etcd3: FAILED: {what}")
        sys.exit(1)
    checks += 1


c.put("py/a", "1")
c.put("py/b", "2")
value, meta = c.get("py/a")
check(value == b"1" and meta.version == 1, f"get py/a -> {value!r}")
check(sorted(k.key for _, k in c.get_prefix("py/")) == [b"py/a", b"py/b"], "get_prefix")
ok, _ = c.transaction(
    compare=[c.transactions.value("py/a") == "1"],
    success=[c.transactions.put("py/a", "one")],
    failure=[],
)
check(ok, "txn succeeded")
check(c.get("py/a")[0] == b"one", "txn applied")
check(c.delete("py/b"), "delete existing")
check(not c.delete("py/b"), "delete missing")
st = c.status()
# Through a gRPC proxy MemberList names the proxy (as etcd's does), so python-etcd3 finds
# no member with the leader's ID.
via_proxy = os.environ.get("KEEL_PROXY") == "1"
check(st.version.startswith("3.4") and (st.leader is not None or via_proxy), "status")
check(len(list(c.members)) == int(os.environ.get("KEEL_MEMBERS", "1")), "members")

# Watch: a live event, then history replayed from a revision with a prefix watch.
def put_later():
    time.sleep(0.3)
    c.put("py/w", "x")


threading.Thread(target=put_later).start()
ev = c.watch_once("py/w", timeout=5)
check(ev.key == b"py/w" and ev.value == b"x", f"watch_once -> {ev}")
start = c.put("py/h", "1").header.revision
c.put("py/h", "2")
c.delete("py/h")
events, cancel = c.watch_prefix("py/h", start_revision=start)
got = [next(events) for _ in range(3)]
cancel()
kinds = [type(e).__name__ for e in got]
check(kinds == ["PutEvent", "PutEvent", "DeleteEvent"], f"replayed kinds {kinds}")
check([e.mod_revision for e in got] == [start, start + 1, start + 2], "replayed revisions")

# Leases: grant, attach, refresh, time-to-live with keys, revoke deletes the key.
lease = c.lease(30)
check(lease.ttl == 30 and lease.id > 0, f"lease granted {lease.id} ttl {lease.ttl}")
c.put("py/l", "leased", lease=lease)
check(c.get("py/l")[1].lease_id == lease.id, "key attached to the lease")
refreshed = list(lease.refresh())
check(refreshed and refreshed[0].TTL == 30, f"keep-alive -> {refreshed}")
check(0 < lease.remaining_ttl <= 30, f"remaining {lease.remaining_ttl}")
check(lease.keys == [b"py/l"], f"lease keys {lease.keys}")
check(c.get_lease_info(lease.id).grantedTTL == 30, "lease info")
lease.revoke()
check(c.get("py/l")[0] is None, "revoke deleted the key")
short = c.lease(1)
check(short.ttl == 2, f"minimum TTL: {short.ttl}")
c.put("py/s", "x", lease=short)
deadline = time.time() + 10
while c.get("py/s")[0] is not None and time.time() < deadline:
    time.sleep(0.2)
check(c.get("py/s")[0] is None, "expired lease deleted its key")
# (Only uncontended: python-etcd3's retry loop breaks on current tenacity releases.)
with c.lock("py-lock", ttl=10) as lk:
    check(lk.is_acquired(), "lock acquired")
    check(c.get("py-lock")[0] is None, "lock key is under the lock prefix")
check(not lk.is_acquired(), "lock released")
# Maintenance (issue 19): hash, defragment, snapshot, alarms.
check(isinstance(c.hash(), int), "hash")
c.defragment()
import io, hashlib
snap = io.BytesIO()
c.snapshot(snap)
blob = snap.getvalue()
check(len(blob) % 512 == 32, f"snapshot size {len(blob)} is pages + sha256")
check(hashlib.sha256(blob[:-32]).digest() == blob[-32:], "snapshot sha256 trailer")
raised = c.create_alarm()
check(len(raised) == 1, f"alarm raised: {raised}")
check(len(list(c.list_alarms())) >= 1, "alarm listed")
try:
    c.put("py/nospace", "x")
    refused = None
except Exception as e:
    refused = e
check(refused is not None and "space exceeded" in str(refused), f"put under NOSPACE: {refused!r}")
c.disarm_alarm()
check(list(c.list_alarms()) == [], "alarm disarmed")
c.put("py/nospace", "x")
check(c.get("py/nospace")[0] == b"x", "put after disarm")
if tls:
    # Trusting the server but showing no certificate: refused (--client-cert-auth).
    bare = etcd3.client(host=host, port=port, timeout=5, ca_cert=f"{tls}/ca.pem")
    try:
        bare.get("py/a")
        refused = None
    except Exception as e:  # ConnectionFailedError or a gRPC error, depending on timing
        refused = e
    check(refused is not None, "a client without a certificate was served")
    # And the member still serves the good client.
    check(c.get("py/a")[0] == b"one", "served after the refusal")
print(f"python etcd3: {checks} checks passed{' (mutual TLS)' if tls else ''}")
