"""Units through systemd-analyze, rendering idempotence, and the settings' documentation.

``systemd-analyze verify`` needs no running systemd when the unit search path is given with
SYSTEMD_UNIT_PATH (a trailing ":" keeps the system directories for the targets units refer to);
``systemd-analyze security --offline=true --root=PREFIX`` reads the unit and its drop-ins from
the temp root. Both work in a container without systemd as PID 1.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from host_support import PROFILES, REPO, group_addresses, host_data, run, write_files

from deploys import base, chrony, common, firewall
from deploys import redis as redis_role

pytestmark = pytest.mark.bundle

REDIS_FACTS = {"memory_mb": 8192, "redis_version": (7, 0)}
HASHES = {"sessiond": "a" * 64, "ostiary-admin": "b" * 64}
MAX_REDIS_EXPOSURE = 2.0
ROLES: tuple[ModuleType, ...] = (base, chrony, redis_role, firewall)


def _redis_units(prefix: Path, profile: str = "single") -> Any:
    host = next(h for h in PROFILES[profile] if common.GROUP_REDIS_NODES in PROFILES[profile][h]["groups"])
    data = host_data(redis_role, profile, host, prefix)
    write_files(redis_role.render_files(data, REDIS_FACTS, HASHES))
    return data


@pytest.mark.parametrize("instance", common.REDIS_INSTANCES)
def test_systemd_analyze_verify_redis_units(prefix: Path, instance: str) -> None:
    data = _redis_units(prefix)
    unit_dir = common.host_path(data, redis_role.SYSTEMD_DIR)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"}
    verified = run(["systemd-analyze", "verify", f"ostiary-redis@{instance}.service"], env=env)
    # verify exits 0 on unknown keys and bad values, it only warns: any output is a finding.
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    # The check can fail: a typo in a directive is reported.
    dropin = Path(unit_dir) / f"ostiary-redis@{instance}.service.d" / "zz-typo.conf"
    dropin.write_text("[Service]\nProtectSystm=strict\n")
    broken = run(["systemd-analyze", "verify", f"ostiary-redis@{instance}.service"], env=env)
    assert "Unknown key" in broken.stderr


def _exposure(prefix: Path, unit: str) -> float:
    result = run(["systemd-analyze", "security", "--offline=true", f"--root={prefix}", "--no-pager", unit])
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


def test_systemd_security_exposure_of_redis_units(prefix: Path) -> None:
    _redis_units(prefix)
    for instance in common.REDIS_INSTANCES:
        unit = f"ostiary-redis@{instance}.service"
        score = _exposure(prefix, unit)
        print(f"systemd-analyze security: {unit} exposure {score}")
        assert score <= MAX_REDIS_EXPOSURE, f"{unit}: exposure {score}"


def test_apparmor_profile_reference_follows_the_data(prefix: Path) -> None:
    data = _redis_units(prefix)
    hardening = Path(common.host_path(data, f"{redis_role.SYSTEMD_DIR}/{redis_role.UNIT_TEMPLATE}.d/hardening.conf"))
    assert "AppArmorProfile=ostiary-redis" in hardening.read_text().splitlines()
    without = host_data(redis_role, "single", "node1", prefix, redis_apparmor_profile="")
    files = redis_role.render_files(without, REDIS_FACTS, HASHES)
    assert not any("AppArmorProfile" in text for text in files.values())


def test_redis_units_never_dump_core(prefix: Path) -> None:
    data = _redis_units(prefix)
    for instance in common.REDIS_INSTANCES:
        dropin = f"{redis_role.SYSTEMD_DIR}/ostiary-redis@{instance}.service.d/limits.conf"
        limits = Path(common.host_path(data, dropin))
        assert "LimitCORE=0" in limits.read_text().splitlines()


def test_sizing_follows_host_memory(prefix: Path) -> None:
    data = host_data(redis_role, "single", "node1", prefix)
    for memory_mb, expected in ((4096, 1024), (8192, 2048), (32768, 8192)):
        ctx = redis_role.context(data, {**REDIS_FACTS, "memory_mb": memory_mb}, HASHES)
        sessions = next(i for i in ctx["instances"] if i["name"] == "sessions")
        assert sessions["maxmemory"] == expected * 1024 * 1024
    assert ctx["limit_nofile"] == data.redis_maxclients + redis_role.REDIS_FD_RESERVE
    with pytest.raises(ValueError, match="RAM"):  # the revocation store alone would not fit
        redis_role.context(data, {**REDIS_FACTS, "memory_mb": 300}, HASHES)


# ------------------------------------------------------------------------------ idempotence


def _render_all(prefix: Path, profile: str, host: str) -> dict[str, str]:
    groups = PROFILES[profile][host]["groups"]
    out: dict[str, str] = {}
    out |= base.render_files(host_data(base, profile, host, prefix), {})
    out |= chrony.render_files(host_data(chrony, profile, host, prefix), {})
    facts = {"control_address": "198.51.100.7", "over_ssh": True}
    out |= firewall.render_files(host_data(firewall, profile, host, prefix), facts, group_addresses(profile), groups)
    if common.GROUP_REDIS_NODES in groups:
        out |= redis_role.render_files(host_data(redis_role, profile, host, prefix), REDIS_FACTS, HASHES)
    return out


@pytest.mark.parametrize(("profile", "host"), [(p, h) for p in PROFILES for h in PROFILES[p]])
def test_rendering_twice_is_byte_identical(prefix: Path, profile: str, host: str) -> None:
    first, second = _render_all(prefix, profile, host), _render_all(prefix, profile, host)
    assert first == second
    assert all(path.startswith(str(prefix)) for path in first), "every managed path honours the prefix"
    assert all(text.endswith("\n") for text in first.values())


# ------------------------------------------------------------------------------ settings


def test_every_setting_is_documented() -> None:
    for role in ROLES:
        assert set(role.SETTINGS_DOC) == set(role.DEFAULTS), role.__name__
        assert all(len(doc) > 20 for doc in role.SETTINGS_DOC.values()), role.__name__


def _group_data(name: str) -> dict[str, Any]:
    """Top-level assignments of a group_data file, evaluated as literals."""
    tree = ast.parse((REPO / "inventories" / "group_data" / f"{name}.py").read_text())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                assert isinstance(target, ast.Name)
                values[target.id] = ast.literal_eval(node.value)
    return values


def test_group_data_lists_every_setting_with_its_default() -> None:
    """The annotated files a user edits name exactly the roles' settings (a typo would be ignored)."""
    shared = {"redis_tls_ports"}
    expected = {
        "all": {**base.DEFAULTS, **chrony.DEFAULTS, **firewall.DEFAULTS} | {k: redis_role.DEFAULTS[k] for k in shared},
        "redis_nodes": {k: v for k, v in redis_role.DEFAULTS.items() if k not in shared},
    }
    for name, defaults in expected.items():
        assert _group_data(name) == defaults, name
