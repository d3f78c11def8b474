"""Loads the named SQL statements and migrations shipped in the package."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load(dialect: str) -> dict[str, str]:
    """``{name: statement}`` from ``sql/<dialect>.sql``."""
    text = resources.files("oncely").joinpath(f"sql/{dialect}.sql").read_text()
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


@cache
def migrations(dialect: str) -> tuple[Migration, ...]:
    """The migrations for a dialect, in version order; each statement ends with ';' at a
    line's end, which is how the files are split."""
    folder = resources.files("oncely").joinpath(f"migrations/{dialect}")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match is None:
            continue
        lines = [ln for ln in entry.read_text().splitlines() if not ln.lstrip().startswith("--")]
        statements = tuple(
            s.strip() for s in re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE) if s.strip()
        )
        found.append(Migration(int(match[1]), match[2], statements))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"oncely's {dialect} migrations are not numbered 1..n: {found}")
    return tuple(found)
