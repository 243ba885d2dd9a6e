"""What the `edgetl` commands share: typed errors turned into one paragraph and an exit code, option parsers, the
output-file check and the device list."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from pathlib import Path

import click

from edgetl.errors import EdgetlError, training_stack_missing
from edgetl.limits import MAX_THREADS


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cancelled CI job, `timeout`, `docker stop`): the command stops as on Ctrl-C, so its temporary files
    are removed and a build's summary says it was stopped, instead of the process vanishing mid-write."""


def _terminated(signum, frame) -> None:
    raise Terminated("stopped by SIGTERM")


def stop_cleanly_on_sigterm() -> None:
    """Raise `Terminated` on SIGTERM, unless something (the distributed launcher's rank 0) handles it already."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def handle_errors(command):
    """Turn typed errors into one clear paragraph and the error's exit code."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        stop_cleanly_on_sigterm()
        try:
            return command(*args, **kwargs)
        except EdgetlError as exc:
            click.echo(f"edgetl: {exc.kind}: {exc}", err=True)
            sys.exit(exc.exit_code)
        except ModuleNotFoundError as exc:  # the light install asked to train: name the extra, no traceback
            missing = training_stack_missing(exc, f"`edgetl {command.__name__.lstrip('_')}`")
            if missing is None:
                raise
            click.echo(f"edgetl: {missing.kind}: {missing}", err=True)
            sys.exit(missing.exit_code)
        except KeyboardInterrupt as exc:
            stopped = "stopped (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"edgetl: {stopped}. Completed stages are kept; run the same command again to resume.",
                       err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)
    return wrapper


def percent(value: str) -> float:
    text = value.strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a percentage like 10% or 0.1") from None
    if not 0 <= number < 10:
        raise click.BadParameter(f"{value!r} is out of range")
    return number


def parse_threads(values: tuple[str, ...]) -> tuple[int, ...]:
    try:
        threads = tuple(int(v) for value in values for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{','.join(values)!r}: give thread counts like 1,2,4") from None
    if not threads or min(threads) < 1 or max(threads) > MAX_THREADS:
        raise click.BadParameter(f"thread counts must be whole numbers from 1 to {MAX_THREADS}")
    return threads


def output_files(**paths: Path | None) -> None:
    """Refuse an output file whose folder does not exist (before any work; a typo should not create folders)."""
    from edgetl.fsutil import parent_must_exist

    for option, path in paths.items():
        if path is not None:
            parent_must_exist(path, f"--{option.replace('_', '-')}")


def devices_from(device: tuple[str, ...], devices_file: Path | None, python: str, ssh_config: Path | None):
    from edgetl.bench.remote import Device, load_devices

    found = [Device.parse(url, python, ssh_config) for url in device]
    if devices_file:
        found += load_devices(devices_file, ssh_config)
    return found


def stdout_console():
    from rich.console import Console

    # A pipe or CI log has no width: rich would squeeze the 16 columns into 80 characters.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
