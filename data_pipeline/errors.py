"""The one user-facing error type of the data side: it always names the file and line (or field and value)."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. `str(err)` reads `path:line: message` so a user can open the exact spot."""

    def __init__(self, path: str | Path | None, line: int | None, message: str) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.message = message
        where = self.path or "<input>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        # Crosses process boundaries intact (Ray actors, Ray Train workers, DataLoader workers).
        return (type(self), (self.path, self.line, self.message))
