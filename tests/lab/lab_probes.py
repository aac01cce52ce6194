"""Helpers of the lab's flow and external-verifier tests: the gateway client and the admin CLI.

Requests reach the gateway VM through its forwarded HTTPS port on 127.0.0.1 (qemu's user-mode
NIC forwards it to gw1:443), verified against the lab's internal CA read from gw1 itself; the
session admin API is the daemon's CLI on sess1, over its unix socket.
"""

from __future__ import annotations

import json
import shlex
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ostiary.lab.vm import Lab

GATEWAY = "gw1"
SESSION_NODE = "sess1"
REDIS_NODE = "kv1"
SNI_NAME = "gw1"  # one of the gateway certificate's names in the lab inventory
OSTIARY = "/opt/ostiary/venv/bin/ostiary"
DAEMON_CONFIG = "/etc/ostiary/sessiond.toml"
CA_CERT = "/etc/ostiary/tls/ca.crt"


@dataclass(frozen=True)
class Answer:
    status: int
    fault: str
    body: str
    at: float  # monotonic time the answer arrived


class Gateway:
    """An HTTPS client of the lab's gateway, trusting only the lab's CA."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        state = lab.require_state()
        port = state.host(GATEWAY).https_port
        if port is None:
            raise RuntimeError(f"{GATEWAY} has no forwarded HTTPS port in the lab state")
        ca = workdir / "lab-ca.crt"
        ca.write_text(lab.ssh(GATEWAY, f"cat {CA_CERT}", check=True).stdout)
        self.port = port
        self.ca_file = ca
        context = ssl.create_default_context(cafile=str(ca))
        self.client = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context, timeout=15.0)

    def get(self, token: str | None, path: str = "/flow") -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.client.get(path, headers=headers, extensions={"sni_hostname": SNI_NAME})
        return Answer(
            response.status_code, response.headers.get("x-session-fault", ""), response.text, time.monotonic()
        )

    def close(self) -> None:
        self.client.close()


def admin(lab: Lab, *args: str) -> Any:
    """``ostiary sessions ...`` on the session node; its JSON answer (None for 204)."""
    command = f"{OSTIARY} sessions {' '.join(shlex.quote(a) for a in args)}"
    proc = lab.ssh(SESSION_NODE, command, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{command} on {SESSION_NODE} exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def issue(lab: Lab, subject: str, ttl: int | None = None) -> dict[str, Any]:
    args = ["issue", subject] + (["--ttl", str(ttl)] if ttl else [])
    answer = admin(lab, *args)
    assert isinstance(answer, dict) and answer.get("token") and answer.get("session_id"), answer
    return answer


def doctor(lab: Lab) -> tuple[int, str]:
    proc = lab.ssh(SESSION_NODE, f"{OSTIARY} doctor --config {DAEMON_CONFIG} 2>&1", timeout=180)
    return proc.returncode, proc.stdout


def daemon_setting(lab: Lab, section: str, key: str, default: Any) -> Any:
    """A value of the deployed daemon's config on the session node."""
    import tomllib

    config = tomllib.loads(lab.ssh(SESSION_NODE, f"cat {DAEMON_CONFIG}", check=True).stdout)
    return config.get(section, {}).get(key, default)


def daemon_warm_up(lab: Lab) -> str:
    """The daemon's last start-up report of its store connections (``stores_warm*`` log lines)."""
    command = "journalctl -u ostiary-sessiond -o cat --no-pager | grep -F '\"stores_warm' | tail -n 2"
    proc = lab.ssh(SESSION_NODE, command, timeout=60)
    return proc.stdout.strip() or "(no stores_warm line in the daemon's journal)"
