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
from collections.abc import Iterator
from pathlib import Path

import pytest

from ostiary.lab.cli import ApplyReport, apply_bundle
from ostiary.lab.vm import Lab

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "vde_switch", "mmdebstrap", "mkfs.ext4", "chronyd", "ssh")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here:
            item.add_marker(pytest.mark.lab)


def _log(message: str) -> None:
    print(f"lab: {message}", flush=True)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the VM lab needs {', '.join(missing)} (scripts/setup.sh installs them)")
    the_lab = Lab(REPO_ROOT)
    reused = the_lab.is_up()
    try:
        the_lab.up(progress=_log)
        yield the_lab
    finally:
        if not reused:
            the_lab.down(progress=_log)


@pytest.fixture(scope="session")
def apply_report(lab: Lab) -> ApplyReport:
    return apply_bundle(lab, progress=_log)


@pytest.fixture(scope="session")
def applied_lab(lab: Lab, apply_report: ApplyReport) -> Lab:
    if not apply_report.ok:
        pytest.fail(f"pyinfra could not apply deploys/site.py to the lab:\n{apply_report.log_tail}")
    return lab
