"""``ostiary lab up | apply | plan | check | down | status | ssh | image``.

``up`` builds or reuses the base image, boots the three VMs and writes ``inventories/lab.py``;
``apply`` runs the bundle with pyinfra and then proves it idempotent (per host, a
``--dry --json`` plan with no change; with ``--reapply`` also a real second run that changes
nothing); ``plan`` shows what a run would change per host; ``check`` runs the compliance suite
against the lab; ``down`` stops everything and removes the overlays. Every phase prints its time;
the times are also kept in ``.ostiary/lab/logs/times.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import image
from .vm import Lab, LabState


def find_root(start: Path) -> Path:
    """The project checkout: the nearest directory (from ``start`` up) holding ``deploys/site.py``."""
    for candidate in (start, *start.parents):
        if (candidate / "deploys" / "site.py").is_file():
            return candidate
    return start


def _progress(message: str) -> None:
    print(message, flush=True)


def _record_times(lab: Lab, section: str, times: dict[str, Any]) -> None:
    lab.log_dir.mkdir(parents=True, exist_ok=True)
    path = lab.log_dir / "times.json"
    try:
        recorded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    recorded[section] = times
    path.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")


# --- pyinfra --------------------------------------------------------------------------------


def pyinfra_argv(lab: Lab, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pyinfra",
        str(lab.inventory_path.relative_to(lab.root)),
        "deploys/site.py",
        *extra,
    ]


@dataclass(frozen=True)
class PlanChange:
    """One operation a dry run says it would still change, and on which hosts."""

    name: str
    hosts: list[str]
    conditional: list[str]


def dry_plan(lab: Lab, limit: str | None = None) -> tuple[list[PlanChange], list[PlanChange], float]:
    """Run ``pyinfra --dry --json``; return (definite changes, conditional changes, seconds)."""
    argv = pyinfra_argv(lab, "--dry", "--json")
    if limit:
        argv += ["--limit", limit]
    t0 = time.monotonic()
    proc = subprocess.run(
        argv, cwd=lab.root, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, env=lab.tool_env()
    )
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pyinfra --dry failed ({proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}")
    return (*parse_plan(proc.stdout), seconds)


def parse_plan(stdout: str) -> tuple[list[PlanChange], list[PlanChange]]:
    """Split pyinfra's ``--dry --json`` plan into definite and conditional (``_if``) changes."""
    payload = json.loads(stdout)
    definite: list[PlanChange] = []
    conditional: list[PlanChange] = []
    for op in payload.get("plan", []):
        change = PlanChange(str(op["name"]), list(op["hosts_with_change"]), list(op["hosts_with_conditional_change"]))
        if change.hosts:
            definite.append(change)
        elif change.conditional:
            conditional.append(change)
    return definite, conditional


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _reapply_host(lab: Lab, name: str) -> tuple[str, float, list[str], str]:
    """A real no-op re-apply of one host: ``-y --json``; returns the operations that changed."""
    argv = pyinfra_argv(lab, "-y", "--json", "--limit", name)
    t0 = time.monotonic()
    proc = subprocess.run(
        argv, cwd=lab.root, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, env=lab.tool_env()
    )
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        return name, seconds, ["(pyinfra failed)"], _tail(proc.stdout + proc.stderr)
    results = json.loads(proc.stdout).get("results") or {}
    changed = [str(op["name"]) for op in results.get("operations", []) if name in op.get("success", [])]
    errors = [str(op["name"]) for op in results.get("operations", []) if name in op.get("error", [])]
    return name, seconds, changed + [f"{e} (error)" for e in errors], ""


def plan_lab(lab: Lab, progress: Callable[[str], None] = _progress) -> tuple[list[PlanChange], dict[str, float]]:
    """``pyinfra --dry --json --limit HOST`` per host in parallel: the definite changes, seconds per host."""
    state = lab.require_state()
    progress("plan: pyinfra --dry --json --limit HOST, per host in parallel")
    with ThreadPoolExecutor(max_workers=len(state.hosts)) as pool:
        plans = list(pool.map(lambda name: (name, *dry_plan(lab, name)), state.hosts))
    changes: list[PlanChange] = []
    per_host: dict[str, float] = {}
    for name, definite, conditional, seconds in plans:
        per_host[name] = round(seconds, 1)
        changes.extend(definite)
        verdict = "no change" if not definite else f"{len(definite)} operation(s) would change"
        progress(f"plan:   {name}: no-op plan {seconds:.1f} s, {verdict} ({len(conditional)} conditional, none due)")
        for change in definite:
            progress(f"plan:     would change on {name}: {change.name}")
    return changes, per_host


@dataclass
class ApplyReport:
    """What ``apply`` saw: the first run, the per-host re-apply and the dry plan."""

    ok: bool = False
    times: dict[str, Any] = field(default_factory=dict)
    reapply_changes: dict[str, list[str]] = field(default_factory=dict)
    dry_changes: list[PlanChange] = field(default_factory=list)
    log_tail: str = ""

    @property
    def idempotent(self) -> bool:
        return self.ok and not self.dry_changes and not any(self.reapply_changes.values())


def apply_bundle(lab: Lab, reapply: bool = False, progress: Callable[[str], None] = _progress) -> ApplyReport:
    """Apply deploys/site.py to the lab, then prove a second run changes nothing."""
    state = lab.require_state()
    report = ApplyReport()
    times = report.times
    lab.log_dir.mkdir(parents=True, exist_ok=True)
    log = lab.log_dir / "apply.log"
    progress("apply: pyinfra inventories/lab.py deploys/site.py -y")
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            pyinfra_argv(lab, "-y"),
            cwd=lab.root,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            env=lab.tool_env(),
        )
    times["apply"] = round(time.monotonic() - t0, 1)
    progress(f"apply: first apply took {times['apply']:.1f} s (log: {log.relative_to(lab.root)})")
    if proc.returncode != 0:
        report.log_tail = _tail(log.read_text(), 80)
        progress(report.log_tail)
        progress(f"apply: pyinfra failed with exit code {proc.returncode}")
        _record_times(lab, "apply", times)
        return report
    report.ok = True
    if reapply:
        # Per host in parallel: a real second run, timed; proves nothing changes when run again.
        progress("apply: no-op re-apply per host (pyinfra -y --json --limit HOST)")
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(state.hosts)) as pool:
            outcomes = list(pool.map(lambda name: _reapply_host(lab, name), state.hosts))
        times["reapply_wall"] = round(time.monotonic() - t0, 1)
        times["reapply_per_host"] = {}
        for name, seconds, changed, error in outcomes:
            times["reapply_per_host"][name] = round(seconds, 1)
            report.reapply_changes[name] = changed
            verdict = "no change" if not changed else "CHANGED: " + "; ".join(changed)
            progress(f"apply:   {name}: re-apply {seconds:.1f} s, {verdict}")
            if error:
                progress(error)
    # The idempotence proof: per host in parallel, the plan of a second run must change nothing.
    # Its time is what a no-op re-apply of that host costs (facts gathered, nothing to execute).
    t0 = time.monotonic()
    changes, per_host = plan_lab(lab, progress)
    times["dry_plan_wall"] = round(time.monotonic() - t0, 1)
    times["dry_plan_per_host"] = per_host
    report.dry_changes.extend(changes)
    verdict = "no change on any host" if not report.dry_changes else "NOT idempotent"
    progress(f"apply: idempotence check took {times['dry_plan_wall']:.1f} s: {verdict}")
    _record_times(lab, "apply", times)
    return report


def cmd_apply(lab: Lab, reapply: bool) -> int:
    report = apply_bundle(lab, reapply=reapply)
    return 0 if report.idempotent else 1


def cmd_plan(lab: Lab, as_json: bool) -> int:
    """What a run of deploys/site.py would change on each lab host (nothing, once converged)."""
    changes, per_host = plan_lab(lab, progress=_progress if not as_json else lambda _msg: None)
    pending = sorted({f"{host}: {change.name}" for change in changes for host in change.hosts})
    if as_json:
        print(json.dumps({"pending": pending, "seconds_per_host": per_host}))
    else:
        print("plan: no change on any host" if not pending else f"plan: {len(pending)} pending change(s)")
    return 0


# --- check ----------------------------------------------------------------------------------


def host_summary(junit: Path, hosts: Sequence[str]) -> dict[str, dict[str, int]]:
    """Pass / fail / skip counts per lab host from a JUnit file (a test names its host in its id)."""
    summary = {name: {"passed": 0, "failed": 0, "skipped": 0} for name in hosts}
    # The file was just written by our own pytest run, not received from elsewhere.
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314
        test_id = case.get("name", "")
        owner = next((h for h in hosts if f"[{h}" in test_id or f"-{h}]" in test_id or f"-{h}-" in test_id), None)
        if owner is None:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            summary[owner]["failed"] += 1
        elif case.find("skipped") is not None:
            summary[owner]["skipped"] += 1
        else:
            summary[owner]["passed"] += 1
    return summary


def cmd_check(lab: Lab, extra: list[str]) -> int:
    state = lab.require_state()
    reports = lab.root / "reports"
    reports.mkdir(exist_ok=True)
    junit = reports / "lab-compliance.xml"
    argv = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/compliance",
        "--inventory", str(lab.inventory_path.relative_to(lab.root)), f"--junitxml={junit}", *extra,
    ]  # fmt: skip
    _progress("check: " + " ".join(argv[2:]))
    t0 = time.monotonic()
    rc = subprocess.run(argv, cwd=lab.root, check=False, stdin=subprocess.DEVNULL, env=lab.tool_env()).returncode
    seconds = round(time.monotonic() - t0, 1)
    _record_times(lab, "check", {"compliance": seconds})
    print(f"\ncheck: compliance suite took {seconds:.1f} s, exit code {rc}")
    if junit.exists():
        for name, counts in host_summary(junit, list(state.hosts)).items():
            host = state.host(name)
            verdict = "OK" if counts["failed"] == 0 and counts["passed"] > 0 else "FAIL"
            print(
                f"  {name:6} {','.join(host.groups):14} {host.private_address:12} "
                f"passed {counts['passed']:3}  failed {counts['failed']:3}  skipped {counts['skipped']:3}  {verdict}"
            )
    _print_gateway(state)
    return rc


def _print_gateway(state: LabState) -> None:
    for host in state.hosts.values():
        if host.https_port is not None:
            print(
                f"gateway: https://127.0.0.1:{host.https_port}/ (forwarded to {host.name}:443; "
                f"on the lab network https://{host.private_address}/)"
            )


# --- up / down / status ---------------------------------------------------------------------


def cmd_up(lab: Lab) -> int:
    t0 = time.monotonic()
    state = lab.up(progress=_progress)
    total = round(time.monotonic() - t0, 1)
    _record_times(lab, "up", {**state.phases, "total": total})
    _print_status(lab, state)
    _progress(f"up: lab ready in {total:.1f} s")
    return 0


def _print_status(lab: Lab, state: LabState) -> None:
    print(
        f"lab: {len(state.hosts)} VMs ({state.accel}), image {state.image_hash}, "
        f"time source udp 127.0.0.1:{state.time_port}"
    )
    for host in state.hosts.values():
        print(
            f"  {host.name:6} {','.join(host.groups):14} data {host.private_address:12} ssh 127.0.0.1:{host.ssh_port}"
        )
    _print_gateway(state)
    print(f"inventory: {lab.inventory_path.relative_to(lab.root)}")


def cmd_status(lab: Lab) -> int:
    state = lab.load_state()
    running = lab.processes()
    if state is None:
        print("lab: down" + (f" (but stray processes: {running})" if running else ""))
        return 1
    _print_status(lab, state)
    missing = {*state.hosts, "switch", "timesource"} - set(running)
    print("processes: " + ", ".join(f"{role}={pid}" for role, pid in running.items()))
    if missing:
        print(f"lab: NOT healthy, not running: {', '.join(sorted(missing))}")
        return 1
    return 0


def cmd_ssh(lab: Lab, host: str, command: list[str]) -> int:
    state = lab.require_state()
    argv = lab.ssh_argv(state, host)
    if command:
        argv.append(" ".join(command))
    return subprocess.run(argv, check=False).returncode


def cmd_image() -> int:
    t0 = time.monotonic()
    built = image.ensure_image(log=_progress)
    what = "built" if built.built_now else "cached"
    print(f"image: {what} {built.directory} in {time.monotonic() - t0:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ostiary lab", description="the qemu VM lab")
    parser.add_argument("--root", type=Path, default=None, help="project checkout (default: found from the cwd)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="build or reuse the image, boot gw1, sess1, kv1, write inventories/lab.py")
    p = sub.add_parser("apply", help="apply deploys/site.py to the lab and prove it idempotent")
    p.add_argument(
        "--reapply", action="store_true", help="also re-apply for real per host (-y --json) and name what changes"
    )
    p = sub.add_parser("plan", help="what applying deploys/site.py would change, per host (pyinfra --dry)")
    p.add_argument("--json", action="store_true", help='print {"pending": [...], "seconds_per_host": {...}}')
    p = sub.add_parser("check", help="run the compliance suite against the lab")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments")
    sub.add_parser("down", help="stop every lab process and remove the overlays")
    sub.add_parser("status", help="show the lab's VMs, ports and processes")
    p = sub.add_parser("ssh", help="open a shell (or run a command) on a lab VM as root")
    p.add_argument("host")
    p.add_argument("remote", nargs=argparse.REMAINDER)
    sub.add_parser("image", help="build the base image if the cache has none for the current recipe")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    lab = Lab(args.root or find_root(Path.cwd()))
    try:
        if args.command == "up":
            return cmd_up(lab)
        if args.command == "apply":
            return cmd_apply(lab, reapply=args.reapply)
        if args.command == "plan":
            return cmd_plan(lab, as_json=args.json)
        if args.command == "check":
            return cmd_check(lab, list(args.pytest_args))
        if args.command == "down":
            lab.down(progress=_progress)
            return 0
        if args.command == "status":
            return cmd_status(lab)
        if args.command == "ssh":
            return cmd_ssh(lab, args.host, list(args.remote))
        if args.command == "image":
            return cmd_image()
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"ostiary lab {args.command}: {exc}", file=sys.stderr)
        return 1
    return 2
