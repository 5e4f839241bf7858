"""
Packaging guards: the wheel ships the esmtpkit package and the twistd plugin
module, and nothing that would damage Twisted's own C{twisted/plugins}
package (no C{__init__.py} files there, no C{dropin.cache}); the plugin module
stays cheap to import.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .helpers import PROJECT_ROOT


@pytest.fixture(scope="module")
def wheelFiles(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """
    Build a wheel of the project (without dependencies) and list its files.
    """
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        # The build backend is here already: no need for the network.
        command.append("--no-build-isolation")
    result = subprocess.run(
        [*command, str(PROJECT_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("esmtpkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheelContainsPackageAndPlugin(wheelFiles: list[str]) -> None:
    """
    The wheel has the plugin module, the package and its handlers.
    """
    for name in (
        "twisted/plugins/esmtpkit_plugin.py",
        "esmtpkit/__init__.py",
        "esmtpkit/core/conversation.py",
        "esmtpkit/smtp/protocol.py",
        "esmtpkit/server/tap.py",
        "esmtpkit/handlers/__init__.py",
        "esmtpkit/handlers/maildir.py",
        "esmtpkit/handlers/sink.py",
    ):
        assert name in wheelFiles, f"{name} missing from the wheel"


def test_wheelLeavesTwistedAlone(wheelFiles: list[str]) -> None:
    """
    The wheel has no twisted/__init__.py or twisted/plugins/__init__.py
    (installing it would overwrite Twisted's), no dropin.cache, nothing
    from tests/, no bytecode, and nothing under twisted/ but the plugin.
    """
    assert "twisted/__init__.py" not in wheelFiles
    assert "twisted/plugins/__init__.py" not in wheelFiles
    assert not [n for n in wheelFiles if n.endswith("dropin.cache")]
    assert not [n for n in wheelFiles if n.startswith("tests/")]
    assert not [n for n in wheelFiles if n.endswith(".pyc") or "__pycache__" in n]
    assert [n for n in wheelFiles if n.startswith("twisted/")] == [
        "twisted/plugins/esmtpkit_plugin.py"
    ]


def test_pluginModuleDoesNotImportReactor(tmp_path: Path) -> None:
    """
    Importing the plugin module (as Twisted does whenever it rebuilds its
    plugin cache) installs no reactor and does not import esmtpkit.server.tap.
    """
    probe = (
        "import sys\n"
        "import twisted.plugins.esmtpkit_plugin as plugin\n"
        "assert plugin.esmtpkit.tapname == 'esmtpkit', plugin.esmtpkit.tapname\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'\n"
        "assert 'esmtpkit.server.tap' not in sys.modules, 'tap imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"
