"""Read the runnable parts of a Markdown doc: ```console commands with their expected output, and files.

Conventions: in a ```console block, ``$ `` lines are commands and the lines after one are its expected output
(standard output and error together). ``…`` inside a line matches anything on that line; a line that is only
``…`` matches any number of lines. An HTML comment ``<!-- file: NAME -->`` right before a ```json block means
"write this block to NAME" at that point of the walk-through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FileStep:
    line: int
    name: str
    body: str


@dataclass(slots=True)
class Command:
    line: int
    text: str
    expected: list[str] = field(default_factory=list)


def steps(doc: Path) -> list[FileStep | Command]:
    lines = doc.read_text("utf-8").splitlines()
    found: list[FileStep | Command] = []
    index = 0
    while index < len(lines):
        fence = lines[index].strip()
        if fence in ("```console", "```json"):
            end = lines.index("```", index + 1)
            body = lines[index + 1 : end]
            marker = re.fullmatch(r"<!-- file: (\S+) -->", lines[index - 1].strip()) if index else None
            if fence == "```json" and marker:
                found.append(FileStep(index + 1, marker.group(1), "\n".join(body) + "\n"))
            elif fence == "```console":
                for offset, text in enumerate(body):
                    if text.startswith("$ "):
                        found.append(Command(index + offset + 2, text[2:]))
                    else:
                        command = found[-1]
                        assert isinstance(command, Command), f"{doc.name}:{index + offset + 2}: output before a command"
                        command.expected.append(text)
            index = end
        index += 1
    return found


def matches(expected: list[str], actual: str) -> bool:
    """Does ``actual`` (the whole output) match the expected lines (with ``…`` wildcards)?"""
    parts = []
    for line in expected:
        if line == "…":
            parts.append("(?s:.*?)")
        else:
            parts.append("[^\n]*".join(re.escape(piece) for piece in line.split("…")))
    pattern = "\n".join(parts)
    return re.fullmatch(pattern, actual.rstrip("\n")) is not None
