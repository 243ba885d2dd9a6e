"""Devices over SSH: copy a bundle to a temp (or named) folder on the device, check or install its runtime, run the
bundle's torch-free runner there, bring back its JSON, clean up. Uses the system `ssh` client, so the user's
~/.ssh/config, keys and agent apply; host keys are checked (BatchMode: an unknown host is an error, never a
silent accept); every remote argument is quoted with shlex.quote."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgetl.errors import DeviceAddressError, DeviceError, DeviceRuntimeError

CONNECT_TIMEOUT_S = 10
# What ssh prints when an established connection goes away (sshd killed, network down, keep-alives unanswered).
DROPPED = ("closed by remote host", "Broken pipe", "Connection reset", "not responding")


@dataclass(frozen=True)
class Device:
    """An ssh://[user@]host[:port] device, with the Python to run there."""

    url: str
    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"
    ssh_config: Path | None = None  # an ssh_config file instead of ~/.ssh/config (tests, CI)
    name: str | None = None

    @classmethod
    def parse(cls, url: str, python: str = "python3", ssh_config: Path | None = None, name: str | None = None) -> Device:
        try:
            parts = urlsplit(url)
            parts.hostname  # noqa: B018  (parses the host: an unclosed [IPv6 bracket raises here)
        except ValueError as exc:
            raise DeviceAddressError(f"device '{url[:200]}': not a URL ({exc}); expected ssh://[user@]host[:port].") from None
        if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise DeviceAddressError(f"device '{url[:200]}': expected ssh://[user@]host[:port].")
        try:
            port = parts.port
        except ValueError:
            raise DeviceAddressError(f"device '{url[:200]}': the port is not a number from 0 to 65535.") from None
        return cls(url, parts.hostname, parts.username, port, python, ssh_config, name or url)

    def ssh_args(self) -> list[str]:
        args = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self.ssh_config:
            args += ["-F", str(self.ssh_config)]
        if self.port:
            args += ["-p", str(self.port)]
        # "--" ends ssh's options: a host name can never be read as one.
        return [*args, "--", f"{self.user}@{self.host}" if self.user else self.host]

    def run(self, argv: list[str], stdin: bytes | None = None, timeout: float = 600, cwd: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run `argv` on the device (each argument quoted for the remote shell)."""
        command = " ".join(shlex.quote(a) for a in argv)
        if cwd:
            command = f"cd {shlex.quote(cwd)} && {command}"
        try:
            result = subprocess.run([*self.ssh_args(), command], input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: `{argv[0]}` did not finish within {timeout:.0f} s.") from None
        except FileNotFoundError:
            raise DeviceError("the `ssh` client is not installed here (apt install openssh-client).") from None
        if result.returncode == 255:  # ssh's own failures: unreachable, refused, auth, host key, dropped
            reason = _last_line(result.stderr)
            if any(sign in reason for sign in DROPPED):
                raise DeviceError(f"{self.name}: the connection was lost while running `{' '.join(argv[:4])}` "
                                  f"({reason}); the device may be rebooting or off the network.")
            raise DeviceError(f"{self.name}: ssh failed: {reason}")
        if check and result.returncode != 0:
            raise DeviceError(f"{self.name}: `{' '.join(argv[:4])}` failed (exit {result.returncode}): "
                              f"{_last_line(result.stderr) or _last_line(result.stdout)}")
        return result


def _last_line(data: bytes) -> str:
    lines = [line for line in data.decode("utf-8", "replace").strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else ""


def upload(device: Device, folder: Path, remote_dir: str) -> None:
    """Copy `folder`'s contents into `remote_dir` (created) as one tar stream over ssh."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    device.run(["mkdir", "-p", remote_dir])
    device.run(["tar", "-xzf", "-", "-C", remote_dir], stdin=buffer.getvalue())


def _check_runtime(device: Device, remote_dir: str, fmt: str, install: bool) -> dict:
    """The device's Python, machine and runtime; installs the bundle's requirements when asked and missing."""
    from edgetl.formats import FORMATS

    probe = ("import json, platform, sys, importlib\n"
             "found = None\n"
             f"for name in {list(FORMATS[fmt].runtime_imports)!r}:\n"
             "    try:\n"
             "        importlib.import_module(name); found = name; break\n"
             "    except Exception as exc:\n"
             "        pass\n"
             "print(json.dumps({'python': platform.python_version(), 'machine': platform.machine(), 'runtime': found}))")

    def probed() -> dict:
        return json.loads(device.run([device.python, "-c", probe], timeout=120).stdout.decode().strip().splitlines()[-1])

    info = probed()
    if info["runtime"] is None and install:
        device.run([device.python, "-m", "pip", "install", "--quiet", "-r", "requirements.txt"], cwd=remote_dir,
                   timeout=1800)
        info = probed()
    if info["runtime"] is None:
        raise DeviceRuntimeError(f"{device.name}: the {fmt} runtime ({FORMATS[fmt].runtime_package}) is not installed for "
                          f"{device.python} on the device (Python {info['python']}, {info['machine']}). Install it "
                          f"there with `{device.python} -m pip install {FORMATS[fmt].runtime_package}`, or pass "
                          "--install to let edgetl install the bundle's requirements.txt.")
    return info


# Run on the device with its Python. `check DEST` prints DEST resolved (~ expanded, links followed) and refuses one
# that is not new, empty or an earlier bundle holding only what edgetl wrote there (the rule `edgetl bundle -o`
# follows). `swap NEW DEST NAME...` adds the extra files NAME... to NEW's marker and puts NEW in DEST's place.
_PLACE = """
import json, os, shutil, sys
BUNDLE_NAMES = %(bundle_files)r
action, paths = sys.argv[1], sys.argv[2:]
if action == "check":
    if not paths[0].strip():
        sys.exit("is empty: give a folder")
    dest = os.path.realpath(os.path.expanduser(paths[0]))
    if os.path.lexists(dest) and not os.path.isdir(dest):
        sys.exit("is a file, not a folder")
    names = os.listdir(dest) if os.path.isdir(dest) else []
    if names:
        marker = os.path.join(dest, ".edgetl-bundle")
        if not os.path.isfile(marker):
            sys.exit("exists and is not an edgetl bundle (no .edgetl-bundle marker)")
        try:
            with open(marker) as f:
                written = set(json.load(f).get("files") or ())
        except (OSError, ValueError, AttributeError, TypeError):
            written = set()
        extra = sorted(n for n in names if n != ".edgetl-bundle" and n not in written
                       and not (not written and (n in BUNDLE_NAMES or n.startswith("model."))))
        if extra:
            sys.exit("holds files edgetl did not write: " + ", ".join(extra[:5]))
    print(dest)
else:
    new, dest, extra = paths[0], paths[1], paths[2:]
    marker = os.path.join(new, ".edgetl-bundle")
    with open(marker) as f:
        data = json.load(f)
    data["files"] = sorted(set(data.get("files") or ()) | set(extra))
    with open(marker, "w") as f:
        json.dump(data, f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(new, 0o777 & ~umask)  # mktemp made it 0700; a deployed folder gets the usual mode
    aside = None
    if os.path.isdir(dest):
        aside = "%%s.old-edgetl-%%d" %% (dest, os.getpid())
        os.rename(dest, aside)
    os.rename(new, dest)
    if aside:
        shutil.rmtree(aside, ignore_errors=True)
"""


def _place_script() -> str:
    from edgetl.bundle import BUNDLE_FILES

    return _PLACE % {"bundle_files": BUNDLE_FILES}


def _place(device: Device, bundle: Path, dest: str, extra_files: dict[str, Path]) -> str:
    """Upload `bundle` and `extra_files` (device name -> local path) into the device folder `dest` (deploy --dest):
    beside it first, then swapped in; a `dest` holding other files is refused untouched. Returns `dest` resolved."""
    checked = device.run([device.python, "-c", _place_script(), "check", dest], timeout=60, check=False)
    resolved = checked.stdout.decode().strip().splitlines()[-1:] if checked.returncode == 0 else []
    if not resolved:
        raise DeviceError(f"{device.name}: --dest {dest!r} {_last_line(checked.stderr) or 'cannot be checked'}; edgetl "
                          "will not write into it. Give a new folder, or remove that one first.")
    dest = resolved[0]
    device.run(["mkdir", "-p", dest.rsplit("/", 1)[0] or "/"], timeout=60)
    staging = device.run(["mktemp", "-d", f"{dest}.partial-XXXXXX"], timeout=60).stdout.decode().strip()
    try:
        upload(device, bundle, staging)
        _write_extra(device, staging, extra_files)
        device.run([device.python, "-c", _place_script(), "swap", staging, dest, *extra_files], timeout=60)
    finally:
        with contextlib.suppress(DeviceError):
            device.run(["rm", "-rf", staging], timeout=60, check=False)
    return dest


def _write_extra(device: Device, remote_dir: str, extra_files: dict[str, Path]) -> None:
    for name, local in extra_files.items():
        device.run(["sh", "-c", 'cat > "$1"', "sh", f"{remote_dir}/{name}"], stdin=Path(local).read_bytes())


def run_bundle(device: Device, bundle: Path, fmt: str, commands: list[list[str]], remote_dir: str | None = None,
               install: bool = False, extra_files: dict[str, Path] | None = None) -> list:
    """Upload `bundle` (and `extra_files`, remote name → local path) to the device, check its runtime, run each
    `python -m edgetl_runner COMMAND...` there and return their JSON outputs. A temp folder is removed afterwards;
    a named `remote_dir` is kept (deploy)."""
    temporary = remote_dir is None
    if temporary:
        remote_dir = device.run(["mktemp", "-d", "/tmp/edgetl.XXXXXXXX"], timeout=60).stdout.decode().strip()
    try:
        if temporary:
            upload(device, bundle, remote_dir)
            _write_extra(device, remote_dir, extra_files or {})
        else:
            remote_dir = _place(device, bundle, remote_dir, extra_files or {})
        _check_runtime(device, remote_dir, fmt, install)
        outputs = []
        for command in commands:
            # `predict` exits 1 when an image could not be read, with every image's row printed: kept, not a failure
            result = device.run([device.python, "-m", "edgetl_runner", *command], cwd=remote_dir, timeout=1800,
                                check=command[0] != "predict")
            if result.returncode not in (0, 1):
                raise DeviceError(f"{device.name}: `edgetl_runner {command[0]}` failed (exit {result.returncode}): "
                                  f"{_last_line(result.stderr)}")
            try:
                outputs.append(json.loads(result.stdout.decode().strip().splitlines()[-1]))
            except (IndexError, ValueError):
                raise DeviceError(f"{device.name}: `edgetl_runner {command[0]}` printed no JSON: "
                                  f"{_last_line(result.stderr)}") from None
        return outputs
    finally:
        if temporary:
            with contextlib.suppress(DeviceError):
                device.run(["rm", "-rf", remote_dir], timeout=60, check=False)


def load_devices(path: Path, ssh_config: Path | None = None) -> list[Device]:
    """Devices from a devices.yaml: `devices: [{name: pi4, url: ssh://pi@pi4.local, python: python3}, ...]`."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DeviceAddressError(f"{path}: cannot read the devices file ({exc}).") from None
    entries = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DeviceAddressError(f"{path}: expected `devices:` with a list of {{name, url}} entries.")
    devices = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise DeviceAddressError(f"{path}: devices[{number}].url must be an ssh://[user@]host[:port] string.")
        unknown = set(entry) - {"name", "url", "python", "ssh_config"}
        if unknown:
            raise DeviceAddressError(f"{path}: devices[{number}] has unknown keys {sorted(unknown)} "
                              "(valid: name, url, python, ssh_config).")
        config = Path(entry["ssh_config"]) if entry.get("ssh_config") else ssh_config
        devices.append(Device.parse(entry["url"], entry.get("python", "python3"), config, entry.get("name")))
    return devices


def for_each_device(devices: list[Device], work) -> list[dict]:
    """`work(device)` on every device concurrently; a device's DeviceError is its result's `error`, the others' results
    are kept."""
    from concurrent.futures import ThreadPoolExecutor

    def guarded(device: Device) -> dict:
        try:
            return {"device": device.name, "error": None, **work(device)}
        except DeviceError as exc:  # what the device answered before it failed is kept (`partial`, when work gave it)
            return {"device": device.name, "error": str(exc), **getattr(exc, "partial", {})}

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(devices)))) as pool:
        return list(pool.map(guarded, devices))


def deploy_to_devices(run_dir: Path, devices: list[Device], fmt: str, precision: str, dest: str | None,
                      images: list[Path], runs: int, threads: int, install: bool) -> list[dict]:
    """Bundle the artifact once, then on every device: upload, check the runtime, predict `images`, benchmark."""
    import tempfile

    from edgetl.bundle import make_bundle

    with tempfile.TemporaryDirectory(prefix="edgetl-deploy-") as scratch:
        bundle = make_bundle(run_dir, fmt, precision, Path(scratch) / "bundle").folder
        names = {f"image{i}{Path(p).suffix}": Path(p) for i, p in enumerate(images)}
        commands = [["bench", "--threads", str(threads), "--runs", str(runs)]]
        if names:
            commands.append(["predict", "--json", "--threads", str(threads), *names])

        def work(device: Device) -> dict:
            outputs = run_bundle(device, bundle, fmt, commands, dest, install, names)
            predictions = outputs[1] if names else []
            for prediction, (name, original) in zip(predictions, names.items(), strict=True):
                prediction["image"] = str(original)
                if prediction.get("error"):  # said of the device's copy: name the user's file
                    prediction["error"] = prediction["error"].replace(name, str(original))
            return {"artifact": f"{fmt}_{precision}", "dest": dest, "bench": outputs[0], "predictions": predictions}

        return for_each_device(devices, work)


def _bench_command(threads: int, runs: int, warmup: int, batch: int = 1, rounds: int | None = None,
                   others: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The bundle runner's `bench` command line."""
    return ["bench", "--threads", str(threads), "--batch", str(batch), "--runs", str(runs), "--warmup", str(warmup),
            *(["--rounds", str(rounds)] if rounds else []), *[a for folder in others for a in ("--with", folder)]]


def _device_row(row: dict, model, device: Device, **extra) -> dict:
    """A runner's answer as an `edgetl bench --device` row: the model's own path and name, the device's URL, and
    what the runner said of the device as `device_info`."""
    info = row.pop("device")
    return {**row, "model": str(model.path), **extra, "name": model.name, "device": device.url, "device_info": info}


def bench_on_devices(models: list, devices: list[Device], threads: tuple[int, ...], batch: int, runs: int,
                     warmup: int, install: bool) -> list[dict]:
    """`edgetl bench --device`: every model (edgetl.bench.measure.ModelRef) on every device; rows as `edgetl bench`
    makes them, plus `device` (the device's URL) and `device_info`."""
    import tempfile

    from edgetl.bundle import bundle_model_file

    with tempfile.TemporaryDirectory(prefix="edgetl-remote-bench-") as scratch:
        bundles = [bundle_model_file(m.path, Path(scratch) / f"model{i}", m.name, m.precision)
                   for i, m in enumerate(models)]

        def work(device: Device) -> dict:
            rows = []
            for model, bundle in zip(models, bundles, strict=True):
                commands = [_bench_command(t, runs, warmup, batch) for t in threads]
                try:
                    answers = run_bundle(device, bundle, model.format, commands, None, install)
                except DeviceError as exc:  # a device that drops (or lacks a runtime) mid-way: the rows so far stay
                    exc.partial = {"rows": rows}
                    raise
                rows += [_device_row(row, model, device) for row in answers]
            return {"rows": rows}

        return for_each_device(devices, work)


def bench_on_target(models: list, device: Device, threads: int, rounds: int, runs: int, warmup: int,
                    install: bool, update=None) -> tuple[list[dict], dict[str, str]]:
    """Every model (edgetl.bench.measure.ModelRef) timed on one device, one model after another, each in `rounds`
    rounds of `runs` calls in one process there: (rows as `edgetl bench --device` makes them, with each round's
    median in `trial_p50_ms`; {model name: why it was not measured} for a model whose runtime the device lacks).
    A device that cannot be reached or fails is a DeviceError."""
    import tempfile

    from edgetl.bundle import bundle_model_file

    rows, missing = [], {}
    with tempfile.TemporaryDirectory(prefix="edgetl-target-bench-") as scratch:
        for i, model in enumerate(models):
            bundle = bundle_model_file(model.path, Path(scratch) / f"model{i}", model.name, model.precision)
            try:
                (row,) = run_bundle(device, bundle, model.format, [_bench_command(threads, runs, warmup, rounds=rounds)],
                                    None, install)
            except DeviceRuntimeError:
                from edgetl.formats import FORMATS

                missing[model.name] = (f"the {model.format} runtime ({FORMATS[model.format].runtime_package}) is not "
                                       f"installed for {device.python} there; install it, or set target.install: true")
                continue
            finally:
                if update:
                    update(1)
            rows.append(_device_row(row, model, device))
    return rows, missing


def bench_interleaved_on_device(models: list, device: Device, threads: int, rounds: int, runs: int, warmup: int,
                                install: bool, batch: int = 1) -> list[dict]:
    """Every model (edgetl.bench.measure.ModelRef) timed on one device in the same alternating rounds, in one
    process there (what the latency gate needs: a change of the device's speed hits every model alike). Rows as
    `edgetl bench --device` makes them, with `model_sha256` and each round's median in `trial_p50_ms`, in the order
    of `models`."""
    import tempfile

    from edgetl.bundle import bundle_model_file

    with tempfile.TemporaryDirectory(prefix="edgetl-gate-bench-") as scratch:
        bundle = bundle_model_file(models[0].path, Path(scratch) / "bundle", models[0].name, models[0].precision)
        others = [f"m{i}" for i in range(1, len(models))]
        for folder, model in zip(others, models[1:], strict=True):
            bundle_model_file(model.path, bundle / folder, model.name, model.precision)
        command = _bench_command(threads, runs, warmup, batch, rounds, others)
        for fmt in sorted({m.format for m in models} - {models[0].format}):  # every runtime the rounds need
            run_bundle(device, bundle, fmt, [], None, install)
        (answer,) = run_bundle(device, bundle, models[0].format, [command], None, install)
    return [_device_row(row, model, device, model_sha256=model.sha256(), role=model.role)
            for model, row in zip(models, answer if others else [answer], strict=True)]
