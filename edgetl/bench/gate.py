"""The noise-aware regression decision: is `current` slower than `baseline` by more than the tolerance, with
confidence? Pure numpy, torch-free.

Each side is a set of trial medians (one per interleaved repeat). The slowdown is the ratio of the medians of
those trials; a bootstrap over the trials gives a one-sided confidence bound, and a Mann–Whitney U test says
whether the two sets differ at all. When both sides were measured in the same rounds (paired), each round's
ratio is used instead, which cancels the machine's drift: a bootstrap of their median and a sign test.
A regression needs both: the lower bound of the slowdown above 1 + tolerance, and a significant difference.
Noise widens the bound, so noise alone cannot fail the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on one row."""

    status: str  # regression | inconclusive | ok | faster; the gate adds not_judged (edgetl.bench.baseline)
    ratio: float  # median current / median baseline
    low: float  # one-sided lower confidence bound of the ratio
    high: float  # one-sided upper confidence bound of the ratio
    p_value: float  # one-sided Mann–Whitney: current slower than baseline

    def as_dict(self) -> dict:
        return {"status": self.status, "ratio": round(self.ratio, 4), "ratio_low": round(self.low, 4),
                "ratio_high": round(self.high, 4), "p_value": round(self.p_value, 5)}


def mann_whitney_greater(x: np.ndarray, y: np.ndarray) -> float:
    """One-sided p-value that `x` tends to be larger than `y` (exact by enumeration for small samples, else the
    normal approximation with tie correction)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, m = x.size, y.size
    joined = np.concatenate([x, y])
    ranks = _ranks(joined)
    u = ranks[:n].sum() - n * (n + 1) / 2
    if math.comb(n + m, n) <= 20_000:
        count = total = 0
        for chosen in combinations(range(n + m), n):
            u_perm = ranks[list(chosen)].sum() - n * (n + 1) / 2
            count += u_perm >= u - 1e-9
            total += 1
        return count / total
    _, tie_counts = np.unique(joined, return_counts=True)
    sigma = math.sqrt(n * m / 12 * ((n + m + 1) - (tie_counts ** 3 - tie_counts).sum() / ((n + m) * (n + m - 1))))
    if sigma == 0:
        return 1.0
    z = (u - n * m / 2 - 0.5) / sigma
    return 0.5 * math.erfc(z / math.sqrt(2))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean rank."""
    order = values.argsort(kind="mergesort")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(1, values.size + 1)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def bootstrap_ratio(baseline: np.ndarray, current: np.ndarray, confidence: float, resamples: int = 4000,
                    seed: int = 0) -> tuple[float, float]:
    """One-sided (lower, upper) bounds of median(current) / median(baseline), resampling trials with replacement."""
    rng = np.random.default_rng(seed)
    base = np.median(rng.choice(baseline, (resamples, baseline.size)), axis=1)
    curr = np.median(rng.choice(current, (resamples, current.size)), axis=1)
    ratios = curr / base
    return float(np.quantile(ratios, 1 - confidence)), float(np.quantile(ratios, confidence))


def fewest_rounds(confidence: float) -> int:
    """The fewest paired rounds with which a sign test can reach `confidence` at all (5 at 95 %)."""
    return math.ceil(math.log2(1 / (1 - confidence)) - 1e-9)


def sign_test_greater(ratios: np.ndarray) -> float:
    """One-sided sign test p-value that the paired ratios tend to be above 1."""
    n, above = ratios.size, int((ratios > 1).sum())
    return sum(math.comb(n, k) for k in range(above, n + 1)) / 2 ** n


def paired_bounds(ratios: np.ndarray, confidence: float, resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """One-sided (lower, upper) bounds of the median of paired ratios, resampling the pairs with replacement."""
    medians = np.median(np.random.default_rng(seed).choice(ratios, (resamples, ratios.size)), axis=1)
    return float(np.quantile(medians, 1 - confidence)), float(np.quantile(medians, confidence))


def decide(baseline_trials, current_trials, tolerance: float, confidence: float = 0.95,
           paired: bool = False) -> Decision:
    """Regression when the slowdown is larger than `tolerance` (0.10 = 10 %) with `confidence`, and significant.

    `paired`: round i of both sides was measured back to back (the baseline's model re-measured in the same
    rounds), so each round's ratio cancels the machine's drift; the bounds and the test use those ratios (a
    bootstrap of their median and a sign test) instead of the two sides' medians and Mann–Whitney.
    """
    base = np.asarray(baseline_trials, dtype=np.float64)
    curr = np.asarray(current_trials, dtype=np.float64)
    if base.size == 0 or curr.size == 0 or (base <= 0).any() or (curr <= 0).any():
        raise ValueError("the gate needs positive trial latencies on both sides")
    if paired and base.size == curr.size:
        ratios = curr / base
        ratio = float(np.median(ratios))
        low, high = paired_bounds(ratios, confidence)
        slower_p, faster_p = sign_test_greater(ratios), sign_test_greater(1 / ratios)
    else:
        ratio = float(np.median(curr) / np.median(base))
        low, high = bootstrap_ratio(base, curr, confidence)
        slower_p = mann_whitney_greater(curr, base)
        faster_p = mann_whitney_greater(base, curr)
    alpha = 1 - confidence
    if low > 1 + tolerance and slower_p <= alpha:
        status = "regression"
    elif ratio > 1 + tolerance:
        status = "inconclusive"  # looks slower than allowed, but the noise does not let us say so
    elif high < 1 - tolerance and faster_p <= alpha:
        status = "faster"
    else:
        status = "ok"
    return Decision(status, ratio, low, high, slower_p)


# Machine states (see edgetl.bench.reference): a round is in a state when the reference's p50 just before and just
# after its trial are both within STATE_BAND of that state's reference p50 (match_states). Within one state this
# VM's reference moves by a few per cent; its two 2-thread states are about 1.9× apart (the model's, 1.4×).
STATE_BAND = 0.08
MIN_MATCHED_ROUNDS = 3


@dataclass(frozen=True)
class StateMatch:
    """Which rounds of a baseline and of a new measurement ran in the same machine state."""

    level: float  # the reference p50 (ms) of the state compared
    ratio: float  # the new measurement's median reference p50 / level (machine slower now when > 1)
    baseline_rounds: tuple[int, ...]  # baseline rounds in that state
    rounds: tuple[int, ...]  # new rounds in that state
    baseline_total: int
    total: int

    @property
    def enough(self) -> bool:
        return len(self.rounds) >= MIN_MATCHED_ROUNDS and len(self.baseline_rounds) >= MIN_MATCHED_ROUNDS

    def as_dict(self) -> dict:
        return {"reference_ratio": round(self.ratio, 4), "matched_rounds": len(self.rounds), "rounds": self.total,
                "baseline_matched_rounds": len(self.baseline_rounds), "baseline_rounds": self.baseline_total}


def match_states(baseline_looks, current_looks, band: float = STATE_BAND) -> StateMatch:
    """Rounds of both measurements in one machine state. `*_looks`: per round, the reference's p50 just before
    and just after the trial. The state chosen is the baseline's state that the most rounds share on both sides
    (a machine can switch state during either measurement)."""
    base = np.asarray(baseline_looks, dtype=np.float64).reshape(-1, 2)
    curr = np.asarray(current_looks, dtype=np.float64).reshape(-1, 2)

    def within(looks: np.ndarray, level: float) -> tuple[int, ...]:
        return tuple(int(i) for i in np.flatnonzero((np.abs(looks / level - 1) <= band).all(axis=1)))

    def score(level: float) -> tuple[int, int]:
        b, c = len(within(base, level)), len(within(curr, level))
        return min(b, c), b + c

    centers = base.mean(axis=1)
    best = max(centers, key=score)  # first of the best: a round of the state both sides share most
    level = float(np.median([c for c in centers if abs(c / best - 1) <= band]))  # that state's middle
    return StateMatch(level, float(np.median(curr) / level), within(base, level), within(curr, level), len(base),
                      len(curr))
