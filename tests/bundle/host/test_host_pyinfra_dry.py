"""pyinfra itself plans the host roles against ``@local`` without executing anything.

Rendering tests call ``render_files`` directly; this runs the ``@deploy`` functions under pyinfra 3:
host data with the roles' ``data_defaults``, the facts they read on a live host (memory, OpenSSL,
entropy, chrony, redis-server), the key store for the Redis ACL passwords, and every operation's
arguments bound (a wrong argument name or data key fails here). ``--dry`` changes nothing.
(The firewall role is also run for real, inside a namespace, in test_host_firewall.py.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from host_support import REPO, run

pytestmark = pytest.mark.bundle

DEPLOY = """
from deploys.base import base
from deploys.chrony import chrony
from deploys.firewall import firewall
from deploys.redis import redis

base()
chrony()
firewall()
redis()
"""


def test_host_roles_plan_under_pyinfra(prefix: Path) -> None:
    data = {
        "private_address": "127.0.0.1",
        "ostiary_root_prefix": str(prefix / "root"),
        "ostiary_keystore_dir": str(prefix / "keystore"),
    }
    groups = ("gateways", "session_nodes", "redis_nodes")
    inventory = prefix / "inventory.py"
    inventory.write_text(f"_data = {data!r}\n" + "".join(f'{g} = [("@local", _data)]\n' for g in groups))
    deploy = prefix / "deploy.py"
    deploy.write_text(DEPLOY)
    env = {**os.environ, "OSTIARY_KEYSTORE_PASSPHRASE": "dry-run-passphrase"}
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    result = run([pyinfra, "-y", "--dry", str(inventory), str(deploy)], timeout=180, cwd=REPO, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "[@local] Ready" in output and "Traceback" not in output, output[-4000:]
    # The chrony role reported the host's sync state, whichever it is on this machine.
    assert "time is not synchronised" in output or "clock synchronised" in output, output[-4000:]
    # The redis role asked the key store for its ACL users' passwords (stored encrypted).
    assert (prefix / "keystore" / "secrets" / "passwords.enc").exists()
    assert not (prefix / "root").exists(), "--dry wrote to the target"
