"""Chrony role: time from stratum-1 sources (NTS where offered), stepped only at boot, checked after.

The daemon refuses tokens whose clocks disagree by more than 300 s; chrony gets the same bound
(``maxchange``), and a host chrony does not call synchronised is reported by the deploy.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Final

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, systemd

from deploys import common
from deploys.render import render

CONF_FILE: Final = "/etc/chrony/chrony.conf"
MAX_DRIFT_SECONDS: Final = 300  # the daemon's clock tolerance (tokens.clock_skew is refused above it)

DEFAULTS: dict[str, Any] = {
    "chrony_servers": [
        {"host": "ptbtime1.ptb.de", "nts": True},
        {"host": "ptbtime2.ptb.de", "nts": True},
        {"host": "nts.netnod.se", "nts": True},
        {"host": "ntppool1.time.nl", "nts": True},
    ],
    "chrony_minsources": 2,
    "chrony_maxdistance": 1.0,
    "chrony_makestep_threshold": 1.0,
    "chrony_makestep_limit": 3,
    "chrony_maxchange_ignore": 2,
    "chrony_leapsectz": "right/UTC",
    "chrony_require_sync": False,
    "chrony_max_offset": 1.0,
}

SETTINGS_DOC: dict[str, str] = {
    "chrony_servers": "Time sources: a list of {host, nts}; nts=true uses Network Time Security "
    "(authenticated NTP over TCP 4460 + UDP 123). Defaults are public stratum-1 NTS servers.",
    "chrony_minsources": "Sources that must agree before chrony adjusts the clock.",
    "chrony_maxdistance": "Maximum root distance in seconds for a source to be used.",
    "chrony_makestep_threshold": "Offset in seconds above which the clock is stepped, not slewed.",
    "chrony_makestep_limit": "Stepping is allowed only in the first this-many updates (boot).",
    "chrony_maxchange_ignore": "After the first update, offsets above 300 s (the daemon's tolerance) "
    "are ignored this many times, then chronyd exits and the host shows as unsynchronised.",
    "chrony_leapsectz": "Time zone database entry chrony reads leap seconds from.",
    "chrony_require_sync": "Fail the deploy (instead of warning) when chrony reports the host unsynchronised.",
    "chrony_max_offset": "Offset in seconds above which the sync check calls the host unsynchronised "
    "(the daemon's clock.max_offset).",
}


def context(data: Any, facts: Mapping[str, Any]) -> dict[str, Any]:
    del facts
    servers = []
    for entry in data.chrony_servers:
        if isinstance(entry, str):
            entry = {"host": entry, "nts": False}
        servers.append({"host": str(entry["host"]), "nts": bool(entry.get("nts", False))})
    if len(servers) < int(data.chrony_minsources):
        raise ValueError(f"chrony_minsources={data.chrony_minsources} but only {len(servers)} servers")
    return {
        "servers": servers,
        "minsources": int(data.chrony_minsources),
        "maxdistance": float(data.chrony_maxdistance),
        "makestep_threshold": float(data.chrony_makestep_threshold),
        "makestep_limit": int(data.chrony_makestep_limit),
        "max_drift": MAX_DRIFT_SECONDS,
        "maxchange_ignore": int(data.chrony_maxchange_ignore),
        "leapsectz": str(data.chrony_leapsectz),
        "state_dir": common.host_path(data, "/var/lib/chrony"),
        "log_dir": common.host_path(data, "/var/log/chrony"),
    }


def render_files(data: Any, facts: Mapping[str, Any]) -> dict[str, str]:
    return {common.host_path(data, CONF_FILE): render("chrony/chrony.conf.j2", **context(data, facts))}


def sync_problem(tracking: str, max_offset: float) -> str | None:
    """``chronyc -n tracking`` output -> why the host is not synchronised, or None if it is."""
    fields: dict[str, str] = {}
    for line in tracking.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if not fields:
        return f"chronyc gave no tracking data ({tracking.strip() or 'no output'})"
    leap = fields.get("Leap status", "")
    if leap != "Normal" and not leap.startswith("Insert") and not leap.startswith("Delete"):
        return f"chrony leap status is {leap or 'unknown'!r}"
    offset = fields.get("System time", "").split()
    if offset and abs(float(offset[0])) > max_offset:
        return f"system clock is {offset[0]} s off (more than {max_offset} s)"
    return None


@deploy("Ostiary chrony", data_defaults=DEFAULTS)
def chrony() -> None:
    """chrony installed and configured; restarts only on a config change; sync state reported."""
    data = host.data
    path = common.host_path(data, CONF_FILE)
    rendered = render_files(data, {})

    # Reported from what the host says now (before this run's changes): not silently accepted.
    tracking = host.get_fact(Command, "chronyc -n tracking 2>&1 || true") or ""
    problem = sync_problem(tracking, float(data.chrony_max_offset))
    if problem:
        message = f"{host.name}: time is not synchronised: {problem}"
        if data.chrony_require_sync:
            raise DeployError(message)
        logger.warning(message)  # pyinfra's logger: shown in the deploy's output
    else:
        logger.info(f"{host.name}: chrony reports the clock synchronised")

    apt.packages(name="Install chrony", packages=["chrony"])
    conf_op = files.put(
        name="chrony: sources and limits",
        src=io.StringIO(rendered[path]),
        dest=path,
        user="root",
        group="root",
        mode="0644",
    )
    systemd.service(
        name="Restart chrony: its config changed",
        service="chrony.service",
        restarted=True,
        _if=conf_op.did_change,
    )
    systemd.service(name="chrony enabled and running", service="chrony.service", running=True, enabled=True)
