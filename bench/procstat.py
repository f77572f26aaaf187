"""What the benchmark reads from /proc: CPU time and peak RSS of a process group, CPU affinity, machine facts."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces), or None if gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group (the benchmark starts every server as a group leader)."""
    pids = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            # fields[0] is the state (field 3 of stat), fields[2] the process group (field 5).
            if fields is not None and int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def cpu_ms(pgid: int) -> float:
    """CPU time of a process group (every thread of every process), in milliseconds.

    Per-thread on-CPU nanoseconds from /proc/<pid>/task/<tid>/schedstat where the kernel has them (a 2-second
    run at 20 requests/s spends ~50 ms of CPU: the 10 ms ticks of utime/stime would be 20 % off), else
    utime + stime from /proc/<pid>/stat. Reaped children count through cutime + cstime either way.
    """
    total = 0.0
    for pid in group_pids(pgid):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        total += (int(fields[13]) + int(fields[14])) * 1000 / CLK_TCK  # cutime, cstime (stat fields 16-17)
        precise = _schedstat_ms(pid)
        # utime, stime: stat fields 14-15.
        total += precise if precise is not None else (int(fields[11]) + int(fields[12])) * 1000 / CLK_TCK
    return total


def _schedstat_ms(pid: int) -> float | None:
    ns = 0
    try:
        for task in (PROC / str(pid) / "task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                ns += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return None
    return ns / 1e6


def busy_ms() -> float:
    """CPU time the whole machine spent busy (all cores, every process), from /proc/stat, in milliseconds."""
    fields = (PROC / "stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) * 1000 / CLK_TCK


def own_cpu_ms() -> float:
    """CPU of this process and of its reaped children (wrk), in milliseconds."""
    t = os.times()
    return (t.user + t.system + t.children_user + t.children_system) * 1000


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_mb(pgid: int) -> float:
    """The largest VmHWM (peak resident set) among the group's processes, in MB."""
    return round(max((_status_kb(pid, "VmHWM") for pid in group_pids(pgid)), default=0) / 1024, 1)


def rss_mb(pgid: int) -> float:
    """The resident set of the whole group now (sum of VmRSS), in MB: what N held streams cost in memory."""
    return round(sum(_status_kb(pid, "VmRSS") for pid in group_pids(pgid)) / 1024, 1)


def reset_peak_rss(pgid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux ≥ 4.0, writing 5 to clear_refs); False where not permitted."""
    ok = True
    for pid in group_pids(pgid):
        try:
            (PROC / str(pid) / "clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def pin_group(pgid: int, cpus: set[int]) -> None:
    """Pins every thread of every process of the group (threads started later inherit it)."""
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            for task in (PROC / str(pid) / "task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), cpus)


def listening_ports(pgid: int) -> set[int]:
    """TCP ports the group's processes listen on: their sockets' inodes matched in /proc/net/tcp and tcp6."""
    inodes = set()
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            for fd in (PROC / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 10 is the socket's inode.
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def machine() -> dict:
    """Facts for the report: CPU count and model, memory, load average, kernel."""
    info: dict = {"nproc": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    with contextlib.suppress(OSError):
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    info["mem_total_gb"] = round(_meminfo_kb("MemTotal") / 1024 / 1024, 1)
    info["mem_available_gb"] = round(_meminfo_kb("MemAvailable") / 1024 / 1024, 1)
    info["kernel"] = os.uname().release
    return info


def _meminfo_kb(key: str) -> int:
    with contextlib.suppress(OSError):
        for line in (PROC / "meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0
