"""The target: the device a build's model will run on (the recipe's `target:` section; without one, this machine),
what it can run, and the rule that picks the artifact to ship there. Torch-free.

The rule (`choose`): of the artifacts the target runs, those within the budget (p90 latency and file size on the
target, val accuracy) whose val accuracy is not significantly worse than the most accurate one's (exact McNemar on
the paired val predictions, p < 0.05) are the candidates; the chosen one is the fastest p50 on the target, where
p50s whose bootstrap intervals over rounds overlap the fastest's are a tie, and a tie goes to the smallest file.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.errors import DeviceError, RecipeError

RULE = ("among the artifacts the target runs that are within target.budget and whose val accuracy is not "
        "significantly worse than the most accurate one's (exact McNemar on the same val images, p < 0.05), the "
        "fastest p50 on the target; a p50 whose 95 % bootstrap interval overlaps the fastest's ties with it, and a "
        "tie goes to the smallest file")


@dataclass(frozen=True)
class Target:
    """Where the model will run, resolved from the recipe."""

    name: str  # `local`, the device's name in devices.yaml, or its ssh:// address
    device: object | None  # an edgetl.bench.remote.Device; None: this machine
    threads: int
    formats: tuple[str, ...] | None  # target.formats; None: every format whose runtime installs on its machine
    declared: bool  # False: the recipe has no target section (the target is this machine)

    @property
    def url(self) -> str:
        return "local" if self.device is None else self.device.url

    def machine_info(self) -> dict:
        """{machine, ...}: platform.machine() here, or the device's answer over SSH (a DeviceError when unreachable)."""
        return {"machine": local_machine()} if self.device is None else device_machine(self.device)

    def describe(self) -> str:
        where = "the build machine" if self.device is None else f"{self.name} ({self.url})"
        return f"{where}, {self.threads} thread{'s' if self.threads != 1 else ''}"


def resolve_target(recipe) -> Target:
    """The recipe's target: its device found (a name looked up in target.devices) and its ssh_config checked; no
    connection is made. Errors name the recipe file and the field."""
    cfg = recipe.target
    if cfg is None:
        return Target("local", None, recipe.bench.threads[0], None, declared=False)
    formats = tuple(cfg.formats) if cfg.formats else None
    if cfg.device == "local":
        return Target("local", None, cfg.threads, formats, declared=True)
    from edgetl.bench.remote import Device, load_devices
    from edgetl.errors import DeviceAddressError

    source = recipe.source or "recipe"
    config = recipe.resolve_path(cfg.ssh_config) if cfg.ssh_config else None
    if config is not None and not config.is_file():
        raise RecipeError(f"{source}: target.ssh_config: {config} is not a file.")
    if "://" in cfg.device:
        return Target(cfg.device, Device.parse(cfg.device, cfg.python, config), cfg.threads, formats, True)
    devices_file = recipe.resolve_path(cfg.devices)
    try:
        listed = load_devices(devices_file, config)
    except DeviceAddressError as exc:
        raise RecipeError(f"{source}: target.devices: {exc}") from None
    found = next((d for d in listed if d.name == cfg.device), None)
    if found is None:
        raise RecipeError(f"{source}: target.device '{cfg.device}' is not in target.devices ({devices_file} lists "
                          f"{', '.join(str(d.name) for d in listed)}).")
    return Target(cfg.device, found, cfg.threads, formats, True)


def allowed_formats(target: Target, machine: str, exported: list[str], source: str) -> dict[str, str | None]:
    """For each exported format: None when the target may run it, else why not. A format named in target.formats
    whose runtime does not install on the target's `machine` is a RecipeError. This machine runs every exported
    format (verify and bench just ran them here), whatever its architecture."""
    from edgetl.formats import FORMATS, formats_for_machine

    installable = tuple(exported) if target.device is None else formats_for_machine(machine)
    if target.formats is not None:
        cannot = [f for f in target.formats if f not in installable]
        if cannot:
            raise RecipeError(f"{source}: target.formats names {', '.join(cannot)}, but the target {target.name} is "
                              f"{machine} and {' / '.join(FORMATS[f].runtime_package for f in cannot)} does not "
                              f"install there (formats that run on {machine}: "
                              f"{', '.join(installable) or 'none'}). Leave them out of target.formats.")
    why = {}
    for fmt in dict.fromkeys(exported):
        if target.formats is not None and fmt not in target.formats:
            why[fmt] = f"not in target.formats ({', '.join(target.formats)})"
        elif fmt not in installable:
            why[fmt] = f"its runtime ({FORMATS[fmt].runtime_package}) does not install on {machine}"
        else:
            why[fmt] = None
    return why


def local_machine() -> str:
    return platform.machine()


def device_machine(device) -> dict:
    """The device's platform.machine() and Python version, asked over SSH (a DeviceError when unreachable)."""
    import json

    probe = "import json, platform; print(json.dumps({'machine': platform.machine(), 'python': platform.python_version()}))"
    result = device.run([device.python, "-c", probe], timeout=120)
    try:
        return json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise DeviceError(f"{device.name}: `{device.python} -c ...` printed no answer; is {device.python} a Python "
                          "3 interpreter there? Set target.python.") from None


def latency_record(row: dict) -> dict:
    """An `edgetl bench` row's latency figures on the target: the statistics of every timed run, each round's median
    and the p50's bootstrap interval over rounds."""
    from edgetl.bench.stats import row_stats
    from edgetl.significance import p50_ci95

    rounds = row["trial_p50_ms"]
    return {**row_stats(row), "rounds": len(rounds), "round_p50_ms": list(rounds), "p50_ci95": p50_ci95(rounds)}


def _overlap(a: list | None, b: list | None, a_p50: float, b_p50: float) -> bool:
    if not a or not b:
        return a_p50 == b_p50
    return a[0] <= b[1] and b[0] <= a[1]


def choose(artifacts: list[dict], right: dict[str, np.ndarray], latency: dict[str, dict | None],
           excluded: dict[str, str], budget: dict) -> dict:
    """The choice (see RULE) among `artifacts` (summary entries: name, size_bytes), with `right[name]` which val
    images each got right, `latency[name]` its figures on the target (p50, p90, p50_ci95), `excluded[name]` why the
    target cannot run one. Returns {chosen, most_accurate, rule, artifacts: [{name, status, why, figures…}]}."""
    from edgetl.significance import Accuracy, Paired, said

    rows = {a["name"]: {"name": a["name"], "size_bytes": a["size_bytes"], "status": "lost", "why": ""}
            for a in artifacts}
    for a in artifacts:
        row, figures = rows[a["name"]], latency.get(a["name"]) or {}
        accuracy = Accuracy.of(right[a["name"]])
        row.update(val_accuracy=round(accuracy.percent, 4), val_correct=accuracy.correct, val_images=accuracy.n,
                   p50_ms=figures.get("p50"), p50_ci95=figures.get("p50_ci95"), p90_ms=figures.get("p90"))
    candidates = []
    for a in artifacts:
        row = rows[a["name"]]
        if a["name"] in excluded:
            row.update(status="excluded", why=excluded[a["name"]])
        elif row["p50_ms"] is None:
            row.update(status="excluded", why="not measured on the target")
        elif budget.get("latency_ms_p90") is not None and row["p90_ms"] > budget["latency_ms_p90"]:
            row["why"] = f"p90 {row['p90_ms']:.2f} ms > target.budget.latency_ms_p90 {budget['latency_ms_p90']:g} ms"
        elif budget.get("size_mb") is not None and row["size_bytes"] / 1e6 > budget["size_mb"]:
            row["why"] = f"{row['size_bytes'] / 1e6:.2f} MB > target.budget.size_mb {budget['size_mb']:g} MB"
        elif budget.get("accuracy_min") is not None and row["val_accuracy"] < budget["accuracy_min"]:
            row["why"] = (f"val accuracy {row['val_accuracy']:.2f} % < target.budget.accuracy_min "
                          f"{budget['accuracy_min']:g} %")
        else:
            candidates.append(row)
    best = max(candidates, key=lambda r: (r["val_correct"], -r["p50_ms"]), default=None)
    accurate = []
    for row in candidates:
        paired = Paired.of(right[row["name"]], right[best["name"]]).record("this", "most_accurate")
        row["vs_most_accurate"] = paired
        if paired["verdict"] == "worse":
            row["why"] = (f"less accurate than {best['name']} on val ({row['val_correct']}/{row['val_images']} vs "
                          f"{best['val_correct']}/{best['val_images']}): {said(paired)}")
        else:
            accurate.append(row)
    fastest = min(accurate, key=lambda r: r["p50_ms"], default=None)
    tied = [r for r in accurate if _overlap(r["p50_ci95"], fastest["p50_ci95"], r["p50_ms"], fastest["p50_ms"])]
    chosen = min(tied, key=lambda r: (r["size_bytes"], r["p50_ms"]), default=None)
    for row in accurate:
        if row is chosen:
            continue
        if row not in tied:
            row["why"] = f"slower on the target: p50 {_ms(row)} vs {_ms(fastest)} for {fastest['name']}, the fastest"
        elif row["size_bytes"] > chosen["size_bytes"]:
            row["why"] = (f"ties on latency with {chosen['name']} (p50 {_ms(row)} vs {_ms(chosen)}) but is a larger "
                          f"file ({row['size_bytes'] / 1e6:.2f} vs {chosen['size_bytes'] / 1e6:.2f} MB)")
        else:
            row["why"] = (f"ties on latency with {chosen['name']} and is no smaller; its p50 is the slower "
                          f"({_ms(row)} vs {_ms(chosen)})")
    if chosen is not None:
        chosen["status"] = "chosen"
        count = f"{len(accurate)} artifact{'s' if len(accurate) != 1 else ''}"
        speed = (f"the fastest p50 on the target, {_ms(chosen)}" if chosen is fastest else
                 f"p50 {_ms(chosen)} on the target, tied with the fastest, {fastest['name']} ({_ms(fastest)})")
        chosen["why"] = (f"{speed}, of the {count} within the budget "
                         + (f"and not significantly less accurate than the most accurate, {best['name']}"
                            if chosen is not best else "(none of them is significantly more accurate)")
                         + (f"; the smallest file of the {len(tied)} that tie on latency" if len(tied) > 1 else ""))
    # the runner-up: the fastest p50 (then the smaller file) of the other artifacts the rule kept (within budget, not
    # significantly less accurate than the most accurate), and the paired test of the two on val
    rest = [r for r in accurate if r is not chosen]
    runner_up = min(rest, key=lambda r: (r["p50_ms"], r["size_bytes"]), default=None)
    versus = (Paired.of(right[chosen["name"]], right[runner_up["name"]]).record("chosen", "runner_up")
              if chosen is not None and runner_up is not None else None)
    return {"chosen": chosen["name"] if chosen else None, "most_accurate": best["name"] if best else None,
            "runner_up": runner_up["name"] if runner_up else None, "chosen_vs_runner_up": versus,
            "rule": RULE, "budget": {k: v for k, v in budget.items() if v is not None},
            "artifacts": list(rows.values())}


def _ms(row: dict) -> str:
    ci = row.get("p50_ci95")
    return f"{row['p50_ms']:.2f} ms" + (f" (95 % CI {ci[0]:.2f}–{ci[1]:.2f})" if ci else "")


def model_refs(root: Path, artifacts: list[dict], prep: dict) -> list:
    """edgetl.bench.measure.ModelRef of each artifact entry of a run (paths relative to `root`)."""
    from edgetl.bench.measure import ModelRef

    return [ModelRef(root / a["path"], a["name"], a["format"], a["precision"], prep) for a in artifacts]
