"""The host's memory as a job sees it: the limit that applies (cgroup or machine), OOM-killer activity.

A container's memory limit is a cgroup's, not the machine's: a job sized to ``/proc/meminfo`` is
OOM-killed by a 2.5 GiB container limit long before. Both cgroup v2 (``memory.max``,
``memory.events``) and v1 (``memory.limit_in_bytes``, ``memory.oom_control``) are read, for this
process's cgroup and its ancestors (a limit set on a parent applies too).
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # v1 writes "no limit" as 2**63 rounded down to a page


def _cgroup_dirs() -> list[Path]:
    """This process's memory cgroup folders (v2 unified and/or v1 memory), innermost first, ancestors after."""
    dirs: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return dirs
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2 (mounted at the root, or at /sys/fs/cgroup/unified beside v1)
            bases = [CGROUP_ROOT, CGROUP_ROOT / "unified"]
        elif "memory" in controllers.split(","):
            bases = [CGROUP_ROOT / "memory"]
        else:
            continue
        for base in bases:
            here = base / path.lstrip("/")
            while here.is_dir() and (here == base or base in here.parents):
                dirs.append(here)
                if here == base:
                    break
                here = here.parent
    return dirs


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def machine_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit_bytes() -> int:
    """The memory this process may use: the smallest cgroup limit on its path, or the machine's memory."""
    limits = [machine_memory_bytes()]
    for d in _cgroup_dirs():
        for name in ("memory.max", "memory.limit_in_bytes"):
            value = _read_int(d / name)  # "max" (v2, no limit) reads as None
            if value is not None and value < _UNLIMITED:
                limits.append(value)
    return min(limits)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def oom_kills() -> dict[str, int]:
    """OOM-kill counters that can see a kill of this process's children: its cgroups' and the kernel's."""
    counts: dict[str, int] = {}
    for d in _cgroup_dirs():
        for name in ("memory.events", "memory.oom_control"):  # v2, v1: both have an "oom_kill N" line
            try:
                lines = (d / name).read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    counts[str(d / name)] = int(value)
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                counts["/proc/vmstat"] = int(line.split()[1])
    except OSError:
        pass
    return counts


def oom_killed_since(before: dict[str, int]) -> bool:
    """Whether any OOM-kill counter grew since ``before`` (``oom_kills()`` taken then)."""
    now = oom_kills()
    return any(now.get(key, 0) > value for key, value in before.items())
