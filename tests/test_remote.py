"""The SSH device layer without a device: URL parsing, quoting of remote arguments (through a stand-in `ssh` that
runs the remote command with the local shell), ssh failures, and devices.yaml errors."""

from __future__ import annotations

import os
import stat

import pytest

from edgetl.bench.remote import Device, for_each_device, load_devices
from edgetl.errors import DeviceError


@pytest.fixture
def local_ssh(tmp_path, monkeypatch):
    """An `ssh` on PATH that runs its last argument with /bin/sh here (as sshd would on the device), or fails like
    ssh does (exit 255) for the host 'unreachable'."""
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor last; do :; done\nfor a; do [ "$a" = unreachable ] && '
                    '{ echo "ssh: connect to host unreachable port 22: Connection refused" >&2; exit 255; }; done\n'
                    'exec /bin/sh -c "$last"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")


def test_urls_parse_and_bad_ones_are_clear():
    device = Device.parse("ssh://pi@raspberrypi.local:2222")
    assert (device.user, device.host, device.port) == ("pi", "raspberrypi.local", 2222)
    args = device.ssh_args()
    assert args[-2:] == ["--", "pi@raspberrypi.local"] and "BatchMode=yes" in args and args[args.index("-p") + 1] == "2222"
    assert "StrictHostKeyChecking=no" not in " ".join(args)  # host keys are checked by ssh's own rules
    for bad in ("pi@host", "http://host", "ssh://", "ssh://host/path", "ssh://host:port"):
        with pytest.raises(DeviceError, match="ssh://"):
            Device.parse(bad)


def test_remote_arguments_are_quoted_never_interpreted(local_ssh, tmp_path):
    device = Device.parse("ssh://device")
    hostile = ["a b", "$HOME", "`id`", "x; touch pwned", "'quoted'", 'say "hi"', "*"]
    out = device.run(["printf", "%s\\n", *hostile], cwd=str(tmp_path))
    assert out.stdout.decode().splitlines() == hostile
    assert not (tmp_path / "pwned").exists()
    assert device.run(["sh", "-c", 'cat > "$1"', "sh", str(tmp_path / "in")], stdin=b"payload").returncode == 0
    assert (tmp_path / "in").read_bytes() == b"payload"


def test_failures_name_the_device_and_the_reason(local_ssh):
    with pytest.raises(DeviceError, match="unreachable: ssh failed: .*Connection refused"):
        Device.parse("ssh://unreachable").run(["true"])
    with pytest.raises(DeviceError, match=r"`ls /no/such/folder` failed \(exit [12]\)"):
        Device.parse("ssh://device").run(["ls", "/no/such/folder"])
    results = for_each_device([Device.parse("ssh://device"), Device.parse("ssh://unreachable")],
                              lambda d: {"uname": d.run(["uname", "-m"]).stdout.decode().strip()})
    assert results[0]["error"] is None and results[0]["uname"] == os.uname().machine
    assert "Connection refused" in results[1]["error"]  # one device failing keeps the others' results


def test_devices_file_errors(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  - {name: pi, url: 'ssh://pi@pi.local', python: /usr/bin/python3}\n")
    assert [(d.name, d.host, d.python) for d in load_devices(path)] == [("pi", "pi.local", "/usr/bin/python3")]
    for text, message in [("devices: []", "expected `devices:`"), ("devices:\n  - {name: x}", r"devices\[0\].url"),
                          ("devices:\n  - {url: 'ssh://h', colour: red}", "unknown keys"), (": :", "cannot read")]:
        path.write_text(text)
        with pytest.raises(DeviceError, match=message):
            load_devices(path)
