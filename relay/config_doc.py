"""The configuration reference, generated from the settings model.

Invariant: the README's table between `<!-- config:start -->` and
`<!-- config:end -->` is exactly `markdown()`; a test keeps them equal, so
the documentation cannot drift from the code.
"""

from __future__ import annotations

from pydantic_core import PydanticUndefined

from relay.settings import Settings

START = "<!-- config:start -->"
END = "<!-- config:end -->"


def _default(value: object) -> str:
    if value is None or value is PydanticUndefined:
        return "—"
    if isinstance(value, list) and not value:
        return "—"
    return f"`{value}`"


def markdown() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        desc = (field.description or "").replace("|", "\\|")
        lines.append(f"| `RELAY_{name.upper()}` | {_default(default)} | {desc} |")
    return "\n".join(lines)
