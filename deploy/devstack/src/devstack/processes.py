"""Run the four services as child processes (used by ``make run`` and the end-to-end tests).

Each service is started as ``python -m <package>`` with the given environment, its output going
to a log file (or inherited, for ``make run``). ``stop`` sends SIGTERM to every child, waits for
a clean exit and kills what is left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Self

import structlog

if TYPE_CHECKING:
    from pathlib import Path

log = structlog.get_logger(__name__)

SERVICES: dict[str, str] = {
    "config-api": "config_api",
    "router": "router",
    "fetcher": "fetcher",
    "sender": "sender",
}


EXAMPLES: dict[str, str] = {"campaign-autoreply": "campaign_autoreply"}
"""Example programs that ``make demo`` runs beside the services (not part of the product)."""


class ServiceFailed(RuntimeError):
    pass


class ChildService:
    """One service as ``python -m <module>``, its log lines read from a pipe (tests of ``main``).

    ``async with ChildService("fetcher", env) as child: await child.wait_for_log("ready")``;
    ``await child.stop(signal.SIGTERM)`` returns the exit code; ``child.lines`` holds the log.
    Leaving the block kills a child that is still running.
    """

    def __init__(self, module: str, env: dict[str, str]) -> None:
        self.module = module
        self.env = env
        self.lines: list[str] = []
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            env=self.env,
            stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,  # library debug lines can exceed the 64 KiB default
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    async def wait_for_log(self, marker: str, *, timeout: float = 60.0) -> str:
        """Read log lines until one contains ``marker``; return that line."""
        assert self._process is not None
        assert self._process.stderr is not None
        await asyncio.wait_for(read_log_until(self._process.stderr, self.lines, marker), timeout)
        return self.lines[-1]

    async def stop(self, signum: signal.Signals = signal.SIGTERM, *, timeout: float = 30) -> int:
        """Send ``signum``, collect the rest of the log and return the exit code."""
        assert self._process is not None
        self._process.send_signal(signum)
        _, rest = await asyncio.wait_for(self._process.communicate(), timeout)
        self.lines.extend(rest.decode("utf-8", "replace").splitlines(keepends=True))
        return self._process.returncode if self._process.returncode is not None else -1


async def read_log_until(stream: asyncio.StreamReader, lines: list[str], marker: str) -> None:
    """Collect a child's output lines into ``lines`` until one contains ``marker``."""
    while True:
        raw = await stream.readline()
        if not raw:
            raise ServiceFailed(f"process ended before logging {marker!r}:\n" + "".join(lines))
        lines.append(raw.decode("utf-8", "replace"))
        if marker in lines[-1]:
            return


@dataclass
class ServiceProcesses:
    env: dict[str, str]
    log_dir: Path | None = None
    names: tuple[str, ...] = tuple(SERVICES)
    stop_timeout: float = 20.0
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self) -> None:
        environment = {**os.environ, **self.env}
        for name in self.names:
            output: IO[bytes] | None = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                output = (self.log_dir / f"{name}.log").open("ab")
                self._logs.append(output)
            self.children[name] = subprocess.Popen(  # noqa: S603 - our own interpreter/modules
                [sys.executable, "-m", {**SERVICES, **EXAMPLES}[name]],
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
            )
            log.info("service started", service=name, pid=self.children[name].pid)

    def check_alive(self) -> None:
        for name, child in self.children.items():
            if child.poll() is not None:
                raise ServiceFailed(f"{name} exited with {child.returncode}{self._tail(name)}")

    def wait_http_ready(self, url: str, *, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                    if response.status == 200:  # noqa: PLR2004
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServiceFailed(f"{url} not ready within {timeout}s")
            time.sleep(0.3)

    def stop(self) -> dict[str, int]:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        deadline = time.monotonic() + self.stop_timeout
        for name, child in self.children.items():
            try:
                codes[name] = child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service did not stop in time; killing", service=name)
                child.kill()
                codes[name] = child.wait()
        for handle in self._logs:
            handle.close()
        self._logs.clear()
        return codes

    def _tail(self, name: str, lines: int = 40) -> str:
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "\n--- last lines of " + str(path) + " ---\n" + "\n".join(text)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
