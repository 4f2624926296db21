"""What the processes of a benchmarked stack cost: CPU seconds and peak RSS from /proc, children included."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _proc_stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds, RSS bytes) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    # After the command: state(0) ppid(1) ... utime(11) stime(12) ... rss(21)
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, int(fields[21]) * PAGE


@dataclass
class ProcessWatch:
    roots: dict[int, str]
    cpu: dict[int, tuple[str, float]] = field(default_factory=dict)
    start_cpu: dict[int, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)

    def sample(self) -> None:
        table: dict[int, tuple[int, float, int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
                table[int(entry.name)] = stat
        group_of: dict[int, str] = {pid: name for pid, name in self.roots.items() if pid in table}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _, _) in table.items():
                if pid not in group_of and ppid in group_of:
                    group_of[pid] = group_of[ppid]
                    changed = True
        rss: dict[str, int] = {}
        for pid, name in group_of.items():
            _, cpu, resident = table[pid]
            self.cpu[pid] = (name, cpu)
            rss[name] = rss.get(name, 0) + resident
        for name, value in rss.items():
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), value)

    def mark_start(self) -> None:
        self.sample()
        self.start_cpu = {pid: cpu for pid, (_, cpu) in self.cpu.items()}

    def rename(self, names: dict[int, str]) -> None:
        """Count these processes under their own names from now on (the database's backends by client)."""
        self.cpu = {pid: (names.get(pid, name), cpu) for pid, (name, cpu) in self.cpu.items()}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU used since `mark_start`, by name."""
        used: dict[str, float] = {}
        for pid, (name, cpu) in self.cpu.items():
            used[name] = used.get(name, 0.0) + cpu - self.start_cpu.get(pid, 0.0)
        return used

    def report(self, wall: float) -> dict[str, dict[str, float]]:
        used = self.cpu_seconds()
        return {name: {"cpu_seconds": round(used.get(name, 0.0), 1),
                       "cores": round(used.get(name, 0.0) / wall, 2) if wall else 0.0,
                       "peak_rss_mib": round(self.peak_rss.get(name, 0) / 2**20, 1)}
                for name in sorted(set(used) | set(self.peak_rss))}


def postmaster_pid(data_dir: Path | None) -> int | None:
    if data_dir is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    return None


async def database_backends(database_url: str) -> dict[int, str]:
    """PostgreSQL's processes by whom they work for: each client names its connections (`application_name`);
    the services name theirs after their schema."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT pid, application_name, backend_type FROM pg_stat_activity")
    finally:
        await conn.close()
    return {row["pid"]: f"postgres: {row['application_name'] or row['backend_type']}" for row in rows}
