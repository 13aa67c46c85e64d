"""The HTTP/1.1 side of a client URL, Keel against a real etcd 3.4 side by side.

  python3 http_endpoints.py KEEL_PORT KEEL_METRICS_PORT ETCD_PORT ETCD_METRICS_PORT

Both servers are fresh single members on loopback, each with a --listen-metrics-urls
listener. Checks: /health, /version, wrong methods and paths answer as etcd's do; /metrics
of both parse with the Prometheus project's own text parser (prometheus_client), and every
etcd family Keel claims an equivalent of has the same type and label names in Keel's
output; the mvcc counters move the same way under the same writes on both; /livez and
/readyz (etcd 3.5, absent from 3.4.23) answer in 3.5's format; pipelined requests are
answered in order. Exits 1 on the first difference.
"""
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

KEEL, KEEL_M, ETCD, ETCD_M = sys.argv[1:5]
FAILED = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def get(port, path, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type", "")


def etcdctl(port, *args):
    subprocess.run(
        ["etcdctl", f"--endpoints=127.0.0.1:{port}", *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def families(port):
    status, text, ctype = get(port, "/metrics")
    assert status == 200, (port, status)
    return {f.name: f for f in text_string_to_metric_families(text)}, ctype


def sample(fams, name, labels=None):
    """The value of a sample by family (or sample) name and labels."""
    for f in fams.values():
        for s in f.samples:
            if s.name == name and (labels is None or all(s.labels.get(k) == v for k, v in labels.items())):
                return s.value
    return None


# --- /health, /version, methods and paths ------------------------------------------------
for path in ["/health", "/health?serializable=true", "/health?exclude=NOSPACE", "/version"]:
    k, e = get(KEEL, path), get(ETCD, path)
    check(k == e, f"GET {path}: Keel {k} etcd {e}")
for path, method in [("/health", "POST"), ("/metrics", "POST"), ("/nope", "GET")]:
    k, e = get(KEEL, path, method), get(ETCD, path, method)
    check(k[0] == e[0], f"{method} {path}: Keel {k[0]} etcd {e[0]}")
check(get(KEEL_M, "/health")[:2] == get(ETCD_M, "/health")[:2], "/health on the metrics URL")
version = json.loads(get(KEEL, "/version")[1])
check(set(version) == {"etcdserver", "etcdcluster"}, f"/version keys {sorted(version)}")

# --- /metrics: parsed by Prometheus' parser; etcd's families present alike ---------------
kf, kct = families(KEEL_M)
ef, ect = families(ETCD_M)
check(kct.startswith("text/plain; version=0.0.4"), f"Keel /metrics Content-Type {kct!r}")
# The families Keel has an equivalent of (etcd 3.4's names).
CLAIMED = """
etcd_server_has_leader etcd_server_is_leader etcd_server_leader_changes_seen
etcd_server_proposals_committed_total etcd_server_proposals_applied_total
etcd_server_proposals_pending etcd_server_proposals_failed etcd_server_slow_apply
etcd_server_quota_backend_bytes etcd_server_health_success etcd_server_health_failures
etcd_server_id etcd_server_version etcd_cluster_version etcd_server_is_learner
etcd_server_client_requests etcd_server_slow_read_indexes etcd_server_read_indexes_failed
etcd_server_snapshot_apply_in_progress_total
etcd_disk_wal_fsync_duration_seconds etcd_disk_backend_commit_duration_seconds
etcd_disk_backend_defrag_duration_seconds etcd_disk_backend_snapshot_duration_seconds
etcd_disk_defrag_inflight
etcd_mvcc_db_total_size_in_bytes etcd_mvcc_db_total_size_in_use_in_bytes etcd_mvcc_put
etcd_mvcc_range etcd_mvcc_delete etcd_mvcc_txn etcd_debugging_mvcc_keys_total
etcd_debugging_mvcc_watcher_total etcd_debugging_mvcc_watch_stream_total
etcd_debugging_mvcc_slow_watcher_total etcd_debugging_mvcc_events
etcd_debugging_mvcc_current_revision etcd_debugging_mvcc_compact_revision
etcd_debugging_mvcc_db_total_size_in_bytes etcd_debugging_server_lease_expired
etcd_network_client_grpc_sent_bytes etcd_network_client_grpc_received_bytes
grpc_server_started grpc_server_handled grpc_server_msg_received grpc_server_msg_sent
os_fd_used os_fd_limit process_cpu_seconds process_open_fds process_max_fds
process_resident_memory_bytes process_virtual_memory_bytes process_start_time_seconds
""".split()
for name in CLAIMED:
    if name not in ef:
        # A labelled family shows only once it has a sample (client_requests).
        print(f"skip {name}: no sample in etcd's output yet")
        continue
    if name not in kf:
        check(False, f"Keel lacks {name}")
        continue
    e_labels = {frozenset(k for k in s.labels if k != "le") for s in ef[name].samples}
    k_labels = {frozenset(k for k in s.labels if k != "le") for s in kf[name].samples}
    same = kf[name].type == ef[name].type and (k_labels == e_labels or not ef[name].samples)
    check(same, f"{name}: type {kf[name].type}/{ef[name].type}, labels {sorted(map(sorted, k_labels))} / {sorted(map(sorted, e_labels))}")
# Every gRPC method etcd pre-registers, Keel does too (same service, method and type).
def methods(fams):
    return {(s.labels["grpc_service"], s.labels["grpc_method"], s.labels["grpc_type"]) for s in fams["grpc_server_started"].samples}
missing = methods(ef) - methods(kf)
check(not missing, f"gRPC methods etcd counts that Keel does not: {sorted(missing)}")

# --- the counters move alike under the same writes ---------------------------------------
def counts(port):
    f, _ = families(port)
    return {n: sample(f, n) for n in ["etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total", "etcd_debugging_mvcc_keys_total"]}, f


before = {p: counts(p)[0] for p in (KEEL_M, ETCD_M)}
for port in (KEEL, ETCD):
    etcdctl(port, "put", "m1", "v")
    etcdctl(port, "put", "m2", "v")
    etcdctl(port, "del", "m1")
    subprocess.run(["etcdctl", f"--endpoints=127.0.0.1:{port}", "txn"], input="\nput m3 v\nput m4 v\n\n\n", text=True, check=True, stdout=subprocess.DEVNULL)
for name in before[KEEL_M]:
    dk = counts(KEEL_M)[0][name] - before[KEEL_M][name]
    de = counts(ETCD_M)[0][name] - before[ETCD_M][name]
    check(dk == de, f"{name} moved by {dk} on Keel, {de} on etcd")
_, kf = counts(KEEL_M)
handled = sample(kf, "grpc_server_handled_total", {"grpc_method": "Put", "grpc_code": "OK"})
check(handled is not None and handled >= 2, f"grpc_server_handled_total Put OK = {handled}")
check((sample(kf, "etcd_server_has_leader") or 0) == 1, "etcd_server_has_leader 1")
stage = sample(kf, "keel_stage_duration_seconds_count", {"stage": "wal_sync"})
check(stage is not None and stage > 0, f"keel_stage_duration_seconds{{stage=wal_sync}} count {stage}")

# --- /livez, /readyz (etcd 3.5's format) --------------------------------------------------
check(get(KEEL, "/livez")[:2] == (200, "ok\n"), "/livez: 200 ok")
check(get(KEEL, "/readyz")[:2] == (200, "ok\n"), "/readyz: 200 ok")
st, body, _ = get(KEEL, "/readyz?verbose")
check(st == 200 and body == "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n", f"/readyz?verbose: {body!r}")
st, body, _ = get(KEEL, "/readyz?verbose&exclude=linearizable_read")
check(st == 200 and "linearizable_read" not in body, f"/readyz?exclude: {body!r}")
check(get(KEEL, "/readyz/serializable_read")[:2] == (200, "ok\n"), "/readyz/serializable_read")
check(get(KEEL, "/livez/nope")[0] == 404, "/livez/nope: 404")
check(get(KEEL_M, "/livez")[:2] == (200, "ok\n"), "/livez on the metrics URL")
check(get(KEEL, "/livez", "POST")[0] == 405, "POST /livez: 405")

# --- pipelining: two requests in one write, two answers in order ------------------------
s = socket.create_connection(("127.0.0.1", int(KEEL)), timeout=10)
s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
s.close()
text = data.decode()
check(text.count("HTTP/1.1 200") == 2 and text.index('"health"') < text.index('"etcdserver"'), "pipelined requests answered in order")

if FAILED:
    print(f"http endpoints: {len(FAILED)} difference(s)")
    sys.exit(1)
print("http endpoints: Keel answers as etcd 3.4 does")
