"""Fixtures for the stack-role proofs (keys, gateway, apparmor, sessiond): temp roots, a key store.

Everything is generated at run time and removed by finalizers, also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The helpers beside this file, and the repository root for the ``deploys`` package.
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(Path(__file__).resolve().parents[3]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from ostiary.keystore import ControlKeyStore

PASSPHRASE = b"stack-test-passphrase"


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    # nginx -t on root-owned paths, systemd-analyze and the native gateway need root (as in CI).
    if os.geteuid() != 0:
        pytest.fail("the stack-role proofs run as root (as in CI)")


@pytest.fixture
def prefix() -> Iterator[Path]:
    """A short temp root for rendered files (unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ost-h2-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def keystore() -> Iterator[ControlKeyStore]:
    """One control-node key store for the session (CA creation and JWT key generation once)."""
    root = Path(tempfile.mkdtemp(prefix="ost-h2-ks-", dir="/tmp"))
    try:
        yield ControlKeyStore(root / "keystore", PASSPHRASE)
    finally:
        shutil.rmtree(root, ignore_errors=True)
