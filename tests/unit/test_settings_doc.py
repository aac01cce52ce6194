"""docs/settings.md is generated from the roles' DEFAULTS/SETTINGS_DOC and must be current and complete."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_settings_doc", ROOT / "scripts" / "gen_settings_doc.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_doc_is_current() -> None:
    expected = _generator().render()
    actual = (ROOT / "docs" / "settings.md").read_text()
    assert actual == expected, "docs/settings.md is stale: run .venv/bin/python scripts/gen_settings_doc.py"


def test_every_setting_is_explained() -> None:
    assert "(undocumented)" not in _generator().render()
