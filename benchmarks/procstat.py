"""CPU a process has used so far, from ``/proc/PID/stat`` (Linux): for the cluster sections."""

from __future__ import annotations

import os


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` so far, in seconds (clock-tick resolution).

    OSError when there is no such process or no ``/proc`` (not Linux).
    """
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # the command may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
