"""README's configuration table, from the `setting(...)` declarations of `service.core.config.Settings`."""

from __future__ import annotations

from pathlib import Path

from service.core.config import Variable, variables


def _shown(variable: Variable) -> str:
    """The default as README shows it: `unset`, `1`/`0`, `15`, `HS256`."""
    if variable.shown_default is not None:
        return variable.shown_default
    value = variable.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{int(value)}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`" if value else "unset"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{value}`"


def settings_table() -> str:
    """The Markdown table of every variable: name, default, meaning."""
    rows = [f"| `{v.name}` | {_shown(v)} | {v.meaning} |" for v in variables()]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows]) + "\n"
