"""The CI flow docs/benchmarking.md documents: docs/ci/latency-gate.yml, its gate step run as written, in the
layout the workflow makes (this commit's run in runs/pr, the main branch's in runs/main). The build step is the
ordinary `edgetl build` the rest of the suite tests, and the fetch step is GitHub's; both are checked for shape."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import yaml

from conftest import REPO

WORKFLOW = REPO / "docs" / "ci" / "latency-gate.yml"


def steps() -> dict[str, dict]:
    return {step.get("name", step.get("uses")): step for step in yaml.safe_load(WORKFLOW.read_text())["jobs"]["gate"]
            ["steps"]}


def test_the_workflow_builds_into_runs_pr_and_keeps_main_s_run_as_the_baseline():
    found = steps()
    assert found["Build this commit's model"]["run"].startswith('edgetl build "$RECIPE" --out runs/pr')
    assert "--dir runs/main" in found["Fetch the main branch's last run"]["run"]
    keep = found["Keep this run for later pull requests"]
    assert keep["with"] == {"name": "edgetl-run", "path": "runs/pr"} and "push" in keep["if"]
    assert "--name edgetl-run" in found["Fetch the main branch's last run"]["run"]


def test_the_workflow_s_gate_step_passes_a_run_against_the_same_models(run_dir, tmp_path):
    command = shlex.split(steps()["Latency gate against main"]["run"])
    assert command[:5] == ["edgetl", "bench", "runs/pr", "--baseline", "runs/main"]
    shutil.copytree(run_dir, tmp_path / "runs" / "main")
    shutil.copytree(run_dir, tmp_path / "runs" / "pr")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, "-m", "edgetl.cli", *command[1:]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "latency.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sorted(r["name"] for r in rows) == sorted(a["name"] for a in summary["artifacts"])
    # each of this run's files against main's file of the same name, re-measured in the same rounds
    assert all(r["gate"]["mode"] == "interleaved" and r["gate"]["status"] != "regression" for r in rows), \
        [r["gate"] for r in rows]
    assert all(r["model"].startswith("runs/pr/") for r in rows)
