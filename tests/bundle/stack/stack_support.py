"""Helpers for the stack-role proofs: inventory profiles, role data, rendering into a temp root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deploys import apparmor, common, gateway, keys, sessiond  # noqa: E402

ALL_GROUPS = [common.GROUP_GATEWAYS, common.GROUP_SESSION_NODES, common.GROUP_REDIS_NODES]

# Two inventory shapes: one host in every group, and one host per group.
PROFILES: dict[str, list[tuple[str, list[str], str]]] = {
    "single": [("ostiary1", ALL_GROUPS, "10.20.0.10")],
    "split": [
        ("gw1", [common.GROUP_GATEWAYS], "10.20.0.11"),
        ("sess1", [common.GROUP_SESSION_NODES], "10.20.0.21"),
        ("redis1", [common.GROUP_REDIS_NODES], "10.20.0.31"),
    ],
}


def peers(profile: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {g: [] for g in ALL_GROUPS}
    for _, groups, address in PROFILES[profile]:
        for group in groups:
            out[group].append(address)
    return out


def facts(profile: str, host_groups: list[str], cpus: int = 4) -> dict[str, Any]:
    return {"cpus": cpus, "memory_mb": 8192, "groups": list(host_groups), "peers": peers(profile)}


def stack_data(prefix: Path | None = None, **overrides: Any) -> SimpleNamespace:
    """Host data as pyinfra would merge it: every H2 role's DEFAULTS, then the overrides."""
    merged: dict[str, Any] = {}
    for module in (keys, apparmor, sessiond, gateway):
        merged.update(module.DEFAULTS)
    if prefix is not None:
        merged["ostiary_root_prefix"] = str(prefix)
    merged.update(overrides)
    return SimpleNamespace(**merged)


def write_files(rendered: dict[str, str | bytes], mode: int = 0o644) -> None:
    for path, content in rendered.items():
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        os.chmod(target, mode)


def write_key_files(items: list[keys.KeyFile]) -> None:
    """Key material as the keys role would place it (modes included; owners stay root in tests)."""
    for item in items:
        target = Path(item.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.content)
        os.chmod(target, int(item.mode, 8))


def run(cmd: list[str], timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def exposure(output: str) -> float:
    """The overall exposure score from ``systemd-analyze security`` output."""
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output[-2000:]
    return float(match.group(1))


def make_nginx_dirs(prefix: Path) -> None:
    for sub in ("var/log/nginx", "var/lib/nginx", "run", "etc/nginx"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
