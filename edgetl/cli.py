"""The `edgetl` command: parse, call the library, print, exit with 0 / 1 / 2. Never a traceback for user errors."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from edgetl import __version__
from edgetl.cli_bench import bench
from edgetl.cli_common import devices_from, handle_errors, output_files, stdout_console
from edgetl.formats import FORMATS, PRECISIONS
from edgetl.limits import MAX_THREADS

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
    device address, 1 other failures, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
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

            handle_errors(load_recipe)(recipe, overrides)  # a typo is reported before any process starts
        args = [str(recipe), *(["--out", str(out)] if out else []), *(["--quiet"] if quiet else []),
                *(arg for o in overrides for arg in ("--set", o))]
        code = handle_errors(distributed.launch)(args, where)
        if node_rank > 0 and code == 0:
            click.echo(f"node {node_rank} of {nnodes}: done; node 0 wrote the run directory.")
        sys.exit(code)
    handle_errors(_build)(recipe, out, quiet, overrides)


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
        handle_errors(_build)(recipe, out, quiet, overrides)
        code = 0
    except SystemExit as exc:  # handle_errors printed the message; the launcher exits with the code
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
@handle_errors
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
@handle_errors
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
@handle_errors
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
@handle_errors
def deploy(run_dir: Path, device: tuple[str, ...], devices_file: Path | None, fmt: str | None, precision: str | None,
           dest: str | None, images: tuple[Path, ...], runs: int, threads: int, install: bool, python: str,
           ssh_config: Path | None, json_path: Path | None) -> None:
    """Bundle one artifact of RUN_DIR, copy it to the device(s) over SSH, classify --images there and benchmark it;
    prints what each device answered (exit 1 when a device failed; the others' results are kept)."""
    from edgetl.bench.remote import deploy_to_devices
    from edgetl.fsutil import write_json

    output_files(json=json_path)
    targets = devices_from(device, devices_file, python, ssh_config)
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
@click.option("--threads", "-t", type=click.IntRange(1, MAX_THREADS),
              help="Runtime threads (default: every usable core).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="Write one row per image as JSON ('-': stdout instead of the text lines).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="Write one row per image as CSV ('-': stdout instead of the text lines).")
@handle_errors
def predict(model: Path, images: tuple[Path, ...], top_k: int, threads: int | None, json_path: Path | None,
            csv_path: Path | None) -> None:
    """Classify IMAGES (files, or folders searched for images) with MODEL: a model file, its export folder, a
    deploy bundle or a run directory (its chosen artifact). Prints `image: label probability, ...` per image; exit 1
    when an image cannot be read (the others are still classified), 2 for a bad model or a missing path."""
    from edgetl.classifier import classify_files, image_files, load
    from edgetl.fsutil import write_json

    if str(json_path) == str(csv_path) == "-":
        raise click.UsageError("--json - and --csv - both write to stdout, where the two would be mixed; send one of "
                               "them to a file.")
    output_files(**{k: v for k, v in (("json", json_path), ("csv", csv_path)) if v and str(v) != "-"})
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
@handle_errors
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
@handle_errors
def compare(run_a: Path, run_b: Path, json_path: Path | None) -> None:
    """What changed from RUN_A to RUN_B: the model, and each artifact's accuracy, p50 latency and size."""
    from rich.table import Table

    from edgetl.fsutil import write_json
    from edgetl.report import compare_runs

    output_files(json=json_path)
    result = compare_runs(run_a, run_b)
    console = stdout_console()
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


main.add_command(bench)

if __name__ == "__main__":
    main()
