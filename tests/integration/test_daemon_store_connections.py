"""Store connections are set up at start-up, never on the request path.

On a slow host (an emulated VM, a loaded node) opening a connection (TCP, TLS, HELLO/AUTH) takes
longer than ``store.timeout``; a request that had to open one would fail closed with 503. So the
daemon opens ``store.warm_connections`` per store before it reports ready, and the revocation
subscription, which holds its connection for good, has a connection of its own. The stores' own
``CLIENT LIST`` shows both: each daemon's connections carry its pid in their name.
"""

from __future__ import annotations

import time
from collections import Counter

from ostiary.localstack import Daemon, LocalStack, RedisServer

WARM = 3


def _connections(server: RedisServer, daemon: Daemon) -> Counter[str]:
    """The daemon's connections on ``server``, by name ('' request pool, '-sub' subscription)."""
    prefix = f"ostiary-sessiond-{daemon.pid}"
    client = server.admin_client()
    try:
        names = [str(c.get("name", "")) for c in client.client_list()]
    finally:
        client.close()
    return Counter(name.removeprefix(prefix) or "pool" for name in names if name.startswith(prefix))


def _subscribed(daemon: Daemon, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checks = daemon.get("/readyz").json()
        if checks.get("revocation_subscription", {}).get("ok"):
            return
        time.sleep(0.05)
    raise AssertionError("the revocation subscription did not come up")


def test_start_up_opens_the_warm_connections_and_requests_open_none(stack: LocalStack, subject: str) -> None:
    daemon = stack.daemon(store={"warm_connections": WARM})
    try:
        _subscribed(daemon)
        sessions, revocations = stack.stores()
        before = (_connections(sessions, daemon), _connections(revocations, daemon))
        assert before[0] == Counter({"pool": WARM}), before
        # The subscription's connection comes on top of the request pool's, not out of it.
        assert before[1] == Counter({"pool": WARM, "-sub": 1}), before

        for round_ in range(10):  # one request at a time: every call finds a connection ready
            for mode in ("jwt", "opaque"):
                token = daemon.issue(f"{subject}-{round_}", mode=mode)["token"]
                assert daemon.validate(token).status_code == 200
        after = (_connections(sessions, daemon), _connections(revocations, daemon))
        assert after == before, f"requests opened connections: {before} -> {after}"
    finally:
        daemon.stop()


def test_no_warm_connections_means_lazy_pools(stack: LocalStack) -> None:
    """warm_connections = 0: only the start-up check's one connection per store is open."""
    daemon = stack.daemon(store={"warm_connections": 0})
    try:
        _subscribed(daemon)
        sessions, revocations = stack.stores()
        assert _connections(sessions, daemon) == Counter({"pool": 1})
        assert _connections(revocations, daemon) == Counter({"pool": 1, "-sub": 1})
    finally:
        daemon.stop()
