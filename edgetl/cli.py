"""The `edgetl` command: parse, call the library, print, exit with 0 / 1 / 2. Never a traceback for user errors."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path

import click

from edgetl import __version__
from edgetl.errors import EdgetlError
from edgetl.formats import FORMATS, PRECISIONS
from edgetl.limits import MAX_THREADS


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


# `edgetl build` and `edgetl check` take the same overrides.
_set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a recipe field, e.g. --set train.epochs=3 --set export.formats=[onnx] (VALUE is YAML); checked "
         "like the file. The run's recipe.resolved.yaml has the result.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgetl")
def main() -> None:
    """Fine-tune vision backbones on your images; export, verify and benchmark them for edge devices.

    \b
    Exit codes: 0 ok, 2 bad recipe/data/weights/model file, an output folder edgetl may not write or a malformed
    device address, 1 other failures, 130 interrupted.
    Offline lookup: $TORCH_HOME/hub/checkpoints for weights, $EDGETL_CACHE/datasets for datasets.
    """


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Run directory (default: runs/<recipe name>/).")
@click.option("--quiet", "-q", is_flag=True, help="Print only errors and the final summary line.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fine-tuning processes on this machine (DistributedDataParallel through torchrun, gloo).")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Machines taking part; run the same command on each with its own --node-rank.")
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True,
              help="This machine's rank; node 0 writes the run directory.")
@click.option("--master-addr", default="127.0.0.1", show_default=True, help="Address of node 0 (--nnodes > 1).")
@click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True,
              help="Port on node 0 the nodes meet at (--nnodes > 1).")
@_set_option
def build(recipe: Path, out: Path | None, quiet: bool, nproc: int, nnodes: int, node_rank: int, master_addr: str,
          master_port: int, overrides: tuple[str, ...]) -> None:
    """Build RECIPE: fine-tune, export, verify and benchmark, reusing unchanged stages."""
    from edgetl import distributed

    if distributed.is_child():
        _distributed_rank(recipe, out, quiet, overrides)
        return
    where = distributed.Launch(nproc, nnodes, node_rank, master_addr, master_port)
    if where.needed:
        if node_rank >= nnodes:
            raise click.BadParameter(f"{node_rank} must be below --nnodes {nnodes}.", param_hint="--node-rank")
        if node_rank == 0:
            from edgetl.recipe import load_recipe

            _handle_errors(load_recipe)(recipe, overrides)  # a typo is reported before any process starts
        args = [str(recipe), *(["--out", str(out)] if out else []), *(["--quiet"] if quiet else []),
                *(arg for o in overrides for arg in ("--set", o))]
        code = _handle_errors(distributed.launch)(args, where)
        if node_rank > 0 and code == 0:
            click.echo(f"node {node_rank} of {nnodes}: done; node 0 wrote the run directory.")
        sys.exit(code)
    _handle_errors(_build)(recipe, out, quiet, overrides)


def _build(recipe: Path, out: Path | None, quiet: bool, overrides: tuple[str, ...] = ()) -> None:
    from edgetl.api import build as run_build
    from edgetl.progress import Reporter
    from edgetl.recipe import load_recipe

    parsed = load_recipe(recipe, overrides)
    summary = run_build(parsed, out=out, reporter=Reporter(enabled=not quiet))
    from edgetl.closing import artifact_table, next_steps

    for line in artifact_table(summary):
        click.echo(line)
    for line in next_steps(summary, out or Path("runs") / parsed.name):
        click.echo(line)


def _distributed_rank(recipe: Path, out: Path | None, quiet: bool, overrides: tuple[str, ...]) -> None:
    """One rank of `edgetl build --nproc/--nnodes`: rank 0 builds, the others follow its fine-tuning jobs."""
    from edgetl import distributed

    distributed.start()
    if distributed.rank() != 0:
        from edgetl.train import follow_job

        distributed.follow(follow_job)
        return
    code = 1
    try:
        _handle_errors(_build)(recipe, out, quiet, overrides)
        code = 0
    except SystemExit as exc:  # _handle_errors printed the message; the launcher exits with the code
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a bug: its traceback, as without --nproc (finish exits at once, which would hide it)
        traceback.print_exc()
        code = 1
    finally:
        distributed.finish(code)


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--target", help="Where the model will run: local (default), ssh://[user@]host[:port], or a name in "
              "--devices.")
@click.option("--devices", help="A devices.yaml in which --target is a name (written into the recipe as is).")
@click.option("--threads", "-t", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True,
              help="Threads the model will run with on the target.")
@click.option("--out", "-o", type=click.Path(path_type=Path, dir_okay=False), default=Path("recipe.yaml"),
              show_default=True, help="The recipe file to write (never overwritten without --force).")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@_handle_errors
def init(data_dir: Path, target: str | None, devices: str | None, threads: int, out: Path, force: bool) -> None:
    """Write a commented recipe for DATA_DIR (flat <class>/ folders, or train/ val/ test/) that builds as is; its
    training schedule is taken from the number of images and classes."""
    from edgetl.init import write_recipe

    _, train = write_recipe(data_dir, out, target, devices, threads, force)
    click.echo(f"wrote {out}: {train['epochs']} epochs at batch {train['batch_size']}, early stop after "
               f"{train['early_stop_patience']} without a better val accuracy. Next: edgetl build {out}")


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@_set_option
@_handle_errors
def check(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Validate RECIPE, decode every image of its dataset and load its weights, without training."""
    from edgetl.pipeline import create_recipe_model, resolve_data_root, scan_recipe_dataset
    from edgetl.recipe import load_recipe

    parsed = load_recipe(recipe, overrides)
    index = scan_recipe_dataset(parsed, resolve_data_root(parsed))
    created = create_recipe_model(parsed, len(index.classes))  # resolves and loads the weights: errors show now
    test = f" / {len(index.test)} test" if index.test_source else ""
    split = " (split by edgetl: the dataset is flat, <class>/ folders)" if index.layout == "flat" else ""
    click.echo(f"{recipe}: ok. {len(index.classes)} classes ({', '.join(index.classes)}), {len(index.train)} train / "
               f"{len(index.val)} val{test} images{split}, {len(index.bad_images)} bad images skipped, "
               f"{sum(index.converted.values())} converted to RGB; backbone {parsed.model.backbone} loads weights "
               f"{created.weights_file or parsed.model.weights}.")
    _check_target(parsed)
    if unmeasured := index.unmeasured_classes():
        click.echo(f"warning: no val image of {', '.join(unmeasured)} (too few images to hold one out): val accuracy "
                   "does not measure it; add images or a val/ folder.")


def _check_target(recipe) -> None:
    """The target found, reached when it is a device, and what it will run of export.formats."""
    from edgetl.target import allowed_formats, resolve_target

    target = resolve_target(recipe)
    info = target.machine_info()
    why = allowed_formats(target, info["machine"], recipe.export.formats, recipe.source or "recipe")
    runs = [f for f, reason in why.items() if reason is None]
    click.echo(f"target: {target.describe()}, {info['machine']}" + ("" if target.declared else " (no target: section)")
               + f"; it runs {', '.join(runs) or 'none'} of export.formats"
               + "".join(f"; not {f}: {reason}" for f, reason in why.items() if reason) + ".")


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
    if not threads or min(threads) < 1 or max(threads) > MAX_THREADS:
        raise click.BadParameter(f"thread counts must be whole numbers from 1 to {MAX_THREADS}")
    return threads


def _output_files(**paths: Path | None) -> None:
    """Refuse an output file whose folder does not exist (before any work; a typo should not create folders)."""
    from edgetl.fsutil import parent_must_exist

    for option, path in paths.items():
        if path is not None:
            parent_must_exist(path, f"--{option.replace('_', '-')}")


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
@click.option("--device", "-d", multiple=True,
              help="Measure on ssh://[user@]host[:port] instead of here (repeatable; see `edgetl deploy`).")
@click.option("--devices", "devices_file", type=click.Path(path_type=Path, dir_okay=False),
              help="A devices.yaml: measure on every device listed, concurrently.")
@click.option("--install", is_flag=True, help="With --device: pip-install the runtime on the device when missing.")
@click.option("--python", default="python3", show_default=True, help="With --device: the Python on the device.")
@click.option("--ssh-config", type=click.Path(path_type=Path, dir_okay=False),
              help="With --device: an ssh_config file instead of ~/.ssh/config.")
@click.option("--quiet", "-q", is_flag=True, help="No progress; print only the table and the gate's verdict.")
@_handle_errors
def bench(models: tuple[Path, ...], threads: tuple[str, ...], batch: int, warmup: str, runs: int | None,
          time_s: float, repeats: int, images: tuple[Path, ...], no_cold_start: bool, json_path: Path | None,
          csv_path: Path | None, markdown_path: Path | None, save_baseline: Path | None, baseline: Path | None,
          max_regression: str, confidence: float, device: tuple[str, ...], devices_file: Path | None, install: bool,
          python: str, ssh_config: Path | None, quiet: bool, no_confirm: bool = False) -> None:
    """Measure the latency of MODELS (.onnx, .xml, .tflite files or edgetl run directories).

    \b
    Exit codes: 0 ok (or no significant regression), 1 regression against --baseline, 2 bad usage or baseline.
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
    tolerance = _percent(max_regression)
    _output_files(json=json_path, csv=csv_path, markdown=markdown_path, save_baseline=save_baseline)
    reference = None
    if baseline:  # a bad baseline fails before minutes of measuring
        reference = load_baseline(baseline) if is_baseline_file(baseline) else find_models([baseline])
    fewest = fewest_rounds(confidence)  # paired rounds: a sign test over fewer can never be significant
    if reference is not None and repeats < fewest:
        raise click.BadParameter(f"the regression gate needs at least {fewest} repeats at {confidence:.0%} confidence "
                                 f"(with {repeats}, even {repeats} slower rounds out of {repeats} are not significant)",
                                 param_hint="--repeats")
    options = BenchOptions(threads=_threads(threads), batch=batch, warmup="auto" if warmup == "auto" else int(warmup),
                           runs=runs, time_s=time_s, repeats=repeats, images=images, cold_start=not no_cold_start,
                           reference=save_baseline is not None)
    reporter = Reporter(enabled=not quiet)
    if device or devices_file:
        if baseline or save_baseline:
            raise click.UsageError("--baseline/--save-baseline are for local measurements; save the device's rows "
                                   "with --json.")
        _bench_on_devices(find_models(list(models)), _devices(device, devices_file, python, ssh_config), options,
                          runs or 50, install, json_path, csv_path, markdown_path)
        return
    comparisons = []
    if reference is None:
        rows = benchmark(find_models(list(models)), options, reporter)
    else:
        gated = bench_against(find_models(list(models)), reference if isinstance(reference, dict) else baseline,
                              options, tolerance, confidence, reporter, confirm=not no_confirm)
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
    verdict = gate_verdict(reference, comparisons, tolerance, confidence)
    for line, to_stderr in verdict.lines:
        click.echo(line, err=to_stderr)
    regressions = verdict.regressions
    if regressions:
        click.echo(f"edgetl: {regressions} latency regression(s) beyond +{tolerance:.0%} against {baseline}", err=True)
        sys.exit(1)


def _bench_on_devices(models, devices, options, runs: int, install: bool, json_path, csv_path, markdown_path) -> None:
    from edgetl.bench.output import print_table, write_outputs
    from edgetl.bench.remote import bench_on_devices

    warmup = 5 if options.warmup == "auto" else int(options.warmup)
    answers = bench_on_devices(models, devices, options.threads, options.batch, runs, warmup, install)
    rows = [row for answer in answers if not answer["error"] for row in answer["rows"]]
    if rows:
        print_table(rows, _stdout_console(), title="edgetl bench (on devices)")
    write_outputs(rows, json_path, csv_path, markdown_path)
    failed = [answer for answer in answers if answer["error"]]
    for answer in failed:
        click.echo(f"{answer['device']}: device error: {answer['error']}", err=True)
    if failed:
        sys.exit(1)


def _stdout_console():
    from rich.console import Console

    # A pipe or CI log has no width: rich would squeeze the 16 columns into 80 characters.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


_FORMAT_HELP = f"Artifact format ({', '.join(FORMATS)}); default: the build's chosen artifact's."
_PRECISION_HELP = f"Artifact precision ({', '.join(PRECISIONS)}); default: the build's chosen artifact's."


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--format", "fmt", help=_FORMAT_HELP)
@click.option("--precision", help=_PRECISION_HELP)
@click.option("--out", "-o", type=click.Path(path_type=Path, file_okay=False),
              help="Bundle folder to write: new, empty, or an earlier bundle (replaced once the new one is complete); "
                   "default: RUN_DIR/bundle.")
@click.option("--zip", "zip_file", is_flag=True, help="Also write OUT.zip.")
@_handle_errors
def bundle(run_dir: Path, fmt: str | None, precision: str | None, out: Path | None, zip_file: bool) -> None:
    """Write a deploy bundle of one artifact of RUN_DIR (by default the one the build chose for its target): the
    model, model.json, a torch-free runner (`python -m edgetl_runner predict|bench|info`) and the device's
    requirements.txt."""
    from edgetl.bundle import make_bundle, pick_artifact

    fmt, precision, how = pick_artifact(run_dir, fmt, precision)
    made = make_bundle(run_dir, fmt, precision, out or run_dir / "bundle", zip_file)
    click.echo(f"bundle of {made.artifact} ({how}): {made.folder}"
               + (f" and {made.zip_file}" if made.zip_file else ""))
    click.echo("on the device: pip install -r requirements.txt && python -m edgetl_runner predict IMAGE")


def _devices(device: tuple[str, ...], devices_file: Path | None, python: str, ssh_config: Path | None):
    from edgetl.bench.remote import Device, load_devices

    found = [Device.parse(url, python, ssh_config) for url in device]
    if devices_file:
        found += load_devices(devices_file, ssh_config)
    return found


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--device", "-d", multiple=True, help="ssh://[user@]host[:port] (repeatable).")
@click.option("--devices", "devices_file", type=click.Path(path_type=Path, dir_okay=False),
              help="A devices.yaml listing several devices (run concurrently).")
@click.option("--format", "fmt", help=_FORMAT_HELP)
@click.option("--precision", help=_PRECISION_HELP)
@click.option("--dest", help="Folder on the device to deploy into and keep (default: a temp folder, removed).")
@click.option("--images", multiple=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Images to classify on the device.")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True, help="Timed runs on the device.")
@click.option("--threads", "-t", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True)
@click.option("--install", is_flag=True, help="pip-install the bundle's requirements on the device when missing.")
@click.option("--python", default="python3", show_default=True, help="The Python to use on the device.")
@click.option("--ssh-config", type=click.Path(path_type=Path, dir_okay=False), help="An ssh_config file to use.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write results as JSON.")
@_handle_errors
def deploy(run_dir: Path, device: tuple[str, ...], devices_file: Path | None, fmt: str | None, precision: str | None,
           dest: str | None, images: tuple[Path, ...], runs: int, threads: int, install: bool, python: str,
           ssh_config: Path | None, json_path: Path | None) -> None:
    """Bundle one artifact of RUN_DIR, copy it to the device(s) over SSH, classify --images there and benchmark it;
    prints what each device answered (exit 1 when a device failed; the others' results are kept)."""
    from edgetl.bench.remote import deploy_to_devices
    from edgetl.fsutil import write_json

    _output_files(json=json_path)
    targets = _devices(device, devices_file, python, ssh_config)
    if not targets:
        raise click.UsageError("give --device ssh://... or --devices devices.yaml")
    from edgetl.bundle import pick_artifact

    fmt, precision, how = pick_artifact(run_dir, fmt, precision)
    click.echo(f"deploying {fmt}_{precision} ({how})")
    results = deploy_to_devices(run_dir, targets, fmt, precision, dest, list(images), runs, threads, install)
    failed = 0
    for result in results:
        if result["error"]:
            failed += 1
            click.echo(f"{result['device']}: device error: {result['error']}", err=True)
            continue
        info = result["bench"]["device"]
        click.echo(f"{result['device']}: {info['machine']} {info['cpu']} ({info['cores']} cores), "
                   f"p50 {result['bench']['p50_ms']:.3f} ms over {result['bench']['runs']} runs")
        for prediction in result["predictions"]:
            if prediction.get("error"):
                failed += 1
                click.echo(f"  {Path(prediction['image']).name}: not classified: {prediction['error']}", err=True)
                continue
            top = prediction["top"][0]
            click.echo(f"  {Path(prediction['image']).name}: {top['label']} {top['probability']:.3f}")
    if json_path:
        write_json(json_path, results)
    if failed:
        sys.exit(1)


@main.command()
@click.argument("model", type=click.Path(path_type=Path, exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=3, show_default=True, help="Labels per image.")
@click.option("--threads", "-t", type=click.IntRange(1, MAX_THREADS), help="Runtime threads (default: every core).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="Write one row per image as JSON ('-': stdout instead of the text lines).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="Write one row per image as CSV ('-': stdout instead of the text lines).")
@_handle_errors
def predict(model: Path, images: tuple[Path, ...], top_k: int, threads: int | None, json_path: Path | None,
            csv_path: Path | None) -> None:
    """Classify IMAGES (files, or folders searched for images) with MODEL: a model file, its export folder, a
    deploy bundle or a run directory (its chosen artifact). Prints `image: label probability, ...` per image; exit 1
    when an image cannot be read (the others are still classified), 2 for a bad model or a missing path."""
    from edgetl.classifier import classify_files, image_files, load
    from edgetl.fsutil import write_json

    _output_files(**{k: v for k, v in (("json", json_path), ("csv", csv_path)) if v and str(v) != "-"})
    paths = image_files(images)
    classifier = load(model, threads)
    click.echo(f"classifying {len(paths)} image{'s' if len(paths) != 1 else ''} with {classifier.path} "
               f"({len(classifier.labels)} labels, {classifier.threads} threads)", err=True)
    to_stdout = "-" in (str(json_path), str(csv_path))
    rows = []
    for row in classify_files(classifier, paths, top_k):
        rows.append(row)
        if row["error"]:
            click.echo(f"edgetl: data error: {row['error']}", err=True)
        elif not to_stdout:
            click.echo(f"{row['image']}: " + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top"]))
    if json_path:
        if str(json_path) == "-":
            click.echo(json.dumps(rows))
        else:
            write_json(json_path, rows)
    if csv_path:
        _write_predictions_csv(csv_path, rows, top_k)
    failed = sum(1 for row in rows if row["error"])
    if failed:
        click.echo(f"{failed} of {len(rows)} images could not be read; the others were classified.", err=True)
        sys.exit(1)


def _write_predictions_csv(path: Path, rows: list[dict], top_k: int) -> None:
    """image, label, probability, then label_2, probability_2 ... label_k, probability_k, and error."""
    import csv
    import io

    header = ["image", "label", "probability"]
    for rank in range(2, top_k + 1):
        header += [f"label_{rank}", f"probability_{rank}"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*header, "error"])
    for row in rows:
        cells = [row["image"]]
        for rank in range(top_k):
            top = row["top"][rank] if rank < len(row["top"]) else None
            cells += [top["label"], top["probability"]] if top else ["", ""]
        writer.writerow([*cells, row["error"] or ""])
    if str(path) == "-":
        click.echo(buffer.getvalue(), nl=False)
    else:
        from edgetl.fsutil import write_text

        write_text(path, buffer.getvalue())


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@_handle_errors
def report(run_dir: Path) -> None:
    """Remake RUN_DIR's report.md, report.html (self-contained, opens offline) and report/*.png from its
    summary.json and training histories."""
    from edgetl.report import write_report

    made = write_report(run_dir)
    click.echo(f"report: {made.html} and {made.markdown}; plots: "
               + (", ".join(str(p) for p in made.plots.values()) or "none (nothing to plot)"))


@main.command()
@click.argument("run_a", type=click.Path(path_type=Path, file_okay=False))
@click.argument("run_b", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the comparison.")
@_handle_errors
def compare(run_a: Path, run_b: Path, json_path: Path | None) -> None:
    """What changed from RUN_A to RUN_B: the model, and each artifact's accuracy, p50 latency and size."""
    from rich.table import Table

    from edgetl.fsutil import write_json
    from edgetl.report import compare_runs

    _output_files(json=json_path)
    result = compare_runs(run_a, run_b)
    console = _stdout_console()
    console.print(f"A: {run_a}\nB: {run_b}" + ("\nthe recipe changed" if result["recipe_changed"] else
                                               "\nsame recipe"))
    for key, (before, after) in result["model"].items():
        console.print(f"model.{key}: {before} → {after}")
    table = Table(title=f"artifacts (p50 at {result['threads'][0]} → {result['threads'][1]} thread(s))")
    for column in ("artifact", "status", "val acc A", "val acc B", "Δ pp", "p50 A (ms)", "p50 B (ms)", "B/A",
                   "size A (MB)", "size B (MB)", "B/A "):
        table.add_column(column, justify="left" if column in ("artifact", "status") else "right")

    def cell(value, spec: str = ".2f") -> str:
        return "—" if value is None else format(value, spec)

    for row in result["artifacts"]:
        table.add_row(row["artifact"], row["status"], cell(row["val_accuracy_a"]), cell(row["val_accuracy_b"]),
                      cell(row.get("val_accuracy_delta_pp"), "+.2f"), cell(row["p50_ms_a"]), cell(row["p50_ms_b"]),
                      cell(row.get("p50_ratio"), ".3f"), cell(row["size_bytes_a"] and row["size_bytes_a"] / 1e6),
                      cell(row["size_bytes_b"] and row["size_bytes_b"] / 1e6), cell(row.get("size_ratio"), ".3f"))
    console.print(table)
    for note in result["notes"]:
        console.print(f"note: {note}")
    if json_path:
        write_json(json_path, result)


if __name__ == "__main__":
    main()
