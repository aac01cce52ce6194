"""Is this host's clock synchronised? Asked of chrony (``chronyc tracking``) or systemd (timedatectl)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from .config import ClockSettings


@dataclass(frozen=True)
class ClockStatus:
    synchronised: bool
    detail: str
    offset: float | None = None


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, done.stdout + done.stderr


def parse_tracking(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def clock_status(settings: ClockSettings) -> ClockStatus:
    if settings.check == "none":
        return ClockStatus(True, "clock check disabled (clock.check = none)")
    if settings.check == "timedatectl":
        rc, out = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
        ok = rc == 0 and out.strip() == "yes"
        return ClockStatus(ok, f"timedatectl NTPSynchronized={out.strip() or 'unknown'}")
    argv = ["chronyc", "-n"]
    if settings.chronyc_socket:
        argv += ["-h", settings.chronyc_socket]
    rc, out = _run([*argv, "tracking"])
    if rc != 0:
        return ClockStatus(False, f"chronyc tracking failed: {out.strip()[:200]}")
    fields = parse_tracking(out)
    leap = fields.get("Leap status", "")
    offset_text = fields.get("System time", "")  # "0.000012 seconds fast of NTP time"
    offset: float | None = None
    try:
        value = float(offset_text.split()[0])
        offset = -value if "slow" in offset_text else value
    except (ValueError, IndexError):
        pass
    if leap != "Normal":
        return ClockStatus(False, f"chrony leap status is {leap or 'unknown'!r}, not Normal", offset)
    if offset is None or abs(offset) > settings.max_offset:
        return ClockStatus(False, f"chrony offset {offset} s exceeds clock.max_offset {settings.max_offset} s", offset)
    return ClockStatus(True, f"chrony synchronised, offset {offset:+.6f} s", offset)
