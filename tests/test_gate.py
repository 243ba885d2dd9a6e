"""The regression gate's decisions on synthetic latency distributions, and its statistics on known samples."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.bench.gate import bootstrap_ratio, decide, mann_whitney_greater


def trials(rng, median: float, spread: float, repeats: int = 5) -> np.ndarray:
    """Trial medians as the bench makes them: a median of 200 noisy calls per repeat, plus a per-repeat drift."""
    drift = rng.normal(0, spread, repeats)
    calls = rng.lognormal(np.log(median), 0.15, (repeats, 200)) * (1 + drift[:, None])
    return np.median(calls, axis=1)


def test_mann_whitney_exact_values():
    # Complete separation of 5 vs 5: one arrangement of C(10, 5) = 252 is as extreme.
    assert mann_whitney_greater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(1 / 252)
    assert mann_whitney_greater([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(1.0)
    # scipy.stats.mannwhitneyu([3, 5, 7], [1, 2, 4], alternative="greater", method="exact").pvalue == 0.1
    assert mann_whitney_greater([3, 5, 7], [1, 2, 4]) == pytest.approx(0.1)
    # Large samples use the normal approximation: a clear shift is tiny, no shift is about one half.
    rng = np.random.default_rng(0)
    assert mann_whitney_greater(rng.normal(1, 1, 300), rng.normal(0, 1, 300)) < 1e-10
    assert 0.2 < mann_whitney_greater(rng.normal(0, 1, 300), rng.normal(0, 1, 300)) < 0.8


def test_bootstrap_bounds_bracket_the_ratio():
    base, current = np.array([10.0, 10.2, 9.9, 10.1, 10.0]), np.array([13.0, 13.1, 12.9, 13.2, 13.0])
    low, high = bootstrap_ratio(base, current, 0.95)
    assert 1.26 < low <= 1.3 <= high < 1.34


def test_a_real_slowdown_of_1_25_is_caught_every_time():
    rng = np.random.default_rng(1)
    decisions = [decide(trials(rng, 5.0, 0.02), trials(rng, 6.25, 0.02), 0.10) for _ in range(50)]
    assert all(d.status == "regression" for d in decisions), [d.as_dict() for d in decisions if d.status != "regression"]
    assert all(1.18 < d.ratio < 1.32 for d in decisions)


def test_a_1_3_slowdown_is_caught_and_the_same_model_never_fails():
    rng = np.random.default_rng(2)
    slow = [decide(trials(rng, 4.0, 0.03), trials(rng, 5.2, 0.03), 0.10).status for _ in range(20)]
    same = [decide(trials(rng, 4.0, 0.03), trials(rng, 4.0, 0.03), 0.10).status for _ in range(200)]
    assert slow == ["regression"] * 20
    assert "regression" not in same and same.count("ok") >= 190


def test_noise_alone_cannot_fail_the_gate():
    # Per-repeat drift of 15 %: the same model can look 20 % slower, but the bound stays wide, so no failure.
    rng = np.random.default_rng(3)
    statuses = [decide(trials(rng, 4.0, 0.15), trials(rng, 4.0, 0.15), 0.10).status for _ in range(200)]
    assert "regression" not in statuses
    assert "inconclusive" in statuses  # and the gate says so instead of calling it fine


def test_small_slowdowns_within_tolerance_pass_and_speedups_are_reported():
    rng = np.random.default_rng(4)
    assert decide(trials(rng, 4.0, 0.01), trials(rng, 4.2, 0.01), 0.10).status == "ok"  # +5 % < 10 %
    faster = decide(trials(rng, 4.0, 0.01), trials(rng, 3.0, 0.01), 0.10)
    assert faster.status == "faster" and faster.high < 0.9


def test_the_gate_refuses_empty_or_non_positive_trials():
    with pytest.raises(ValueError):
        decide([], [1.0], 0.1)
    with pytest.raises(ValueError):
        decide([1.0, 0.0], [1.0], 0.1)


def test_paired_rounds_cancel_machine_drift():
    # Rounds measured back to back share the machine's speed of the moment (drift up to ±20 % here); the paired
    # ratios are 1.25 ± 1 %, so the paired decision catches it where the unpaired one cannot.
    rng = np.random.default_rng(5)
    caught = unpaired = 0
    for _ in range(50):
        speed = 1 + rng.uniform(-0.2, 0.2, 5)
        base = 4.0 * speed * (1 + rng.normal(0, 0.01, 5))
        current = 5.0 * speed * (1 + rng.normal(0, 0.01, 5))
        caught += decide(base, current, 0.10, paired=True).status == "regression"
        unpaired += decide(base, current, 0.10).status == "regression"
        same = 4.0 * speed * (1 + rng.normal(0, 0.01, 5))
        assert decide(base, same, 0.10, paired=True).status in ("ok", "faster")
    assert caught == 50 and unpaired < 50


def test_sign_test_values():
    from edgetl.bench.gate import sign_test_greater

    assert sign_test_greater(np.array([1.2] * 5)) == pytest.approx(1 / 32)
    assert sign_test_greater(np.array([1.2, 1.2, 1.2, 1.2, 0.9])) == pytest.approx(6 / 32)


# Machine states: a VM whose 2-thread speed switches between two levels ~1.4x apart (the reference, a smaller
# network, moves ~1.8x), as measured on this project's CI machine; see edgetl.bench.reference.
FAST, SLOW = (0.56, 0.70), (1.0, 1.0)  # (reference factor, model factor) of each state


def machine_rows(rng, states, model_ms: float, name: str = "m") -> dict:
    """A benchmark row whose round i ran in machine state states[i] (switching between rounds)."""
    trials = [model_ms * SLOW[1] * (FAST[1] if s else 1) * (1 + rng.normal(0, 0.01)) for s in states]
    looks = [[0.35 * (FAST[0] if s else 1) * (1 + rng.normal(0, 0.01)) for _ in range(2)] for s in states]
    return {"name": name, "model": f"/gone/{name}.onnx", "threads": 2, "batch": 1, "p50_ms": float(np.median(trials)),
            "trial_p50_ms": trials, "reference": "openvino:abc", "reference_trial_p50_ms": looks}


def test_state_matching_compares_rounds_of_the_same_machine_state():
    from edgetl.bench.gate import match_states

    # Baseline: 4 fast rounds, a round where the state switched between the two looks, 5 slow rounds.
    base = [[0.2, 0.2]] * 4 + [[0.2, 0.35]] + [[0.35, 0.36]] * 5
    state = match_states(base, [[0.35, 0.35]] * 6 + [[0.2, 0.2]] * 2)
    assert state.baseline_rounds == (5, 6, 7, 8, 9) and state.rounds == (0, 1, 2, 3, 4, 5) and state.enough
    assert state.ratio == pytest.approx(1.0, abs=0.03)
    # Every new round slower than any baseline round: nothing to compare, and the machine is slower now.
    slower = match_states([[0.2, 0.2]] * 10, [[0.35, 0.35]] * 10)
    assert slower.rounds == () and not slower.enough and slower.ratio == pytest.approx(1.75)


def verdict(comparison) -> str:
    """What the gate reports for a compared row (an unsettled row is not judged once the re-measurements are spent)."""
    return "not_judged" if comparison.unsettled else comparison.status


@pytest.mark.parametrize("seed", range(10))
def test_saved_baselines_in_another_machine_state_raise_no_false_alarm_and_miss_no_real_slowdown(seed):
    from edgetl.bench.baseline import compare

    rng = np.random.default_rng(seed)
    judged = 0
    for _ in range(60):
        base_states = rng.random(10) < rng.random()  # True: fast state; each run has its own mix
        baseline = {"rows": [machine_rows(rng, base_states, 2.0)]}
        now = rng.random(10) < rng.random()
        same = compare(baseline, [machine_rows(rng, now, 2.0)], 0.10)[0]
        assert verdict(same) != "regression", (base_states, now)
        slower = compare(baseline, [machine_rows(rng, now, 2.0 * 1.25)], 0.10)[0]
        assert verdict(slower) in ("regression", "not_judged"), (base_states, now, slower.decision)
        judged += verdict(slower) == "regression"
    assert judged >= 35  # most runs share enough rounds of one state with their baseline


@pytest.mark.parametrize("base_fast, now_fast, slowdown, expected", [
    (8, 0, 1.0, "not_judged"),  # 2 slow baseline rounds only: too few to compare the all-slow run with
    (2, 10, 1.3, "not_judged"),  # the mirror case: a real slowdown, but on a faster machine than 8 of 10 rounds
    (10, 0, 1.0, "not_judged"),  # baseline all fast, now all slow: the machine alone makes it look 1.4x slower
    (0, 10, 1.3, "not_judged"),  # a 1.3x slowdown hidden by a machine 1.4x faster in every round
    (0, 10, 2.0, "regression"),  # machine faster in every round, model still 1.4x slower: certain
    (10, 0, 0.6, "faster"),  # machine slower in every round, model still faster: certain
    (5, 5, 1.3, "regression"),  # enough rounds of both states on both sides
    (5, 5, 1.0, "ok"),
])
def test_saved_mode_verdicts_in_fixed_machine_states(base_fast, now_fast, slowdown, expected):
    from edgetl.bench.baseline import compare

    rng = np.random.default_rng(0)
    baseline = {"rows": [machine_rows(rng, [i < base_fast for i in range(10)], 2.0)]}
    row = machine_rows(rng, [i < now_fast for i in range(10)], 2.0 * slowdown)
    assert verdict(compare(baseline, [row], 0.10)[0]) == expected


def test_older_baselines_without_looks_compare_all_rounds():
    from edgetl.bench.baseline import compare

    # Without the reference (an older baseline) a change of machine state is a false alarm: what the looks are for.
    rng = np.random.default_rng(0)
    base = machine_rows(rng, [True] * 10, 2.0)
    base.pop("reference_trial_p50_ms")
    comparison = compare({"rows": [base]}, [machine_rows(rng, [False] * 10, 2.0)], 0.10)[0]
    assert comparison.state is None and comparison.status == "regression"


def test_an_inconclusive_slowdown_on_a_slower_machine_is_not_judged():
    from edgetl.bench.baseline import compare

    base = {"name": "m", "model": "/gone/m.onnx", "threads": 2, "batch": 1, "p50_ms": 1.0, "reference": "r",
            "trial_p50_ms": [1.0] * 5, "reference_trial_p50_ms": [[10.0, 10.0]] * 5}
    row = {**base, "trial_p50_ms": [1.5, 0.9, 1.5, 0.9, 1.5], "reference_trial_p50_ms": [[14.0, 14.0]] * 5}
    comparison = compare({"rows": [base]}, [row], 0.10)[0]
    assert comparison.decision.status == "inconclusive" and verdict(comparison) == "not_judged"
    # The same trials on a machine as fast as the baseline's: judged (inconclusive, not "not judged").
    same_speed = compare({"rows": [base]}, [{**row, "reference_trial_p50_ms": [[10.0, 10.0]] * 5}], 0.10)[0]
    assert verdict(same_speed) == "inconclusive"


def test_the_verdict_says_when_saved_trials_cannot_track_the_machine_state():
    from edgetl.bench.baseline import compare, machine_info
    from edgetl.bench.verdict import gate_verdict

    rng = np.random.default_rng(0)
    with_looks = machine_rows(rng, [True] * 10, 2.0)  # a baseline saved with the machine-state reference
    baseline = {"rows": [with_looks], "machine": machine_info()}
    comparisons = compare(baseline, [machine_rows(rng, [True] * 10, 2.0)], 0.10)

    def notes(where=None) -> list[str]:
        return [line for line, _ in gate_verdict(baseline, comparisons, 0.10, 0.95, where).lines
                if line.startswith("note:")]

    assert notes() == []  # here, the looks track the state: nothing to qualify
    device = {"machine": "aarch64", "runtimes": {}}
    said = notes(device)  # on a device no state is tracked, whatever the baseline rows hold
    assert len(said) == 1 and "a device's machine state is not tracked" in said[0]
    older = {"rows": [{k: v for k, v in with_looks.items() if k != "reference_trial_p50_ms"}],
             "machine": machine_info()}
    said = [line for line, _ in gate_verdict(older, compare(older, [machine_rows(rng, [True] * 10, 2.0)], 0.10), 0.10,
                                             0.95).lines if line.startswith("note:")]
    assert len(said) == 1 and "holds no machine-state reference" in said[0]
