"""One rendering path for every template: the deploys and the tests render through ``render``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
    undefined=jinja2.StrictUndefined,  # a missing setting is an error, never an empty string
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # noqa: S701 - config files, not HTML
)


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context``; unknown variables raise."""
    return _env.get_template(template).render(**context)
