"""What the bench scripts read of the processes they measure (Linux /proc), and how they start
a service under cProfile. One copy for every ``bench_*.py`` (each runs as a script, so this
module is importable beside it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")

_PROFILED = """
import cProfile, runpy, time
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    runpy.run_module({module!r}, run_name="__main__")
finally:
    profile.disable()
    profile.dump_stats({path!r})
"""


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds process ``pid`` used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` used so far."""
    return sum(cpu_split(pid))


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy so far (/proc/stat, every process: the
    broker, the sink, the bench itself — and any other work on a shared machine)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / _TICK


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def service_command(module: str, profile: str | None = None) -> list[str]:
    """``python -m <module>``; with ``profile`` (a file), under cProfile counting CPU time, not
    wall time (on a loaded machine wall time shows the scheduler). The service turns SIGTERM
    into a clean stop, so the profile is written."""
    if not profile:
        return [sys.executable, "-m", module]
    return [sys.executable, "-c", _PROFILED.format(module=module, path=profile)]
