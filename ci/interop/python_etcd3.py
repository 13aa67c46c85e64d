"""Python etcd3 (grpcio) against a Keel endpoint: KV, txn, errors, status, members.

usage: python3 python_etcd3.py HOST PORT   (exit 0 and "python etcd3: N checks passed")
"""
import os
import sys

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
print(f"python etcd3: {checks} checks passed")
