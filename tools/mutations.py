"""Mutation check: break each promised behaviour on purpose and check that the test which promises it fails.

Each mutation replaces one exact substring (`old`, which must occur exactly once in `file`) with `new`, runs the
mutation's pytest node ids, restores the file byte for byte, and records whether the tests failed ("caught") or
passed ("SURVIVED"). A baseline run of every selected test, unmutated, must pass first.

    python tools/mutations.py [--only SUBSTRING] [--json OUT] [--check]

Run from anywhere: the repository root is found from this file's path, and every pytest run gets
PYTHONPATH=<root>, so a git worktree tests its own code (not the editable install's).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900
BASELINE_TIMEOUT_S = 5400  # the baseline runs every selected test in one pytest call
LOG_DIR = ROOT / "tools" / "mutation-logs"


@dataclass(frozen=True)
class Mutation:
    promise: str
    file: str
    what: str  # the mutation in a few words, for the table
    old: str
    new: str
    test: str  # pytest node ids, separated by spaces


@dataclass
class Outcome:
    promise: str
    file: str
    what: str
    test: str
    result: str  # caught | SURVIVED | stale | invalid | TIMEOUT | error (rc N)
    seconds: float = 0.0
    returncode: int | None = None
    old: str = ""
    new: str = ""
    log: str = ""
    tail: list[str] = field(default_factory=list)


FP = "tests/test_failure_paths.py::"
SEARCH = "tests/test_search.py::"
ARM = "tests/test_arm64.py::"
BCLI = "tests/test_bench_cli.py::"
SAFE = "tests/test_output_safety.py::"
HARN = "tests/test_bench.py::"

MUTATIONS: list[Mutation] = [
    # --- tests/test_failure_paths.py ---------------------------------------------------------------------------------
    Mutation(
        "int8 over verify.max_accuracy_drop_pp fails the build", "edgetl/pipeline/stages/verify.py",
        "budget compared as a fraction (100x too generous)",
        'if r["accuracy_drop_pp"] > budget}',
        'if r["accuracy_drop_pp"] > 100 * budget}',
        FP + "test_an_artifact_over_the_accuracy_budget_fails_the_build_with_its_table"),
    Mutation(
        "accuracy-aware int8 retry inside a build", "edgetl/export/accuracy.py",
        "retry loop stops while over budget (condition inverted)",
        "        if drop <= budget_pp:\n            break",
        "        if drop > budget_pp:\n            break",
        FP + "test_the_accuracy_aware_retry_inside_a_build_brings_int8_within_budget"),
    Mutation(
        "accuracy-aware int8 retry inside a build", "edgetl/export/onnx.py",
        "ONNX retry steps lose the per_channel step",
        'steps = [] if options.get("per_channel", True) else [("per_channel", {"per_channel": True})]',
        "steps = []",
        FP + "test_the_accuracy_aware_retry_inside_a_build_brings_int8_within_budget"),
    Mutation(
        "TFLite more_calibration retry step inside a build", "edgetl/export/accuracy.py",
        "more_calibration read from the first request's options (never more images)",
        '        if options.get("more_calibration"):\n            current = replace(current, calibration=more_calibration())',
        '        if request.options.get("more_calibration"):\n'
        "            current = replace(current, calibration=more_calibration())",
        FP + "test_tflite_int8_calibration_retry_inside_a_build"),
    Mutation(
        "TFLite more_calibration retry step inside a build", "edgetl/export/tflite.py",
        "TFLite offers no retry step",
        'return [("more_calibration", {"more_calibration": True})] if options.get("int8", "full") == "full" else []',
        'return [("more_calibration", {"more_calibration": True})] if options.get("int8", "full") == "dynamic" else []',
        FP + "test_tflite_int8_calibration_retry_inside_a_build"),
    Mutation(
        "export.openvino.accuracy_control inside a build", "edgetl/export/openvino.py",
        "OpenVINO accuracy_aware option read from verify.accuracy_aware_retry",
        'return {"accuracy_aware": recipe.export.openvino.accuracy_control,',
        'return {"accuracy_aware": recipe.verify.accuracy_aware_retry,',
        FP + "test_openvino_accuracy_control_inside_a_build"),
    Mutation(
        "fp16/fp32 parity limits", "edgetl/pipeline/stages/verify.py",
        "parity comparison inverted (raises only within the limit)",
        "    if tolerance and diff > tolerance[1]:",
        "    if tolerance and diff < tolerance[1]:",
        FP + "test_an_artifact_beyond_its_parity_limit_fails_naming_the_field"),
    Mutation(
        "fp16/fp32 parity limits", "edgetl/pipeline/stages/verify.py",
        "fp16 checked against verify.parity_atol instead of parity_atol_fp16",
        '"fp16": ("parity_atol_fp16", verify.parity_atol_fp16)',
        '"fp16": ("parity_atol_fp16", verify.parity_atol)',
        FP + "test_an_artifact_beyond_its_parity_limit_fails_naming_the_field"),
    Mutation(
        "fp16/fp32 parity limits", "edgetl/pipeline/stages/verify.py",
        "fp32 checked against verify.parity_atol_fp16 instead of parity_atol",
        '{"fp32": ("parity_atol", verify.parity_atol),',
        '{"fp32": ("parity_atol", verify.parity_atol_fp16),',
        FP + "test_an_artifact_beyond_its_parity_limit_fails_naming_the_field"),
    Mutation(
        "int8_format qoperator", "edgetl/export/onnx.py",
        "always QDQ, whatever export.int8_format says",
        'quant_format=QuantFormat.QDQ if int8_format == "qdq" else QuantFormat.QOperator,',
        "quant_format=QuantFormat.QDQ,",
        FP + "test_qoperator_int8"),
    Mutation(
        "non-default opset with the legacy exporter", "edgetl/export/onnx.py",
        "export.opset ignored (default 18 always used)",
        'return export_fp32(model, request, options.get("exporter", "auto"), options.get("opset", 18))',
        'return export_fp32(model, request, options.get("exporter", "auto"))',
        FP + "test_the_legacy_exporter_at_opset_16"),
    Mutation(
        "non-default opset with the legacy exporter", "edgetl/export/onnx.py",
        "export.exporter ignored (auto always used)",
        'return export_fp32(model, request, options.get("exporter", "auto"), options.get("opset", 18))',
        'return export_fp32(model, request, "auto", options.get("opset", 18))',
        FP + "test_the_legacy_exporter_at_opset_16"),
    Mutation(
        "dynamo->legacy fallback recorded in fallback_reasons", "edgetl/export/onnx.py",
        "fallback_reasons not recorded",
        '"fallback_reasons": errors})',
        '"fallback_reasons": []})',
        FP + "test_the_onnx_exporter_falls_back_to_legacy_and_records_why"),
    Mutation(
        "dynamo->legacy fallback recorded in fallback_reasons", "edgetl/export/onnx.py",
        "no legacy fallback after a dynamo failure",
        'for name in (["dynamo", "legacy"] if exporter == "auto" else [exporter]):',
        'for name in (["dynamo"] if exporter == "auto" else [exporter]):',
        FP + "test_the_onnx_exporter_falls_back_to_legacy_and_records_why"),
    Mutation(
        "dynamo->legacy fallback recorded in fallback_reasons", "edgetl/export/onnx.py",
        "torch's terminal colours not stripped from the reasons",
        'text = _ANSI.sub("", str(exc)).strip()',
        "text = str(exc).strip()",
        FP + "test_the_onnx_exporter_falls_back_to_legacy_and_records_why "
        + FP + "test_an_onnx_export_both_exporters_fail_is_one_export_error"),
    Mutation(
        "ExportError: ONNX, both exporters fail", "edgetl/export/onnx.py",
        "no ExportError when every exporter failed",
        '    if used is None:\n        raise ExportError("ONNX export failed: " + "; ".join(errors))',
        '    if used is None:\n        used = exporter',
        FP + "test_an_onnx_export_both_exporters_fail_is_one_export_error"),
    Mutation(
        "ExportError: TFLite conversion", "edgetl/export/tflite.py",
        "converter's own exception re-raised",
        'raise ExportError(f"TFLite conversion (litert-torch) failed: ',
        'raise  # ExportError(f"TFLite conversion (litert-torch) failed: ',
        FP + "test_a_tflite_conversion_failure_is_an_export_error"),
    Mutation(
        "ExportError: OpenVINO conversion", "edgetl/export/openvino.py",
        "convert_model's own exception re-raised",
        'raise ExportError(f"OpenVINO could not convert {onnx_file}: ',
        'raise  # ExportError(f"OpenVINO could not convert {onnx_file}: ',
        FP + "test_an_openvino_conversion_failure_is_an_export_error"),
    Mutation(
        "ExportError: int8 without calibration (ONNX)", "edgetl/export/onnx.py",
        "missing-calibration check inverted (None passes)",
        '    if request.calibration is None or not len(request.calibration):\n'
        '        raise ExportError("int8 quantization needs',
        '    if request.calibration is not None and not len(request.calibration):\n'
        '        raise ExportError("int8 quantization needs',
        FP + "test_int8_without_calibration_images_is_an_export_error"),
    Mutation(
        "ExportError: int8 without calibration (OpenVINO)", "edgetl/export/openvino.py",
        "missing-calibration check inverted (None passes)",
        '    if request.calibration is None or not len(request.calibration):\n'
        '        raise ExportError("OpenVINO int8',
        '    if request.calibration is not None and not len(request.calibration):\n'
        '        raise ExportError("OpenVINO int8',
        FP + "test_int8_without_calibration_images_is_an_export_error"),
    Mutation(
        "ExportError: int8 without calibration (TFLite)", "edgetl/export/tflite.py",
        "missing-calibration check inverted (None passes)",
        '                if request.calibration is None or not len(request.calibration):\n'
        '                    raise ExportError("TFLite full-integer',
        '                if request.calibration is not None and not len(request.calibration):\n'
        '                    raise ExportError("TFLite full-integer',
        FP + "test_int8_without_calibration_images_is_an_export_error"),
    Mutation(
        "default run directory runs/<name>", "edgetl/pipeline/__init__.py",
        "default run directory ./<name> (no runs/)",
        'root = Path(out) if out else Path("runs") / recipe.name',
        "root = Path(out) if out else Path(recipe.name)",
        FP + "test_the_default_run_directory_is_runs_slash_the_recipe_name"),
    Mutation(
        '"cannot create the run directory" is a storage error', "edgetl/pipeline/rundir.py",
        "only PermissionError caught when creating the run directory",
        '        except OSError as exc:\n            raise StorageError(f"Cannot create the run directory',
        '        except PermissionError as exc:\n            raise StorageError(f"Cannot create the run directory',
        FP + "test_a_run_directory_that_cannot_be_created_is_a_storage_error"),
    Mutation(
        "teacher-checkpoint errors", "edgetl/pipeline/stages/teacher.py",
        "missing checkpoint not refused (is_dir instead of is_file)",
        "    if not checkpoint.is_file():\n        raise RecipeError(",
        "    if checkpoint.is_dir():\n        raise RecipeError(",
        FP + "test_a_bad_teacher_checkpoint_is_a_recipe_error_naming_it"),
    Mutation(
        "teacher-checkpoint errors", "edgetl/pipeline/stages/teacher.py",
        "unloadable checkpoint: only OSError/RuntimeError turned into a recipe error",
        "    except Exception as exc:\n        raise RecipeError(f\"{ctx.source}: distill.teacher",
        "    except (OSError, RuntimeError) as exc:\n"
        "        raise RecipeError(f\"{ctx.source}: distill.teacher",
        FP + "test_a_bad_teacher_checkpoint_is_a_recipe_error_naming_it"),
    Mutation(
        "teacher-checkpoint errors", "edgetl/pipeline/stages/teacher.py",
        "teacher classes compared by count only",
        'if list(saved.get("classes", [])) != list(index.classes):',
        'if len(saved.get("classes", [])) != len(index.classes):',
        FP + "test_a_bad_teacher_checkpoint_is_a_recipe_error_naming_it"),
    Mutation(
        "OpenVINO bundles predict like edgetl", "edgetl/bundle.py",
        "bundle copies only the model file (not OpenVINO's .bin)",
        "    sources = FORMATS[fmt].files(model_path)",
        "    sources = [model_path]",
        FP + "test_an_openvino_bundle_predicts_like_edgetl"),
    # --- tests/test_search.py ----------------------------------------------------------------------------------------
    Mutation(
        "no candidate meets search.budget: exit 1 with every reason", "edgetl/search_build.py",
        "message lists only the first candidate's reason",
        'reasons = "; ".join(f"{c.name}: {c.reason}" for c in candidates[:6])',
        'reasons = "; ".join(f"{c.name}: {c.reason}" for c in candidates[:1])',
        SEARCH + "test_a_search_no_candidate_meets_is_exit_1_with_every_reason"),
    Mutation(
        "a real latency budget (local measurement)", "edgetl/search_build.py",
        "local p90 looked up by int threads (never found)",
        '.get(str(self.budget.threads))',
        '.get(self.budget.threads)',
        SEARCH + "test_a_search_no_candidate_meets_is_exit_1_with_every_reason"),
    Mutation(
        "unreachable search.budget.device is a clear error", "edgetl/search_build.py",
        "a device error is not raised (only when it also returned rows)",
        '            if answer["error"]:\n                raise BudgetError(f"search.budget.device:',
        '            if answer["error"] and answer["rows"]:\n                raise BudgetError(f"search.budget.device:',
        SEARCH + "test_an_unreachable_budget_device_is_a_clear_error"),
    Mutation(
        "missing search.budget.ssh_config is a recipe error", "edgetl/search_build.py",
        "ssh_config refused only when it is a folder",
        "    if config is not None and not config.is_file():",
        "    if config is not None and config.is_dir():",
        SEARCH + "test_an_unreachable_budget_device_is_a_clear_error"),
    # --- tests/test_arm64.py -----------------------------------------------------------------------------------------
    Mutation(
        "search.budget.device measured on the device", "edgetl/search_build.py",
        "'local' test is a truthiness test: always measured here",
        '        if self.budget.device == "local":\n            for key, artifact in artifacts.items():',
        "        if self.budget.device:\n            for key, artifact in artifacts.items():",
        ARM + "test_a_search_measures_its_latency_budget_on_the_device"),
    Mutation(
        "bench --devices keeps the rows of the devices that answered", "edgetl/cli.py",
        "exit 1 before the answered devices' rows are written",
        "    write_outputs(rows, json_path, csv_path, markdown_path)\n"
        '    failed = [answer for answer in answers if answer["error"]]\n'
        "    for answer in failed:\n"
        "        click.echo(f\"{answer['device']}: device error: {answer['error']}\", err=True)\n"
        "    if failed:\n"
        "        sys.exit(1)\n",
        '    failed = [answer for answer in answers if answer["error"]]\n'
        "    for answer in failed:\n"
        "        click.echo(f\"{answer['device']}: device error: {answer['error']}\", err=True)\n"
        "    if failed:\n"
        "        sys.exit(1)\n"
        "    write_outputs(rows, json_path, csv_path, markdown_path)\n",
        ARM + "test_bench_on_devices_keeps_the_rows_of_the_devices_that_answered"),
    Mutation(
        "--install on a device whose Python has no pip says so", "edgetl/bench/remote.py",
        "--install condition inverted (pip never run with --install)",
        '    if info["runtime"] is None and install:',
        '    if info["runtime"] is None and not install:',
        ARM + "test_install_on_a_device_whose_python_has_no_pip_says_so"),
    Mutation(
        "a dropped connection is a clear error", "edgetl/bench/remote.py",
        "dropped-connection signs never matched (all instead of any)",
        "            if any(sign in reason for sign in DROPPED):",
        "            if all(sign in reason for sign in DROPPED):",
        ARM + "test_a_connection_dropped_mid_run_is_a_clear_error"),
    Mutation(
        "the device's temp folder is removed (the test that checks it)", "edgetl/bench/remote.py",
        "temp folder kept (cleanup condition inverted)",
        "        if temporary:\n            with contextlib.suppress(DeviceError):\n"
        '                device.run(["rm", "-rf", remote_dir]',
        "        if not temporary:\n            with contextlib.suppress(DeviceError):\n"
        '                device.run(["rm", "-rf", remote_dir]',
        ARM + "test_remote_bench_rows_come_back_with_the_device"),
    Mutation(
        "cached arm64 rootfs validated before reuse", "tests/arm64_device.py",
        "marker's inventory only required, not compared",
        '            and ready.get("inventory") == inventory(root))',
        '            and "inventory" in ready)',
        ARM + "test_a_cached_rootfs_is_reused_only_while_its_package_list_matches"),
    Mutation(
        "cached arm64 rootfs validated before reuse", "tests/arm64_device.py",
        "RECORD contents not hashed (name compared in lower case)",
        '            if path.name == "RECORD":',
        '            if path.name == "record":',
        ARM + "test_a_cached_rootfs_is_reused_only_while_its_package_list_matches"),
    # --- tests/test_bench_cli.py -------------------------------------------------------------------------------------
    Mutation(
        "BenchUsageError: a folder without summary.json", "edgetl/bench/measure.py",
        "a folder without summary.json treated as a model file",
        '        if target.is_dir():\n            if not (target / "summary.json").is_file():',
        '        if target.is_dir() and (target / "summary.json").is_file():\n'
        '            if not (target / "summary.json").is_file():',
        BCLI + "test_every_bench_usage_error_names_what_to_change"),
    Mutation(
        "BenchUsageError: fixed batch size", "edgetl/bench/measure.py",
        "fixed batch refused only when --batch is smaller",
        "    if isinstance(input_shape[0], int) and input_shape[0] != options.batch:",
        "    if isinstance(input_shape[0], int) and input_shape[0] > options.batch:",
        BCLI + "test_every_bench_usage_error_names_what_to_change"),
    Mutation(
        "BenchUsageError: dynamic image sizes", "edgetl/bench/measure.py",
        "dynamic sizes refused only when every size is dynamic",
        "    if any(d is None for d in input_shape[1:]):",
        "    if all(d is None for d in input_shape[1:]):",
        BCLI + "test_every_bench_usage_error_names_what_to_change"),
    Mutation(
        "BenchUsageError: images that preprocess to another shape", "edgetl/bench/measure.py",
        "image shape checked by rank only",
        "    if list(inputs.shape) != shape:",
        "    if len(inputs.shape) != len(shape):",
        BCLI + "test_every_bench_usage_error_names_what_to_change"),
    Mutation(
        "--confidence sets the rounds the gate needs", "edgetl/cli.py",
        "fewest rounds computed at 95 % whatever --confidence says",
        "    fewest = fewest_rounds(confidence)",
        "    fewest = fewest_rounds(0.95)",
        BCLI + "test_confidence_sets_the_rounds_the_gate_needs"),
    Mutation(
        '"no baseline row; not checked"', "edgetl/bench/baseline.py",
        "a one-row baseline matched by any model, whatever its name",
        '    single = len(baseline["rows"]) == 1 and len(rows) == 1',
        '    single = len(baseline["rows"]) == 1',
        BCLI + "test_a_model_missing_from_the_baseline_is_said_not_checked"),
    Mutation(
        "--device with --baseline is a usage error before any connection", "edgetl/cli.py",
        "only --save-baseline refused with --device",
        '        if baseline or save_baseline:\n            raise click.UsageError("--baseline/--save-baseline',
        '        if save_baseline:\n            raise click.UsageError("--baseline/--save-baseline',
        BCLI + "test_device_and_baseline_together_are_a_usage_error_before_any_connection"),
    Mutation(
        "--runs counts timed runs", "edgetl/bench/measure.py",
        "--runs taken per repeat instead of in total",
        "            per = max(1, -(-self.runs // self.repeats))",
        "            per = max(1, self.runs)",
        BCLI + "test_runs_count_batch_and_real_images"),
    Mutation(
        "--batch: throughput counts the batch", "edgetl/bench/measure.py",
        "throughput ignores the batch size",
        '"throughput_ips": round(options.batch * 1000.0 / stats["mean"], 2),',
        '"throughput_ips": round(1000.0 / stats["mean"], 2),',
        BCLI + "test_runs_count_batch_and_real_images"),
    Mutation(
        "--images: real images are the inputs", "edgetl/bench/measure.py",
        "random inputs even when --images is given",
        "    if not options.images:\n        return np.random.default_rng(options.seed)",
        "    if True:\n        return np.random.default_rng(options.seed)",
        BCLI + "test_runs_count_batch_and_real_images"),
    Mutation(
        "the gate catches a regression (saved trials)", "edgetl/bench/baseline.py",
        "saved-trial comparison with the sides swapped",
        "        decision = decide(base[list(state.baseline_rounds)], curr[list(state.rounds)], tolerance, confidence)",
        "        decision = decide(curr[list(state.rounds)], base[list(state.baseline_rounds)], tolerance, confidence)",
        BCLI + "test_baseline_round_trip_and_gate_exit_codes"),
    Mutation(
        "the gate's regression exits 1", "edgetl/cli.py",
        "exit 1 only from two regressions on",
        "    if regressions:\n        click.echo(f\"edgetl: {regressions} latency regression(s)",
        "    if regressions > 1:\n        click.echo(f\"edgetl: {regressions} latency regression(s)",
        BCLI + "test_baseline_round_trip_and_gate_exit_codes"),
    # --- tests/test_distributed.py -----------------------------------------------------------------------------------
    Mutation(
        "a rank that dies mid-training: one distributed error", "edgetl/train.py",
        "collective failure not turned into peer_lost (condition inverted)",
        "        if spread and distributed.is_collective_failure(exc):",
        "        if spread and not distributed.is_collective_failure(exc):",
        "tests/test_distributed.py::test_a_rank_that_dies_mid_training_ends_the_build_with_one_message"),
    # --- tests/conftest.py -------------------------------------------------------------------------------------------
    Mutation(
        "no silent skips under CI=true (unavailable() fails)", "tests/conftest.py",
        "unavailable() skips under CI=true",
        "    if IN_CI:\n        pytest.fail(",
        "    if False:\n        pytest.fail(",
        "tests/test_ci_rules.py::test_a_missing_tool_skips_here_and_fails_under_ci"),
    # --- weak-assertion fixes ----------------------------------------------------------------------------------------
    Mutation(
        "the bundle runner imports no heavy module", "edgetl/device_runner.py",
        "runner imports torch at the top",
        "import time\nfrom pathlib import Path\n",
        "import time\nfrom pathlib import Path\n\nimport torch  # noqa: F401\n",
        "tests/test_bundle.py::test_runner_is_python39_syntax_and_imports_fast"),
    Mutation(
        "the bundle runner imports no heavy module", "edgetl/device_runner.py",
        "runner imports its preprocessing (Pillow) at the top",
        "import time\nfrom pathlib import Path\n",
        "import time\nfrom pathlib import Path\n\nfrom edgetl_runner.preprocess import Preprocessing  # noqa: F401\n",
        "tests/test_bundle.py::test_runner_is_python39_syntax_and_imports_fast"),
    Mutation(
        "the torch-free gate", "edgetl/bench/gate.py",
        "regression needs a non-significant difference (p-value test inverted)",
        "    if low > 1 + tolerance and slower_p <= alpha:",
        "    if low > 1 + tolerance and slower_p > alpha:",
        "tests/test_torch_free.py::test_runtime_side_runs_with_torch_unimportable"),
    Mutation(
        "budget off: parity with torch is checked (int8 ONNX)", "edgetl/export/onnx.py",
        "ONNX int8 calibrated on all-zero images",
        "quantize_static(str(prepared), str(tmp), _Calibration(request.calibration, update),",
        "quantize_static(str(prepared), str(tmp), _Calibration(request.calibration * 0, update),",
        "tests/test_pipeline.py::test_every_format_and_precision_is_exported_verified_and_benchmarked"),
    Mutation(
        "budget off: parity with torch is checked (int8 OpenVINO)", "edgetl/export/openvino.py",
        "OpenVINO int8 calibrated on all-zero images",
        "    calibration = _dataset(request.calibration)",
        "    calibration = _dataset(request.calibration * 0)",
        "tests/test_pipeline.py::test_every_format_and_precision_is_exported_verified_and_benchmarked"),
    Mutation(
        "budget off: parity with torch is checked (verify's record)", "edgetl/pipeline/stages/verify.py",
        "prediction_agreement compares argmax with argmin",
        '"prediction_agreement": round(float((logits.argmax(1) == torch_logits.argmax(1)).mean() * 100), 4),',
        '"prediction_agreement": round(float((logits.argmax(1) == torch_logits.argmin(1)).mean() * 100), 4),',
        "tests/test_pipeline.py::test_every_format_and_precision_is_exported_verified_and_benchmarked"),
    # --- tests/test_output_safety.py ---------------------------------------------------------------------------------
    Mutation(
        "build refuses an unmarked folder", "edgetl/fsutil.py",
        "any folder adopted when an adopt check exists (check never called)",
        "    if empty or (adopt is not None and adopt(folder)):",
        "    if empty or adopt is not None:",
        SAFE + "test_build_refuses_an_existing_folder_it_did_not_make"),
    Mutation(
        "bundle refuses a changed model file", "edgetl/bundle.py",
        "hash check inverted (refuses only files with no recorded hash)",
        "    if expected.get(source.absolute()) not in (None, actual):",
        "    if expected.get(source.absolute()) is None:",
        SAFE + "test_bundle_refuses_a_model_file_changed_after_the_build"),
    Mutation(
        "a failed rebuild keeps the good run", "edgetl/pipeline/rundir.py",
        "a rerun stage clears its live folder instead of its partial one",
        "            _clear(partial, keep)\n            partial.mkdir(parents=True, exist_ok=True)",
        "            _clear(folder, keep)\n            partial.mkdir(parents=True, exist_ok=True)",
        SAFE + "test_a_failed_rebuild_keeps_the_good_run_and_says_it_failed"),
    Mutation(
        "a failed rebuild says it failed", "edgetl/pipeline/__init__.py",
        "the failure is not recorded in summary.json",
        "        elif not isinstance(exc, AccuracyBudgetError):\n            _record_failure(recipe, run, exc)",
        "        elif isinstance(exc, AccuracyBudgetError):\n            _record_failure(recipe, run, exc)",
        SAFE + "test_a_failed_rebuild_keeps_the_good_run_and_says_it_failed"),
    Mutation(
        "swap_in restores the old folder", "edgetl/fsutil.py",
        "old folder not put back after a failed swap",
        "            os.replace(aside, dst)  # put the old folder back",
        "            pass  # put the old folder back",
        SAFE + "test_swap_in_puts_the_old_folder_back_when_the_new_one_cannot_move_in"),
    # --- tests/test_bench.py (fake clock) ----------------------------------------------------------------------------
    Mutation(
        "harness: warm-up, then at least min_runs", "edgetl/bench/harness.py",
        "min_runs and min_time both required (or -> and)",
        "(len(samples) < plan.min_runs or time.perf_counter_ns() < deadline):",
        "(len(samples) < plan.min_runs and time.perf_counter_ns() < deadline):",
        HARN + "test_harness_runs_warmup_then_at_least_min_runs_and_measures_the_call"),
    Mutation(
        "harness: warm-up, then at least min_runs", "edgetl/bench/harness.py",
        "one warm-up call too few",
        "    for _ in range(plan.warmup):\n        call()\n    samples",
        "    for _ in range(plan.warmup - 1):\n        call()\n    samples",
        HARN + "test_harness_runs_warmup_then_at_least_min_runs_and_measures_the_call"),
    Mutation(
        "harness: interleaved rounds", "edgetl/bench/harness.py",
        "each runner's rounds run back to back (loops swapped)",
        "    for _ in range(repeats):\n        for i, (runner, batch) in enumerate(zip(runners, batches, strict=True)):",
        "    for i, (runner, batch) in enumerate(zip(runners, batches, strict=True)):\n        for _ in range(repeats):",
        HARN + "test_interleaved_measurement_alternates_rounds_and_keeps_each_runner_apart"),
]


def pytest_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(ROOT), "EDGETL_CACHE": "/work/shared/cache", "TORCH_HOME": "/work/shared/cache/torch",
                "CI": "true", "EDGETL_SHARED_CACHE": "/work/shared/cache"})
    return env


def run_pytest(tests: list[str], timeout: float, log: Path) -> tuple[int | None, float, list[str]]:
    """pytest -x on `tests` in its own process group; (return code or None on timeout, seconds, last lines)."""
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        out.write(" ".join(argv) + "\n\n")
        out.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=pytest_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None or code is None:
                _kill_group(proc)
    lines = log.read_text(errors="replace").splitlines()
    return code, round(time.monotonic() - started, 1), lines[-15:]


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def verdict(code: int | None) -> str:
    if code is None:
        return "TIMEOUT"
    if code == 0:
        return "SURVIVED"
    if code in (1, 2):  # tests failed, or errored at collection/setup (2: interrupted by an error)
        return "caught"
    return f"error (rc {code})"


def check(mutation: Mutation) -> tuple[str | None, bytes | None, bytes | None]:
    """(problem or None, original bytes, mutated bytes)."""
    path = ROOT / mutation.file
    if not path.is_file():
        return "stale", None, None
    original = path.read_bytes()
    text = original.decode("utf-8")
    if text.count(mutation.old) != 1:
        return "stale", original, None
    mutated = text.replace(mutation.old, mutation.new, 1)
    if path.suffix == ".py":
        try:
            compile(mutated, str(path), "exec")
        except SyntaxError:
            return "invalid", original, None
    return None, original, mutated.encode("utf-8")


def apply_and_test(number: int, mutation: Mutation) -> Outcome:
    outcome = Outcome(mutation.promise, mutation.file, mutation.what, mutation.test, "", old=mutation.old,
                      new=mutation.new)
    problem, original, mutated = check(mutation)
    if problem is not None:
        outcome.result = problem
        return outcome
    path = ROOT / mutation.file
    mode = path.stat().st_mode
    log = LOG_DIR / f"{number:02d}.log"
    outcome.log = str(log)
    try:
        path.write_bytes(mutated)
        code, seconds, tail = run_pytest(mutation.test.split(), TIMEOUT_S, log)
    finally:
        path.write_bytes(original)
        os.chmod(path, mode)
        if path.read_bytes() != original:
            raise SystemExit(f"could not restore {path}")
    outcome.result, outcome.seconds, outcome.returncode, outcome.tail = verdict(code), seconds, code, tail
    return outcome


def table(outcomes: list[Outcome]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| promise | mutation (file: what) | test | result |", "|---|---|---|---|"]
    for o in outcomes:
        tests = "<br>".join(t.split("::", 1)[-1] for t in o.test.split())
        result = o.result + (f" ({o.seconds:.0f} s)" if o.seconds else "")
        lines.append(f"| {cell(o.promise)} | {cell(o.file)}: {cell(o.what)} | {cell(tests)} | {result} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only mutations whose promise, file, what or test contains this")
    parser.add_argument("--json", type=Path, help="write the outcomes as JSON here")
    parser.add_argument("--check", action="store_true", help="only check that every mutation applies; run nothing")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)

    selected = [(n, m) for n, m in enumerate(MUTATIONS, 1) if args.only is None
                or any(args.only in text for text in (m.promise, m.file, m.what, m.test))]
    if not selected:
        print(f"no mutation matches {args.only!r}", file=sys.stderr)
        return 2
    if args.check:
        problems = [(n, m, check(m)[0]) for n, m in selected]
        for n, m, problem in problems:
            print(f"{n:02d} {problem or 'ok':8} {m.file}: {m.what}")
        return 1 if any(p for _, _, p in problems) else 0

    started = time.monotonic()
    tests = list(dict.fromkeys(t for _, m in selected for t in m.test.split()))
    print(f"baseline: {len(tests)} tests, unmutated", flush=True)
    code, seconds, tail = run_pytest(tests, BASELINE_TIMEOUT_S, LOG_DIR / "baseline.log")
    print(f"baseline: rc {code} in {seconds:.0f} s", flush=True)
    if code != 0:
        print("the baseline does not pass; no mutation was run. Last lines:\n" + "\n".join(tail), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"baseline": {"returncode": code, "seconds": seconds, "tail": tail}},
                                            indent=2))
        return 2

    outcomes: list[Outcome] = []
    try:
        for n, mutation in selected:
            print(f"[{n:02d}] {mutation.file}: {mutation.what} ...", flush=True)
            outcome = apply_and_test(n, mutation)
            outcomes.append(outcome)
            print(f"[{n:02d}] {outcome.result} ({outcome.seconds:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("interrupted: every mutated file was restored", flush=True)
    total = round(time.monotonic() - started, 1)
    print()
    print(table(outcomes))
    counts = {r: sum(o.result == r for o in outcomes) for r in dict.fromkeys(o.result for o in outcomes)}
    print(f"\n{len(outcomes)} mutations: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f"; baseline {seconds:.0f} s; total {total:.0f} s ({total / 60:.1f} min)")
    if args.json:
        args.json.write_text(json.dumps({"baseline": {"returncode": code, "seconds": seconds, "tests": tests},
                                         "total_seconds": total, "outcomes": [asdict(o) for o in outcomes]},
                                        indent=2))
    return 1 if any(o.result == "SURVIVED" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
