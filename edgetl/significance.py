"""How sure an accuracy is, and whether two models' accuracies on the same images differ.

An accuracy measured on n images is a proportion: it carries its 95 % Wilson score interval. Two models evaluated on
the same images are compared on their paired predictions with the exact McNemar test (a two-sided binomial test on
the images exactly one of them gets right); "better" and "worse" are said only when p < 0.05. Both from scipy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
ALPHA = 0.05


def wilson(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of `correct` of `n`, in percent."""
    from scipy.stats import binomtest

    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"an accuracy needs 0 <= correct <= n and n > 0, got {correct} of {n}")
    interval = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return 100.0 * float(interval.low), 100.0 * float(interval.high)


@dataclass(frozen=True)
class Accuracy:
    """`correct` of `n` images, with its interval (percent)."""

    correct: int
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, right: np.ndarray) -> Accuracy:
        """From a boolean array: which images were classified right."""
        right = np.asarray(right, dtype=bool)
        correct, n = int(right.sum()), int(right.size)
        return cls(correct, n, *wilson(correct, n))

    @property
    def percent(self) -> float:
        return 100.0 * self.correct / self.n

    def text(self) -> str:
        """`95.42 % (146/153, 95 % CI 90.8–97.8)`"""
        return f"{self.percent:.2f} % ({self.correct}/{self.n}, 95 % CI {self.low:.1f}–{self.high:.1f})"

    def record(self) -> dict:
        """The summary.json fields: {correct, n, ci95: [low, high]}."""
        return {"correct": self.correct, "n": self.n, "ci95": [round(self.low, 2), round(self.high, 2)]}


@dataclass(frozen=True)
class Paired:
    """Two models' predictions on the same images: how many each alone got right, and the exact McNemar p-value."""

    a_only: int
    b_only: int
    p_value: float

    @classmethod
    def of(cls, a_right: np.ndarray, b_right: np.ndarray) -> Paired:
        a_right, b_right = np.asarray(a_right, dtype=bool), np.asarray(b_right, dtype=bool)
        if a_right.shape != b_right.shape:
            raise ValueError(f"paired predictions need the same images, got {a_right.shape} and {b_right.shape}")
        a_only, b_only = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
        return cls(a_only, b_only, mcnemar_exact(a_only, b_only))

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def verdict(self) -> str:
        """`better`, `worse` (a against b, p < 0.05) or `no significant difference`."""
        if not self.significant:
            return "no significant difference"
        return "better" if self.a_only > self.b_only else "worse"

    def p_text(self) -> str:
        return p_text(self.p_value)

    def said(self) -> str:
        """The verdict with its p-value: `worse (p = 0.0312)`, `no significant difference (p = 1.00)`."""
        return said(self.record("a", "b"))

    def text(self, a: str, b: str) -> str:
        """`onnx_int8 is worse than torch (p = 0.0312; 0 vs 6 images only one of them got right)` or
        `no significant difference between onnx_int8 and torch (p = 1.00; 0 vs 1 …)`."""
        counts = f"{self.a_only} vs {self.b_only} images only one of them got right"
        if not self.significant:
            return f"no significant difference between {a} and {b} ({self.p_text()}; {counts})"
        return f"{a} is {self.verdict()} than {b} ({self.p_text()}; {counts})"

    def record(self, a: str, b: str) -> dict:
        """The summary.json fields, `a`'s and `b`'s counts named after them: {<a>_only, <b>_only, p_value, verdict}
        (the verdict is a's: `better`, `worse`, `no significant difference`)."""
        return {f"{a}_only": self.a_only, f"{b}_only": self.b_only, "p_value": round(self.p_value, 6),
                "verdict": self.verdict()}


def p_text(p: float) -> str:
    """`p = 1.00`, `p = 0.22`, `p = 0.0312`, `p = 0.00122`: three significant figures below 0.1, so a p-value
    just under 0.05 never prints as 0.05 beside a verdict of better or worse."""
    return f"p = {p:.2f}" if p >= 0.1 else f"p = {p:.3g}"


def said(record: dict | None) -> str:
    """A paired comparison's record (Paired.record, as in summary.json) in words with its p-value, `worse (p =
    0.0312)`; `—` for a missing one (an older summary)."""
    if not isinstance(record, dict) or record.get("p_value") is None:
        return "—"
    return f"{record.get('verdict')} ({p_text(record['p_value'])})"


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of a_only successes in a_only + b_only trials at 1/2."""
    from scipy.stats import binomtest

    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    return float(binomtest(a_only, discordant, 0.5).pvalue)


def p50_ci95(round_p50s) -> list[float] | None:
    """A p50's 95 % interval as summary.json records it: median_interval of the rounds' medians, rounded (None for
    fewer than two rounds)."""
    interval = median_interval(round_p50s)
    return [round(interval[0], 4), round(interval[1], 4)] if interval else None


def median_interval(values, confidence: float = CONFIDENCE, resamples: int = 2000) -> tuple[float, float] | None:
    """The percentile bootstrap interval of the median of `values` (a latency's round medians: how far the p50 moves
    from round to round); None for fewer than two values. Seeded, so the same rounds give the same interval."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return None
    interval = bootstrap((values,), np.median, n_resamples=resamples, confidence_level=confidence,
                         method="percentile", rng=0, vectorized=True, axis=-1).confidence_interval
    return float(interval.low), float(interval.high)
