"""The `edgetl` command: parse, call the library, print, exit with 0 / 1 / 2. Never a traceback for user errors."""

from __future__ import annotations

import functools
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


if __name__ == "__main__":
    main()
