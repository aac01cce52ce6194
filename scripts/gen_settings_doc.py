"""Write docs/settings.md from each role's DEFAULTS and SETTINGS_DOC: one source for the table.

Run: .venv/bin/python scripts/gen_settings_doc.py   (tests/unit/test_settings_doc.py checks it is current)
"""

from __future__ import annotations

import importlib
import pprint
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("base", "chrony", "firewall", "apparmor", "keys", "redis", "sessiond", "gateway")
OUTPUT = ROOT / "docs" / "settings.md"

HEADER = """# Inventory settings

Every setting of the bundle, per role, with its default. Set them in `inventories/group_data/*.py`
(per group), in the inventory next to a host (per host), or leave them at the default. The roles read
nothing else: no template needs editing. This file is generated from the roles' `DEFAULTS` and
`SETTINGS_DOC` by `scripts/gen_settings_doc.py`; a test fails when it is out of date.

Which roles run where: `base`, `chrony`, `firewall` and `apparmor` on every host; `keys` on every host
(each gets only the keys its roles need); `redis` on `redis_nodes`; `sessiond` on `session_nodes`;
`gateway` on `gateways`. One host in all three groups is the single-host profile.
"""


def _format(value: object) -> str:
    text = pprint.pformat(value, width=10_000, compact=True)
    if len(text) > 160:
        text = text[:157] + "…"
    return f"`{text}`".replace("|", "\\|")


def render() -> str:
    sys.path.insert(0, str(ROOT))
    parts = [HEADER]
    for role in ROLES:
        try:
            module = importlib.import_module(f"deploys.{role}")
        except ModuleNotFoundError:
            continue
        defaults = module.DEFAULTS
        docs = module.SETTINGS_DOC
        parts.append(f"\n## {role}\n\n| setting | default | meaning |\n|---|---|---|")
        for key, value in defaults.items():
            meaning = docs.get(key, "(undocumented)").replace("|", "\\|").replace("\n", " ")
            parts.append(f"| `{key}` | {_format(value)} | {meaning} |")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
