"""The rule `conftest.unavailable` enforces: a test whose tool or data is missing skips with the reason, and fails
with it under CI=true (so CI cannot turn green by skipping). Checked in a real pytest subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize(("ci", "outcome"), [(None, "1 skipped"), ("true", "1 failed")])
def test_a_missing_tool_skips_here_and_fails_under_ci(tmp_path, ci, outcome):
    (tmp_path / "test_needs_a_tool.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\nfrom conftest import unavailable  # the suite's own\n"
        "\n\ndef test_it():\n    unavailable('no frobnicator installed')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert outcome in result.stdout and "no frobnicator installed" in result.stdout, result.stdout[-2000:]
