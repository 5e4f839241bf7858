"""
The documentation site and the docstrings it shows: the Sphinx build (MyST
pages, autodoc) passes with warnings as errors and has every page; the hook
docstrings of L{IESMTPHandler} are on L{ESMTPHandler}'s methods too; the
table of replies esmtpkit sends by itself is what the server sends; every
option is documented; the epytext converter.
"""

from __future__ import annotations

import inspect
import pydoc
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from zope.interface.interface import Method

from esmtpkit import ESMTPHandler, IESMTPHandler
from esmtpkit.server.tap import Options
from esmtpkit.testing import SMTPTestConnection

from .helpers import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

from epytext import convertInline, convertLines  # noqa: E402
from replytable import findReplies  # noqa: E402


def test_sphinxBuild(tmp_path: Path) -> None:
    """
    C{sphinx-build -W -b html docs} succeeds: every page of docs/ is in
    the site (the glob toctree), the API reference shows the hooks'
    docstrings on ESMTPHandler, and the reply table is filled.
    """
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in DOCS.glob("*.md"):
        assert (out / f"{page.stem}.html").exists(), page.name
    api = (out / "api.html").read_text()
    assert 'id="esmtpkit.ESMTPHandler.EOM"' in api
    eom = api[api.index('id="esmtpkit.ESMTPHandler.EOM"') :][:3000]
    assert "responsibility for the message" in eom
    # Epytext fields became reST fields, markup no longer raw.
    assert "@param" not in api and "C{" not in api and "L{" not in api
    replies = " ".join(
        re.sub(r"<[^>]+>", " ", (out / "replies.html").read_text()).split()
    )
    assert "Need MAIL before RCPT" in replies
    assert "Too many recipients" in replies


def test_hookDocstringsOnHandler() -> None:
    """
    Every hook method of ESMTPHandler carries its interface docstring
    (after its own), as pydoc shows it; a subclass's hook without a
    docstring inherits it through inspect.getdoc.
    """
    hooks = [n for n in IESMTPHandler.names() if isinstance(IESMTPHandler[n], Method)]
    assert "EOM" in hooks and len(hooks) >= 20
    for name in hooks:
        expected = inspect.cleandoc(IESMTPHandler[name].getDoc())
        assert expected, name
        assert expected in inspect.getdoc(getattr(ESMTPHandler, name)), name
    text = pydoc.render_doc(ESMTPHandler.EOM, renderer=pydoc.plaintext)
    assert "The message is complete" in text
    mail = inspect.getdoc(ESMTPHandler.MAIL)
    assert mail.startswith("Accept the sender")
    assert "@param sender" in mail

    class Mine(ESMTPHandler):
        def EOM(self) -> Any:
            return None

    assert "The message is complete" in (inspect.getdoc(Mine.EOM) or "")


def _sent(lines: list[str], **settings: Any) -> tuple[int, str | None, str]:
    conn = SMTPTestConnection(ESMTPHandler, **settings)
    reply = None
    for line in lines:
        reply = conn.command(line)
    assert reply is not None
    return reply.code, reply.enhanced, reply.text


def test_replyTableIsWhatTheServerSends() -> None:
    """
    Replies the server really sends for bad input are rows of the table
    (built from the source), code, enhanced code and text.
    """
    rows = findReplies(PROJECT_ROOT / "esmtpkit")

    def inTable(code: int, enhanced: str | None, text: str) -> bool:
        # <name> in a row's text stands for what is filled in at run time.
        return any(
            (row.code, row.enhanced) == (code, enhanced or "")
            and re.fullmatch(
                "".join(
                    ".+" if part.startswith("<") else re.escape(part)
                    for part in re.split(r"(<[^<>]+>)", row.text)
                ),
                text,
            )
            for row in rows
        )

    cases = [
        (["EHLO c.example", "RCPT TO:<a@example.org>"], {}),
        (["EHLO c.example", "MAIL FROM:<a@example.org>", "DATA"], {}),
        (["MAIL FROM:<a@example.org>"], {}),
        (["EHLO c.example", "MAIL FROM:<a b@@>"], {}),
        (["EHLO c.example", "STARTTLS"], {}),
        (
            [
                "EHLO c.example",
                "MAIL FROM:<a@example.org>",
                "RCPT TO:<b@example.org>",
                "RCPT TO:<c@example.org>",
            ],
            {"maxRecipients": 1},
        ),
    ]
    for lines, settings in cases:
        code, enhanced, text = _sent(lines, **settings)
        assert code >= 400, (lines, code, text)
        assert inTable(code, enhanced, text), (lines, code, enhanced, text)
    # A text with the host name in it.
    conn = SMTPTestConnection(ESMTPHandler, idleTimeout=5)
    conn.clock.advance(6)
    [reply] = conn.replies()
    assert inTable(reply.code, reply.enhanced, reply.text), reply
    assert not inTable(reply.code, reply.enhanced, reply.text + " and more")


def test_everyOptionDocumented() -> None:
    """
    docs/options.md has every option of twistd esmtpkit.
    """
    text = (DOCS / "options.md").read_text()
    options = Options()
    names = {p[0] for p in options.optParameters} | {f[0] for f in options.optFlags}
    names |= {
        n[4:].replace("_", "-")
        for n in dir(options)
        if n.startswith("opt_") and len(n) > 5
    }
    names -= {"help", "version", "help-auth", "help-auth-type"}
    missing = sorted(n for n in names if f"`--{n}" not in text)
    assert missing == []


def test_epytextInline() -> None:
    """
    Links, code (with braces inside), emphasis; text reST would take for
    markup is escaped.
    """
    assert convertInline("L{Reply}s") == "\\ :py:obj:`Reply`\\ s"
    assert convertInline("L{the reply <esmtpkit.Reply>}").strip("\\ ") == (
        ":py:obj:`the reply <esmtpkit.Reply>`"
    )
    assert convertInline('C{{"a": 1}}') == '\\ ``{"a": 1}``\\ '
    assert convertInline("I{really}") == "\\ *really*\\ "
    assert convertInline("2*3 and a_b") == "2\\*3 and a\\_b"
    assert convertInline("C{unclosed") == "C{unclosed"


def test_epytextLines() -> None:
    """
    Fields become reST fields (continuations kept), an indented block
    after a blank line becomes a literal block, lists stay lists.
    """
    lines = [
        "Do it.",
        "",
        "    code(x)",
        "",
        "  - an item",
        "",
        "@param name: the name,",
        "    on two lines.",
        "@raise ValueError: if not.",
        "@return: C{True}.",
    ]
    assert convertLines(lines) == [
        "Do it.",
        "",
        "::",
        "",
        "    code(x)",
        "",
        "  - an item",
        "",
        ":param name: the name,",
        "    on two lines.",
        ":raises ValueError: if not.",
        ":returns: \\ ``True``\\ .",
    ]


def test_epytextMarkupOverLines() -> None:
    """
    Markup that goes on over the next line is converted whole.
    """
    assert convertLines(["one L{IESMTPHandler", "<esmtpkit.IESMTPHandler>} two"]) == [
        "one \\ :py:obj:`IESMTPHandler <esmtpkit.IESMTPHandler>`\\  two"
    ]
