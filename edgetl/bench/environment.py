"""What machine and runtimes a measurement was taken on (torch-free, no subprocess)."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to the machine type)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    # x86 says "model name"; a Raspberry Pi's kernel says "Model" (the board) and "Hardware" (the SoC).
    for key in ("model name", "Model", "Hardware"):
        if fields.get(key):
            return fields[key]
    return os.uname().machine


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or `taskset`'s cpuset), else all: the
    thread count of a runtime edgetl opens when none was asked for (the verify stage, `predict`, the device runner).
    OMP_NUM_THREADS, which caps torch, is not read: a suite run with it capping these runtimes too took 21:38 min
    against 19:03 without, the same CPU time, its second core idle more often."""
    try:
        return len(os.sched_getaffinity(0)) or os.cpu_count() or 1
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def machine_info() -> dict:
    """Python, OS, CPU model, core count and machine type.

    No platform.processor()/platform.platform(): they run `uname -p` in a subprocess, and forking a process after
    OpenVINO, XLA (litert-torch) and OpenMP have started their threads crashed it with SIGSEGV.
    """
    uname = os.uname()
    libc = "".join(platform.libc_ver())  # reads the interpreter binary, no subprocess
    system = "-".join(v for v in (uname.sysname, uname.release, uname.machine) if v) + (f"-with-{libc}" if libc else "")
    usable = usable_cores()
    return {"python": platform.python_version(), "platform": system, "machine": uname.machine, "cpu": cpu_model(),
            "cores": os.cpu_count(), "usable_cores": usable}


def runtime_versions() -> dict[str, str | None]:
    """Versions of the inference runtimes (None when not installed) and numpy."""
    from edgetl.formats import runtime_packages

    return {name: package_version(name) for name in ("numpy", *runtime_packages())}
