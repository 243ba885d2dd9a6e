"""What `edgetl build` prints when it finishes: the aligned table of the artifacts (the chosen one marked, accuracy
with n and its interval, the comparison with the torch model, p50 latencies, size) and the commands that ship the
chosen one. Plain strings, so the CLI prints them and tests read them."""

from __future__ import annotations

from pathlib import Path


def next_steps(summary: dict, run_dir: Path) -> list[str]:
    """Why the chosen artifact was chosen, and the commands that ship it."""
    chosen, target = summary.get("chosen"), summary.get("target") or {}
    if not chosen:
        return []
    why = next((a["why"] for a in (summary.get("choice") or {}).get("artifacts", []) if a["name"] == chosen), "")
    device = target.get("device", "local")
    return [f"chosen: {chosen}" + (f", {why}" if why else "") + ".",
            f"next: edgetl bundle {run_dir}    (a deploy bundle of {chosen} in {run_dir / 'bundle'})",
            f"      edgetl deploy {run_dir} --device {device if device != 'local' else 'ssh://user@host'}"
            "    (copy it to the device, run and time it there)"]


def artifact_table(summary: dict) -> list[str]:
    """The build's closing table, aligned: each artifact's file, accuracy with its 95 % interval (on test when the
    data has a test split, else on val, said so), how it compares with the torch model it was exported from (exact
    McNemar on the same images), p50 latency and size."""
    from edgetl.significance import said

    artifacts = summary["artifacts"]
    if not artifacts:
        return []
    split = "test" if artifacts[0].get("test_accuracy") is not None else "val"
    n = artifacts[0].get(f"{split}_images")
    threads = artifacts[0].get("threads")
    target = summary.get("target") or {}
    # the target's p50 beside this machine's when they differ (a device, or another thread count)
    apart = bool(target) and (target.get("device") != "local" or target.get("threads") != threads)
    rows = [["", "artifact", "file", f"{split} acc, 95 % CI (n = {n})" if n else f"{split} acc",
             "against the torch model",
             f"p50 here at {threads} thread{'s' if threads != 1 else ''}" if threads else "p50", "size"]]
    if apart:
        rows[0].insert(6, f"p50 on the target ({_where(target)})")
    for a in artifacts:
        ci, latency = a.get(f"{split}_accuracy_ci95"), a.get("latency_ms") or {}
        accuracy = a[f"{split}_accuracy"]
        rows.append(["*" if a["name"] == summary.get("chosen") else "", a["name"], a["path"],
                     f"{accuracy:.2f} % ({ci[0]:.1f}–{ci[1]:.1f})" if ci else f"{accuracy:.2f} %",
                     said(a.get("test_vs_torch" if split == "test" else "vs_torch")), _p50(latency),
                     f"{a['size_bytes'] / 1e6:.2f} MB"])
        if apart:
            rows[-1].insert(6, _p50(a.get("target_latency_ms") or {}))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = set(range(5, len(rows[0])))  # numbers to the right
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in
                       enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    if summary.get("chosen"):
        lines.append(f"* chosen for the target: {_where(target)}.")
    if split == "val":
        lines.append("No test split: these accuracies are on val, which also chose the best epoch and the int8 "
                     "settings, so they are optimistic. Add a test/ folder or set data.test_fraction.")
    else:
        lines.append(f"Accuracy on the {n} test images, which chose nothing (val chose the best epoch and the int8 "
                     "settings).")
    return lines


def _p50(latency: dict) -> str:
    if latency.get("p50") is None:
        return "—"
    ci = latency.get("p50_ci95")
    return f"{latency['p50']:.2f} ms" + (f" ({ci[0]:.2f}–{ci[1]:.2f})" if ci else "")


def _where(target: dict) -> str:
    threads = target.get("threads")
    threads = f"{threads} thread{'s' if threads != 1 else ''}"
    if target.get("device", "local") == "local":
        return f"the build machine, {threads}" + ("" if target.get("declared") else " (the recipe has no target: section)")
    return f"{target.get('name')}, {(target.get('device_info') or {}).get('machine', '?')}, {threads}"
