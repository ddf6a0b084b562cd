"""`python -m service.codegen`: rewrite the files generated from the schema and the settings
(`--check`: only report the stale ones, exit 1)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from service.codegen.protocol import protocol_markdown
from service.codegen.python import python_client_schema
from service.codegen.settings import settings_table
from service.codegen.typescript import typescript

ROOT = Path(__file__).resolve().parents[2]
GENERATED: dict[str, Callable[[], str]] = {
    "web/src/generated/schema.ts": typescript,
    "docs/protocol.md": protocol_markdown,
    "realtime_client/schema.py": python_client_schema,
}
# Generated parts of hand-written files: the file → (the marker's name, what goes between the markers).
SECTIONS: dict[str, tuple[str, Callable[[], str]]] = {
    "README.md": ("settings", settings_table),
}


def section(text: str, marker: str, content: str) -> str:
    """`text` with what lies between `<!-- generated: marker ... -->` and `<!-- end generated: marker -->`
    replaced by `content`."""
    begin = f"<!-- generated: {marker} (python -m service.codegen) -->\n"
    end = f"<!-- end generated: {marker} -->"
    head, found, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not (found and found_end):
        raise ValueError(f"no '{begin.strip()}' ... '{end}' markers")
    return head + begin + content + end + tail


def contents(root: Path = ROOT) -> dict[str, str]:
    """Every generated file's content as it should be now (a sectioned file: all of it)."""
    out = {name: make() for name, make in GENERATED.items()}
    for name, (marker, make) in SECTIONS.items():
        out[name] = section((root / name).read_text(encoding="utf-8"), marker, make())
    return out


def stale(root: Path = ROOT) -> list[str]:
    """The generated files whose content differs from what the schema produces now."""
    out = []
    for name, text in contents(root).items():
        path = root / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.codegen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for name in names:
            print(f"stale: {name} (run python -m service.codegen)", file=sys.stderr)
        return 1 if names else 0
    for name, text in contents().items():
        path = ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
