"""Shared fixtures: one real local stack (hardened Redis pair + daemons) for the whole session.

Tests that break a store (stop, SIGSTOP, kill -9, fill it up) build their own LocalStack so the
shared one stays healthy; tests on the shared stack use a fresh subject each, so they never see
each other's sessions or revocations.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ostiary.localstack import Daemon, LocalStack

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    with LocalStack() as local:
        yield local


@pytest.fixture(scope="session")
def daemon(stack: LocalStack) -> Daemon:
    """The default daemon: JWT mode, ES256, a 2 s validation cache."""
    return stack.daemon()


@pytest.fixture(scope="session")
def opaque_daemon(stack: LocalStack) -> Daemon:
    """A daemon issuing opaque sessions, sharing the stores and keys with ``daemon``."""
    return stack.daemon(tokens={"mode": "opaque"})


@pytest.fixture
def subject() -> str:
    """A subject no other test uses: per-test isolation without flushing the stores."""
    return f"user-{uuid.uuid4().hex[:16]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """On a failure, attach the tail of every involved daemon's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    daemons: list[Daemon] = []
    for value in funcargs.values():
        if isinstance(value, Daemon):
            daemons.append(value)
        elif isinstance(value, LocalStack):
            daemons.extend(value.daemons)
    for index, daemon in enumerate(daemons):
        report.sections.append((f"daemon {index} log ({daemon.log_path.name})", daemon.log()[-4000:]))
