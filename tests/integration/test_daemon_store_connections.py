"""Store connections are set up at start-up, never on the request path.

On a slow host (an emulated VM, a loaded node) opening a connection (TCP, TLS, HELLO/AUTH) takes
longer than ``store.timeout``; a request that had to open one would fail closed with 503. So the
daemon opens ``store.warm_connections`` per store before it reports ready, and the revocation
subscription, which holds its connection for good, has a connection of its own. The stores' own
``CLIENT LIST`` shows both: each daemon's connections carry its pid in their name.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest

from ostiary.config import load_settings
from ostiary.localstack import Daemon, LocalStack, RedisServer
from ostiary.sessiond import server

WARM = 3


def _connections(server: RedisServer, daemon: Daemon) -> Counter[str]:
    """The daemon's connections on ``server``, by name ('' request pool, '-sub' subscription)."""
    prefix = f"ostiary-sessiond-{daemon.pid}"
    client = server.admin_client()
    try:
        names = [str(c.get("name", "")) for c in client.client_list()]
    finally:
        client.close()
    kinds = {prefix: "pool", f"{prefix}-sub": "-sub"}  # exact names: pid 12 must not count pid 123's
    return Counter(kinds[name] for name in names if name in kinds)


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


def test_a_warm_up_that_runs_out_of_time_is_logged_and_start_up_goes_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that stops answering after the start-up check: the warm-up gives up, says so, and
    the worker still starts (a request would open its own connection)."""
    monkeypatch.setattr(server, "STARTUP_STORE_TIMEOUT", 1.0)
    with LocalStack() as own:  # its store is frozen below, which must not disturb other modules
        config = own.prepare_daemon(store={"warm_connections": 3}).config_path
        worker = server.Daemon(config, load_settings(config))
        sessions, _ = own.stores()

        async def start_up() -> float:
            try:
                await worker.check_stores()  # the eviction check passes: the store answers
                await worker.warm_stores()  # as at start-up
                sessions.pause()
                started = time.monotonic()
                await worker.warm_stores()  # again, with the store frozen: must return, not raise
                return time.monotonic() - started
            finally:
                sessions.resume()
                await worker.stores.close()

        elapsed = asyncio.run(start_up())
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    warm = [e for e in events if e["event"].startswith("stores_warm")]
    assert [e["event"] for e in warm] == ["stores_warm", "stores_warm_incomplete"], events
    assert warm[0]["connections"] == 3
    assert warm[1]["fault"] == "SESSION_STORE_LATENCY" and warm[1]["wanted"] == 3 and warm[1]["remedy"]
    assert elapsed < 3.0, f"the warm-up took {elapsed:.1f} s against its 1 s bound"
