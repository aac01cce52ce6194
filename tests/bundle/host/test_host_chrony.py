"""The chrony role: chronyd parses the rendered config, and the sync check reports a real chronyd.

The running chronyd lives in a network namespace of its own (no route anywhere, never steps this
machine's clock: ``-x``), so it stays unsynchronised, which is exactly what the check must report.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from host_support import PROFILES, host_data, run, write_files

from deploys import chrony, common

pytestmark = pytest.mark.bundle


def _render(prefix: Path, profile: str, **overrides: Any) -> tuple[Any, Path, str]:
    host = next(iter(PROFILES[profile]))
    data = host_data(chrony, profile, host, prefix, **overrides)
    files = chrony.render_files(data, {})
    write_files(files)
    path = common.host_path(data, chrony.CONF_FILE)
    return data, Path(path), files[path]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_chronyd_parses_the_rendered_config(prefix: Path, profile: str) -> None:
    _, path, text = _render(prefix, profile)
    parsed = run(["chronyd", "-p", "-f", str(path)])
    assert parsed.returncode == 0, parsed.stderr
    lines = text.splitlines()
    assert "cmdport 0" in lines and "rtcsync" in lines and "leapsectz right/UTC" in lines
    assert f"makestep 1.0 {chrony.DEFAULTS['chrony_makestep_limit']}" in lines
    assert f"maxchange {chrony.MAX_DRIFT_SECONDS} 1 2" in lines
    nts_servers = [s["host"] for s in chrony.DEFAULTS["chrony_servers"] if s["nts"]]
    for server in nts_servers:
        assert f"server {server} iburst nts" in lines


def test_nts_follows_the_data_and_a_broken_config_is_rejected(prefix: Path) -> None:
    servers = [{"host": "ntp.example.internal", "nts": False}, {"host": "nts.example.internal", "nts": True}]
    _, path, text = _render(prefix, "single", chrony_servers=servers)
    assert "server ntp.example.internal iburst\n" in text
    assert "server nts.example.internal iburst nts\n" in text
    assert run(["chronyd", "-p", "-f", str(path)]).returncode == 0
    path.write_text(text + "maxdistance not-a-number\n")  # the validator must be able to fail
    assert run(["chronyd", "-p", "-f", str(path)]).returncode != 0
    with pytest.raises(ValueError, match="minsources"):
        _render(prefix, "single", chrony_servers=servers[:1])


def test_unsynchronised_host_is_reported(prefix: Path, netns: str) -> None:
    data, path, text = _render(prefix, "single")
    run_dir = prefix / "run"
    run_dir.mkdir(mode=0o700)
    for sub in ("var/lib/chrony", "var/log/chrony"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    socket = run_dir / "chronyd.sock"
    # test-only: a private command socket and pid file instead of the system ones
    path.write_text(text + f"bindcmdaddress {socket}\npidfile {run_dir}/chronyd.pid\n")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "chronyd", "-f", str(path), "-x", "-n", "-u", "root"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        tracking = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            out = run(["chronyc", "-n", "-h", str(socket), "tracking"])
            if out.returncode == 0:
                tracking = out.stdout
                break
            time.sleep(0.1)
        assert "Leap status" in tracking, tracking
        problem = chrony.sync_problem(tracking, float(data.chrony_max_offset))
        assert problem is not None and "Not synchronised" in problem
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    # A synchronised host passes; an offset beyond the daemon's tolerance does not.
    good = tracking.replace("Not synchronised", "Normal")
    assert chrony.sync_problem(good, 1.0) is None
    assert chrony.sync_problem(good.replace("0.000000000 seconds fast", "2.5 seconds fast"), 1.0)
    assert chrony.sync_problem("506 Cannot talk to daemon", 1.0)
