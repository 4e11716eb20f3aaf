"""A real Dovecot (IMAP, IMAPS, POP3, POP3S) as a local process with a private configuration.

Everything lives in one working directory: the configuration, one passwd-file per user,
Dovecot's sockets (`base_dir`), state, log and the users' Maildirs. Ports are free ports on
127.0.0.1 chosen at start, so it never collides with a system Dovecot or another instance.

How it runs when started as root (the usual case on the dev machines and in CI): the master runs
as root, login processes as `dovenull`, internal ones as `dovecot` (both created by the Debian
package), and mail is owned by `nobody:nogroup` (Dovecot refuses uid 0 for mail). Started as
another user, everything runs as that user (Dovecot's "rootless" mode).

Mail is delivered with `dovecot-lda`, Dovecot's own delivery agent: the message is stored
byte for byte (no headers added), the target folder is created when missing, and connected
IDLE clients are told at once (inotify; the server batches changes for about half a second).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import grp
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

import structlog

from devstack.certs import TestPki, make_test_pki
from devstack.ports import free_ports

if TYPE_CHECKING:
    from types import TracebackType

log = structlog.get_logger(__name__)

DEBIAN_PACKAGES: Final = ("dovecot-core", "dovecot-imapd", "dovecot-pop3d", "dovecot-lmtpd")
_SBIN_PATH: Final = "/usr/local/sbin:/usr/sbin:/sbin"
_LIBEXEC_DIRS: Final = (Path("/usr/lib/dovecot"), Path("/usr/libexec/dovecot"))
_INSTALL_LOCK: Final = Path(tempfile.gettempdir()) / "devstack-dovecot-install.lock"
_FORBIDDEN_IN_USER: Final = frozenset(":/\\\"'%*\x00\r\n\t ")


class DovecotError(RuntimeError):
    """Dovecot is missing, failed to start, or refused a delivery or an admin command."""


@dataclass(frozen=True, slots=True)
class _Identity:
    """Who mail, login and internal processes run as."""

    mail_uid: int
    mail_gid: int
    login_user: str
    internal_user: str
    internal_group: str


class Dovecot:
    """A private Dovecot instance; use as a context manager or call `start()` / `stop()`.

    Ports are 0 until `start()` picks them. `workdir` must be traversable by the mail user
    (`nobody` when run as root); by default a fresh directory under the system temp dir is
    used and removed again by `stop()`.
    """

    host: Final = "127.0.0.1"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        pki: TestPki | None = None,
        idle_notify_interval_seconds: int = 120,
        start_timeout: float = 30.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else _make_workdir()
        self._pki = pki
        self._idle_notify_interval = idle_notify_interval_seconds
        self._start_timeout = start_timeout
        self._identity = _identity()
        self._users: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self.imap_port = 0
        self.imaps_port = 0
        self.pop3_port = 0
        self.pop3s_port = 0

    # -- paths --------------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.workdir / "dovecot.conf"

    @property
    def log_file(self) -> Path:
        return self.workdir / "dovecot.log"

    @property
    def ca_file(self) -> Path:
        """The CA that signed the server certificate, for `ssl.create_default_context(cafile=)`."""
        return self._ensure_pki().ca_cert

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        if self.running:
            return self
        started = time.monotonic()
        dovecot = ensure_dovecot_installed()
        self._prepare_workdir()
        for user in self._users:  # added before Dovecot (and its system users) was installed
            self._write_passwd(user)
        pki = self._ensure_pki()
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = free_ports(4)
        self.config_file.write_text(self._render_config(pki))
        self.log_file.touch()
        self._launch(dovecot)
        log.info(
            "dovecot.started",
            workdir=str(self.workdir),
            imap=self.imap_port,
            imaps=self.imaps_port,
            pop3=self.pop3_port,
            pop3s=self.pop3s_port,
            seconds=round(time.monotonic() - started, 3),
        )
        return self

    def restart(self, *, kill: bool = False) -> None:
        """Stop Dovecot's processes (SIGKILL when ``kill``) and start them again on the same
        ports and mailboxes: open connections break mid-command, as in a server restart."""
        process, self._process = self._process, None
        if process is not None:
            _signal_group(process, signal.SIGKILL if kill else signal.SIGTERM)
            process.wait(timeout=10)
        self._launch(ensure_dovecot_installed())
        log.info("dovecot.restarted", killed=kill)

    def _launch(self, dovecot: Path) -> None:
        output = (self.workdir / "dovecot.out").open("wb")
        with output:
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [str(dovecot), "-F", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.unregister(self.stop)  # registered once, however often it is restarted
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM Dovecot's processes, wait, then SIGKILL what is left; remove an owned workdir."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None:
            # The whole group, not just the master: alone it waits ~1 s for its children.
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("dovecot.kill", pid=process.pid, log=self.log_tail(5))
                _signal_group(process, signal.SIGKILL)
                process.wait()
            log.info("dovecot.stopped", workdir=str(self.workdir))
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- users and mail -----------------------------------------------------------------------

    def add_user(self, user: str, password: str) -> None:
        """Add a user or change its password; takes effect at once, also while running."""
        if not user or any(c in _FORBIDDEN_IN_USER for c in user) or user in {".", ".."}:
            raise ValueError(f"unusable Dovecot user name: {user!r}")
        changed = user in self._users and self.running
        self._users[user] = password
        self._prepare_workdir()
        home = self._home(user)
        home.mkdir(exist_ok=True, mode=0o700)
        self._chown(home)
        written = self._write_passwd(user)
        if changed:  # Dovecot may have looked at the old file this very second
            time.sleep(max(0.0, math.floor(written) + 1 - time.time()))

    def deliver(
        self,
        user: str,
        raw: bytes,
        folder: str = "INBOX",
        *,
        envelope_from: str = "sender@example.com",
    ) -> None:
        """Deliver one RFC 5322 message with `dovecot-lda`; the folder is created when missing."""
        self._require_user(user)
        lda = _libexec("dovecot-lda")
        self._run(
            [str(lda), "-c", str(self.config_file), "-d", user, "-m", folder, "-f", envelope_from],
            stdin=raw,
            what=f"delivery to {user}/{folder}",
        )

    def create_folder(self, user: str, name: str) -> None:
        """Create (and subscribe) a folder; `/` separates levels. Existing folders are fine."""
        self._require_user(user)
        mailbox = [str(_find_binary("doveadm")), "-c", str(self.config_file), "mailbox"]
        self._run(
            [*mailbox, "create", "-s", "-u", user, name],
            what=f"creating folder {user}/{name}",
            tolerate="Mailbox already exists",
        )

    # -- internals ----------------------------------------------------------------------------

    def _ensure_pki(self) -> TestPki:
        if self._pki is None:
            self._pki = make_test_pki(self.workdir / "pki")
        return self._pki

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # the mail user must reach its home below it
        for sub in ("run", "state", "home", "users"):
            (self.workdir / sub).mkdir(mode=0o755, exist_ok=True)
        self._chown(self.workdir / "home")

    def _home(self, user: str) -> Path:
        return self.workdir / "home" / user

    def _require_user(self, user: str) -> None:
        if user not in self._users:
            raise DovecotError(f"no such Dovecot user {user!r}; call add_user() first")
        if not self.running:
            raise DovecotError("Dovecot is not running; call start() first")

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self._identity.mail_uid, self._identity.mail_gid)

    def _write_passwd(self, user: str) -> float:
        """Write the user's own passwd-file (atomically, with an mtime past the previous one).

        Dovecot looks at a passwd-file at most once a second and re-reads it when its mtime or
        size changed. One file per user means a new user is seen at once; a changed password
        is seen from the next second on.
        """
        ident = self._identity
        password = base64.b64encode(self._users[user].encode()).decode()
        uid, gid, home = ident.mail_uid, ident.mail_gid, self._home(user)
        line = f"{user}:{{PLAIN.BASE64}}{password}:{uid}:{gid}::{home}::\n"
        target = self.workdir / "users" / user
        previous = target.stat().st_mtime if target.exists() else 0
        tmp = target.with_name(f".{user}.tmp")
        tmp.write_text(line)
        tmp.chmod(0o600)
        with contextlib.suppress(KeyError):  # the user appears with the package; see start()
            internal = pwd.getpwnam(ident.internal_user)
            if os.geteuid() == 0:  # the auth process reads it as the internal user
                os.chown(tmp, internal.pw_uid, internal.pw_gid)
        now = time.time()
        stamp = max(int(now), int(previous) + 1)
        os.utime(tmp, (stamp, stamp))
        tmp.replace(target)
        return now

    def _render_config(self, pki: TestPki) -> str:
        ident = self._identity
        work = self.workdir
        return _CONFIG_TEMPLATE.format(
            base_dir=work / "run",
            state_dir=work / "state",
            log=self.log_file,
            passwd=work / "users" / "%u",
            cert=pki.server_cert,
            key=pki.server_key,
            login_user=ident.login_user,
            internal_user=ident.internal_user,
            internal_group=ident.internal_group,
            # Only root may chroot; rootless Dovecot runs its login processes without one.
            chroot="# chroot: default" if os.geteuid() == 0 else "chroot =",
            uid=ident.mail_uid,
            gid=ident.mail_gid,
            host=self.host,
            imap=self.imap_port,
            imaps=self.imaps_port,
            pop3=self.pop3_port,
            pop3s=self.pop3s_port,
            idle_notify=self._idle_notify_interval,
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise DovecotError(f"dovecot exited with {code} while starting\n{self.log_tail()}")
            if " Fatal: " in self.log_file.read_text(errors="replace"):
                raise DovecotError(f"dovecot failed to start\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.imap_port), timeout=1) as sock:
                    greeting = sock.recv(512)
            except OSError as exc:
                last_error = str(exc)
            else:
                if greeting.startswith(b"* OK"):
                    return
                last_error = f"unexpected greeting {greeting!r}"
            time.sleep(0.05)
        raise DovecotError(
            f"dovecot did not answer on {self.host}:{self.imap_port} within "
            f"{self._start_timeout:.0f}s ({last_error})\n{self.log_tail()}"
        )

    def _run(
        self, argv: list[str], *, what: str, stdin: bytes | None = None, tolerate: str = ""
    ) -> None:
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            argv, input=stdin, capture_output=True, timeout=60, check=False
        )
        stderr = result.stderr.decode(errors="replace").strip()
        if result.returncode != 0 and not (tolerate and tolerate in stderr):
            raise DovecotError(
                f"{what} failed (exit {result.returncode}): {stderr}\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Dovecot's log and of the master's own output, for error messages."""
        parts = []
        for path in (self.workdir / "dovecot.out", self.log_file):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(dovecot wrote no log)"


def ensure_dovecot_installed() -> Path:
    """Return the `dovecot` binary, installing Debian's packages first when root and missing."""
    with contextlib.suppress(DovecotError):
        return _find_binary("dovecot")
    if os.geteuid() != 0:
        raise DovecotError(
            "Dovecot is not installed. Install it with: "
            f"sudo apt-get install -y {' '.join(DEBIAN_PACKAGES)}"
        )
    with _INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers install once
        with contextlib.suppress(DovecotError):
            return _find_binary("dovecot")
        started = time.monotonic()
        log.info("dovecot.installing", packages=DEBIAN_PACKAGES)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
        for argv in ([*apt, "update"], [*apt, "install", "-y", *DEBIAN_PACKAGES]):
            result = subprocess.run(argv, env=env, capture_output=True, check=False)  # noqa: S603
            if result.returncode != 0:
                output = (result.stdout + result.stderr).decode(errors="replace")
                raise DovecotError(f"{' '.join(argv)} failed:\n{output[-3000:]}")
        _stop_system_dovecot()
        log.info("dovecot.installed", seconds=round(time.monotonic() - started, 1))
    return _find_binary("dovecot")


def _stop_system_dovecot() -> None:
    """The package may start the system-wide Dovecot; ours never needs it, so stop it."""
    if Path("/run/systemd/system").is_dir():
        subprocess.run(
            ["systemctl", "disable", "--now", "dovecot.service", "dovecot.socket"],  # noqa: S607
            capture_output=True,
            check=False,
        )
    # Without systemd the package's init script may have started it: stop that master.
    system_dovecot = [str(_find_binary("dovecot")), "-c", "/etc/dovecot/dovecot.conf", "stop"]
    subprocess.run(system_dovecot, capture_output=True, check=False)  # noqa: S603


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    """Signal the master's process group; only while the master is unreaped, so it is ours."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)


def _find_binary(name: str) -> Path:
    search = f"{os.environ.get('PATH', '')}:{_SBIN_PATH}"
    found = shutil.which(name, path=search)
    if found is None:
        raise DovecotError(f"{name} not found in {search}")
    return Path(found)


def _libexec(name: str) -> Path:
    for directory in _LIBEXEC_DIRS:
        if (directory / name).is_file():
            return directory / name
    return _find_binary(name)


def _identity() -> _Identity:
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        try:
            gid = grp.getgrnam("nogroup").gr_gid
        except KeyError:
            gid = nobody.pw_gid
        return _Identity(nobody.pw_uid, gid, "dovenull", "dovecot", "dovecot")
    me = pwd.getpwuid(os.geteuid())
    group = grp.getgrgid(os.getegid()).gr_name
    return _Identity(me.pw_uid, os.getegid(), me.pw_name, me.pw_name, group)


def _make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="devstack-dovecot-"))


_CONFIG_TEMPLATE: Final = """\
# Written by devstack.dovecot; private to this instance.
instance_name = devstack-{imap}
base_dir = {base_dir}
state_dir = {state_dir}
log_path = {log}
info_log_path = {log}
protocols = imap pop3
listen = {host}
shutdown_clients = yes

default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2

# Tests cover plain connections too, as an operator may configure them.
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
# Answer failed logins at once: tests try wrong passwords on purpose.
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}

mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
}}
# IDLE: changes arrive through inotify; polling is only the fallback.
mailbox_idle_check_interval = 1 secs
lda_mailbox_autocreate = yes
lda_mailbox_autosubscribe = yes

protocol imap {{
  imap_idle_notify_interval = {idle_notify} secs
  mail_max_userip_connections = 1000
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}

service imap-login {{
  {chroot}
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  {chroot}
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
# No anvil penalty socket: repeated failed logins from 127.0.0.1 are not slowed down.
service anvil {{
  {chroot}
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""
