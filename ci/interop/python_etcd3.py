"""Python etcd3 (grpcio) against a Keel endpoint: KV, txn, errors, status, members, watch.

usage: python3 python_etcd3.py HOST PORT   (exit 0 and "python etcd3: N checks passed")
"""
import os
import sys
import threading
import time

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
import etcd3  # noqa: E402

host, port = sys.argv[1], int(sys.argv[2])
c = etcd3.client(host=host, port=port, timeout=10)
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
check(st.version.startswith("3.4") and st.leader is not None, "status")
check(len(list(c.members)) == 1, "members")

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
print(f"python etcd3: {checks} checks passed")
