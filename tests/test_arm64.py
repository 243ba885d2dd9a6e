"""The device path end to end on real arm64 code: a Debian arm64 userland under qemu-user behind an sshd on
127.0.0.1 (tests/arm64_device.py). Bundle → deploy → predict → remote bench for TFLite int8 and ONNX int8, with
predictions identical to this machine's. Emulated latency means nothing and is never asserted.

Run only these with `pytest -m arm64`; they skip with the reason where root, binfmt_misc, qemu-user-static,
debootstrap or sshd is missing.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from arm64_device import Unavailable, emulated_device
from click.testing import CliRunner
from device_fixtures import LABELS, PREP

from conftest import unavailable
from edgetl.cli import main
from edgetl.errors import DeviceError

pytestmark = pytest.mark.arm64


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    try:
        with emulated_device(tmp_path_factory.mktemp("sshd")) as (ssh_config, alias, port):
            yield {"config": ssh_config, "url": f"ssh://{alias}", "port": port}
    except Unavailable as exc:
        unavailable(f"no emulated arm64 device: {exc}")


def test_the_device_is_arm64(device):
    from edgetl.bench.remote import Device

    out = Device.parse(device["url"], ssh_config=device["config"]).run(["uname", "-m"])
    assert out.stdout.decode().strip() == "aarch64"


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_deploy_predict_and_bench_on_arm64_match_x86(device, run_dir, images, tmp_path, fmt):
    from edgetl.bench.remote import Device
    from edgetl.preprocess import Preprocessing, preprocess_files
    from edgetl.runtime import load_runner

    # the rootfs is reused between runs: start from no folder (deploying over an earlier one has its own test)
    Device.parse(device["url"], ssh_config=device["config"]).run(["rm", "-rf", f"/opt/edgetl-{fmt}"])

    out = tmp_path / "result.json"
    broken = tmp_path / "broken.jpg"  # with onnx, an unreadable image too: named, the others still classified
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    sent = [*images, broken] if fmt == "onnx" else images
    result = CliRunner().invoke(main, ["deploy", str(run_dir), "--device", device["url"], "--ssh-config",
                                       str(device["config"]), "--format", fmt, "--precision", "int8", "--runs", "2",
                                       "--dest", f"/opt/edgetl-{fmt}", *[a for p in sent for a in ("--images", str(p))],
                                       "--json", str(out)])
    assert result.exit_code == (1 if fmt == "onnx" else 0), result.output
    answer = json.loads(out.read_text())[0]
    if fmt == "onnx":
        *answers, bad = answer["predictions"]
        assert bad["image"] == str(broken) and f"Cannot read image {broken}" in bad["error"], bad
        assert f"broken.jpg: not classified: Cannot read image {broken}" in result.output
        answer["predictions"] = answers
    assert answer["error"] is None and answer["bench"]["device"]["machine"] == "aarch64"
    assert answer["bench"]["runs"] == 2 and answer["bench"]["format"] == fmt
    suffix = ".tflite" if fmt == "tflite" else ".onnx"
    expected = load_runner(run_dir / "export" / f"{fmt}_int8" / f"model{suffix}").run(
        preprocess_files([str(p) for p in images], Preprocessing.from_json(PREP)))
    assert [p["top"][0]["label"] for p in answer["predictions"]] == [LABELS[i] for i in expected.argmax(1)]
    # int8 kernels are not bit-identical across architectures (aarch64 onnxruntime requantizes its own way: 2.6e-4
    # measured on a freshly built rootfs); the labels above must match exactly, the logits within a few int8 steps.
    np.testing.assert_allclose([p["logits"] for p in answer["predictions"]], expected, atol=1e-3)
    # `--dest` keeps the deployed bundle on the device.
    from edgetl.bench.remote import Device

    listing = Device.parse(device["url"], ssh_config=device["config"]).run(["ls", f"/opt/edgetl-{fmt}"])
    assert f"model{suffix}" in listing.stdout.decode().split()


def test_remote_bench_rows_come_back_with_the_device(device, run_dir, tmp_path):
    from edgetl.bench.remote import Device

    remote = Device.parse(device["url"], ssh_config=device["config"])
    before = set(remote.run(["ls", "/tmp"]).stdout.decode().split())
    out = tmp_path / "rows.json"
    models = [run_dir / "export" / "onnx_int8" / "model.onnx", run_dir / "export" / "tflite_int8" / "model.tflite"]
    result = CliRunner().invoke(main, ["bench", *map(str, models), "--device", device["url"], "--ssh-config",
                                       str(device["config"]), "--runs", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [(r["name"], r["device"], r["runs"]) for r in rows] == [("onnx_int8", device["url"], 2),
                                                                   ("tflite_int8", device["url"], 2)]
    assert all(r["device_info"]["machine"] == "aarch64" for r in rows)
    # the temporary folder the models were uploaded to is gone from the device
    assert not [n for n in set(remote.run(["ls", "/tmp"]).stdout.decode().split()) - before if n.startswith("edgetl.")]


def test_a_device_that_fails_mid_benchmark_keeps_the_rows_it_gave(device, run_dir, tmp_path):
    """The second model needs OpenVINO, which the device lacks: the device fails there (exit 1, said), and the first
    model's row, measured before, is kept in the JSON."""
    out = tmp_path / "rows.json"
    models = [run_dir / "export" / "onnx_int8" / "model.onnx", run_dir / "export" / "openvino_fp32" / "model.xml"]
    result = CliRunner().invoke(main, ["bench", *map(str, models), "--device", device["url"], "--ssh-config",
                                       str(device["config"]), "--runs", "2", "--json", str(out)])
    assert result.exit_code == 1 and "device error" in result.output and "openvino" in result.output, result.output
    rows = json.loads(out.read_text())
    assert [(r["name"], r["runs"]) for r in rows] == [("onnx_int8", 2)] and "Traceback" not in result.output


def test_device_errors_are_clear_and_other_devices_answer(device, run_dir, tmp_path):
    from edgetl.bench.remote import Device

    devices = tmp_path / "devices.yaml"
    devices.write_text(f"devices:\n  - {{name: emulated-pi, url: '{device['url']}'}}\n"
                       "  - {name: gone, url: 'ssh://root@127.0.0.1:9'}\n")
    out = tmp_path / "result.json"
    result = CliRunner().invoke(main, ["deploy", str(run_dir), "--devices", str(devices), "--ssh-config",
                                       str(device["config"]), "--format", "onnx", "--precision", "int8", "--runs", "1",
                                       "--json", str(out)])
    assert result.exit_code == 1 and "gone: device error" in result.output and "Traceback" not in result.output
    answers = {a["device"]: a for a in json.loads(out.read_text())}
    assert answers["emulated-pi"]["error"] is None and "ssh failed" in answers["gone"]["error"]
    # A runtime the device does not have (OpenVINO is not installed there): named, with how to install it.
    from edgetl.bench.remote import run_bundle
    from edgetl.bundle import bundle_model_file

    bundle = bundle_model_file(run_dir / "export" / "openvino_fp32" / "model.xml", tmp_path / "ovb")
    with pytest.raises(DeviceError, match="openvino.*is not installed"):
        run_bundle(Device.parse(device["url"], ssh_config=device["config"]), bundle, "openvino", [["info"]])
    # A key the device does not accept: an authentication failure, named.
    import subprocess

    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    config = tmp_path / "ssh_config"
    config.write_text(device["config"].read_text().replace(str(device["config"].parent / "client_key"), str(stranger)))
    with pytest.raises(DeviceError, match=r"ssh failed: .*Permission denied \(publickey"):
        Device.parse(device["url"], ssh_config=config).run(["true"])
    # An unknown host key is refused, never silently accepted.
    (device["config"].parent / "known_hosts").rename(device["config"].parent / "known_hosts.saved")
    try:
        with pytest.raises(DeviceError, match="ssh failed: .*(Host key verification failed|No .* host key)"):
            Device.parse(device["url"], ssh_config=device["config"]).run(["true"])
    finally:
        (device["config"].parent / "known_hosts.saved").rename(device["config"].parent / "known_hosts")


def test_the_runner_works_with_numpy_1_on_the_device(device, run_dir, images, tmp_path):
    """The same ONNX int8 bundle through a Python whose numpy is 1.x (python3-numpy1 on the device)."""
    from edgetl.bench.remote import Device

    out = tmp_path / "result.json"
    result = CliRunner().invoke(main, ["deploy", str(run_dir), "--device", device["url"], "--ssh-config",
                                       str(device["config"]), "--format", "onnx", "--precision", "int8", "--runs", "1",
                                       "--python", "python3-numpy1", "--images", str(images[0]), "--json", str(out)])
    assert result.exit_code == 0, result.output
    answer = json.loads(out.read_text())[0]
    assert answer["bench"]["device"]["runtimes"]["numpy"].startswith("1.")
    version = Device.parse(device["url"], ssh_config=device["config"]).run(
        ["python3-numpy1", "-c", "import numpy; print(numpy.__version__)"])
    assert version.stdout.decode().strip().startswith("1.")


def _remote_benches(sshd: int) -> list[int]:
    """Process ids of `edgetl_runner bench` processes below this test's sshd (not any other on the host)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    below, frontier = set(), {sshd}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    found = []
    for pid in sorted(below):
        with contextlib.suppress(OSError):
            command = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "edgetl_runner" in command and " bench" in command:
                found.append(pid)
    return found


def test_a_connection_dropped_mid_run_is_a_clear_error(device, run_dir, tmp_path):
    """The sshd session serving a long remote benchmark is killed mid-run (what a device rebooting or leaving the
    network does): the error says the connection was lost, in one line, and nothing hangs."""
    import os
    import signal
    import subprocess
    import threading
    import time

    sshd = int((device["config"].parent / "sshd.pid").read_text())
    out = tmp_path / "result.json"
    outcome = {}

    def deploy():
        outcome["result"] = CliRunner().invoke(main, [
            "deploy", str(run_dir), "--device", device["url"], "--ssh-config", str(device["config"]), "--format",
            "onnx", "--precision", "int8", "--runs", "1000000", "--json", str(out)])

    worker = threading.Thread(target=deploy)
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _remote_benches(sshd):
        time.sleep(0.2)
    assert time.monotonic() < deadline, "the remote benchmark never started"
    time.sleep(1)
    benches = _remote_benches(sshd)
    for child in subprocess.run(["pgrep", "-P", str(sshd)], capture_output=True, text=True).stdout.split():
        os.kill(int(child), signal.SIGKILL)  # the session's sshd: the client sees the connection go away
    worker.join(timeout=120)
    for pid in benches:  # the emulated benchmark this test started, orphaned by the dropped session; nothing else
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not worker.is_alive(), "edgetl deploy hung after the connection dropped"
    result = outcome["result"]
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    answer = json.loads(out.read_text())[0]
    assert "the connection was lost while running" in answer["error"], answer["error"]


def test_a_cached_rootfs_is_reused_only_while_its_package_list_matches(tmp_path):
    import arm64_device

    root = tmp_path / "rootfs"
    record = root / "opt/site/numpy-2.0.dist-info/RECORD"
    record.parent.mkdir(parents=True)
    record.write_text("numpy/__init__.py,sha256=abc,100\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3.11").write_bytes(b"\x7fELF")
    (root / ".edgetl-ready").write_text(json.dumps({"recipe": arm64_device._RECIPE,
                                                    "inventory": arm64_device.inventory(root)}))
    assert arm64_device._valid(root)
    record.write_text("numpy/__init__.py,sha256=abd,100\n")  # a wheel replaced since: rebuilt, not trusted
    assert not arm64_device._valid(root)
    (root / ".edgetl-ready").write_text(json.dumps({"recipe": arm64_device._RECIPE,
                                                    "inventory": arm64_device.inventory(root)}))
    (root / "usr/bin/python3.11").unlink()
    assert not arm64_device._valid(root)
    (root / ".edgetl-ready").write_text("2026-11-30T10:00:00")  # the marker of the fixture before this check
    assert not arm64_device._valid(root)


def test_deploy_dest_on_the_device_follows_the_output_folder_rule(device, run_dir, images, tmp_path):
    """--dest holding the device user's own files is refused untouched; an earlier bundle there is replaced."""
    from edgetl.bench.remote import Device

    remote = Device.parse(device["url"], ssh_config=device["config"])
    remote.run(["sh", "-c", "rm -rf /opt/precious && mkdir -p /opt/precious && echo mine > /opt/precious/keep.txt"])
    args = ["deploy", str(run_dir), "--device", device["url"], "--ssh-config", str(device["config"]), "--format",
            "onnx", "--precision", "int8", "--runs", "1", "--json", str(tmp_path / "out.json")]
    result = CliRunner().invoke(main, [*args, "--dest", "/opt/precious"])
    assert result.exit_code == 1 and "will not write into it" in result.output, result.output
    assert remote.run(["cat", "/opt/precious/keep.txt"]).stdout.decode().strip() == "mine"
    assert remote.run(["ls", "-A", "/opt/precious"]).stdout.decode().split() == ["keep.txt"]
    remote.run(["rm", "-rf", "/opt/edgetl-again"])
    for _ in range(2):  # a new folder, then the bundle (and images) it now holds: replaced
        result = CliRunner().invoke(main, [*args, "--dest", "/opt/edgetl-again", "--images", str(images[0])])
        assert result.exit_code == 0, result.output
    listing = remote.run(["ls", "-A", "/opt"]).stdout.decode().split()
    assert "edgetl-again" in listing and not [n for n in listing if n.startswith("edgetl-again.")]
    assert remote.run(["stat", "-c", "%a", "/opt/edgetl-again"]).stdout.decode().strip() == "755"
    assert "image0.jpg" in remote.run(["ls", "/opt/edgetl-again"]).stdout.decode().split()


def test_bench_on_devices_keeps_the_rows_of_the_devices_that_answered(device, run_dir, tmp_path):
    devices = tmp_path / "devices.yaml"
    devices.write_text(f"devices:\n  - {{name: emulated-pi, url: '{device['url']}'}}\n"
                       "  - {name: gone, url: 'ssh://root@127.0.0.1:9'}\n")
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(main, ["bench", str(run_dir / "export" / "onnx_int8" / "model.onnx"), "--devices",
                                       str(devices), "--ssh-config", str(device["config"]), "--runs", "2",
                                       "--json", str(out)])
    assert result.exit_code == 1 and "gone: device error" in result.output, result.output
    rows = json.loads(out.read_text())
    assert [(r["name"], r["device"]) for r in rows] == [("onnx_int8", device["url"])]


def test_install_on_a_device_whose_python_has_no_pip_says_so(device, run_dir, tmp_path):
    """--install runs the device's `python3 -m pip install -r requirements.txt` when the runtime is missing (OpenVINO
    is not on the emulated device); this device's Python has no pip, and the error says so in one line."""
    result = CliRunner().invoke(main, ["deploy", str(run_dir), "--device", device["url"], "--ssh-config",
                                       str(device["config"]), "--format", "openvino", "--precision", "fp32",
                                       "--runs", "1", "--install", "--json", str(tmp_path / "out.json")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    error = json.loads((tmp_path / "out.json").read_text())[0]["error"]
    assert "-m pip install" in error and "No module named pip" in error, error


def test_a_search_measures_its_latency_budget_on_the_device(device, tiny_dataset, tmp_path):
    """search.budget.device over real SSH: the untrained and the trained candidates are timed on the emulated arm64
    device (search.json says where), and a budget the emulated device cannot meet rejects them with its address."""
    import yaml

    from conftest import run_cli, tiny_recipe

    recipe = tiny_recipe(tiny_dataset, train={"epochs": 1})
    recipe["name"] = "tiny-device-search"
    config = tmp_path / "device_ssh_config"
    config.write_text(Path(device["config"]).read_text())  # relative to the recipe file
    budget = {"latency_ms_p90": 600000.0, "threads": 1, "device": device["url"], "ssh_config": config.name}
    recipe["search"] = {"budget": budget, "backbones": ["efficientnet_lite0"], "prune": [0.0], "formats": ["onnx"],
                        "precisions": ["int8"]}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out = run_cli("build", path, "--out", tmp_path / "run", "--quiet")
    assert code == 0, out
    search = json.loads((tmp_path / "run" / "summary.json").read_text())["search"]
    assert search["measured_on"]["device"] == device["url"] and search["measured_on"]["machine"] == "aarch64", search
    chosen = search["candidates"][0]
    assert chosen["status"] == "chosen" and chosen["trained"] and chosen["latency_ms_p90"] > 0
    # 1 µs cannot be met there: rejected from the untrained measurement, with the device in the reason (the same run
    # directory: the untrained sub-run is reused, and measured on the device again)
    recipe["search"]["budget"]["latency_ms_p90"] = 0.001
    path.write_text(yaml.safe_dump(recipe))
    code, out = run_cli("build", path, "--out", tmp_path / "run", "--quiet")
    assert code == 1 and "meets search.budget" in out, out
    reason = json.loads((tmp_path / "run" / "search.json").read_text())["candidates"][0]["reason"]
    assert f"ms > budget 0.001 ms on {device['url']}" in reason and "untrained" in reason, reason


def test_a_build_measures_on_its_target_device_and_chooses_for_it(device, tiny_dataset, tmp_path):
    """target: the emulated arm64 device over real SSH: every artifact it can run is timed there in rounds, the one it
    lacks the runtime of is excluded with the reason, `chosen` and `choice` say why; an unreachable target fails the
    build with exit 1 after the summary of everything else is written, and the next build re-runs only the target
    stage; a format the recipe requires there that the device cannot run is named."""
    import yaml

    from conftest import run_cli, tiny_recipe

    config = tmp_path / "device_ssh_config"
    config.write_text(Path(device["config"]).read_text())  # relative to the recipe file
    recipe = tiny_recipe(tiny_dataset, train={"epochs": 1}, export={"formats": ["onnx", "openvino"],
                                                                     "precisions": ["fp32"]})
    recipe["target"] = {"device": device["url"], "ssh_config": config.name, "rounds": 2, "runs": 2, "warmup": 1}
    path = tmp_path / "target.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    code, out = run_cli("build", path, "--out", run, "--quiet")
    assert code == 0, out
    summary = json.loads((run / "summary.json").read_text())
    target = summary["target"]
    assert target["device"] == device["url"] and target["device_info"]["machine"] == "aarch64", target
    assert target["formats"] == ["onnx", "openvino"]  # both install on aarch64 ...
    assert "openvino" in target["excluded"]["openvino_fp32"] and "not installed" in target["excluded"]["openvino_fp32"]
    measured = {a["name"]: a["target_latency_ms"] for a in summary["artifacts"]}
    assert measured["openvino_fp32"] is None  # ... but the device has no OpenVINO: not timed, not chosen
    assert measured["onnx_fp32"]["rounds"] == 2 and measured["onnx_fp32"]["runs"] == 4
    assert len(measured["onnx_fp32"]["p50_ci95"]) == 2
    assert summary["chosen"] == "onnx_fp32"
    statuses = {a["name"]: a["status"] for a in summary["choice"]["artifacts"]}
    assert statuses == {"onnx_fp32": "chosen", "openvino_fp32": "excluded"}
    assert f"--device {device['url']}" in out and "p50 on the target" in out and "aarch64" in out
    # the device is gone: the build fails (exit 1) with the address, every other stage reused and reported
    code, out = run_cli("build", path, "--out", run, "--quiet", "--set", "target.device=ssh://root@127.0.0.1:9")
    assert code == 1 and "device error" in out and "127.0.0.1" in out, out
    failed = json.loads((run / "summary.json").read_text())
    assert failed["status"] == "failed: device error" and failed["failed_stage"] == "target"
    assert [a["val_accuracy"] for a in failed["artifacts"]] == [a["val_accuracy"] for a in summary["artifacts"]]
    assert all(t["cached"] for name, t in failed["stages"].items() if name != "target"), failed["stages"]
    code, out = run_cli("bundle", run)
    assert code == 2 and "chose no artifact" in out and "--format" in out, out  # its target was not measured
    # a format the recipe requires on the device, which it does not have
    code, out = run_cli("build", path, "--out", run, "--quiet", "--set", "target.formats=[openvino]")
    assert code == 1 and "target.formats" in out and "openvino" in out and "not installed" in out, out


def _wide_onnx(folder: Path, size: int) -> Path:
    """The tiny CNN of the run fixture at `size`×`size` input, as an ONNX file with its model.json: a model that does
    the same work per pixel, so 4× the pixels is a real, large slowdown."""
    import torch

    from edgetl.artifact import write_model_json
    from edgetl.export import ExportRequest
    from edgetl.export.onnx import export_fp32

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(), torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, len(LABELS))).eval()
    prep = {**PREP, "resize": size, "crop": size}
    metadata = {"edgetl_version": "test", "labels": json.dumps(LABELS), "preprocessing": json.dumps(prep),
                "layout": "NCHW", "input_shape": json.dumps([None, 3, size, size]), "backbone": "tiny",
                "recipe_sha256": "0" * 64}
    example = np.zeros((1, 3, size, size), np.float32)
    result = export_fp32(model, ExportRequest(folder, "fp32", example, metadata))
    write_model_json(result, "onnx_fp32", "onnx", "fp32", metadata)
    return result.path


def test_the_latency_gate_runs_on_the_device(device, tmp_path):
    """--save-baseline and --baseline with --device: the device's rows saved (its machine, paths relative to the
    baseline file, sha256), the same model against its own baseline passes, and a model doing 4x the work fails."""
    small = _wide_onnx(tmp_path / "models" / "small", 32)
    large = _wide_onnx(tmp_path / "models" / "large", 64)
    # 9 rounds, not the fewest (5): with 5, one round distorted by load on the emulating host pulled a 3.7x slower
    # model's interval down to x1.07 (inconclusive, not a regression) in a CI run; the rounds are milliseconds each
    where = ["--device", device["url"], "--ssh-config", str(device["config"]), "--runs", "10", "--repeats", "9",
             "--warmup", "2"]
    base = tmp_path / "gate" / "baseline.json"
    base.parent.mkdir()
    saved = CliRunner().invoke(main, ["bench", str(small), *where, "--save-baseline", str(base)])
    assert saved.exit_code == 0, saved.output
    baseline = json.loads(base.read_text())
    assert baseline["machine"]["machine"] == "aarch64" and baseline["device"] == device["url"]
    (row,) = baseline["rows"]
    assert row["model"] == "../models/small/model.onnx" and len(row["trial_p50_ms"]) == 9
    from edgetl.fsutil import sha256_file

    assert row["model_sha256"] == sha256_file(small)
    same = CliRunner().invoke(main, ["bench", str(small), *where, "--baseline", str(base), "--json",
                                     str(tmp_path / "same.json")])
    assert same.exit_code == 0, same.output
    (gated,) = json.loads((tmp_path / "same.json").read_text())
    assert gated["gate"]["mode"] == "interleaved" and gated["gate"]["status"] != "regression", gated["gate"]
    assert gated["device_info"]["machine"] == "aarch64"
    slower = CliRunner().invoke(main, ["bench", str(large), *where, "--baseline", str(base), "--json",
                                       str(tmp_path / "slow.json")])
    assert slower.exit_code == 1, slower.output
    (gated,) = json.loads((tmp_path / "slow.json").read_text())
    assert gated["gate"]["status"] == "regression" and gated["gate"]["ratio"] > 1.5, gated["gate"]
    assert "not the baseline's model file (sha256" in slower.output and "REGRESSION" in slower.output
    several = CliRunner().invoke(main, ["bench", str(small), *where, "--device", device["url"], "--baseline", str(base)])
    assert several.exit_code == 2 and "gate on one device; 2 were given" in several.output
