"""docs/policies.md tells the truth: every JSON example parses, every shown command runs and prints what is shown.

Conventions in the doc: an HTML comment on the line before a ```json block marks it -- ``consumer`` (a consumer
document), ``composite`` (a composite route), ``invalid`` (must be refused), ``file: NAME`` (written to NAME for the
commands). In ```console blocks,
``$ `` lines are commands (run in order, in one directory, against one dev agent) and the lines after them are the
expected output (standard output and error together); ``…`` in an expected line matches anything.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest

from consulgw.devagent import DevAgent
from consulgw.errors import PolicyError
from consulgw.policy.parse import parse_composite, parse_consumer, parse_policy
from tests.policy.cli import clean_env, run_cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"


@dataclass(frozen=True, slots=True)
class JsonExample:
    line: int
    text: str
    marks: str


@dataclass(slots=True)
class Command:
    line: int
    text: str
    expected: list[str] = field(default_factory=list)


def blocks(kind: str) -> list[tuple[int, str, str]]:
    """(line number, marker comment, body) of each ```kind block."""
    lines = DOC.read_text("utf-8").splitlines()
    found: list[tuple[int, str, str]] = []
    index = 0
    while index < len(lines):
        if lines[index].strip() == f"```{kind}":
            marker = lines[index - 1].strip() if index and lines[index - 1].strip().startswith("<!--") else ""
            end = lines.index("```", index + 1)
            found.append((index + 1, marker, "\n".join(lines[index + 1 : end])))
            index = end
        index += 1
    return found


def json_examples() -> list[JsonExample]:
    return [JsonExample(line, text, marks) for line, marks, text in blocks("json")]


def commands() -> list[Command]:
    result: list[Command] = []
    for line, _, body in blocks("console"):
        for offset, text in enumerate(body.splitlines()):
            if text.startswith("$ "):
                result.append(Command(line + offset + 1, text[2:]))
            else:
                result[-1].expected.append(text)
    return result


def test_doc_has_examples() -> None:
    assert len(json_examples()) >= 15
    assert len(commands()) >= 8


@pytest.mark.parametrize("example", [pytest.param(e, id=f"line-{e.line}") for e in json_examples()])
def test_json_examples_parse(example: JsonExample) -> None:
    json.loads(example.text)  # plain JSON, no comments or trailing commas
    key = f"docs/policies.md:{example.line}"
    if "invalid" in example.marks:
        with pytest.raises(PolicyError):
            parse_policy(example.text, key=key)
    elif "composite" in example.marks:
        parse_composite(example.text, key=key, name="example")
    elif "consumer" in example.marks:
        parse_consumer(example.text, key=key, name="alice")
    else:
        parse_policy(example.text, key=key)


def matches(expected: list[str], actual: str) -> bool:
    lines = actual.rstrip("\n").split("\n") if actual.strip() else []
    if len(lines) != len(expected):
        return False
    for want, got in zip(expected, lines, strict=True):
        pattern = ".*".join(re.escape(part) for part in want.split("…"))
        if re.fullmatch(pattern, got) is None:
            return False
    return True


async def run_shown(command: Command, cwd: Path, agent: DevAgent) -> tuple[int, str]:
    words = shlex.split(command.text)
    stdin = b""
    if "<" in words:
        at = words.index("<")
        stdin = (cwd / words[at + 1]).read_bytes()
        words = words[:at] + words[at + 2 :]
    env = clean_env(CONSUL_HTTP_ADDR=agent.url)
    if words[0] == "consulgw":
        result = await run_cli(*words[1:], stdin=stdin, cwd=cwd, env=env)
        return result.code, result.out + result.err
    assert words[0] == "python", f"docs line {command.line}: only consulgw and python commands are shown"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *words[1:], cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_shown_commands_print_what_is_shown(dev_agent: DevAgent, tmp_path: Path) -> None:
    for example in json_examples():
        if "file:" in example.marks:
            name = example.marks.split("file:", 1)[1].replace("-->", "").strip()
            (tmp_path / name).write_text(example.text + "\n")
    for command in commands():
        code, output = await run_shown(command, tmp_path, dev_agent)
        assert matches(command.expected, output), f"docs line {command.line}: {command.text}\n{output}"
        failing = any(line.startswith("consulgw ") and ": error: " in line for line in command.expected)
        assert (code != 0) is failing, f"docs line {command.line}: exit status {code}"
        if command.text.startswith("python -c 'import jwt"):
            users = json.loads((tmp_path / "users.json").read_text())["auth"]
            claims = jwt.decode(output.strip(), users["secret"], algorithms=["HS256"], issuer=users["issuer"])
            assert claims["sub"] == "alice"
            assert claims["scope"] == "users:read"
