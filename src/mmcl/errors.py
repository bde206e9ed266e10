"""Errors the user can fix: the CLI prints them as one line (or a short list) and exits with 2."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config problem the user can fix; the CLI prints it as one line and exits with 2."""


class DataError(ConfigError):
    """Input files that cannot be used, found before any training: `lines` holds one `<path>: <reason>`
    per file. The engine writes them to the run directory's data_errors.txt; the CLI exits with 2."""

    SHOWN = 20

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        n = len(self.lines)
        head = (f"{n} data file{'s' if n != 1 else ''} cannot be used (data.on_error=fail stops before training; "
                f"data.on_error=skip leaves them out):")
        more = [f"... and {n - self.SHOWN} more"] if n > self.SHOWN else []
        super().__init__("\n".join([head] + [f"  {ln}" for ln in self.lines[: self.SHOWN]] + more))

    def report(self) -> str:
        return "".join(f"{ln}\n" for ln in self.lines)
