"""An emulated arm64 device for tests: a Debian arm64 rootfs run by qemu-user through binfmt_misc, and an sshd on
127.0.0.1 whose every session runs inside it (see ../shared/notes/arm64-device.md for what was measured).

`emulated_device(workdir)` yields (ssh_config, host alias) or raises Unavailable with the reason to skip.
The rootfs is built once (about 1–2 minutes, nothing emulated during setup) and reused from ROOTFS_CACHE.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOTFS_CACHE = Path(os.environ.get("EDGETL_ARM64_ROOTFS", "/var/tmp/edgetl-arm64-rootfs-v3"))
SUITE = "bookworm"
WHEELS = ("numpy", "pillow", "onnxruntime", "ai-edge-litert")
# A second site with numpy 1.x (what older devices and tflite-runtime have), used through `python3-numpy1`.
WHEELS_NUMPY1 = ("numpy<2", "pillow", "onnxruntime")
# Every manylinux tag a bookworm device (glibc 2.36) accepts: pip's --platform matches tags exactly, and missing one
# silently picks an older release (ai-edge-litert's aarch64 2.x wheels are manylinux_2_27 only; without it 1.4.0).
PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)))
# qemu-user passes the host's /proc/cpuinfo through; onnxruntime's CPU detection crashes on an x86 one.
CPUINFO = "".join(f"""processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

""" for n in range(2)) + "Hardware\t: BCM2835\nModel\t: Raspberry Pi 4 Model B (emulated by qemu-aarch64)\n"


class Unavailable(Exception):
    """The emulated device cannot be set up here; the message says why (tests skip with it)."""


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


def _mirror() -> str:
    for source in sorted(Path("/etc/apt/sources.list.d").glob("*")) + [Path("/etc/apt/sources.list")]:
        if source.is_file():
            for line in source.read_text().splitlines():
                if line.startswith("URIs:") and "security" not in line:
                    return line.split()[1]
                if line.startswith("deb ") and "security" not in line:
                    return line.split()[1]
    return "http://deb.debian.org/debian"


def check_host() -> None:
    """Raise Unavailable unless root, qemu-aarch64-static, debootstrap, sshd and binfmt_misc are usable."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (chroot, binfmt_misc, an sshd)")
    for tool in ("qemu-aarch64-static", "debootstrap", "update-binfmts", "ssh-keygen", "ssh"):
        if not shutil.which(tool):
            raise Unavailable(f"`{tool}` is missing: apt-get install qemu-user-static binfmt-support debootstrap "
                              "openssh-server openssh-client")
    if not Path("/usr/sbin/sshd").is_file():
        raise Unavailable("/usr/sbin/sshd is missing: apt-get install openssh-server")
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        mounted = _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
        if mounted.returncode != 0:
            raise Unavailable(f"binfmt_misc cannot be mounted: {mounted.stderr.strip()}")
    if not (binfmt / "qemu-aarch64").exists():
        enabled = _run(["update-binfmts", "--enable", "qemu-aarch64"])
        if enabled.returncode != 0 or not (binfmt / "qemu-aarch64").exists():
            raise Unavailable(f"cannot register qemu-aarch64 with binfmt_misc: {enabled.stderr.strip()}")


# What the rootfs is made of: a cached one made from anything else is rebuilt.
_RECIPE = {"suite": SUITE, "wheels": WHEELS, "wheels_numpy1": WHEELS_NUMPY1, "platforms": PLATFORMS, "cpuinfo": CPUINFO}
# What the tests rely on inside it: its Debian packages, the wheels of both sites (their RECORD lists every file with
# its hash) and the programs that run them.
_INVENTORY = ("var/cache/apt/archives/*.deb", "opt/site/*.dist-info/RECORD", "opt/site-numpy1/*.dist-info/RECORD",
              "usr/bin/python3*", "usr/lib/openssh/sftp-server", "usr/local/bin/python3-numpy1", "proc/cpuinfo")


def inventory(root: Path) -> str:
    """sha256 of the rootfs's package list: every _INVENTORY file's name and size, and the content of RECORD files."""
    digest = hashlib.sha256()
    for pattern in _INVENTORY:
        for path in sorted(root.glob(pattern)):
            info = path.lstat()
            digest.update(f"{path.relative_to(root)} {info.st_size}\n".encode())
            if path.name == "RECORD":
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _valid(root: Path) -> bool:
    """Whether a cached rootfs is the one this file builds and still holds what it recorded when it was built."""
    try:
        ready = json.loads((root / ".edgetl-ready").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(ready, dict) and ready.get("recipe") == json.loads(json.dumps(_RECIPE))
            and ready.get("inventory") == inventory(root))


def build_rootfs(root: Path = ROOTFS_CACHE) -> Path:
    """The arm64 rootfs with python3, numpy, Pillow, onnxruntime and ai-edge-litert (built once; reused while its
    recorded package list still matches)."""
    if _valid(root):
        return root
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    strap = _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
                  "--include=python3,openssh-sftp-server", SUITE, str(staging), _mirror()], timeout=900)
    if strap.returncode != 0:
        raise Unavailable(f"debootstrap failed: {(strap.stderr or strap.stdout).strip().splitlines()[-1:]}")
    for deb in sorted((staging / "var/cache/apt/archives").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True, capture_output=True)
    for name in ("passwd", "group"):
        if not (staging / "etc" / name).is_file():
            shutil.copyfile(staging / "usr/share/base-passwd" / f"{name}.master", staging / "etc" / name)
    for name in ("etc/hosts", "etc/resolv.conf", "etc/ssl/certs/ca-certificates.crt"):
        if Path("/" + name).is_file():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile("/" + name, staging / name)
    (staging / "proc").mkdir(exist_ok=True)
    (staging / "proc/cpuinfo").write_text(CPUINFO)
    (staging / "tmp").mkdir(exist_ok=True)
    (staging / "tmp").chmod(0o1777)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    for site, wanted in (("opt/site", WHEELS), ("opt/site-numpy1", WHEELS_NUMPY1)):
        wheels = _run([sys.executable, "-m", "pip", "install", "--quiet", "--only-binary=:all:", "--implementation",
                       "cp", "--python-version", "3.11", "--abi", "cp311", *platforms, "--target", str(staging / site),
                       *wanted], timeout=900)
        if wheels.returncode != 0:
            raise Unavailable(f"aarch64 wheels could not be installed: {wheels.stderr.strip().splitlines()[-1:]}")
    wrapper = staging / "usr/local/bin/python3-numpy1"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text('#!/bin/sh\nPYTHONPATH=/opt/site-numpy1 exec python3 "$@"\n')
    wrapper.chmod(0o755)
    marker_tmp = staging / ".edgetl-ready"
    marker_tmp.write_text(json.dumps({"built": time.strftime("%Y-%m-%dT%H:%M:%S"), "recipe": _RECIPE,
                                      "inventory": inventory(staging)}))
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def emulated_device(workdir: Path, rootfs: Path | None = None):
    """An sshd on 127.0.0.1 whose sessions run in the arm64 rootfs; yields (ssh_config path, host alias)."""
    check_host()
    rootfs = rootfs or build_rootfs()
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / name)], check=True)
    (workdir / "authorized_keys").write_text((workdir / "client_key.pub").read_text())
    port = _free_port()
    enter = workdir / "enter-device.sh"
    enter.write_text(f"""#!/bin/sh
exec /usr/sbin/chroot {rootfs} /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \\
  PYTHONPATH=/opt/site QEMU_CPU=cortex-a72 /bin/sh -c "${{SSH_ORIGINAL_COMMAND:-exec /bin/sh}}"
""")
    enter.chmod(0o755)
    config = workdir / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {workdir / 'host_key'}
AuthorizedKeysFile {workdir / 'authorized_keys'}
PidFile {workdir / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
ForceCommand {enter}
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "sshd.log", "w"))
    host_key = (workdir / "host_key.pub").read_text().split()
    (workdir / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    client = workdir / "ssh_config"
    client.write_text(f"""Host armdev
  HostName 127.0.0.1
  Port {port}
  User root
  IdentityFile {workdir / 'client_key'}
  IdentitiesOnly yes
  UserKnownHostsFile {workdir / 'known_hosts'}
  StrictHostKeyChecking yes
  LogLevel ERROR
""")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            raise Unavailable(f"sshd did not start: {(workdir / 'sshd.log').read_text()[-500:]}")
        yield client, "armdev", port
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)
