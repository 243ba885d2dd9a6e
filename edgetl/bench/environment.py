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


def machine_info() -> dict:
    """Python, OS, CPU model, core count and machine type.

    No platform.processor()/platform.platform(): they run `uname -p` in a subprocess, and forking a process after
    OpenVINO, XLA (litert-torch) and OpenMP have started their threads crashed it with SIGSEGV.
    """
    uname = os.uname()
    libc = "".join(platform.libc_ver())  # reads the interpreter binary, no subprocess
    system = "-".join(v for v in (uname.sysname, uname.release, uname.machine) if v) + (f"-with-{libc}" if libc else "")
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"python": platform.python_version(), "platform": system, "machine": uname.machine, "cpu": cpu_model(),
            "cores": os.cpu_count(), "usable_cores": usable}


def runtime_versions() -> dict[str, str | None]:
    """Versions of the inference runtimes (None when not installed) and numpy."""
    from edgetl.formats import runtime_packages

    return {name: package_version(name) for name in ("numpy", *runtime_packages())}
