"""The user docs cover every setting, fault code and doctor check the code defines."""

from pathlib import Path

from pydantic import BaseModel

from ostiary.config import Settings
from ostiary.doctor import REMEDIES
from ostiary.faults import FAULTS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_daemon_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for key in model.model_fields:
                assert f"`{section}.{key}`" in text, f"{section}.{key} missing from docs/configuration.md"


def test_every_fault_code_and_doctor_check_has_a_runbook() -> None:
    text = (DOCS / "runbooks.md").read_text()
    for code in [*FAULTS, *REMEDIES]:
        assert f"## {code}" in text, f"runbook for {code} missing from docs/runbooks.md"
