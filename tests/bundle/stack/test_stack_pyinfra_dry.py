"""pyinfra itself plans the stack roles against a real target (``@local``) without executing them.

This adds what rendering alone cannot see: the deploy functions run under pyinfra 3, read host
data and facts from a live host, call the key store and bind every operation's arguments
(a wrong argument name fails here). ``--dry`` executes nothing on the host.

The sessiond role builds its wheelhouse with ``pip wheel``, which needs a package index; the test
marks the wheelhouse of the current source as already built (an empty directory with the role's
completion stamp), so the role plans its copy and install steps without touching the network.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from stack_support import REPO, run

from deploys import sessiond
from ostiary import __version__

INVENTORY = '''
_host = ("@local", {{
    "private_address": "127.0.0.1",
    "ostiary_root_prefix": "{prefix}/root",
    "ostiary_keystore_dir": "{prefix}/keystore",
    "gateway_server_names": ["localhost"],
    "sessiond_wheelhouse": "{prefix}/wheelhouse",
}})
gateways = [_host]
session_nodes = [_host]
redis_nodes = [_host]
'''

DEPLOY = """
from deploys.apparmor import apparmor
from deploys.gateway import gateway
from deploys.keys import keys
from deploys.sessiond import sessiond

keys()
apparmor()
sessiond()
gateway()
"""


def test_stack_roles_plan_under_pyinfra(prefix: Path) -> None:
    (prefix / "inventory.py").write_text(INVENTORY.format(prefix=prefix))
    (prefix / "deploy.py").write_text(DEPLOY)
    built = prefix / "wheelhouse" / f"{__version__}-{sessiond._source_digest()}"
    built.mkdir(parents=True)
    (built / ".complete").write_text(__version__)
    env = {**os.environ, "OSTIARY_KEYSTORE_PASSPHRASE": "dry-run-passphrase"}
    pyinfra = str(Path(sys.executable).parent / "pyinfra")
    result = run(
        [pyinfra, "-y", "--dry", str(prefix / "inventory.py"), str(prefix / "deploy.py")],
        timeout=180,
        cwd=REPO,
        env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "[@local] Ready" in output, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    # The key store was used: CA, gateway certificate and the daemon's JWT key exist (encrypted).
    store = prefix / "keystore"
    assert (store / "ca" / "ca.crt").exists()
    assert list((store / "certs").glob("gateway-*.key"))
    assert b"ENCRYPTED" in next((store / "jwt").glob("*.key")).read_bytes()
    # --dry: nothing was written under the target prefix.
    assert not (prefix / "root").exists()
