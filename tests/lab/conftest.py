"""Fixtures of the VM lab tests (marker ``lab``); shared by every module under tests/lab/.

``lab`` (session scope): an :class:`ostiary.lab.vm.Lab` whose three VMs (gw1 in ``gateways``,
sess1 in ``session_nodes``, kv1 in ``redis_nodes``) are up and answer SSH, and whose
``inventories/lab.py`` is written. A lab that is already up when the session starts (someone ran
``ostiary lab up``) is reused and left running; otherwise the fixture brings the lab up and takes
it down at the end of the session, whatever happened in between. Useful methods:
``lab.ssh(name, command)`` (a ``CompletedProcess``), ``lab.require_state()`` (ports, addresses,
key and known-hosts paths), ``lab.step_clock(name, seconds)`` / ``lab.resync_clock(name)`` to break
and restore a guest's time, ``lab.inventory_path``.

``applied_lab`` (session scope): the same lab after ``ostiary lab apply`` ran once in this session
(the bundle applied, then per host a ``--dry --json`` plan that must show no change); the fixture
fails the requesting test with pyinfra's output if the first apply fails. ``apply_report`` gives
the :class:`ostiary.lab.cli.ApplyReport` of that run (times, what a re-run would change).

The lab needs qemu, vde2, mmdebstrap and chrony from scripts/setup.sh and root; a test that uses
these fixtures fails (not skips) when they are missing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ostiary.lab.cli import ApplyReport, apply_bundle
from ostiary.lab.vm import Lab

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "vde_switch", "mmdebstrap", "mkfs.ext4", "chronyd", "ssh")
# Seconds per lab phase in this session, in the order they ran; printed at the end of the run.
LAB_TIMES: dict[str, Any] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here:
            item.add_marker(pytest.mark.lab)


def _log(message: str) -> None:
    print(f"lab: {message}", flush=True)


@pytest.fixture(scope="session")
def lab_times() -> dict[str, Any]:
    """Where a lab test records how long its phase took (seconds, or host -> seconds)."""
    return LAB_TIMES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not LAB_TIMES:
        return
    terminalreporter.section("VM lab phases (seconds)")
    for phase, value in LAB_TIMES.items():
        if isinstance(value, dict):
            value = ", ".join(f"{host} {seconds}" for host, seconds in sorted(value.items()))
        terminalreporter.write_line(f"{phase:48} {value}")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the VM lab needs {', '.join(missing)} (scripts/setup.sh installs them)")
    the_lab = Lab(REPO_ROOT)
    reused = the_lab.is_up()
    try:
        t0 = time.monotonic()
        state = the_lab.up(progress=_log)
        LAB_TIMES["up (reused)" if reused else "up: image, start, boot"] = round(time.monotonic() - t0, 1)
        for phase, seconds in (state.phases or {}).items():
            LAB_TIMES[f"  up: {phase}"] = seconds
        yield the_lab
    finally:
        if not reused:
            t0 = time.monotonic()
            the_lab.down(progress=_log)
            LAB_TIMES["down"] = round(time.monotonic() - t0, 1)


@pytest.fixture(scope="session")
def apply_report(lab: Lab) -> ApplyReport:
    report = apply_bundle(lab, progress=_log)
    LAB_TIMES["apply: first apply of deploys/site.py"] = report.times.get("apply")
    if "dry_plan_wall" in report.times:
        LAB_TIMES["apply: idempotence, --dry --json plans in parallel"] = report.times["dry_plan_wall"]
        LAB_TIMES["apply: no-op re-apply (plan) per host"] = report.times["dry_plan_per_host"]
    return report


@pytest.fixture(scope="session")
def applied_lab(lab: Lab, apply_report: ApplyReport) -> Lab:
    if not apply_report.ok:
        pytest.fail(f"pyinfra could not apply deploys/site.py to the lab:\n{apply_report.log_tail}")
    return lab
