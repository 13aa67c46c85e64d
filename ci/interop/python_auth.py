"""Python etcd3 (grpcio) logging in to a Keel member with auth on: user `interop`
(password `interop-pw`) may read and write keys under `auth/` only.

usage: python3 python_auth.py HOST PORT   (exit 0 and "python etcd3 auth: N checks passed")

grpcio sends call credentials (the token) only over TLS: KEEL_TLS_DIR names ca.pem,
client.pem and client-key.pem for a member with --client-cert-auth.
"""
import os
import sys

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
checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"python etcd3 auth: FAILED: {what}")
        sys.exit(1)
    checks += 1


def refused(fn, words):
    try:
        fn()
    except Exception as e:  # the client raises its own types; the server's words count
        return words in str(e)
    return False


c = etcd3.client(host=host, port=port, timeout=10, user="interop", password="interop-pw", **creds)
c.put("auth/py", "1")
check(c.get("auth/py")[0] == b"1", "put and get under auth/")
check(refused(lambda: c.put("other", "x"), "permission denied"), "put outside auth/ refused")
check(refused(lambda: c.get("other"), "permission denied"), "get outside auth/ refused")
check(
    refused(
        lambda: etcd3.client(host=host, port=port, timeout=10, user="interop", password="bad", **creds).get(
            "auth/py"
        ),
        "authentication failed",
    ),
    "a wrong password refused",
)
# Without a token the certificate's CN (keel-interop-client, no such user) is the user.
check(
    refused(lambda: etcd3.client(host=host, port=port, timeout=10, **creds).get("auth/py"), "permission denied"),
    "a certificate naming no user refused",
)
print(f"python etcd3 auth: {checks} checks passed")
