"""
Every Python example of README.md and docs/*.md runs, so that a broken
example fails the tests.

The documents are found when the tests are collected (a new docs/*.md is
picked up by itself). Each fenced block whose language is C{python} (or
C{py}, C{python3}) is one test: the block runs as a module of its own, in a
temporary working directory, then every C{test*} function it defines is
called (its arguments are pytest fixtures: C{tmp_path}, C{esmtpkit_server},
...) and every C{unittest.TestCase} it defines is run. While a block runs,
the global reactor (C{from twisted.internet import reactor}) is a
L{ExampleReactor}: an example that listens and calls C{reactor.run()}
records its listener and returns at once, and touches no real socket (the
C{esmtpkit_server} fixture has a reactor of its own); C{beginLoggingTo}
does nothing. A C{pycon} block, or
a Python block that starts with C{>>>}, is run as a doctest. Other blocks
(shell, text, ...) are not run.

Markers, an HTML comment on the line just before the block:

  - C{<!-- file: NAME.py -->}: the block is also the file C{NAME.py} (a
    path relative to the document's own folder of files), written before
    any block of that document runs, so that another block can import it
    (a tutorial's handler module and its test).
  - C{<!-- no-test: REASON -->}: the block is not run (it starts a reactor
    that runs until it is interrupted, say); it must still compile, and
    REASON must say why. Use it sparingly.
"""

from __future__ import annotations

import doctest
import inspect
import os
import re
import smtplib
import subprocess
import sys
import textwrap
import time
import types
import unittest
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import twisted.internet
import twisted.logger
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool

from .helpers import twistdExecutable

ROOT = Path(__file__).resolve().parents[1]

PYTHON = {"python", "py", "python3"}
DOCTEST = {"pycon"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>[\w-]+)\s*:?\s*(?P<value>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """
    One fenced code block of a document.

    @ivar document: the document's path, relative to the repository.
    @ivar line: the line number of the block's first line of code.
    @ivar language: the first word of the fence's info string, lower case.
    @ivar source: the code, dedented by the fence's indentation.
    @ivar marker: C{(kind, value)} of the HTML comment just before the
        fence, or L{None}.
    """

    document: str
    line: int
    language: str
    source: str
    marker: tuple[str, str] | None

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def isPython(self) -> bool:
        return self.language in PYTHON or self.language in DOCTEST

    @property
    def isDoctest(self) -> bool:
        return self.language in DOCTEST or self.source.lstrip().startswith(">>>")

    @property
    def fileName(self) -> str | None:
        if self.marker is not None and self.marker[0] == "file":
            return self.marker[1]
        return None

    @property
    def runs(self) -> bool:
        return self.isPython and not (self.marker and self.marker[0] == "no-test")


def documents(root: Path = ROOT) -> list[Path]:
    """
    README.md and every Markdown file under docs/, in a stable order.
    """
    found = [root / "README.md"] if (root / "README.md").exists() else []
    return found + sorted((root / "docs").rglob("*.md"))


def parseBlocks(text: str, document: str) -> list[Block]:
    """
    The fenced code blocks of Markdown C{text}.
    """
    blocks: list[Block] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        language = (opening["info"].split() or [""])[0].strip("{}.").lower()
        previous = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        found = _MARKER.match(previous)
        marker = (found["kind"].lower(), found["value"]) if found else None
        end = i + 1
        while end < len(lines):
            closing = lines[end].strip()
            if closing.startswith(fence[0] * len(fence)) and not closing.strip(
                fence[0]
            ):
                break
            end += 1
        body = [
            ln[len(indent) :] if ln.startswith(indent) else ln
            for ln in lines[i + 1 : end]
        ]
        source = textwrap.dedent("\n".join(body)) + "\n"
        blocks.append(Block(document, i + 2, language, source, marker))
        i = end + 1
    return blocks


def allBlocks(root: Path = ROOT) -> list[Block]:
    blocks = []
    for path in documents(root):
        relative = path.relative_to(root).as_posix()
        blocks += parseBlocks(path.read_text(encoding="utf-8"), relative)
    return blocks


BLOCKS = allBlocks()


class ExampleReactor(MemoryReactorClock):
    """
    The global reactor while an example runs: it records listeners (which
    also take C{startReading}/C{stopReading}, as esmtpkit's listeners call),
    has a thread pool that is never started, and C{run()} returns at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.threadPool = ThreadPool(0, 1)

    def getThreadPool(self) -> ThreadPool:
        return self.threadPool

    def _port(self, port: Any) -> Any:
        port.startReading = port.stopReading = lambda: None
        return port

    def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
        return self._port(super().listenTCP(*args, **kwargs))

    def listenSSL(self, *args: Any, **kwargs: Any) -> Any:
        return self._port(super().listenSSL(*args, **kwargs))

    def listenUNIX(self, *args: Any, **kwargs: Any) -> Any:
        return self._port(super().listenUNIX(*args, **kwargs))


def _compile(block: Block) -> types.CodeType:
    # Blank lines first, so that tracebacks give the document's line numbers.
    return compile("\n" * (block.line - 1) + block.source, block.document, "exec")


def _writeFiles(blocks: list[Block], folder: Path) -> None:
    for block in blocks:
        name = block.fileName
        if name is None:
            continue
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents:
            raise AssertionError(f"{block.id}: file {name!r} is outside its folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.source, encoding="utf-8")


def _runDoctest(block: Block) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(
        block.source, {}, block.id, block.document, block.line - 1
    )
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    output: list[str] = []
    runner.run(test, out=output.append)
    if runner.failures:
        raise AssertionError("".join(output))


def _runModule(block: Block, request: pytest.FixtureRequest) -> list[str]:
    """
    Run the block as a module, then its tests.

    @return: the names of the tests it ran.
    """
    name = "docs_example_" + re.sub(r"\W", "_", block.id)
    module = types.ModuleType(name)
    module.__file__ = str(ROOT / block.document)
    sys.modules[name] = module
    try:
        exec(_compile(block), module.__dict__)
        ran = []
        for attribute, value in list(vars(module).items()):
            if not attribute.startswith("test"):
                continue
            if inspect.isfunction(value) and value.__module__ == name:
                fixtures = {
                    p: request.getfixturevalue(p)
                    for p in inspect.signature(value).parameters
                }
                value(**fixtures)
                ran.append(attribute)
        for attribute, value in list(vars(module).items()):
            if (
                isinstance(value, type)
                and issubclass(value, unittest.TestCase)
                and value.__module__ == name
            ):
                suite = unittest.defaultTestLoader.loadTestsFromTestCase(value)
                result = unittest.TestResult()
                suite.run(result)
                problems = result.errors + result.failures + result.unexpectedSuccesses
                if problems or result.skipped or not result.testsRun:
                    raise AssertionError(
                        f"{block.id}: {attribute}: ran {result.testsRun}, "
                        f"skipped {result.skipped}, problems:\n"
                        + "\n".join(str(p) for p in problems)
                    )
                ran.append(attribute)
        return ran
    finally:
        del sys.modules[name]


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.runs], ids=lambda b: b.id)
def test_example(
    block: Block,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """
    The block runs without an error, and so do the tests it defines.
    """
    files = tmp_path / "files"
    files.mkdir()
    _writeFiles([b for b in BLOCKS if b.document == block.document], files)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(files))
    fake = ExampleReactor()
    monkeypatch.setattr(twisted.internet, "reactor", fake, raising=False)
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", fake)  # type: ignore[arg-type]
    # An example that starts logging does not take over the test run's log.
    beginner = twisted.logger.globalLogBeginner
    monkeypatch.setattr(beginner, "beginLoggingTo", lambda *a, **k: None)
    before = set(sys.modules)
    try:
        if block.isDoctest:
            _runDoctest(block)
        else:
            _runModule(block, request)
    finally:
        # Modules imported from the document's files go, so that the next
        # document's files of the same name are imported afresh.
        for name in set(sys.modules) - before:
            path = getattr(sys.modules[name], "__file__", None) or ""
            if path.startswith(str(files)):
                del sys.modules[name]


def test_markers() -> None:
    """
    Every marker names a known kind; C{no-test} gives a reason and its
    block still compiles; C{file} names a Python file of a Python block,
    once per document.
    """
    problems = []
    names: dict[tuple[str, str], str] = {}
    for block in BLOCKS:
        if block.marker is None or not block.isPython:
            continue
        kind, value = block.marker
        if kind == "no-test":
            if len(value.split()) < 2:
                problems.append(f"{block.id}: no-test needs a reason")
            if not block.isDoctest:
                try:
                    _compile(block)
                except SyntaxError as e:
                    problems.append(f"{block.id}: does not compile: {e}")
        elif kind == "file":
            if not value.endswith(".py"):
                problems.append(f"{block.id}: file {value!r} is not a .py file")
            first = names.setdefault((block.document, value), block.id)
            if first != block.id:
                problems.append(f"{block.id}: file {value!r} is also {first}")
        else:
            problems.append(f"{block.id}: unknown marker {kind!r}")
    assert not problems, "\n".join(problems)


def test_collectsTheDocuments() -> None:
    """
    The collector sees README.md and the docs, and their Python blocks (so
    that this module cannot pass by running nothing).
    """
    documents = {b.document for b in BLOCKS if b.runs}
    assert {"README.md", "docs/testing.md", "docs/tutorial.md"} <= documents
    assert len([b for b in BLOCKS if b.runs]) >= 20


def test_parseBlocks() -> None:
    """
    Fences of backticks or tildes, indented ones (in a list item), info
    strings, markers on the line before, and the line of the first line of
    code.
    """
    text = (
        "Intro\n"
        "<!-- no-test: runs for ever -->\n"
        "\n"
        "```python title=x\n"
        "while True: pass\n"
        "```\n"
        "- item\n"
        "\n"
        "  ~~~~py\n"
        "  if x:\n"
        "      y()\n"
        "  ~~~~\n"
        "```sh\n"
        "ls\n"
        "```\n"
        "````pycon\n"
        ">>> 1 + 1\n"
        "2\n"
        "```\n"
        "````\n"
    )
    blocks = parseBlocks(text, "d.md")
    assert [(b.line, b.language, b.marker) for b in blocks] == [
        (5, "python", ("no-test", "runs for ever")),
        (10, "py", None),
        (14, "sh", None),
        (17, "pycon", None),
    ]
    assert blocks[1].source == "if x:\n    y()\n"
    assert blocks[3].source == ">>> 1 + 1\n2\n```\n"
    assert [b.runs for b in blocks] == [False, True, False, True]
    assert blocks[3].isDoctest and not blocks[1].isDoctest


def test_tutorialServesUnderTwistd(tmp_path: Path) -> None:
    """
    The tutorial's handler file runs as its "Run it" section says (under
    C{twistd -n esmtpkit --handler spamfilter.SpamFilter --maildir
    Maildir}, with C{PYTHONPATH=.}): over a real socket, the ham is
    accepted into Maildir/new and the spam gets the 550. The port is 0,
    read back from twistd's "starting on" log line; the process is stopped
    by its PID.
    """
    tutorial = [b for b in BLOCKS if b.document == "docs/tutorial.md"]
    _writeFiles(tutorial, tmp_path)
    log = tmp_path / "twistd.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [twistdExecutable(), "-n", "--pidfile=", "esmtpkit"]
            + ["--handler", "spamfilter.SpamFilter", "--maildir", "Maildir"]
            + ["-p", "tcp:0:interface=127.0.0.1"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": "."},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline:
            found = re.search(rb"ESMTPFactory starting on (\d+)", log.read_bytes())
            port = int(found[1]) if found else None
            if port is None:
                assert process.poll() is None, log.read_text()
                time.sleep(0.05)  # polling the log, bounded by the deadline
        assert port, log.read_text()
        envelope = ("alice@example.com", "bob@example.org")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail(*envelope, "Subject: Lunch?\r\n\r\nAt noon")
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(*envelope, "Subject: LOTTERY win\r\n\r\n$$$")
        assert refused.value.smtp_code == 550
        assert b"looks like spam" in refused.value.smtp_error
        [delivered] = (tmp_path / "Maildir" / "new").iterdir()
        assert b"Subject: Lunch?" in delivered.read_bytes()
        assert list((tmp_path / "Maildir" / "tmp").iterdir()) == []
    finally:
        process.terminate()
        assert process.wait(30) == 0, log.read_text()
