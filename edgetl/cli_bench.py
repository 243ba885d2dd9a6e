"""`edgetl bench`: latency of model files here or on devices, baselines and the regression gate (here, or on one
device over SSH)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgetl.cli_common import devices_from, handle_errors, output_files, parse_threads, percent, stdout_console


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threads", "-t", multiple=True, default=("1",), show_default=True,
              help="Intra-op threads; a list (1,2,4 or repeated) gives one row per value.")
@click.option("--batch", "-b", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size.")
@click.option("--warmup", default="auto", show_default=True,
              help="Warm-up calls before timing: a count, or 'auto' (until two windows of 10 calls agree within 3%).")
@click.option("--runs", "-n", type=click.IntRange(min=1), help="Timed runs per row (instead of --time).")
@click.option("--time", "time_s", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds of timed runs per row (at least 50 runs), when --runs is not given.")
@click.option("--repeats", "-r", type=click.IntRange(min=1), default=10, show_default=True,
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
@click.option("--no-confirm", is_flag=True,
              help="Fail on the first measurement; by default a regression is measured again and must show twice.")
@click.option("--fail-on-not-judged", is_flag=True,
              help="Exit 1 also when a row could not be judged (too few rounds in a machine state shared with the "
                   "baseline); by default such a row is reported and does not fail the gate.")
@click.option("--device", "-d", multiple=True,
              help="Measure on ssh://[user@]host[:port] instead of here (repeatable; see `edgetl deploy`).")
@click.option("--devices", "devices_file", type=click.Path(path_type=Path, dir_okay=False),
              help="A devices.yaml: measure on every device listed, concurrently.")
@click.option("--install", is_flag=True, help="With --device: pip-install the runtime on the device when missing.")
@click.option("--python", default="python3", show_default=True, help="With --device: the Python on the device.")
@click.option("--ssh-config", type=click.Path(path_type=Path, dir_okay=False),
              help="With --device: an ssh_config file instead of ~/.ssh/config.")
@click.option("--quiet", "-q", is_flag=True, help="No progress; print only the table and the gate's verdict.")
@handle_errors
def bench(models: tuple[Path, ...], threads: tuple[str, ...], batch: int, warmup: str, runs: int | None,
          time_s: float, repeats: int, images: tuple[Path, ...], no_cold_start: bool, json_path: Path | None,
          csv_path: Path | None, markdown_path: Path | None, save_baseline: Path | None, baseline: Path | None,
          max_regression: str, confidence: float, device: tuple[str, ...], devices_file: Path | None, install: bool,
          python: str, ssh_config: Path | None, quiet: bool, no_confirm: bool = False,
          fail_on_not_judged: bool = False) -> None:
    """Measure the latency of MODELS (.onnx, .xml, .tflite files or edgetl run directories).

    \b
    Exit codes: 0 ok (or no significant regression), 1 regression against --baseline (or a row not judged, with
    --fail-on-not-judged; or a device that failed), 2 bad usage or baseline. With one --device, --baseline and
    --save-baseline gate on that device.
    """
    from edgetl.bench.baseline import bench_against, is_baseline_file, load_baseline
    from edgetl.bench.baseline import save_baseline as save
    from edgetl.bench.gate import fewest_rounds
    from edgetl.bench.measure import BenchOptions, benchmark, find_models
    from edgetl.bench.output import print_table, write_outputs
    from edgetl.bench.verdict import gate_verdict
    from edgetl.progress import Reporter

    if warmup != "auto" and not warmup.isdigit():
        raise click.BadParameter(f"{warmup!r}: give a count or 'auto'", param_hint="--warmup")
    tolerance = percent(max_regression)
    output_files(json=json_path, csv=csv_path, markdown=markdown_path, save_baseline=save_baseline)
    reference = None
    if baseline:  # a bad baseline fails before minutes of measuring
        reference = load_baseline(baseline) if is_baseline_file(baseline) else find_models([baseline])
    fewest = fewest_rounds(confidence)  # paired rounds: a sign test over fewer can never be significant
    if reference is not None and repeats < fewest:
        raise click.BadParameter(f"the regression gate needs at least {fewest} repeats at {confidence:.0%} confidence "
                                 f"(with {repeats}, even {repeats} slower rounds out of {repeats} are not significant)",
                                 param_hint="--repeats")
    options = BenchOptions(threads=parse_threads(threads), batch=batch, warmup="auto" if warmup == "auto" else int(warmup),
                           runs=runs, time_s=time_s, repeats=repeats, images=images, cold_start=not no_cold_start,
                           reference=save_baseline is not None)
    reporter = Reporter(enabled=not quiet)
    where = None  # the device the gate measures on (its edgetl_runner info record), None: here
    comparisons = []
    if device or devices_file:
        _device_options(images, no_cold_start)
        targets = devices_from(device, devices_file, python, ssh_config)
        if not (baseline or save_baseline):
            _bench_on_devices(find_models(list(models)), targets, options, runs or 50, install, json_path, csv_path,
                              markdown_path)
            return
        if len(targets) != 1:
            raise click.UsageError(f"--baseline/--save-baseline gate on one device; {len(targets)} were given.")
        from edgetl.bench.device_gate import bench_against_on_device, measure_on_device

        warm = 5 if options.warmup == "auto" else int(options.warmup)
        if reference is None:
            rows = measure_on_device(find_models(list(models)), targets[0], options, runs or 50, warm, install,
                                     reporter)
            where = rows[0]["device_info"]
        else:
            gated, where = bench_against_on_device(find_models(list(models)), baseline, targets[0], options,
                                                   runs or 50, warm, tolerance, confidence, install, reporter,
                                                   confirm=not no_confirm)
            rows, comparisons, reference = gated.rows, gated.comparisons, gated.baseline
    elif reference is None:
        rows = benchmark(find_models(list(models)), options, reporter)
    else:
        gated = bench_against(find_models(list(models)), reference if isinstance(reference, dict) else baseline,
                              options, tolerance, confidence, reporter, confirm=not no_confirm)
        rows, comparisons, reference = gated.rows, gated.comparisons, gated.baseline
    for comparison in comparisons:
        comparison.row["gate"] = comparison.as_dict()
    print_table(rows, stdout_console(), title="edgetl bench (on the device)" if where else "edgetl bench")
    write_outputs(rows, json_path, csv_path, markdown_path)
    if save_baseline:
        save(save_baseline, rows, where)
        click.echo(f"baseline saved: {save_baseline}")
    if reference is None:
        return
    verdict = gate_verdict(reference, comparisons, tolerance, confidence, where)
    for line, to_stderr in verdict.lines:
        click.echo(line, err=to_stderr)
    regressions = verdict.regressions
    unjudged = sum(c.status == "not_judged" for c in comparisons) if fail_on_not_judged else 0
    if regressions:
        click.echo(f"edgetl: {regressions} latency regression(s) beyond +{tolerance:.0%} against {baseline}", err=True)
    if unjudged:
        click.echo(f"edgetl: {unjudged} row(s) not judged against {baseline} (--fail-on-not-judged)", err=True)
    if regressions or unjudged:
        sys.exit(1)


def _device_options(images: tuple[Path, ...], no_cold_start: bool) -> None:
    """Refuse what a device's runner cannot do, rather than ignore it: it times `--runs` calls (default 50) on random
    input, with no fresh-process probe. `--time` counts as given only when the user gave it (it has a default)."""
    given = click.get_current_context().get_parameter_source("time_s") is not click.core.ParameterSource.DEFAULT
    for used, option, why in ((given, "--time", "a device runs a fixed number of calls: use --runs"),
                              (bool(images), "--images", "a device times random input of the model's shape"),
                              (no_cold_start, "--no-cold-start", "a device has no cold-start probe to skip")):
        if used:
            raise click.UsageError(f"{option} does not apply with --device/--devices: {why}.")


def _bench_on_devices(models, devices, options, runs: int, install: bool, json_path, csv_path, markdown_path) -> None:
    from edgetl.bench.output import print_table, write_outputs
    from edgetl.bench.remote import bench_on_devices

    warmup = 5 if options.warmup == "auto" else int(options.warmup)
    answers = bench_on_devices(models, devices, options.threads, options.batch, runs, warmup, install)
    rows = [row for answer in answers for row in answer.get("rows", [])]  # a failed device's rows before it failed
    if rows:
        print_table(rows, stdout_console(), title="edgetl bench (on devices)")
    write_outputs(rows, json_path, csv_path, markdown_path)
    failed = [answer for answer in answers if answer["error"]]
    for answer in failed:
        click.echo(f"{answer['device']}: device error: {answer['error']}", err=True)
    if failed:
        sys.exit(1)
