"""A run's report, from its summary.json and the stages' history files: `report.md`, a self-contained
`report.html` (plots inlined, opens offline) and the plots as PNG files in `report/`. `edgetl report RUN_DIR`
remakes them; `edgetl compare RUN_A RUN_B` says what changed between two runs."""

from __future__ import annotations

import base64
import functools
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import ReportError
from edgetl.fsutil import sha256_json, write_bytes, write_text
from edgetl.summary import check_summary, read_summary

PLOTS = ("training", "pareto", "confusion")


def load_summary(run_dir: Path) -> dict:
    """The run's summary.json, checked field by field, or a ReportError naming what is wrong."""
    return read_summary(run_dir, ReportError)


def bench_threads(summary: dict) -> str | None:
    """The thread count the latency columns and the Pareto plot use: the first one measured."""
    for artifact in summary["artifacts"]:
        if artifact.get("latency_by_threads"):
            return next(iter(artifact["latency_by_threads"]))
    return None


def p50(artifact: dict, threads: str | None) -> float | None:
    return ((artifact.get("latency_by_threads") or {}).get(threads) or {}).get("p50") if threads else None


def _front(points: list[tuple[str, float, float, int]]) -> set[str]:
    """Names of the points (name, accuracy, latency, size) no other point beats on all three at once."""
    front = set()
    for name, acc, lat, size in points:
        if not any(o_acc >= acc and o_lat <= lat and o_size <= size and (o_acc, o_lat, o_size) != (acc, lat, size)
                   for _, o_acc, o_lat, o_size in points):
            front.add(name)
    return front


def _artifact_points(artifacts: list[dict], threads: str | None) -> list[tuple[str, float, float, int]]:
    return [(a["name"], a["val_accuracy"], p50(a, threads), a["size_bytes"]) for a in artifacts
            if a.get("val_accuracy") is not None and p50(a, threads) is not None]


def pareto_names(artifacts: list[dict], threads: str | None) -> set[str]:
    """Artifacts no other artifact beats on accuracy, p50 latency and size at once (higher, lower, smaller)."""
    return _front(_artifact_points(artifacts, threads))


def _pareto_points(summary: dict, threads: str | None) -> tuple[list[tuple[str, float, float, int]], str, str | None,
                                                                 dict[str, list[float]]]:
    """What the Pareto plot shows: every measured candidate of a search (p90 on the budget's device), else the
    run's artifacts (p50 on a remote target when there is one, else here); with the x label, the chosen point's name
    and each point's 95 % intervals {name: [acc low, acc high, latency low, latency high]}."""
    search = summary.get("search")
    if search:
        points = [(c["name"], c["val_accuracy"], c["latency_ms_p90"], c["size_bytes"])
                  for c in search.get("candidates", []) if c.get("val_accuracy") is not None
                  and c.get("latency_ms_p90") is not None and c.get("size_bytes") is not None]
        budget = search.get("budget", {})
        return (points, f"p90 latency (ms) on {budget.get('device')}, {budget.get('threads')} thread(s)",
                search.get("chosen"), {})
    chosen, target = chosen_artifact(summary), summary.get("target") or {}
    if target.get("device", "local") != "local":
        def latency(a: dict) -> dict:
            return a.get("target_latency_ms") or {}
        xlabel = f"p50 latency (ms) on {target.get('name')}, {target.get('threads')} thread(s)"
    else:
        if target and str(target.get("threads")) in _all_threads(summary):
            threads = str(target["threads"])  # the target's thread count: what the choice compared

        def latency(a: dict) -> dict:
            return (a.get("latency_by_threads") or {}).get(threads) or {} if threads else {}
        xlabel = f"p50 latency (ms, {threads} thread(s))"
    timed = [a for a in summary["artifacts"] if a.get("val_accuracy") is not None and latency(a).get("p50") is not None]
    bars = {a["name"]: [*a["val_accuracy_ci95"], *latency(a)["p50_ci95"]] for a in timed
            if a.get("val_accuracy_ci95") and latency(a).get("p50_ci95")}
    return ([(a["name"], a["val_accuracy"], latency(a)["p50"], a["size_bytes"]) for a in timed], xlabel,
            chosen["name"] if chosen else None, bars)


def _all_threads(summary: dict) -> set[str]:
    return {t for a in summary["artifacts"] for t in (a.get("latency_by_threads") or {})}


def chosen_artifact(summary: dict) -> dict | None:
    """The build's chosen artifact (`chosen`, or a search's); for a summary from before `chosen`, the fastest artifact
    within the accuracy budget."""
    by_name = {a["name"]: a for a in summary["artifacts"]}
    chosen = summary.get("chosen") or (summary.get("search") or {}).get("chosen_artifact")
    if chosen in by_name:
        return by_name[chosen]
    if "choice" in summary:  # a build that records its choice and chose nothing: nothing is invented for it
        return None
    threads = bench_threads(summary)
    budget = (summary.get("budget") or {}).get("max_accuracy_drop_pp")
    within = [a for a in summary["artifacts"] if budget is None or (a.get("accuracy_drop_pp") or 0) <= budget]
    timed = [a for a in within if p50(a, threads) is not None]
    if timed:
        return min(timed, key=lambda a: (p50(a, threads), -a["val_accuracy"]))
    return max(within, key=lambda a: a.get("val_accuracy") or 0) if within else None


def _histories(run_dir: Path) -> dict[str, list[dict]]:
    histories = {}
    for path in sorted(Path(run_dir).glob("*/history.json")):
        try:
            history = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(history, list) and history and isinstance(history[0], dict):
            histories[path.parent.name] = history
    return histories


STAMP = "edgetl-drawn-from"  # a PNG text chunk: the digest of what the plot was drawn from (render_plots)


def _png(figure, stamp: str | None) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={STAMP: stamp} if stamp else None)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(histories: dict[str, list[dict]], stamp: str | None = None) -> bytes | None:
    """Train loss and val accuracy per epoch of every fine-tune of the run (teacher, student, recovery, QAT)."""
    if not histories:
        return None
    plt = _pyplot()
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for stage, history in histories.items():
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
        if any("train_loss" in h for h in history):
            loss_axis.plot(epochs, [h.get("train_loss") for h in history], marker="o", label=stage)
        if any("val_accuracy" in h for h in history):
            acc_axis.plot(epochs, [h.get("val_accuracy") for h in history], marker="o", label=stage)
    loss_axis.set(title="train loss", xlabel="epoch")
    acc_axis.set(title="val accuracy (%)", xlabel="epoch")
    for axis in (loss_axis, acc_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    data = _png(figure, stamp)
    plt.close(figure)
    return data


def plot_pareto(points: list[tuple[str, float, float, int]], xlabel: str, chosen: str | None,
                bars: dict[str, list[float]] | None = None, stamp: str | None = None) -> bytes | None:
    """Val accuracy against latency, marker area ∝ file size, the Pareto front joined, the choice ringed and each
    point's 95 % intervals (`bars`: accuracy and latency) drawn as error bars."""
    if not points:
        return None
    plt = _pyplot()
    front = _front(points)
    largest = max(size for *_, size in points) or 1
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    for name, accuracy, latency, size in points:
        area = 40 + 400 * size / largest
        axis.scatter([latency], [accuracy], s=area, alpha=0.6, edgecolors="black" if name in front else "none")
        axis.annotate(name, (latency, accuracy), textcoords="offset points", xytext=(6, 4), fontsize=7)
        if name in (bars or {}):
            low, high, fast, slow = bars[name]
            axis.errorbar([latency], [accuracy], yerr=[[max(0.0, accuracy - low)], [max(0.0, high - accuracy)]],
                          xerr=[[max(0.0, latency - fast)], [max(0.0, slow - latency)]], fmt="none",
                          ecolor="gray", elinewidth=0.8, capsize=2)
        if name == chosen:
            axis.scatter([latency], [accuracy], s=area * 2.2, facecolors="none", edgecolors="red", linewidths=1.5)
    line = sorted((latency, accuracy) for name, accuracy, latency, _ in points if name in front)
    axis.plot([p[0] for p in line], [p[1] for p in line], linestyle="--", color="gray", linewidth=1)
    axis.set(xlabel=xlabel, ylabel="val accuracy (%)",
             title="accuracy vs latency (marker area ∝ file size; red ring: chosen"
                   + ("; bars: 95 % intervals)" if bars else ")"))
    axis.grid(alpha=0.3)
    data = _png(figure, stamp)
    plt.close(figure)
    return data


def plot_confusion(matrix: list[list[int]], classes: list[str], title: str, stamp: str | None = None) -> bytes | None:
    if not matrix:
        return None
    plt = _pyplot()
    size = max(3.5, 0.45 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axis.text(j, i, str(count), ha="center", va="center", fontsize=9,
                      color="white" if count > max(map(max, matrix)) / 2 else "black")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    data = _png(figure, stamp)
    plt.close(figure)
    return data


@dataclass
class Report:
    """What `write_report` wrote."""

    markdown: Path
    html: Path
    plots: dict[str, Path]


def _plot_inputs(run_dir: Path, summary: dict) -> dict[str, tuple]:
    """What each plot is drawn from: {name: the arguments of its plot_* function}."""
    threads = bench_threads(summary)
    chosen = chosen_artifact(summary)
    search = summary.get("search") or {}
    points, xlabel, chosen_point, bars = _pareto_points(summary, threads)
    return {"training": (_histories(run_dir / search.get("chosen_run", ".")),),
            "pareto": (points, xlabel, chosen_point, bars),
            "confusion": (chosen.get("confusion_matrix") if chosen else None, summary.get("classes", []),
                          f"{chosen['name']} on the val split" if chosen else "")}


_DRAW = {"training": plot_training, "pareto": plot_pareto, "confusion": plot_confusion}


@functools.cache
def _drawing_code() -> dict:
    """What draws the plots: this module's source and matplotlib's version (read once per process)."""
    from importlib.metadata import version

    return {"code": sha256_json(Path(__file__).read_text(encoding="utf-8")), "matplotlib": version("matplotlib")}


def _digest(name: str, inputs: tuple) -> str:
    """Changes with the plot's data, with this module's code and with matplotlib's version."""
    return sha256_json({"plot": name, "inputs": json.loads(json.dumps(inputs, default=str)), **_drawing_code()})


def _stamp_of(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.info.get(STAMP)
    except (OSError, UnidentifiedImageError):
        return None


def render_plots(run_dir: Path, summary: dict) -> dict[str, bytes | None]:
    """The report's plots as PNG bytes (None where there is nothing to plot). A PNG in report/ that was drawn from the
    same data by the same code (its STAMP text chunk says so) is read back rather than drawn again: importing
    matplotlib and drawing took most of an unchanged rebuild's time."""
    images = {}
    for name, inputs in _plot_inputs(run_dir, summary).items():
        digest, path = _digest(name, inputs), run_dir / "report" / f"{name}.png"
        images[name] = path.read_bytes() if path.is_file() and _stamp_of(path) == digest else \
            _DRAW[name](*inputs, stamp=digest)
    return images


def write_report(run_dir: Path, summary: dict | None = None, plots: bool = True) -> Report:
    """(Re)make report.md, report.html and report/*.png of a run directory. `plots=False`: the text and tables only,
    and a pointer to `edgetl report RUN_DIR`, which draws the plots."""
    run_dir = Path(run_dir)
    summary = check_summary(summary, run_dir / "summary.json") if summary is not None else load_summary(run_dir)
    # Everything is made in memory first: a summary that cannot be reported leaves the old report as it was.
    images = render_plots(run_dir, summary) if plots else {}
    written = {name: run_dir / "report" / f"{name}.png" for name, data in images.items() if data is not None}
    sections = _sections(summary, run_dir, bench_threads(summary), chosen_artifact(summary))
    if not plots:
        sections[0].text.append(f"Plots (training curves, Pareto front, confusion matrix): run `edgetl report "
                                f"{run_dir}`.")
    markdown, page = _markdown(summary, sections, written, run_dir), _html(summary, sections, images)
    for name, path in written.items():
        write_bytes(path, images[name])
    for stale in set(PLOTS) - set(written) if plots else ():  # an earlier report's plots this one does not have
        (run_dir / "report" / f"{stale}.png").unlink(missing_ok=True)
    write_text(run_dir / "report.md", markdown)
    write_text(run_dir / "report.html", page)
    return Report(run_dir / "report.md", run_dir / "report.html", written)


@dataclass
class Section:
    title: str
    text: list[str]  # paragraphs
    table: tuple[list[str], list[list[str]]] | None = None
    plot: str | None = None
    code: str | None = None


def _fmt(value, spec: str = ".2f", none: str = "—") -> str:
    return none if value is None else format(value, spec)


def _interval(ci) -> str:
    return f"{ci[0]:.1f}–{ci[1]:.1f}" if isinstance(ci, list) and len(ci) == 2 else "—"


def _data_source(data: dict) -> str:
    if data.get("layout") == "flat":
        return "split by edgetl from <class>/ folders, recorded in " + str(data.get("index"))
    return str(data.get("val_source", "val")) + ("" if data.get("test_source") else "; no test split")


def _split_words(summary: dict, tested: bool) -> str:
    if tested:
        n = (summary.get("reference_model") or {}).get("test_images")
        return (f"Val chose the best epoch, the int8 settings and the chosen file; the test split ({n} images) chose "
                "nothing: its accuracies are the ones to quote.")
    return ("This data has no test split: every accuracy here is on val, which also chose the best epoch and the int8 "
            "settings, so it is optimistic. Add a test/ folder or set data.test_fraction for an unbiased figure.")


def _val_count(summary: dict) -> str:
    reference = summary.get("reference_model") or {}
    n, ci = reference.get("val_images"), reference.get("val_accuracy_ci95")
    if not n:
        return ""
    return (f" ({n} images; the torch model they were exported from: {_fmt(reference.get('val_accuracy'))} %, "
            f"95 % CI {_interval(ci)})")


def _choice_sections(summary: dict) -> list[Section]:
    """Where the model is for, what it can run there, and why each artifact was chosen or not."""
    from edgetl.significance import said  # here: numpy stays out of `import edgetl.report`

    choice, target = summary.get("choice") or {}, summary.get("target") or {}
    if not choice.get("artifacts"):
        return []
    info = target.get("device_info") or {}
    if target.get("device", "local") == "local":
        where = (f"the build machine ({info.get('machine')}), {target.get('threads')} thread(s)"
                 + ("" if target.get("declared") else ": the recipe has no `target:` section, so the model is chosen "
                    "for the machine that built it"))
    else:
        where = f"{target.get('name')} (`{target.get('device')}`, {info.get('machine')}), {target.get('threads')} thread(s)"
    chosen = choice.get("chosen")
    text = [f"Target: {where}. Formats it runs: {', '.join(target.get('formats') or []) or 'none'}. "
            + (f"Chosen: **{chosen}**. " if chosen else "No artifact meets the budget. ")
            + f"Rule: {choice.get('rule')}. Budget: "
            + (", ".join(f"{k} {v:g}" for k, v in (choice.get("budget") or {}).items() if v is not None) or "none")
            + "."]
    rows = [[a["name"], a["status"], f"{a['val_correct']}/{a['val_images']} ({_fmt(a.get('val_accuracy'))} %)",
             said(a.get("vs_most_accurate")) if a["name"] != choice.get("most_accurate") else "most accurate",
             _fmt(a.get("p50_ms")) + (f" ({a['p50_ci95'][0]:.2f}–{a['p50_ci95'][1]:.2f})" if a.get("p50_ci95") else ""),
             _fmt(a.get("p90_ms")), f"{a['size_bytes'] / 1e6:.2f}", a.get("why", "")] for a in choice["artifacts"]]
    return [Section("Target and choice", text, (["artifact", "", "val correct", "against the most accurate",
                                                  "p50 on the target (ms, 95 % CI)", "p90 (ms)", "size (MB)", "why"],
                                                 rows))]


def _failure_text(summary: dict) -> list[str]:
    """What a failed build's summary says about the failure (nothing for a build that went well)."""
    if not summary.get("error"):
        return []
    where = f" in the {summary['failed_stage']} stage" if summary.get("failed_stage") else ""
    if summary.get("figures_from_this_build"):
        return [f"The build failed{where}: {summary['error']} The figures below are this build's, from the stages "
                "before that one: every artifact listed was verified."]
    return [f"The build failed{where}: {summary['error']} The figures below are the last successful build's; only "
            "artifacts whose files are still as it left them are listed."]


def _sections(summary: dict, run_dir: Path, threads: str | None, chosen: dict | None) -> list[Section]:
    data, model, env = summary.get("data", {}), summary.get("model", {}), summary.get("environment", {})
    recipe_path = Path(str(summary.get("recipe", "")))
    recipe_text = recipe_path.read_text(encoding="utf-8") if recipe_path.is_file() else None
    front = pareto_names(summary["artifacts"], threads)
    sections = [Section("Recipe", [f"`{summary.get('recipe')}` (sha256 of the validated recipe "
                                   f"`{str(summary.get('recipe_sha256', ''))[:12]}`), edgetl "
                                   f"{summary.get('edgetl_version')}, status **{summary.get('status')}**."]
                        + ([] if recipe_text else ["(the recipe file is no longer at that path)"])
                        + _failure_text(summary), code=recipe_text)]
    counts = data.get("class_counts", {})
    classes = sorted({c for split in counts.values() for c in split})
    bad = data.get("bad_images", [])
    sections.append(Section("Data", [
        f"{data.get('train_images')} train / {data.get('val_images')} val"
        + (f" / {data.get('test_images')} test" if data.get("test_source") else "")
        + f" images ({_data_source(data)}), "
        f"{len(classes)} classes, from `{data.get('root')}`. {len(bad)} bad image(s) skipped"
        + (": " + ", ".join(f"`{b.get('path', b)}`" if isinstance(b, dict) else f"`{b}`" for b in bad[:10]) if bad
           else "") + f"; {len(data.get('converted_to_rgb', []))} converted to RGB."],
        (["class", *counts], [[c, *(str(counts[s].get(c, 0)) for s in counts)] for c in classes])))
    sections.append(Section("Training", [
        f"Backbone **{model.get('backbone')}**, weights `{model.get('weights')}`, mode `{model.get('mode')}`: val "
        f"accuracy **{_fmt(model.get('val_accuracy'))} %** after {model.get('epochs_run')} epochs (best epoch "
        f"{model.get('best_epoch')}" + (": no fine-tune epoch beat the linear-probe phase, whose model this is"
                                        if model.get("best_epoch") == 0 and model.get("probe_val_accuracy") is not None
                                        else "")
        + (f"; the linear-probe phase before it: {_fmt(model.get('probe_val_accuracy'))} %"
           if model.get("probe_val_accuracy") is not None and model.get("best_epoch") else "")
        + ")." + _compression_text(summary)], plot="training"))
    from edgetl.significance import said  # here: numpy stays out of `import edgetl.report`

    rows = []
    tested = any(a.get("test_accuracy") is not None for a in summary["artifacts"])
    for a in summary["artifacts"]:
        lat = (a.get("latency_by_threads") or {}).get(threads) or {}
        marks = ("chosen" if chosen and a["name"] == chosen["name"] else "") + (" pareto" if a["name"] in front else "")
        rows.append([a["name"], f"`{a['path']}`", a["format"], a["precision"], a.get("quantization") or "",
                     f"{a['size_bytes'] / 1e6:.2f}",
                     _fmt(a.get("val_accuracy")), _interval(a.get("val_accuracy_ci95")),
                     _fmt(a.get("accuracy_drop_pp"), "+.2f"), said(a.get("vs_torch")),
                     *([_fmt(a.get("test_accuracy")), _interval(a.get("test_accuracy_ci95")),
                        said(a.get("test_vs_torch"))] if tested else []),
                     _fmt(a.get("max_abs_logit_diff"), ".1e"), _fmt(lat.get("p50")), _fmt(lat.get("p90")),
                     _fmt(lat.get("p99")), marks.strip()])
    sections.append(Section("Artifacts", [
        f"Every file evaluated on the whole val split with its own runtime{_val_count(summary)}; latency at batch "
        f"{summary['artifacts'][0].get('batch', 1) if summary['artifacts'] else 1}, {threads} thread(s). "
        f"Accuracy budget: {(summary.get('budget') or {}).get('max_accuracy_drop_pp')} pp. 95 % CI: Wilson score "
        "interval. Against torch: the exact McNemar test of the file's and the torch model's predictions on the "
        "same images; better or worse only when p < 0.05. " + _split_words(summary, tested)],
        (["artifact", "file", "format", "precision", "quantization", "size (MB)", "val acc (%)", "95 % CI",
          "drop (pp)", "against torch",
          *(["test acc (%)", "test 95 % CI", "test: against torch"] if tested else []),
          "max logit diff", "p50 (ms)", "p90 (ms)", "p99 (ms)", ""], rows)))
    sections.append(Section("Accuracy vs latency", [
        "Pareto front: artifacts no other artifact beats on accuracy, latency and size at once. Bars: 95 % "
        "intervals (Wilson for accuracy; for p50, a bootstrap over the rounds' medians)."
        + (f" Chosen: **{chosen['name']}**" + (" (by the search)." if (summary.get("search") or {}).get("chosen")
                                                else "." if summary.get("chosen") else
                                                " (the fastest within the accuracy budget).") if chosen else "")],
        plot="pareto"))
    sections.extend(_choice_sections(summary))
    sections.extend(_search_sections(summary))
    if chosen:
        sections.append(Section(f"Confusion matrix of {chosen['name']}", [
            "Rows: true class; columns: predicted class; val split."], plot="confusion"))
    sections.append(Section("Device", [
        f"{env.get('cpu')} ({env.get('cores')} cores, {env.get('machine')}), Python {env.get('python')}; "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("cpu", "cores", "machine", "python", "platform")
                    and v) + "."], None))
    stages = summary.get("stages", {})
    if stages:
        sections.append(Section("Stages", [", ".join(f"{k} " + ("reused" if v.get("cached") else
                                                                f"{v.get('seconds', 0):.1f} s")
                                                     for k, v in stages.items())]))
    return sections


def _compression_text(summary: dict) -> str:
    text = ""
    distill, prune = summary.get("distill"), summary.get("prune")
    if distill:
        text += (f" Distilled from {distill['teacher']['backbone']} ({_fmt(distill['teacher']['val_accuracy'])} %);"
                 f" without KD the student reached {_fmt(distill.get('student_without_kd_val_accuracy'))} %"
                 + _paired_words(distill.get("kd_vs_without_kd"), "with KD than without") + ".")
    if prune:
        text += (f" Pruned to {prune['macs_ratio']:.2f}× the MACs ({prune['macs_before'] / 1e6:.0f}M → "
                 f"{prune['macs_after'] / 1e6:.0f}M): val accuracy {_fmt(prune['val_accuracy_before'])} → "
                 f"{_fmt(prune['val_accuracy_after'])} %" + _paired_words(prune.get("pruned_vs_unpruned"),
                                                                         "pruned than unpruned")
                 + f", onnx fp32 latency ×{prune['onnx_fp32_latency_ratio']:.2f}.")
    return text


def _paired_words(paired, than: str) -> str:
    """`` (better with KD than without, p = 0.012)`` or `` (no significant difference, p = 0.62)``; "" if unknown."""
    from edgetl.significance import p_text

    if not isinstance(paired, dict) or paired.get("p_value") is None:
        return ""
    verdict = paired.get("verdict")
    said = f"{verdict} {than}" if verdict in ("better", "worse") else "no significant difference"
    return f" ({said}, {p_text(paired['p_value'])})"


def _search_sections(summary: dict) -> list[Section]:
    search = summary.get("search")
    if not search:
        return []
    rows = [[c["name"], c.get("backbone", ""), str(c.get("prune", "")), c.get("format", ""), c.get("precision", ""),
             c["status"], _fmt(c.get("val_accuracy")), _interval(c.get("val_accuracy_ci95")),
             _fmt(c.get("latency_ms_p90")),
             _fmt(c.get("size_bytes") / 1e6 if c.get("size_bytes") else None), "yes" if c.get("trained") else "no",
             c.get("reason", "")] for c in search.get("candidates", [])]
    return [Section("Search", [f"Budget {json.dumps(search.get('budget'))}; {search.get('trained_count')} of "
                               f"{search.get('grid_size')} candidates trained; chosen **{search.get('chosen')}**."],
                    (["candidate", "backbone", "prune", "format", "precision", "status", "val acc (%)", "95 % CI",
                      "p90 (ms)",
                      "size (MB)", "trained", "reason"], rows))]


def _markdown(summary: dict, sections: list[Section], plots: dict[str, Path], run_dir: Path) -> str:
    lines = [f"# edgetl run `{summary.get('recipe_name')}`", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.text:
            lines += [paragraph, ""]
        if section.code:
            lines += ["```yaml", section.code.rstrip(), "```", ""]
        if section.table:
            header, rows = section.table
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
            lines.append("")
        if section.plot and section.plot in plots:
            lines += [f"![{section.title}]({plots[section.plot].relative_to(run_dir).as_posix()})", ""]
    return "\n".join(lines)


STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1b1f24}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .55em;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f4f6}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em}img{max-width:100%}code{background:#f3f4f6}"""


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in an escaped paragraph."""
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _html(summary: dict, sections: list[Section], images: dict[str, bytes | None]) -> str:
    title = f"edgetl run {summary.get('recipe_name')}"
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{_inline(p)}</p>" for p in section.text]
        if section.code:
            parts.append(f"<pre>{html.escape(section.code)}</pre>")
        if section.table:
            header, rows = section.table
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        data = images.get(section.plot) if section.plot else None
        if data:
            parts.append(f'<img alt="{html.escape(section.title)}" '
                         f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def compare_runs(run_a: Path, run_b: Path) -> dict:
    """What changed from run A to run B: the model, and per artifact accuracy, p50 latency and size."""
    a, b = load_summary(run_a), load_summary(run_b)
    threads_a, threads_b = bench_threads(a), bench_threads(b)
    by_a, by_b = {x["name"]: x for x in a["artifacts"]}, {x["name"]: x for x in b["artifacts"]}
    rows = []
    for name in [*by_a, *(n for n in by_b if n not in by_a)]:
        x, y = by_a.get(name), by_b.get(name)
        row = {"artifact": name, "status": "changed" if x and y else ("removed" if x else "added")}
        for key, value in (("val_accuracy", lambda r: r.get("val_accuracy")), ("size_bytes", lambda r: r["size_bytes"])):
            row[f"{key}_a"], row[f"{key}_b"] = (value(x) if x else None), (value(y) if y else None)
        row["p50_ms_a"], row["p50_ms_b"] = (p50(x, threads_a) if x else None), (p50(y, threads_b) if y else None)
        if x and y:
            if row["val_accuracy_a"] is not None and row["val_accuracy_b"] is not None:
                row["val_accuracy_delta_pp"] = round(row["val_accuracy_b"] - row["val_accuracy_a"], 4)
            if row["p50_ms_a"] and row["p50_ms_b"]:
                row["p50_ratio"] = round(row["p50_ms_b"] / row["p50_ms_a"], 4)
            row["size_ratio"] = round(row["size_bytes_b"] / row["size_bytes_a"], 4) if row["size_bytes_a"] else None
            if x.get("sha256") and x.get("sha256") == y.get("sha256"):
                row["status"] = "same file"
        rows.append(row)
    model_keys = ("backbone", "weights", "mode", "val_accuracy", "epochs_run", "params")
    model = {k: (a.get("model", {}).get(k), b.get("model", {}).get(k)) for k in model_keys
             if a.get("model", {}).get(k) != b.get("model", {}).get(k)}
    notes = []
    if threads_a != threads_b:
        notes.append(f"latency measured at {threads_a} thread(s) in A and {threads_b} in B")
    env_a, env_b = a.get("environment", {}), b.get("environment", {})
    notes += [f"{k}: {env_a.get(k)} → {env_b.get(k)}" for k in ("cpu", "cores", "machine", "onnxruntime", "openvino",
                                                                "ai-edge-litert") if env_a.get(k) != env_b.get(k)]
    return {"run_a": str(run_a), "run_b": str(run_b), "recipe_changed": a.get("recipe_sha256") != b.get("recipe_sha256"),
            "model": model, "artifacts": rows, "threads": [threads_a, threads_b], "notes": notes}


if __name__ == "__main__":  # `python -m edgetl.report RUN_DIR`: the whole report, as `edgetl report` makes it
    import sys

    write_report(Path(sys.argv[1]))
