"""Chrony role on every host: running, synchronised (by chronyc's own account), locked down."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from deploys import chrony as chrony_role

from .support import Node, service_state

pytestmark = pytest.mark.role("all")

SYNC_WAIT = 60  # seconds a freshly (re)started chronyd may take to call the clock synchronised


@pytest.mark.control("OST-TIME-01")
def test_chrony_running(node: Node, evidence: Callable[[str], None]) -> None:
    active, enabled = service_state(node, "chrony.service")
    assert (active, enabled) == ("active", "enabled"), f"chrony.service is {active}/{enabled}"
    evidence("chrony.service active/enabled")


@pytest.mark.control("OST-TIME-02")
def test_clock_synchronised(node: Node, evidence: Callable[[str], None]) -> None:
    max_offset = float(node.data.get("chrony_max_offset", 1.0))
    deadline = time.monotonic() + SYNC_WAIT
    while True:
        tracking = str(node.run("chronyc -n tracking").stdout)
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in tracking.splitlines())}
        stratum = int(fields.get("Stratum", "16") or 16)
        problem = chrony_role.sync_problem(tracking, max_offset)
        if problem is None and stratum >= 16:
            problem = f"stratum {stratum}: no usable source"
        if problem is None or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert problem is None, f"{problem} (after waiting up to {SYNC_WAIT} s)"
    evidence(f"leap Normal, stratum {stratum}, system time {fields.get('System time', '?').strip()}, "
             f"reference {fields.get('Reference ID', '?').strip()}")  # fmt: skip


@pytest.mark.control("OST-TIME-03")
def test_chrony_locked_down(node: Node, evidence: Callable[[str], None]) -> None:
    config = node.check("cat /etc/chrony/chrony.conf /etc/chrony/conf.d/*.conf 2>/dev/null || true")
    directives = [line.split() for line in config.splitlines() if line.strip() and not line.startswith("#")]
    by_name: dict[str, list[str]] = {}
    for words in directives:
        by_name[words[0]] = words[1:]
    assert by_name.get("cmdport") == ["0"], f"cmdport {by_name.get('cmdport')}: chronyc reachable over the network"
    makestep = by_name.get("makestep", [])
    assert len(makestep) == 2 and int(makestep[1]) > 0, f"makestep {makestep}: must step only in the first updates"
    assert "rtcsync" in by_name, "no rtcsync"
    assert "leapsectz" in by_name, "no leapsectz"
    maxchange = by_name.get("maxchange", [])
    assert maxchange and float(maxchange[0]) <= chrony_role.MAX_DRIFT_SECONDS, f"maxchange {maxchange}"
    # Behaviour: nothing listens on chrony's command port (323) or serves NTP (123).
    listeners = node.check("ss -Hlnup '( sport = :323 or sport = :123 )' | grep chronyd || true").strip()
    assert not listeners, f"chronyd listens on the network: {listeners}"
    evidence(f"cmdport 0, makestep {' '.join(makestep)}, maxchange {' '.join(maxchange)}, no UDP listener")
