"""The statistics every accuracy carries, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgetl.significance import Accuracy, Paired, mcnemar_exact, wilson

Z = 1.959963984540054  # the 97.5 % normal quantile


def wilson_by_formula(k: int, n: int) -> tuple[float, float]:
    p, z2 = k / n, Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return 100 * (centre - half), 100 * (centre + half)


@pytest.mark.parametrize(("k", "n", "expected"), [
    (5, 10, (23.6594, 76.3406)),  # by hand: centre 0.5, half-width 0.263406
    (0, 10, (0.0, 27.7533)),      # centre = half-width = 0.138767: the interval of 0 % is not [0, 0]
    (10, 10, (72.2467, 100.0)),
])
def test_wilson_interval_matches_the_hand_computed_values(k, n, expected):
    low, high = wilson(k, n)
    assert (low, high) == pytest.approx(expected, abs=1e-3)
    assert (low, high) == pytest.approx(wilson_by_formula(k, n), abs=1e-9)


def test_an_accuracy_of_153_images_carries_n_and_its_interval():
    right = np.array([True] * 146 + [False] * 7)
    accuracy = Accuracy.of(right)
    assert (accuracy.correct, accuracy.n) == (146, 153) and accuracy.percent == pytest.approx(95.4248, abs=1e-4)
    assert (accuracy.low, accuracy.high) == pytest.approx(wilson_by_formula(146, 153), abs=1e-9)
    assert accuracy.text() == "95.42 % (146/153, 95 % CI 90.9–97.8)"
    assert accuracy.record() == {"correct": 146, "n": 153, "ci95": [90.86, 97.77]}
    with pytest.raises(ValueError, match="n > 0"):
        Accuracy.of(np.array([], dtype=bool))


@pytest.mark.parametrize(("a_only", "b_only", "p"), [
    (1, 5, 14 / 64),  # 2 × P(X ≤ 1), X ~ Binomial(6, 1/2) = 2 × 7/64
    (0, 6, 2 / 64),   # 2 × (1/2)^6: significant
    (0, 5, 2 / 32),   # five images only one model got right, all the same way: still p = 0.0625
    (3, 3, 1.0),
    (0, 0, 1.0),      # identical predictions
])
def test_exact_mcnemar_matches_the_hand_computed_p_values(a_only, b_only, p):
    assert mcnemar_exact(a_only, b_only) == pytest.approx(p, abs=1e-12)
    assert mcnemar_exact(b_only, a_only) == pytest.approx(p, abs=1e-12)  # two-sided


def test_better_and_worse_are_said_only_when_significant():
    truth = np.ones(153, dtype=bool)
    torch_right = truth.copy()
    one_off = torch_right.copy()
    one_off[0] = False  # one image of 153
    paired = Paired.of(one_off, torch_right)
    assert (paired.a_only, paired.b_only, paired.p_value) == (0, 1, 1.0)
    assert paired.verdict() == "no significant difference" and not paired.significant
    assert paired.text("onnx_int8", "torch") == ("no significant difference between onnx_int8 and torch (p = 1.00; "
                                                 "0 vs 1 images only one of them got right)")
    six_off = torch_right.copy()
    six_off[:6] = False
    worse = Paired.of(six_off, torch_right)
    assert worse.verdict() == "worse" and worse.text("onnx_int8", "torch").startswith(
        "onnx_int8 is worse than torch (p = 0.0312;")
    assert Paired.of(torch_right, six_off).verdict() == "better"
    assert worse.record("artifact", "torch") == {"artifact_only": 0, "torch_only": 6, "p_value": 0.03125,
                                                 "verdict": "worse"}
    with pytest.raises(ValueError, match="same images"):
        Paired.of(truth[:3], truth[:4])
