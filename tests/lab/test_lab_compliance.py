"""The compliance suite against the applied lab (marker ``lab``), after the session flows ran.

Runs ``pytest tests/compliance --inventory inventories/lab.py`` as its own pytest session (its
own reports: reports/compliance.md, .html and compliance-junit.xml) and fails with the failing
controls per host. It sorts after test_flows.py on purpose: the AppArmor control OST-AA-04 then
proves that the flows (Redis stopped, the clock stepped) left no denial in any guest's journal.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ostiary.lab.vm import Lab

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORTS = REPO_ROOT / "reports"
SUITE_TIMEOUT = 1200  # seconds; the suite takes a few minutes against TCG guests


def test_compliance_suite_passes_on_the_lab(applied_lab: Lab, lab_times: dict[str, Any]) -> None:
    argv = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--tb=line", "tests/compliance",
        "--inventory", str(applied_lab.inventory_path), "--compliance-reports", str(REPORTS),
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - t0
    lab_times["check: compliance suite, three hosts"] = round(seconds, 1)
    summary = proc.stdout.split("compliance: controls per host", 1)[-1]
    per_host = [line for line in summary.splitlines() if re.match(r"^\S+\s+pass\s+\d+", line)]
    print(f"compliance suite on the lab: {seconds:.0f} s, exit {proc.returncode}")
    for line in per_host:
        print(f"  {line}")
    report = REPORTS / "compliance.md"
    assert per_host, (
        f"the compliance suite printed no per-host summary (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
    )
    if proc.returncode != 0:
        failures = report.read_text().split("## Failures", 1)[-1].split("## Evidence", 1)[0] if report.exists() else ""
        raise AssertionError(f"failing controls (see {report} and compliance.html):\n{failures.strip()[:6000]}")
