"""The compliance suite's pytest plumbing: inventory bridge, per-host parametrisation, reports.

``pytest tests/compliance --inventory inventories/lab.py`` (or ``OSTIARY_INVENTORY=PATH``) runs
every check against every host of the inventory. A module declares the group its checks apply to
(``pytestmark = pytest.mark.role("redis_nodes")``); on hosts outside that group the check is
skipped as "n/a" — the host does not have the role. Each test names its control
(``@pytest.mark.control("OST-REDIS-03")``); after the run, reports/compliance.{md,html} and
reports/compliance-junit.xml hold the per-host x control result with the reason behind each cell.

Without an inventory nothing is checked: every test is skipped with that reason (the repository's
own test run checks the lab's inventory from tests/lab instead).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .controls import CONTROLS
from .report import FAIL, NA, PASS, Result, summary, write_reports
from .support import ALL_HOSTS, REPO_ROOT, InventoryError, Node, load_inventory

HERE = Path(__file__).resolve().parent
_RESULTS = pytest.StashKey[list[Result]]()
_NODES = pytest.StashKey[list[Node] | InventoryError]()
_EVIDENCE = pytest.StashKey[list[str]]()
_STARTED = pytest.StashKey[float]()
_LAST = "OST-AA-04"  # runs after every other check: their traffic must not have caused denials


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ostiary compliance")
    group.addoption("--inventory", default=None, help="pyinfra inventory whose hosts to check (env OSTIARY_INVENTORY)")
    group.addoption(
        "--compliance-reports",
        default=str(REPO_ROOT / "reports"),
        help="directory for compliance.md, compliance.html and compliance-junit.xml",
    )


def inventory_path(config: pytest.Config) -> str | None:
    value = config.getoption("inventory", default=None) or os.environ.get("OSTIARY_INVENTORY") or None
    return str(value) if value else None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "control(id): the compliance control a test checks (tests/compliance/controls.py)"
    )
    config.addinivalue_line("markers", "role(group): the inventory group whose hosts a compliance module checks")
    config.stash[_RESULTS] = []


def _nodes(config: pytest.Config) -> list[Node] | InventoryError:
    if _NODES not in config.stash:
        path = inventory_path(config)
        assert path is not None
        try:
            config.stash[_NODES] = load_inventory(path)
        except InventoryError as exc:
            config.stash[_NODES] = exc
    return config.stash[_NODES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "node" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("role")
    role = str(marker.args[0]) if marker else ALL_HOSTS
    if inventory_path(metafunc.config) is None:
        reason = "no inventory: run `pytest tests/compliance --inventory PATH` to check its hosts"
        metafunc.parametrize("node", [pytest.param("", marks=pytest.mark.skip(reason=reason), id="no-inventory")],
                             indirect=True)  # fmt: skip
        return
    nodes = _nodes(metafunc.config)
    if isinstance(nodes, InventoryError):  # one failing case per test: loud, with pyinfra's message
        metafunc.parametrize("node", [pytest.param("", id="inventory-error")], indirect=True)
        return
    params = []
    for node in nodes:
        marks = [] if node.in_group(role) else [pytest.mark.skip(reason=f"{node.name} is not in {role}")]
        params.append(pytest.param(node.name, marks=marks, id=node.name))
    metafunc.parametrize("node", params, indirect=True)


@pytest.fixture(scope="session")
def nodes(request: pytest.FixtureRequest) -> list[Node]:
    """Every host of the inventory."""
    found = _nodes(request.config)
    if isinstance(found, InventoryError):
        raise found
    return found


@pytest.fixture
def node(request: pytest.FixtureRequest, nodes: list[Node]) -> Node:
    """The host this test case checks."""
    by_name = {n.name: n for n in nodes}
    return by_name[str(request.param)]


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record what a passing check saw: it becomes the "why" of the pass in the reports."""
    notes = request.node.stash.setdefault(_EVIDENCE, [])
    return notes.append


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Checks of hosts (they take ``node``) carry a control; the catalogue's own tests do not.
    mine = [i for i in items if HERE in Path(str(i.path)).parents and "node" in getattr(i, "fixturenames", ())]
    for item in mine:
        marker = item.get_closest_marker("control")
        if marker is None or str(marker.args[0]) not in CONTROLS:
            raise pytest.UsageError(f"{item.nodeid}: every compliance test needs a control marker from controls.py")
    last = [i for i in mine if str(i.get_closest_marker("control").args[0]) == _LAST]  # type: ignore[union-attr]
    if last:
        items[:] = [i for i in items if i not in last] + last


def _detail(report: pytest.TestReport, item: pytest.Item) -> str:
    if report.passed:
        return "; ".join(item.stash.get(_EVIDENCE, []))
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    return str(report.longrepr)[-1500:]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    marker = item.get_closest_marker("control")
    callspec = getattr(item, "callspec", None)
    host = callspec.params.get("node") if callspec is not None else None
    if marker is None or not isinstance(host, str) or not host:
        return
    if report.when == "setup":
        item.stash[_STARTED] = time.monotonic()
    record = (
        (report.when == "call")
        or (report.when == "setup" and not report.passed)
        or (report.when == "teardown" and report.failed)
    )
    if not record:
        return
    control = str(marker.args[0])
    report.user_properties.append(("control", control))
    outcome_name = PASS if report.passed else NA if report.skipped else FAIL
    test_name = getattr(item, "originalname", item.name)
    extra = [str(v) for k, v in callspec.params.items() if k != "node"]
    if extra:
        test_name += f"[{','.join(extra)}]"
    item.config.stash[_RESULTS].append(
        Result(
            control,
            host,
            test_name,
            outcome_name,
            _detail(report, item),
            time.monotonic() - item.stash.get(_STARTED, time.monotonic()),
        )
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    results = session.config.stash.get(_RESULTS, [])
    path = inventory_path(session.config)
    if not results or path is None:
        return
    directory = Path(str(session.config.getoption("compliance_reports", default=str(REPO_ROOT / "reports"))))
    write_reports(results, directory, path)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS, [])
    if not results or inventory_path(config) is None:
        return
    terminalreporter.section("compliance: controls per host")
    for host, counts in sorted(summary(results).items()):
        terminalreporter.write_line(f"{host:20} pass {counts[PASS]:3}  fail {counts[FAIL]:3}  n/a {counts[NA]:3}")
    directory = config.getoption("compliance_reports", default=str(REPO_ROOT / "reports"))
    terminalreporter.write_line(f"reports: {directory}/compliance.md, compliance.html, compliance-junit.xml")
