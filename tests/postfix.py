"""
A private Postfix instance for tests of Postfix as esmtpkit's SMTP client
(relaying), LMTP client (delivery) or milter host.

L{PrivatePostfix} writes its own C{main.cf} and C{master.cf} into a fresh
directory under C{/tmp} (with the queue and data directories and the
C{maillog} that postlogd writes), starts it with C{postfix -c CONFDIR
start} and always stops it (then kills the master's process group, by the
PID in C{queue/pid/master.pid}, if it is still alive). The system Postfix
is never used: every command gets C{-c CONFDIR}, and C{postfix
set-permissions} (which would also touch files under C{/usr}) is never run.

It listens on 127.0.0.1 only, on a free port, with C{mynetworks =
127.0.0.0/8}, so the test may relay anywhere. A C{texthash:} transport
table routes the test domain(s) to C{transport} and L{SENDER_DOMAIN} to
C{discard:}; C{default_transport} is C{error:}, so smtpd refuses any other
recipient domain (550 5.1.2), and no DNS is ever looked up. Bounces go to
the default sender C{alice@sender.test}, so they are discarded at once
(C{status=sent}) and never loop or wait; C{notify_classes} is empty (no
postmaster notices or double bounces).

Pitfalls: the daemons run as user C{postfix}, which must be able to reach
what they use (an LMTP socket must be in searchable folders and writable),
but pytest's C{tmp_path} is in C{/tmp/pytest-of-root}, mode 0700: hence
C{/tmp/esmtpkit-pf-*} (0755), C{PrivatePostfix.base}. Postfix re-reads a
configuration file changed in the last second, for up to 2 seconds per
program: the files are dated 10 seconds back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .helpers import LOOPBACK, freePort, probeSMTP

SENDER_DOMAIN = "sender.test"
DEFAULT_SENDER = f"alice@{SENDER_DOMAIN}"
TEST_DOMAIN = "example.org"

# Services: name, type, private, unpriv, chroot (never), wakeup, maxproc,
# command. No tlsmgr: TLS is off.
_SERVICES = """\
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

# Fixed main.cf settings; PrivatePostfix.mainSettings adds the paths.
_MAIN = """\
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
mydestination =
relayhost =
relay_domains =
mynetworks = 127.0.0.0/8
inet_interfaces = loopback-only
inet_protocols = ipv4
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
default_transport = error:5.1.2 no route in the test Postfix
notify_classes =
smtputf8_enable = no
local_header_rewrite_clients =
disable_mime_output_conversion = yes
alias_maps =
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_connect_timeout = 5s
lmtp_connect_timeout = 5s
in_flow_delay = 0s
smtpd_error_sleep_time = 0s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
delay_warning_time = 0h
milter_protocol = 6
milter_connect_timeout = 5s
milter_command_timeout = 10s
milter_content_timeout = 10s
"""

_DELIVERY = re.compile(
    r"postfix/(?P<agent>[\w/-]+)\[\d+\]: (?P<queueId>[0-9A-F]+): "
    r"to=<(?P<recipient>[^>]*)>,.*? relay=(?P<relay>[^,]*),.*? "
    r"dsn=(?P<dsn>[\d.]+), status=(?P<status>\w+) \((?P<text>.*)\)$",
    re.MULTILINE,
)


def postfixCommand(name: str) -> str:
    """
    The path of Postfix command C{name} (also in sbin folders that PATH may
    lack).

    @raise AssertionError: Postfix is not installed (the test fails loudly:
        C{.ci/run} installs Debian's C{postfix} package).
    """
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise AssertionError(
            f"Postfix is not installed ({name} not found), and these tests need "
            "it: .ci/run installs it, or apt-get install postfix with debconf "
            "postfix/main_mailer_type 'No configuration'"
        )
    return found


@dataclass
class Submission:
    """
    What the SMTP client saw when it submitted one message: the replies
    (code, text) to MAIL, to each RCPT, and to the end of DATA (C{None} if
    no recipient was accepted), and the queue ID from the last one.
    """

    mail: tuple[int, str]
    rcpt: dict[str, tuple[int, str]] = field(default_factory=dict)
    data: tuple[int, str] | None = None
    queueId: str | None = None


@dataclass(frozen=True)
class Delivery:
    """
    One delivery attempt, from a C{to=<...>, ..., status=...} log line.
    """

    queueId: str
    recipient: str
    agent: str
    relay: str
    dsn: str
    status: str
    text: str


class PrivatePostfix:
    """
    A Postfix instance of its own, under a fresh directory C{base} in
    C{/tmp} that Postfix's daemons (user C{postfix}) can reach: for a test's
    LMTP socket, say.

    The options (attributes) can be changed until L{start} writes the
    configuration; afterwards use L{postconf} with C{reload=True}.
    """

    def __init__(
        self,
        transport: str | Mapping[str, str] | None = None,
        *,
        milters: Sequence[str] = (),
        milterDefaultAction: str = "tempfail",
        extra: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        """
        @param transport: where mail for L{TEST_DOMAIN} goes, as a transport
            table value (C{lmtp:unix:/path}, C{lmtp:inet:127.0.0.1:PORT},
            C{smtp:[127.0.0.1]:PORT}), or a mapping of domains to such values.
        @param milters: the C{smtpd_milters} (C{inet:127.0.0.1:PORT}, ...),
            spoken to with C{milter_protocol = 6}.
        @param milterDefaultAction: C{milter_default_action}, what to do when
            a milter fails: C{tempfail}, C{accept}, C{reject}, C{quarantine}.
        @param extra: more main.cf settings, applied last.
        @param port: smtpd's port on 127.0.0.1 (default: a free one).
        """
        postfixCommand("postfix")
        if os.geteuid() != 0:
            raise AssertionError("PrivatePostfix must run as root (postfix start)")
        self.transport = transport
        self.milters = list(milters)
        self.milterDefaultAction = milterDefaultAction
        self.extra = dict(extra or {})
        self.base = Path(tempfile.mkdtemp(prefix="esmtpkit-pf-"))
        self.base.chmod(0o755)
        self.configDirectory = self.base / "conf"
        self.queueDirectory = self.base / "queue"
        self.maillog = self.base / "maillog"
        for folder in (self.configDirectory, self.queueDirectory):
            folder.mkdir(mode=0o755)
        for name in ("main.cf", "master.cf"):  # for postconf -d
            (self.configDirectory / name).write_text("")
        self._port = port or freePort()
        self.started = False

    @property
    def smtpPort(self) -> int:
        """
        The port of this instance's smtpd on 127.0.0.1.
        """
        return self._port

    def mainSettings(self) -> dict[str, str]:
        """
        The main.cf that L{start} writes, as a dict (C{compatibility_level}
        3.6, or 2 for a Postfix before 3.6).
        """
        text = self._run("postconf", "-dh", "mail_version")
        version = tuple(int(part) for part in re.findall(r"\d+", text)[:2])
        if version < (3, 4):
            raise AssertionError(f"Postfix {version} is too old for maillog_file")
        settings = {
            "compatibility_level": "3.6" if version >= (3, 6) else "2",
            "queue_directory": str(self.queueDirectory),
            "data_directory": str(self.base / "data"),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.base),
            "transport_maps": f"texthash:{self.configDirectory / 'transport'}",
        }
        for line in _MAIN.splitlines():
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip()
        settings["smtpd_milters"] = ", ".join(self.milters)
        settings["milter_default_action"] = self.milterDefaultAction
        settings.update(self.extra)
        return settings

    def start(self, timeout: float = 20.0) -> None:
        """
        Write the configuration, run C{postfix -c CONFDIR start} and wait
        until smtpd answers.
        """
        self.writeConfiguration()
        self.started = True
        self._run("postfix", "start", timeout=timeout)
        deadline = time.monotonic() + timeout
        while not probeSMTP(self._port, timeout=1.0):
            if time.monotonic() > deadline:
                raise AssertionError(self._failure(f"no smtpd on port {self._port}"))
            time.sleep(0.05)

    def writeConfiguration(self) -> None:
        """
        Write C{main.cf}, C{master.cf} and the transport table (dated back),
        as L{start} does; for a caller that starts Postfix itself (the
        benchmark's C{postfix -c CONFDIR start-fg}, then sets C{started}).
        """
        files = {
            "main.cf": [f"{k} = {v}" for k, v in self.mainSettings().items()],
            "master.cf": [f"{LOOPBACK}:{self._port} inet n - n - - smtpd", _SERVICES],
            "transport": [f"{SENDER_DOMAIN} discard:"],
        }
        routes = self.transport or {}
        if isinstance(routes, str):
            routes = {TEST_DOMAIN: routes}
        files["transport"] += [f"{d} {t}" for d, t in routes.items()]
        for name, lines in files.items():
            (self.configDirectory / name).write_text("\n".join(lines) + "\n")
        self._backdate()

    def stop(self, timeout: float = 15.0) -> None:
        """
        Stop the instance: C{postfix stop}, then SIGKILL to the master's
        process group if it is still alive, and to any other process of the
        instance; fail if one is still left after C{timeout} seconds.
        Remove its directory in any case.
        """
        try:
            if self.started:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._run("postfix", "stop", check=False, timeout=timeout)
                pid = None
                with contextlib.suppress(OSError, ValueError):
                    pid = int((self.queueDirectory / "pid/master.pid").read_text())
                grace = time.monotonic() + 2  # for the daemons to see it go
                while left := self.processes():
                    if time.monotonic() > grace + timeout:
                        raise AssertionError(f"Postfix processes left: {left}")
                    if time.monotonic() > grace:
                        with contextlib.suppress(ProcessLookupError):
                            if pid in left:
                                os.killpg(pid, signal.SIGKILL)
                            for other in left:
                                os.kill(other, signal.SIGKILL)
                    time.sleep(0.05)
        finally:
            self.started = False
            shutil.rmtree(self.base, ignore_errors=True)

    def processes(self) -> list[int]:
        """
        The PIDs of this instance's processes: those with C{MAIL_CONFIG}
        set to its configuration directory in their environment (how
        C{postfix -c} passes it on: no daemon has it in its command line),
        or with that directory as an argument (as C{pgrep -f} would find).
        """
        config = os.fsencode(self.configDirectory)
        found = []
        for entry in Path("/proc").iterdir():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if entry.name.isdigit() and (
                b"MAIL_CONFIG=" + config in environ or config in argv
            ):
                found.append(int(entry.name))
        return found

    def postconf(self, *arguments: str, reload: bool = False) -> str:
        """
        Run C{postconf -c CONFDIR arguments} (C{-e name=value} edits
        main.cf, C{-h name} shows a value), then C{postfix reload} if asked;
        return its output.
        """
        output = self._run("postconf", *arguments)
        self._backdate()
        if reload:
            self._run("postfix", "reload")
        return output

    def submit(
        self,
        message: bytes,
        recipients: Iterable[str] = (f"bob@{TEST_DOMAIN}",),
        sender: str = DEFAULT_SENDER,
        mailOptions: Sequence[str] = (),
        rcptOptions: Sequence[str] = (),
        timeout: float = 20.0,
    ) -> Submission:
        """
        Submit C{message} to this instance's smtpd with smtplib (EHLO
        client.test) and return every reply the client saw.
        """
        with smtplib.SMTP(
            LOOPBACK, self._port, local_hostname="client.test", timeout=timeout
        ) as smtp:
            smtp.ehlo()
            code, text = smtp.mail(sender, mailOptions)
            result = Submission((code, text.decode()))
            if code != 250:
                return result
            for recipient in recipients:
                code, text = smtp.rcpt(recipient, rcptOptions)
                result.rcpt[recipient] = (code, text.decode())
            if all(code >= 300 for code, _ in result.rcpt.values()):
                return result
            code, text = smtp.data(message)
            result.data = (code, text.decode())
            queued = re.search(r"queued as ([0-9A-F]+)", result.data[1])
            result.queueId = queued.group(1) if queued else None
            return result

    def log(self) -> str:
        """
        The maillog so far.
        """
        try:
            return self.maillog.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def waitForLog(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """
        Wait until a line of the maillog matches regular expression
        C{pattern} (C{^} and C{$} match at each line), and return the first
        match.

        @raise AssertionError: no match within C{timeout} seconds.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while (match := regex.search(self.log())) is None:
            if time.monotonic() > deadline:
                raise AssertionError(self._failure(f"no {pattern!r} in {timeout}s"))
            time.sleep(0.05)
        return match

    def deliveries(self, recipient: str | None = None) -> list[Delivery]:
        """
        Every delivery attempt logged so far (to C{recipient} only, if
        given), oldest first.
        """
        found = [Delivery(**m.groupdict()) for m in _DELIVERY.finditer(self.log())]
        return [d for d in found if recipient in (None, d.recipient)]

    def deliveryStatus(
        self,
        recipient: str,
        queueId: str | None = None,
        timeout: float = 20.0,
        final: bool = True,
    ) -> Delivery:
        """
        Wait for a delivery attempt to C{recipient} (of message C{queueId},
        if given) and return the first one with status C{sent}, C{bounced}
        or C{expired}, or with any status (C{deferred}) if not C{final}.
        """
        deadline = time.monotonic() + timeout
        while True:
            for delivery in self.deliveries(recipient):
                if queueId not in (None, delivery.queueId):
                    continue
                if not final or delivery.status in ("sent", "bounced", "expired"):
                    return delivery
            if time.monotonic() > deadline:
                raise AssertionError(self._failure(f"no delivery to {recipient}"))
            time.sleep(0.05)

    def mailq(self) -> list[dict[str, Any]]:
        """
        The queue as C{postqueue -j} shows it: a dict per message, with
        C{queue_name}, C{queue_id}, C{sender} and C{recipients} (each with
        C{address} and, once deferred, C{delay_reason}).
        """
        output = self._run("postqueue", "-j")
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def queueIds(self, queueName: str | None = None) -> list[str]:
        """
        The IDs of the queued messages (in queue C{queueName} only, such as
        C{deferred}, if given).
        """
        return [
            str(entry["queue_id"])
            for entry in self.mailq()
            if queueName in (None, entry["queue_name"])
        ]

    def flush(self) -> None:
        """
        Have Postfix retry every deferred message now (C{postqueue -f}).
        """
        self._run("postqueue", "-f")

    def _run(
        self, command: str, *args: str, check: bool = True, timeout: float = 30.0
    ) -> str:
        """
        Run Postfix command C{command} with C{-c CONFDIR} and C{args};
        return its standard output.
        """
        config = str(self.configDirectory)
        result = subprocess.run(
            [postfixCommand(command), "-c", config, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                self._failure(
                    f"{command} {' '.join(args)} exited with {result.returncode}:"
                    f"\n{result.stdout}{result.stderr}"
                )
            )
        return result.stdout

    def _backdate(self) -> None:
        """
        Date the configuration files 10 seconds back: Postfix re-reads a
        file that changed in the last second until it is older.
        """
        then = time.time() - 10
        for path in self.configDirectory.iterdir():
            os.utime(path, (then, then))

    def _failure(self, problem: str) -> str:
        """
        A failure message: C{problem} and the end of the maillog.
        """
        tail = "\n".join(self.log().splitlines()[-40:])
        return f"Postfix ({self.configDirectory}): {problem}\n{tail}"
