"""The rendered gateway in front of the real daemon and two real Redis stores, all on loopback.

Profile: one host that is gateway and session node (nginx -> daemon over its unix socket), with
the Redis pair "remote" (the daemon reaches it over TLS with a client certificate, as a split
session node does). Every file nginx and the daemon read is rendered by the roles into a temp
root; every certificate and password comes from the control node's key store.

Through real TLS: a TLS 1.2 handshake is refused; sslyze finds the endpoint compliant with
Mozilla's modern profile; no token -> 401; a malformed one -> 401 from nginx; a valid token
reaches the upstream with X-Session-Subject; after revocation -> 403; with the revocation store
stopped -> 503; with the daemon gone -> 503. The tests run in file order on one stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from stack_support import make_nginx_dirs, stack_data, write_files, write_key_files

from deploys import common, gateway, keys, sessiond
from ostiary.acl import SESSIOND_USERNAME, sessiond_acl_rule
from ostiary.keystore import ControlKeyStore
from ostiary.localstack import ostiary_command
from sslyze_support import scan_mozilla_modern

HOST = "gw-native"
SUBJECT = "alice@example.test"
STARTUP_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_until(check: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready after {STARTUP_TIMEOUT}s ({last}):\n{log.read_text()[-3000:]}")


@dataclass
class Stack:
    prefix: Path
    ca_file: Path
    https_port: int
    admin_socket: Path
    access_log: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.Client(base_url=f"https://localhost:{self.https_port}", verify=context, timeout=10)

    def admin(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.admin_socket))
        with httpx.Client(transport=transport, base_url="http://admin", timeout=10) as client:
            return client.request(method, path, **kwargs)  # type: ignore[arg-type]

    def issue(self, subject: str) -> dict[str, str]:
        response = self.admin("POST", "/v1/sessions", json={"sub": subject, "claims": {}})
        assert response.status_code == 201, response.text
        body: dict[str, str] = response.json()
        return body


def _redis_conf(directory: Path, port: int, policy: str, fsync: str, tls: dict[str, Path], acl: Path) -> Path:
    conf = directory / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                "port 0",  # no plaintext
                f"tls-port {port}",
                f"tls-cert-file {tls['cert']}",
                f"tls-key-file {tls['key']}",
                f"tls-ca-cert-file {tls['ca']}",
                "tls-auth-clients yes",
                'tls-protocols "TLSv1.3"',
                "protected-mode yes",
                f"dir {directory}",
                'save ""',
                "appendonly yes",
                f"appendfsync {fsync}",
                "maxmemory 64mb",
                f"maxmemory-policy {policy}",
                f"aclfile {acl}",
                f"logfile {directory / 'redis.log'}",
                "daemonize no",
            ]
        )
        + "\n"
    )
    return conf


@pytest.fixture(scope="module")
def gw(keystore: ControlKeyStore) -> Iterator[Stack]:
    import shutil
    import tempfile

    prefix = Path(tempfile.mkdtemp(prefix="ost-h2-gw-", dir="/tmp"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        yield _start_stack(prefix, keystore, procs)
    finally:
        for name in ("nginx", "sessiond", "redis-revocations", "redis-sessions"):
            if name in procs:
                _stop(procs[name])
        shutil.rmtree(prefix, ignore_errors=True)


def _start_stack(prefix: Path, keystore: ControlKeyStore, procs: dict[str, subprocess.Popen[bytes]]) -> Stack:
    redis_ports = {"sessions": _free_port(), "revocations": _free_port()}
    https_port, placeholder_port = _free_port(), _free_port()
    data = stack_data(
        prefix,
        private_address="127.0.0.1",
        gateway_server_names=["localhost", "127.0.0.1"],
        gateway_listen_addresses=["127.0.0.1"],
        gateway_https_port=https_port,
        gateway_placeholder_port=placeholder_port,
        gateway_upstream=f"http://127.0.0.1:{placeholder_port}",
        gateway_nginx_user="root",  # the temp root is private to root
        gateway_apparmor_profile="",
        redis_tls_ports=redis_ports,
        sessiond_clock_check="none",  # this machine's clock sync is not what is under test
        sessiond_cache_ttl=0.0,  # every request asks the stores: revocation and outage show at once
        sessiond_store_timeout=2.0,  # a loaded CI machine must not fail the start-up check
    )
    facts = {
        "cpus": 1,
        "groups": [common.GROUP_GATEWAYS, common.GROUP_SESSION_NODES],
        "peers": {common.GROUP_GATEWAYS: ["127.0.0.1"], common.GROUP_SESSION_NODES: ["127.0.0.1"],
                  common.GROUP_REDIS_NODES: ["127.0.0.1"]},
        "ocsp_responder": False,
    }  # fmt: skip

    # Key material exactly as the keys role hands it to this host.
    write_key_files(keys.key_files(data, facts, keystore, HOST))
    ca_file = Path(f"{prefix}{common.TLS_CA_CERT}")

    # The two stores, with the daemon's ACL user from ostiary.acl and the key store's password.
    password = keystore.redis_password(SESSIOND_USERNAME)
    rule = sessiond_acl_rule(hashlib.sha256(password.encode()).hexdigest())
    if "v=7.0" in subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout:
        rule = rule.replace(" +client|setinfo", "")  # unknown to Redis 7.0: it would reject the file
    admin_password = keystore.redis_password("native-admin")
    admin_hash = hashlib.sha256(admin_password.encode()).hexdigest()
    cert, key = keystore.certificate(keys.cert_name("redis", HOST), ["localhost", "127.0.0.1"], "server")
    redis_root = prefix / "redis"
    redis_root.mkdir()
    tls = {"cert": redis_root / "redis.crt", "key": redis_root / "redis.key", "ca": ca_file}
    tls["cert"].write_bytes(cert)
    tls["key"].write_bytes(key)
    tls["key"].chmod(0o600)
    acl = redis_root / "users.acl"
    acl.write_text(f"user default off resetkeys resetchannels -@all\n{rule}\nuser admin on #{admin_hash} ~* &* +@all\n")
    for instance, policy, fsync in (("sessions", "allkeys-lru", "everysec"), ("revocations", "noeviction", "always")):
        directory = redis_root / instance
        directory.mkdir()
        conf = _redis_conf(directory, redis_ports[instance], policy, fsync, tls, acl)
        proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs[f"redis-{instance}"] = proc
        admin_client = redis.Redis(
            host="127.0.0.1", port=redis_ports[instance], username="admin", password=admin_password,
            ssl=True, ssl_ca_certs=str(ca_file), ssl_certfile=f"{prefix}{common.SESSIOND_REDIS_CLIENT_CERT}",
            ssl_keyfile=f"{prefix}{common.SESSIOND_REDIS_CLIENT_KEY}",
            socket_timeout=2,
        )  # fmt: skip
        _wait_until(admin_client.ping, f"redis {instance}", proc, directory / "redis.log")
        admin_client.close()

    # The daemon, on the config the sessiond role renders.
    rendered = sessiond.render_files(data, facts)
    config = Path(f"{prefix}{sessiond.CONFIG_FILE}")
    write_files({str(config): rendered[str(config)]}, mode=0o640)
    Path(f"{prefix}{common.RUN_DIR}").mkdir(parents=True, exist_ok=True, mode=0o750)
    daemon_log = prefix / "sessiond.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSTIARY_")}
    with daemon_log.open("wb") as log:
        procs["sessiond"] = subprocess.Popen(
            [*ostiary_command(), "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    stack = Stack(
        prefix=prefix,
        ca_file=ca_file,
        https_port=https_port,
        admin_socket=Path(f"{prefix}{common.SESSIOND_ADMIN_SOCKET}"),
        access_log=Path(f"{prefix}/var/log/nginx/access.log"),
    )
    public = Path(f"{prefix}{common.SESSIOND_SOCKET}")

    def healthy() -> bool:
        transport = httpx.HTTPTransport(uds=str(public))
        with httpx.Client(transport=transport, base_url="http://sessiond", timeout=2) as client:
            return client.get("/healthz").status_code == 200 and stack.admin_socket.exists()

    _wait_until(healthy, "ostiary serve", procs["sessiond"], daemon_log)

    # nginx, on the config the gateway role renders.
    make_nginx_dirs(prefix)
    write_files(dict(gateway.render_files(data, facts)))
    nginx_conf = Path(f"{prefix}{gateway.NGINX_CONF}")
    error_log = Path(f"{prefix}/var/log/nginx/error.log")
    error_log.touch()
    procs["nginx"] = subprocess.Popen(
        ["nginx", "-c", str(nginx_conf), "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", https_port), timeout=1):
            return True

    _wait_until(listening, "nginx", procs["nginx"], error_log)
    stack.procs = procs
    return stack


# ----------------------------------------------------------------------------- TLS


def test_tls12_handshake_refused(gw: Stack) -> None:
    context = ssl.create_default_context(cafile=str(gw.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection(("127.0.0.1", gw.https_port), timeout=5)
    with raw, pytest.raises(ssl.SSLError), context.wrap_socket(raw, server_hostname="localhost"):
        pass
    # The same client offering TLS 1.3 gets through: the refusal is about the version.
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    raw = socket.create_connection(("127.0.0.1", gw.https_port), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.cipher()[0] in ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")


# sslyze's own bundled trust stores hold a certificate with a negative serial number.
@pytest.mark.filterwarnings("ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning")
def test_sslyze_mozilla_modern(gw: Stack) -> None:
    result, issues = scan_mozilla_modern("localhost", gw.https_port, gw.ca_file)
    assert not issues, f"not Mozilla modern: {issues}"
    tls13 = result.scan_result.tls_1_3_cipher_suites.result  # type: ignore[union-attr]
    accepted = {c.cipher_suite.name for c in tls13.accepted_cipher_suites}
    assert accepted == {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


def test_security_headers(gw: Stack) -> None:
    with gw.client() as client:
        response = client.get("/anything")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=63072000")
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Server"] == "nginx"  # server_tokens off: no version


# ----------------------------------------------------------------------------- auth_request


def test_no_token_401(gw: Stack) -> None:
    with gw.client() as client:
        response = client.get("/api/orders")
    assert response.status_code == 401
    assert response.headers["X-Session-Fault"] == "MISSING_TOKEN"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "placeholder upstream" not in response.text


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer  twospaces",
        "Basic dXNlcjpwYXNz",
        "Bearer abc",
        "Bearer a.b.c'; DROP TABLE",
        "bearer " + "a" * 40,
        "Bearer " + "a" * 5000,
    ],
)
def test_malformed_header_refused_by_nginx(gw: Stack, header: str) -> None:
    with gw.client() as client:
        response = client.get("/api/orders", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["X-Session-Fault"] == "MALFORMED"


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_well_formed_but_invalid_token_refused_by_daemon(gw: Stack) -> None:
    # JWT-shaped, so nginx passes it on; signed by no key the daemon knows.
    forged = ".".join([_b64(b'{"alg":"ES256","kid":"unknown-kid","typ":"at+jwt"}'),
                       _b64(b'{"sub":"mallory","iss":"x"}'), _b64(os.urandom(64))])  # fmt: skip
    with gw.client() as client:
        response = client.get("/api/orders", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    # The daemon's own fault code, not nginx's shape check.
    assert response.headers["X-Session-Fault"] not in ("MALFORMED", "MISSING_TOKEN", "")


def test_valid_token_reaches_upstream_with_subject(gw: Stack) -> None:
    issued = gw.issue(SUBJECT)
    gw.tokens["alice"] = issued["token"]
    gw.tokens["alice_sid"] = issued["session_id"]
    headers = {"Authorization": f"Bearer {issued['token']}", "X-Session-Subject": "mallory", "User-Agent": "t/1"}
    with gw.client() as client:
        response = client.get("/api/orders", headers=headers)
    assert response.status_code == 200, (response.status_code, response.headers, response.text)
    # The placeholder echoes what the gateway forwarded: the daemon's subject, not the client's.
    assert response.text.strip() == f"ostiary placeholder upstream; subject={SUBJECT}"
    assert response.headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"
    assert response.http_version in ("HTTP/1.1", "HTTP/2")


def test_jwks_published_through_the_gateway(gw: Stack) -> None:
    with gw.client() as client:
        response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    jwks = response.json()
    assert jwks["keys"] and all(k["kty"] == "EC" and "d" not in k for k in jwks["keys"])


def test_session_issuance_is_rate_limited(gw: Stack) -> None:
    # 5 r/s with a burst of 10 (the defaults): 30 back-to-back requests cannot all pass.
    with gw.client() as client:
        statuses = [client.post("/login", content=b"{}").status_code for _ in range(30)]
    assert statuses[0] == 200, statuses
    assert 429 in statuses, statuses
    assert set(statuses) <= {200, 429}, statuses


def test_oversized_body_refused(gw: Stack) -> None:
    with gw.client() as client:
        response = client.post("/login", content=b"x" * (2 * 1024 * 1024))
    assert response.status_code in (413, 429), response.status_code
    with gw.client() as client:
        time.sleep(1.2)  # let the issuance limiter refill
        response = client.post("/login", content=b"x" * (2 * 1024 * 1024))
    assert response.status_code == 413


def test_access_log_is_json_without_token(gw: Stack) -> None:
    lines = [json.loads(line) for line in gw.access_log.read_text().splitlines() if line]
    assert lines and {"status", "path", "fault"} <= set(lines[-1])
    assert any(line["status"] == 200 for line in lines)
    text = gw.access_log.read_text()
    assert gw.tokens["alice"] not in text
    assert gw.tokens["alice"].split(".")[-1] not in text


def test_revoked_token_403(gw: Stack) -> None:
    revoked = gw.admin("DELETE", f"/v1/sessions/{gw.tokens['alice_sid']}")
    assert revoked.status_code == 204, revoked.text
    with gw.client() as client:
        response = client.get("/api/orders", headers={"Authorization": f"Bearer {gw.tokens['alice']}"})
    assert response.status_code == 403
    assert response.headers["X-Session-Fault"] == "REVOKED"
    assert "placeholder upstream" not in response.text


def test_revocation_store_stopped_503(gw: Stack) -> None:
    fresh = gw.issue("bob@example.test")["token"]
    with gw.client() as client:
        assert client.get("/api/x", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
        _stop(gw.procs["redis-revocations"])
        statuses = []
        for _ in range(20):
            response = client.get("/api/x", headers={"Authorization": f"Bearer {fresh}"})
            statuses.append((response.status_code, response.headers.get("X-Session-Fault")))
            assert "placeholder upstream" not in response.text
    assert {s for s, _ in statuses} == {503}, statuses
    # The daemon's reason reaches the client.
    assert {f for _, f in statuses} <= {"REDIS_CONN_REFUSED", "SESSION_STORE_LATENCY"}, statuses


def test_daemon_unreachable_503(gw: Stack) -> None:
    _stop(gw.procs["sessiond"])
    with contextlib.suppress(FileNotFoundError):
        Path(f"{gw.prefix}{common.SESSIOND_SOCKET}").unlink()
    with gw.client() as client:
        response = client.get("/api/x", headers={"Authorization": "Bearer " + "a" * 64})
    assert response.status_code == 503
    assert response.headers["X-Session-Fault"] == "SESSIOND_UNAVAILABLE"
    assert "placeholder upstream" not in response.text
