"""The `edgetl` command: parse, call the library, print, exit with 0 / 1 / 2. Never a traceback for user errors."""

from __future__ import annotations

import functools
import statistics
import sys
from pathlib import Path

import click

from edgetl import __version__
from edgetl.errors import EdgetlError


def _handle_errors(command):
    """Turn typed errors into one clear paragraph and the error's exit code."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgetlError as exc:
            click.echo(f"edgetl: {exc.kind}: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("edgetl: interrupted. Completed stages are kept; run the same command again to resume.",
                       err=True)
            sys.exit(130)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgetl")
def main() -> None:
    """Fine-tune vision backbones on your images; export, verify and benchmark them for edge devices.

    \b
    Exit codes: 0 ok, 2 bad recipe/data/weights/model file, 1 other failures, 130 interrupted.
    Offline lookup: $TORCH_HOME/hub/checkpoints for weights, $EDGETL_CACHE/datasets for datasets.
    """


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Run directory (default: runs/<recipe name>/).")
@click.option("--quiet", "-q", is_flag=True, help="Print only errors and the final summary line.")
@_handle_errors
def build(recipe: Path, out: Path | None, quiet: bool) -> None:
    """Build RECIPE: fine-tune, export, verify and benchmark, reusing unchanged stages."""
    from edgetl.pipeline import build as run_build
    from edgetl.progress import Reporter

    summary = run_build(recipe, out=out, reporter=Reporter(enabled=not quiet))
    for artifact in summary["artifacts"]:
        latency = artifact["latency_ms"]
        click.echo(f"{artifact['name']:<12} {artifact['path']:<28} acc {artifact['val_accuracy']:6.2f}%  "
                   f"p50 {latency['p50']:7.2f} ms  {artifact['size_bytes'] / 1e6:6.2f} MB")


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@_handle_errors
def check(recipe: Path) -> None:
    """Validate RECIPE, decode every image of its dataset and load its weights, without training."""
    from edgetl.pipeline import create_recipe_model, resolve_data_root, scan_recipe_dataset
    from edgetl.recipe import load_recipe

    parsed = load_recipe(recipe)
    index = scan_recipe_dataset(parsed, resolve_data_root(parsed))
    created = create_recipe_model(parsed, len(index.classes))  # resolves and loads the weights: errors show now
    click.echo(f"{recipe}: ok. {len(index.classes)} classes ({', '.join(index.classes)}), {len(index.train)} train / "
               f"{len(index.val)} val images, {len(index.bad_images)} bad images skipped, "
               f"{sum(index.converted.values())} converted to RGB; backbone {parsed.model.backbone} loads weights "
               f"{created.weights_file or parsed.model.weights}.")


def _percent(value: str) -> float:
    text = value.strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a percentage like 10% or 0.1") from None
    if not 0 <= number < 10:
        raise click.BadParameter(f"{value!r} is out of range")
    return number


def _threads(values: tuple[str, ...]) -> tuple[int, ...]:
    try:
        threads = tuple(int(v) for value in values for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{','.join(values)!r}: give thread counts like 1,2,4") from None
    if not threads or min(threads) < 1:
        raise click.BadParameter("thread counts must be positive integers")
    return threads


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threads", "-t", multiple=True, default=("1",), show_default=True,
              help="Intra-op threads; a list (1,2,4 or repeated) gives one row per value.")
@click.option("--batch", "-b", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size.")
@click.option("--warmup", default="auto", show_default=True,
              help="Warm-up calls before timing: a count, or 'auto' (until two windows of 10 calls agree within 3%).")
@click.option("--runs", "-n", type=click.IntRange(min=1), help="Timed runs per row (instead of --time).")
@click.option("--time", "time_s", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds of timed runs per row (at least 50 runs), when --runs is not given.")
@click.option("--repeats", "-r", type=click.IntRange(min=1), default=5, show_default=True,
              help="Interleaved rounds over all models; the gate compares the rounds' medians.")
@click.option("--images", multiple=True, type=click.Path(path_type=Path, exists=True),
              help="Real input images (files or folders), preprocessed like the model's model.json says; "
                   "default: random inputs.")
@click.option("--no-cold-start", is_flag=True, help="Skip the fresh-process probe (cold start and peak RSS).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write rows as JSON.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False), help="Write rows as CSV.")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the table as Markdown.")
@click.option("--save-baseline", type=click.Path(path_type=Path, dir_okay=False),
              help="Save these results as a latency baseline file.")
@click.option("--baseline", type=click.Path(path_type=Path),
              help="Compare against a baseline: a --save-baseline .json file, or the old model file(s) / run directory "
                   "(measured now, in the same rounds); exit 1 on a significant regression.")
@click.option("--max-regression", default="10%", show_default=True,
              help="Slowdown the gate tolerates (10% or 0.1).")
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=0.95, show_default=True,
              help="Confidence the gate needs before it calls a slowdown a regression.")
@click.option("--quiet", "-q", is_flag=True, help="No progress; print only the table and the gate's verdict.")
@_handle_errors
def bench(models: tuple[Path, ...], threads: tuple[str, ...], batch: int, warmup: str, runs: int | None,
          time_s: float, repeats: int, images: tuple[Path, ...], no_cold_start: bool, json_path: Path | None,
          csv_path: Path | None, markdown_path: Path | None, save_baseline: Path | None, baseline: Path | None,
          max_regression: str, confidence: float, quiet: bool) -> None:
    """Measure the latency of MODELS (.onnx, .xml, .tflite files or edgetl run directories).

    \b
    Exit codes: 0 ok (or no significant regression), 1 regression against --baseline, 2 bad usage or baseline.
    """
    from edgetl.bench.baseline import bench_against, environment_warnings, is_baseline_file, load_baseline
    from edgetl.bench.baseline import save_baseline as save
    from edgetl.bench.measure import BenchOptions, benchmark, find_models
    from edgetl.bench.output import print_table, write_outputs
    from edgetl.progress import Reporter

    if warmup != "auto" and not warmup.isdigit():
        raise click.BadParameter(f"{warmup!r}: give a count or 'auto'", param_hint="--warmup")
    tolerance = _percent(max_regression)
    reference = None
    if baseline:  # a bad baseline fails before minutes of measuring
        reference = load_baseline(baseline) if is_baseline_file(baseline) else find_models([baseline])
    if reference is not None and repeats < 3:
        raise click.BadParameter("the regression gate needs at least 3 repeats", param_hint="--repeats")
    options = BenchOptions(threads=_threads(threads), batch=batch, warmup="auto" if warmup == "auto" else int(warmup),
                           runs=runs, time_s=time_s, repeats=repeats, images=images, cold_start=not no_cold_start)
    reporter = Reporter(enabled=not quiet)
    comparisons = []
    if reference is None:
        rows = benchmark(find_models(list(models)), options, reporter)
    else:
        gated = bench_against(find_models(list(models)), reference if isinstance(reference, dict) else baseline,
                              options, tolerance, confidence, reporter)
        rows, comparisons, reference = gated.rows, gated.comparisons, gated.baseline
        for comparison in comparisons:
            comparison.row["gate"] = comparison.as_dict()
    print_table(rows, _stdout_console())
    write_outputs(rows, json_path, csv_path, markdown_path)
    if save_baseline:
        save(save_baseline, rows)
        click.echo(f"baseline saved: {save_baseline}")
    if reference is None:
        return
    for warning in environment_warnings(reference):
        click.echo(f"warning: {warning} (the comparison may not be like for like)", err=True)
    regressions = 0
    for comparison in comparisons:
        label = f"{comparison.row['name']} @ {comparison.row['threads']} thread(s), batch {comparison.row['batch']}"
        for note in comparison.warnings:
            click.echo(f"warning: {label}: {note}", err=True)
        decision = comparison.decision
        if decision is None:
            click.echo(f"{label}: no baseline row; not checked")
            continue
        regressions += decision.status == "regression"
        before, after = (statistics.median(r["trial_p50_ms"]) for r in (comparison.baseline_row, comparison.row))
        click.echo(f"{label}: {decision.status.upper()} median of repeats {before:.3f} → {after:.3f} ms, "
                   f"×{decision.ratio:.3f} (×{decision.low:.3f}–×{decision.high:.3f} "
                   f"at {confidence:.0%}, p={decision.p_value:.3f}); tolerance +{tolerance:.0%}; "
                   + ("baseline model re-measured in the same rounds" if comparison.mode == "interleaved"
                      else "against the baseline's saved trials"))
    if regressions:
        click.echo(f"edgetl: {regressions} latency regression(s) beyond +{tolerance:.0%} against {baseline}", err=True)
        sys.exit(1)


def _stdout_console():
    from rich.console import Console

    # A pipe or CI log has no width: rich would squeeze the 16 columns into 80 characters.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


if __name__ == "__main__":
    main()
