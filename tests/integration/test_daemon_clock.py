"""Clock skew limits (hard maximum 300 s) and the start-up refusals that protect the guarantees."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ostiary_craft import active_key, forge, shifted_claims

from ostiary.localstack import (
    Daemon,
    DaemonStartError,
    LocalStack,
    RedisServer,
    find_free_port,
    write_config,
)


@pytest.fixture(scope="module")
def max_skew_daemon(stack: LocalStack) -> Iterator[Daemon]:
    d = stack.daemon(tokens={"clock_skew": 300}, cache={"ttl": 0})
    yield d
    d.stop()


# Claims are whole seconds taken from int(time.time()) when the token is forged, the daemon's clock
# is not: nbf = now + 301 stops being "beyond the 300 s skew" once the validation happens in the
# next second. 302 leaves a whole second between forging and validating.
@pytest.mark.parametrize(
    ("offset", "status", "fault"),
    [
        (302, 401, "NOT_YET_VALID"),
        (-301, 401, "JWT_EXPIRED"),
        (299, 200, None),
        (-299, 200, None),
    ],
)
def test_clock_skew_boundaries(
    max_skew_daemon: Daemon, stack: LocalStack, subject: str, offset: int, status: int, fault: str | None
) -> None:
    token = max_skew_daemon.issue(subject)["token"]
    forged = forge(active_key(stack.keys_dir), shifted_claims(token, offset=offset))
    response = max_skew_daemon.validate(forged)
    assert (response.status_code, response.headers.get("X-Session-Fault")) == (status, fault)


def test_far_clock_offsets_refused(max_skew_daemon: Daemon, stack: LocalStack, subject: str) -> None:
    token = max_skew_daemon.issue(subject)["token"]
    for offset in (3600, -3600, 10**9):
        forged = forge(active_key(stack.keys_dir), shifted_claims(token, offset=offset))
        assert max_skew_daemon.validate(forged).status_code == 401


@pytest.mark.parametrize(
    "overrides",
    [
        {"tokens": {"clock_skew": 301}},
        {"tokens": {"clock_skew": 86400}},
        {"cache": {"ttl": 5.5}},
    ],
    ids=["skew-301", "skew-1d", "cache-ttl-5.5"],
)
def test_refuses_to_start_with_unsafe_limits(stack: LocalStack, overrides: dict[str, dict[str, object]]) -> None:
    daemon = stack.prepare_daemon(**overrides)
    with pytest.raises(DaemonStartError) as refused:
        daemon.start(timeout=10)
    assert refused.value.returncode not in (None, 0)
    assert "Traceback" not in refused.value.log


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl"])
def test_refuses_to_start_with_evicting_revocation_store(stack: LocalStack, policy: str) -> None:
    sessions, _ = stack.stores()
    bad = RedisServer(
        f"revocations-{policy}", stack.workdir / f"redis-bad-{policy}", maxmemory_policy=policy, appendfsync="always"
    )
    bad.start()
    try:
        home = stack.workdir / f"bad-{policy}"
        home.mkdir()
        listen = f"127.0.0.1:{find_free_port()}"
        config = write_config(
            home / "ostiary.toml",
            sessions=sessions,
            revocations=bad,
            keys_dir=stack.keys_dir,
            listen=listen,
            admin_listen=f"unix:{home / 'admin.sock'}",
        )
        daemon = Daemon(config, listen=listen, admin_listen=f"unix:{home / 'admin.sock'}")
        with pytest.raises(DaemonStartError) as refused:
            daemon.start(timeout=10)
        assert refused.value.returncode not in (None, 0)
        assert "noeviction" in refused.value.log
    finally:
        bad.stop()
