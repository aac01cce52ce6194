"""The control catalogue itself (no inventory needed): complete, used, and documented as it is."""

from __future__ import annotations

import re
from pathlib import Path

from .controls import CONTROLS, markdown_table

HERE = Path(__file__).resolve().parent
DOC = HERE.parents[1] / "docs" / "compliance.md"
KNOWN_REFERENCES = {"Ostiary seed", "Mozilla Server Side TLS, modern", "NIST SP 800-63B", "RFC 8725 (JWT BCP)",
                    "CIS-style host hardening"}  # fmt: skip
KNOWN_ROLES = {"all", "gateways", "session_nodes", "redis_nodes"}


def _used_ids() -> set[str]:
    used = set()
    for module in HERE.glob("test_*.py"):
        used |= set(re.findall(r'pytest\.mark\.control\("([A-Z0-9-]+)"\)', module.read_text()))
    return used


def test_every_control_is_complete() -> None:
    for control in CONTROLS.values():
        assert re.fullmatch(r"OST-[A-Z]+-\d{2}", control.id), control.id
        assert control.title and control.rationale, control.id
        assert control.reference in KNOWN_REFERENCES, (control.id, control.reference)
        assert control.role in KNOWN_ROLES, (control.id, control.role)


def test_every_control_is_checked_and_every_check_is_catalogued() -> None:
    used = _used_ids()
    assert used - set(CONTROLS) == set(), f"tests name unknown controls: {sorted(used - set(CONTROLS))}"
    assert set(CONTROLS) - used == set(), f"controls without a test: {sorted(set(CONTROLS) - used)}"


def test_documentation_lists_the_catalogue() -> None:
    text = DOC.read_text()
    missing = [line for line in markdown_table().splitlines() if line not in text]
    assert not missing, f"docs/compliance.md differs from controls.py (python -m compliance.controls): {missing[:3]}"
