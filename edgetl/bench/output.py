"""Benchmark rows as a rich table, JSON, CSV and Markdown. Torch-free."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from edgetl.bench.measure import ROW_FIELDS
from edgetl.fsutil import write_json, write_text

# (header, row field, format) of the printed table and the Markdown file.
COLUMNS = (("model", "name", "{}"), ("format", "format", "{}"), ("prec", "precision", "{}"),
           ("thr", "threads", "{}"), ("batch", "batch", "{}"), ("p50 ms", "p50_ms", "{:.3f}"),
           ("p90 ms", "p90_ms", "{:.3f}"), ("p99 ms", "p99_ms", "{:.3f}"), ("mean ms", "mean_ms", "{:.3f}"),
           ("std ms", "std_ms", "{:.3f}"), ("min ms", "min_ms", "{:.3f}"), ("img/s", "throughput_ips", "{:.1f}"),
           ("cold ms", "cold_start_ms", "{:.0f}"), ("RSS MB", "peak_rss_mb", "{:.1f}"),
           ("size MB", "size_bytes", "size"), ("runs", "runs", "{}"))


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    if fmt == "size":
        return f"{value / 1e6:.2f}"
    return fmt.format(value)


def table_lines(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the summary table."""
    return [c[0] for c in COLUMNS], [[_cell(r, key, fmt) for _, key, fmt in COLUMNS] for r in rows]


def print_table(rows: list[dict], console, title: str = "edgetl bench") -> None:
    """A rich table on `console`."""
    from rich.table import Table

    headers, cells = table_lines(rows)
    table = Table(title=title, show_lines=False)
    for number, header in enumerate(headers):
        table.add_column(header, justify="left" if number < 3 else "right")
    for line in cells:
        table.add_row(*line)
    console.print(table)


def markdown(rows: list[dict]) -> str:
    """A GitHub-flavoured Markdown table."""
    headers, cells = table_lines(rows)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    """CSV with one column per row field (the trial medians joined by ';', the reference's looks as 'before/after')."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROW_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "trial_p50_ms": ";".join(str(t) for t in row.get("trial_p50_ms", [])),
                         "reference_trial_p50_ms": ";".join(f"{a}/{b}" for a, b in row.get("reference_trial_p50_ms") or [])})
    return buffer.getvalue()


def write_outputs(rows: list[dict], json_path: Path | None = None, csv_path: Path | None = None,
                  markdown_path: Path | None = None) -> None:
    """Write the requested files atomically."""
    if json_path:
        write_json(json_path, rows)
    if csv_path:
        write_text(csv_path, csv_text(rows))
    if markdown_path:
        write_text(markdown_path, markdown(rows))
