"""Per-host x control reports of a compliance run: Markdown, HTML (open it in a browser) and JUnit XML.

A control may be checked by several tests on one host (one per Redis instance, say): it passes
when every one of them passed, fails when any failed, and is "n/a" when all were skipped (the
host's groups do not give it the role).
"""

from __future__ import annotations

import html
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .controls import CONTROLS

PASS, FAIL, NA = "pass", "fail", "n/a"


@dataclass(frozen=True)
class Result:
    control: str
    host: str
    test: str
    outcome: str  # pass | fail | n/a
    detail: str  # why: the evidence of a pass, the assertion of a failure, the reason of a skip
    seconds: float


@dataclass(frozen=True)
class Cell:
    outcome: str
    details: tuple[str, ...]


def cells(results: Iterable[Result]) -> dict[tuple[str, str], Cell]:
    """(control, host) -> the combined outcome and the details behind it."""
    grouped: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        grouped.setdefault((r.control, r.host), []).append(r)
    out = {}
    for key, items in grouped.items():
        outcomes = {r.outcome for r in items}
        outcome = FAIL if FAIL in outcomes else PASS if PASS in outcomes else NA
        relevant = [r for r in items if r.outcome == outcome] or items
        out[key] = Cell(outcome, tuple(f"{r.test}: {r.detail}" if r.detail else r.test for r in relevant))
    return out


def _hosts_controls(results: list[Result]) -> tuple[list[str], list[str]]:
    hosts = sorted({r.host for r in results})
    order = list(CONTROLS)
    controls = sorted({r.control for r in results}, key=lambda c: order.index(c) if c in order else len(order))
    return hosts, controls


def summary(results: list[Result]) -> dict[str, dict[str, int]]:
    """host -> {pass, fail, n/a} counted per control."""
    counts: dict[str, dict[str, int]] = {}
    for (_, host), cell in cells(results).items():
        counts.setdefault(host, {PASS: 0, FAIL: 0, NA: 0})[cell.outcome] += 1
    return counts


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown(results: list[Result], inventory: str) -> str:
    hosts, controls = _hosts_controls(results)
    table = cells(results)
    lines = [
        "# Ostiary compliance report",
        "",
        f"Inventory: `{inventory}` — run {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        "",
        "| Host | pass | fail | n/a |",
        "|---|---|---|---|",
    ]
    for host, c in sorted(summary(results).items()):
        lines.append(f"| {host} | {c[PASS]} | {c[FAIL]} | {c[NA]} |")
    lines += ["", "| Control | Title | " + " | ".join(hosts) + " |", "|---|---|" + "---|" * len(hosts)]
    for control in controls:
        title = CONTROLS[control].title if control in CONTROLS else "(not in the catalogue)"
        row = [table[(control, h)].outcome.upper() if (control, h) in table else "" for h in hosts]
        lines.append(f"| {control} | {title} | " + " | ".join(row) + " |")
    failures = [(k, c) for k, c in sorted(table.items()) if c.outcome == FAIL]
    lines += ["", "## Failures", ""]
    if not failures:
        lines.append("None.")
    for (control, host), cell in failures:
        lines.append(f"- **{control}** on **{host}**: " + "; ".join(_short(d) for d in cell.details))
    lines += ["", "## Evidence", ""]
    for (control, host), cell in sorted(table.items()):
        if cell.outcome == PASS:
            lines.append(f"- {control} on {host}: " + "; ".join(_short(d, 200) for d in cell.details))
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #bbb; padding: 0.35em 0.6em; vertical-align: top; text-align: left; }
th { background: #eee; }
td.pass { background: #d4f4d2; }
td.fail { background: #f8c9c4; font-weight: bold; }
td.na { background: #eeeeee; color: #777; }
td.cell { min-width: 6em; }
small { color: #555; }
details { margin: 0.2em 0; }
"""


def _html_cell(cell: Cell | None) -> str:
    if cell is None:
        return '<td class="na cell">—</td>'
    css = {PASS: "pass", FAIL: "fail", NA: "na"}[cell.outcome]
    why = "<br>".join(html.escape(_short(d, 600)) for d in cell.details)
    return (
        f'<td class="{css} cell" title="{html.escape(_short(" | ".join(cell.details), 900))}">'
        f"{cell.outcome.upper()}<details><summary><small>why</small></summary><small>{why}</small>"
        "</details></td>"
    )


def html_report(results: list[Result], inventory: str) -> str:
    hosts, controls = _hosts_controls(results)
    table = cells(results)
    counts = summary(results)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Ostiary compliance report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Ostiary compliance report</h1>",
        f"<p>Inventory <code>{html.escape(inventory)}</code>, run "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.</p>",
        "<table><tr><th>Host</th><th>pass</th><th>fail</th><th>n/a</th></tr>",
    ]
    for host in hosts:
        c = counts.get(host, {PASS: 0, FAIL: 0, NA: 0})
        fail_css = "fail" if c[FAIL] else "pass"
        parts.append(
            f"<tr><td>{html.escape(host)}</td><td class='pass'>{c[PASS]}</td>"
            f"<td class='{fail_css}'>{c[FAIL]}</td><td class='na'>{c[NA]}</td></tr>"
        )
    parts.append("</table>")
    parts.append("<table><tr><th>Control</th><th>Title</th><th>Reference</th>")
    parts += [f"<th>{html.escape(h)}</th>" for h in hosts]
    parts.append("</tr>")
    for control in controls:
        meta = CONTROLS.get(control)
        title = html.escape(meta.title) if meta else "(not in the catalogue)"
        rationale = html.escape(meta.rationale) if meta else ""
        reference = html.escape(meta.reference) if meta else ""
        parts.append(
            f"<tr><td><b>{html.escape(control)}</b></td><td>{title}<br><small>{rationale}</small></td>"
            f"<td><small>{reference}</small></td>"
        )
        parts += [_html_cell(table.get((control, h))) for h in hosts]
        parts.append("</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


def junit_xml(results: list[Result]) -> str:
    """One testsuite per host, one testcase per test, the control in the classname."""
    root = ET.Element("testsuites", name="ostiary-compliance")
    by_host: dict[str, list[Result]] = {}
    for r in results:
        by_host.setdefault(r.host, []).append(r)
    for host, items in sorted(by_host.items()):
        suite = ET.SubElement(
            root,
            "testsuite",
            name=host,
            tests=str(len(items)),
            failures=str(sum(r.outcome == FAIL for r in items)),
            skipped=str(sum(r.outcome == NA for r in items)),
            time=f"{sum(r.seconds for r in items):.3f}",
        )
        for r in items:
            case = ET.SubElement(suite, "testcase", classname=r.control, name=r.test, time=f"{r.seconds:.3f}")
            if r.outcome == FAIL:
                ET.SubElement(case, "failure", message=_short(r.detail, 500)).text = r.detail
            elif r.outcome == NA:
                ET.SubElement(case, "skipped", message=_short(r.detail, 500))
            elif r.detail:
                ET.SubElement(case, "system-out").text = r.detail
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_reports(results: list[Result], directory: Path, inventory: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in (
        ("compliance.md", markdown(results, inventory)),
        ("compliance.html", html_report(results, inventory)),
        ("compliance-junit.xml", junit_xml(results)),
    ):
        path = directory / name
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written
