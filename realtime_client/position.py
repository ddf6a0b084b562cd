"""Where a consumer's stream position lives between runs: the id of the last event it finished.

`FilePositionStore` (the default for workers and `tail`) writes it atomically (temporary file,
then rename), so a worker killed at any moment restarts from the last event it processed, or
the one before: delivery is at least once. Any object with `load` and `save` will do (a row in
your own database, next to the effect of the event, makes it exactly once).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class PositionStore(Protocol):
    """Loads and saves one stream position (an opaque event id)."""

    def load(self) -> str | None:
        """The saved id, or None to start from live events."""
        ...

    def save(self, event_id: str) -> None:
        """Remember `event_id` as processed."""
        ...


class MemoryPositionStore:
    """Resumes across reconnects of one process only."""

    def __init__(self, event_id: str | None = None) -> None:
        self.event_id = event_id

    def load(self) -> str | None:
        return self.event_id

    def save(self, event_id: str) -> None:
        self.event_id = event_id


class FilePositionStore:
    """One small text file; survives a restart of the process (not fsynced: a crash of the
    machine may replay a few events, a crash of the process does not lose any)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> str | None:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def save(self, event_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(event_id + "\n", encoding="utf-8")
        os.replace(temporary, self.path)
