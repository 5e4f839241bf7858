"""
Handler options: a handler class declares C{Options} (a L{HandlerOptions}
subclass); C{--handler-option key=value} configures it, C{--help} lists
its options, and bad values or unknown keys are one-line start-up errors
(in-process through L{esmtpkit.server.tap.Options}, and through a real
C{twistd} for the help text and the error line).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage

from esmtpkit import ESMTPHandler
from esmtpkit.handlers import HandlerOptions, Maildir
from esmtpkit.handlers.options import camelCase, handlerFactory, positiveFloat
from esmtpkit.server.startup import StartupError
from esmtpkit.server.tap import Options
from esmtpkit.testing import SMTPTestConnection

from . import optionhandlers
from .helpers import readReplies, twistdExecutable

ARCHIVE = "tests.optionhandlers.Archive"
ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions([*argv, "--port", "tcp:0:interface=127.0.0.1"])
    return options


def eomText(factory: Any) -> str:
    conn = SMTPTestConnection(factory)
    conn.command("EHLO c.example")
    conn.command("MAIL FROM:<a@example.org>")
    conn.command("RCPT TO:<b@example.org>")
    return conn.sendMessage(b"Subject: x\r\n\r\nhi\r\n").text


def test_camelCase() -> None:
    assert camelCase("tls-mode") == "tlsMode"
    assert camelCase("max-age-days") == "maxAgeDays"
    assert camelCase("folder") == "folder"


def test_defaultHandlerHasNoOptions() -> None:
    assert ESMTPHandler.Options is None


def test_defaults() -> None:
    """
    Without --handler-option, the factory builds the handler with the
    declared defaults.
    """
    options = parse("--handler", ARCHIVE)
    handler = options["handlerFactory"]()
    assert (handler.folder, handler.maxAge, handler.compress) == (
        "archive",
        30,
        False,
    )


def test_valuesAndFlags() -> None:
    """
    key=value sets a parameter (coerced), a key alone sets a flag; each
    connection gets a new handler with them.
    """
    options = parse(
        "--handler",
        ARCHIVE,
        "--handler-option",
        "folder=/srv/a",
        "--handler-option",
        "max-age=7",
        "--handler-option",
        "compress",
    )
    factory = options["handlerFactory"]
    first, second = factory(), factory()
    assert first is not second
    assert (first.folder, first.maxAge, first.compress) == ("/srv/a", 7, True)
    assert eomText(factory) == "/srv/a 7 True"


def test_keywords() -> None:
    opts = optionhandlers.ArchiveOptions()
    opts.parseHandlerOptions(["max-age=3"])
    assert opts.keywords() == {"folder": "archive", "maxAge": 3, "compress": False}


@pytest.mark.parametrize(
    "pair, message",
    [
        ("colour=red", "unknown handler option 'colour' (known: compress, folder, "),
        ("max-age=soon", "max-age: 'soon' is not a whole number"),
        ("max-age=0", "'0' is not at least 1"),
        ("max-age", "handler option max-age needs a value"),
        ("compress=yes", "handler option compress is a flag"),
    ],
)
def test_badOptionIsOneLineStartupError(pair: str, message: str) -> None:
    with pytest.raises(StartupError) as raised:
        parse("--handler", ARCHIVE, "--handler-option", pair)
    text = raised.value.message
    assert text.startswith(f"--handler {ARCHIVE}: ")
    assert message in text
    assert "\n" not in text


def test_fromHandlerOptions() -> None:
    """
    fromHandlerOptions builds the factory once, and its errors (and those
    of postOptions) are start-up errors.
    """
    name = "tests.optionhandlers.Checked"
    before = optionhandlers.Checked.built
    options = parse("--handler", name, "--handler-option", f"spool={ROOT}")
    assert optionhandlers.Checked.built == before + 1
    assert options["handlerFactory"]().spool == str(ROOT)
    with pytest.raises(StartupError) as raised:
        parse("--handler", name, "--handler-option", "spool=/nonexistent/x")
    assert raised.value.message == (
        f"--handler {name}: spool /nonexistent/x is not a folder"
    )
    with pytest.raises(StartupError) as raised:
        parse("--handler", name)
    assert raised.value.message == f"--handler {name}: spool=... is required"


def test_optionsNotFittingConstructor() -> None:
    with pytest.raises(StartupError) as raised:
        parse("--handler", "tests.optionhandlers.BadSignature")
    assert "its options do not fit its constructor" in raised.value.message


def test_optionForHandlerWithoutOptions() -> None:
    with pytest.raises(StartupError) as raised:
        parse("--handler", "esmtpkit.handlers.Sink", "--handler-option", "a=b")
    assert raised.value.message == (
        "--handler esmtpkit.handlers.Sink: takes no --handler-option (given 'a=b')"
    )


def test_fromOptionsStillWorks(tmp_path: Path) -> None:
    """
    The older protocol: Maildir's fromOptions reads --maildir.
    """
    folder = tmp_path / "box"
    options = parse("--handler", "esmtpkit.handlers.Maildir", "--maildir", str(folder))
    handler = options["handlerFactory"]()
    assert isinstance(handler, Maildir)
    assert handler.path == str(folder)
    assert (folder / "new").is_dir()


def test_serverOptionsVisible() -> None:
    seen: list[Any] = []

    class Peek(ESMTPHandler):
        class Options(HandlerOptions):
            pass

        @classmethod
        def fromHandlerOptions(cls, options: HandlerOptions) -> Any:
            seen.append(options.serverOptions)
            return cls

    module = types.ModuleType("peekmodule")
    module.Peek = Peek  # type: ignore[attr-defined]
    sys.modules["peekmodule"] = module
    try:
        assert handlerFactory("peekmodule.Peek", [], {"hostname": "mx"}) is Peek
    finally:
        del sys.modules["peekmodule"]
    assert seen == [{"hostname": "mx"}]


def test_positiveFloat() -> None:
    assert positiveFloat("0.5") == 0.5
    for bad in ("0", "-1", "x", "inf", "nan"):
        with pytest.raises(ValueError):
            positiveFloat(bad)


def test_describe() -> None:
    text = optionhandlers.ArchiveOptions().describe()
    assert "folder=VALUE" in text and "[default: archive]" in text
    assert "max-age=VALUE" in text and "A whole number, at least 1." in text
    assert "compress" in text
    assert "(no options)" in HandlerOptions().describe()


def test_usageErrorOnlyFromParse() -> None:
    opts = optionhandlers.ArchiveOptions()
    with pytest.raises(usage.UsageError):
        opts.parseHandlerOptions(["nope=1"])


# -- through twistd -------------------------------------------------------------


def twistd(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [twistdExecutable(), "-n", "--pidfile=", "esmtpkit", *argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_twistdHelpListsHandlerOptions(tmp_path: Path) -> None:
    result = twistd("--handler", ARCHIVE, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "--handler-option" in out
    assert f"Options of {ARCHIVE}" in out
    assert "max-age=VALUE" in out and "[default: 30]" in out
    # --help first, --handler after: the same.
    again = twistd("--help", "--handler", ARCHIVE, cwd=tmp_path)
    assert f"Options of {ARCHIVE}" in again.stdout


def test_twistdBadValueOneLine(tmp_path: Path) -> None:
    result = twistd(
        "--handler", ARCHIVE, "--handler-option", "max-age=-2", cwd=tmp_path
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines == [
        f"esmtpkit: --handler {ARCHIVE}: max-age: '-2' is not at least 1"
    ], result.stderr
    assert result.stdout == ""


def test_twistdServesAChain(tmp_path: Path) -> None:
    """
    A real twistd serving --handler Debug,Maildir on a unix socket: the
    message is in the Maildir, Debug's lines are in twistd's output, and
    Debug's option (output=) reached it.
    """
    sock = tmp_path / "smtp.sock"
    box = tmp_path / "box"
    debugLog = tmp_path / "debug.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(tmp_path / "out", "w") as out:
        process = subprocess.Popen(
            [
                twistdExecutable(),
                "-n",
                "--pidfile=",
                "esmtpkit",
                "--port",
                f"unix:{sock}",
                "--handler",
                "esmtpkit.handlers.Debug,esmtpkit.handlers.Maildir",
                "--maildir",
                str(box),
                "--handler-option",
                f"Debug.output={debugLog}",
            ],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert process.poll() is None, (tmp_path / "out").read_text()
            assert time.monotonic() < deadline, "twistd did not listen"
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sock))
            readReplies(client, 1)
            client.sendall(b"EHLO c.example\r\n")
            assert readReplies(client, 1)[0][0].code == 250
            client.sendall(
                b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
            )
            replies, _ = readReplies(client, 3)
            assert [r.code for r in replies] == [250, 250, 354]
            client.sendall(b"Subject: via twistd\r\n\r\nhello\r\n.\r\nQUIT\r\n")
            replies, _ = readReplies(client, 2)
            assert [r.code for r in replies] == [250, 221]
    finally:
        process.terminate()
        process.wait(timeout=30)
    [delivered] = list((box / "new").iterdir())
    assert b"Subject: via twistd" in delivered.read_bytes()
    text = debugLog.read_text()
    assert "Subject: via twistd" in text and "end of message" in text


def test_optionsMustBeHandlerOptions() -> None:
    class Plain(ESMTPHandler):
        class Options(usage.Options):
            optParameters = [["a", None, None, "A."]]

    module = types.ModuleType("plainmodule")
    module.Plain = Plain  # type: ignore[attr-defined]
    sys.modules["plainmodule"] = module
    try:
        with pytest.raises(StartupError) as raised:
            handlerFactory("plainmodule.Plain")
    finally:
        del sys.modules["plainmodule"]
    assert "Plain.Options is not a subclass of esmtpkit.handlers.HandlerOptions" in (
        raised.value.message
    )


def test_maildirHandlerOptions(tmp_path: Path) -> None:
    """
    Maildir declares its options: path and the delivery headers; --maildir
    stays a spelling of the folder, path= wins over it.
    """
    folder = tmp_path / "box"
    options = parse(
        "--handler",
        "esmtpkit.handlers.Maildir",
        "--maildir",
        str(tmp_path / "ignored"),
        "--handler-option",
        f"path={folder}",
        "--handler-option",
        "no-delivered-to",
        "--handler-option",
        "no-fsync",
    )
    handler = options["handlerFactory"]()
    assert isinstance(handler, Maildir)
    assert handler.path == str(folder)
    assert (handler.deliveredTo, handler.originalTo, handler.fsync) == (
        False,
        True,
        False,
    )
    assert (folder / "new").is_dir()


def test_maildirBadQuarantineFolder(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as raised:
        parse(
            "--handler",
            "esmtpkit.handlers.Maildir",
            "--handler-option",
            f"path={tmp_path}",
            "--handler-option",
            "quarantine-folder=../x",
        )
    assert "quarantine-folder" in raised.value.message
    assert "\n" not in raised.value.message
