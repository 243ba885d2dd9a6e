"""Pick the most accurate model under a budget, by measurement: the candidate grid (backbone × prune ratio × format
× precision), the cheap filter (latency and size of the untrained, pruned architectures measured on the target
before anything is trained), the order and the early stop of training (a pruned model is assumed no more accurate
than its unpruned parent, an int8 file no more than its fp32 model), and the final Pareto front and choice.

This module is the search's logic alone: what to measure and train is passed in as functions, so it is tested on
fake measurements; the build drives it with real exports, benchmarks and fine-tunes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

ModelKey = tuple[str, float]  # (backbone, prune ratio): one trained model, shared by its formats and precisions


@dataclass(frozen=True)
class Budget:
    """What the chosen model must meet; None means no limit on that axis."""

    latency_ms_p90: float | None = None
    size_mb: float | None = None
    accuracy_min: float | None = None
    device: str = "local"
    threads: int = 1

    def latency_reason(self, p90_ms: float | None, size_bytes: int | None, what: str) -> str | None:
        """Why a measurement breaks the budget (None when it does not)."""
        if self.latency_ms_p90 is not None and p90_ms is not None and p90_ms > self.latency_ms_p90:
            return (f"p90 {p90_ms:.2f} ms > budget {self.latency_ms_p90:g} ms on {self.device} at {self.threads} "
                    f"thread(s) ({what})")
        if self.size_mb is not None and size_bytes is not None and size_bytes / 1e6 > self.size_mb:
            return f"size {size_bytes / 1e6:.2f} MB > budget {self.size_mb:g} MB ({what})"
        return None


@dataclass
class Candidate:
    backbone: str
    prune: float
    format: str
    precision: str
    status: str = "pending"  # pending → rejected | pareto | chosen
    reason: str = ""
    val_accuracy: float | None = None
    val_accuracy_ci95: list[float] | None = None  # its 95 % Wilson interval, from the trained model's artifact
    latency_ms_p90: float | None = None
    size_bytes: int | None = None
    trained: bool = False
    estimated: dict = field(default_factory=dict)  # the cheap filter's measurement of the untrained architecture

    @property
    def name(self) -> str:
        return f"{self.backbone}_p{round(self.prune * 100):02d}_{self.format}_{self.precision}"

    @property
    def model_key(self) -> ModelKey:
        return self.backbone, self.prune

    def reject(self, reason: str) -> None:
        self.status, self.reason = "rejected", reason

    def as_dict(self) -> dict:
        return {"name": self.name, "backbone": self.backbone, "prune": self.prune, "format": self.format,
                "precision": self.precision, "status": self.status, "reason": self.reason,
                "val_accuracy": self.val_accuracy, "val_accuracy_ci95": self.val_accuracy_ci95,
                "latency_ms_p90": self.latency_ms_p90,
                "size_bytes": self.size_bytes, "trained": self.trained,
                "untrained_latency_ms_p90": self.estimated.get("latency_ms_p90"),
                "untrained_size_bytes": self.estimated.get("size_bytes")}


def make_grid(backbones: Iterable[str], prunes: Iterable[float], formats: Iterable[str],
              precisions: Iterable[str]) -> list[Candidate]:
    """Every combination, in a stable order."""
    return [Candidate(b, float(p), f, q) for b in backbones for p in prunes for f in formats for q in precisions]


def cheap_filter(candidates: list[Candidate], budget: Budget,
                 measure: Callable[[Candidate], tuple[float, int]]) -> None:
    """Measure each candidate's untrained architecture (`measure` → (p90 ms, size bytes) of its exported file on the
    target) and reject those that cannot meet the latency or size budget, before anything is trained."""
    for candidate in candidates:
        if candidate.status != "pending":
            continue
        p90_ms, size = measure(candidate)
        candidate.estimated = {"latency_ms_p90": p90_ms, "size_bytes": size}
        reason = budget.latency_reason(p90_ms, size, "measured on the untrained architecture, before training")
        if reason:
            candidate.reject(reason)


def training_order(candidates: list[Candidate], prior: dict[str, float]) -> list[ModelKey]:
    """The models still needed, most promising first: backbones by `prior` (e.g. ImageNet top-1), and within one
    backbone the unpruned model first (its accuracy bounds its pruned variants, which start from it)."""
    keys = {c.model_key for c in candidates if c.status == "pending"}
    keys |= {(backbone, 0.0) for backbone, _ in keys}  # a pruned model is made from its fine-tuned unpruned parent
    return sorted(keys, key=lambda k: (-prior.get(k[0], 0.0), k[1], k[0]))


@dataclass
class SearchState:
    """What training has shown so far: each trained model's accuracy per (format, precision) artifact."""

    candidates: list[Candidate]
    budget: Budget
    slack_pp: float = 0.0  # how far above its parent a pruned model may land by chance and still be worth training
    min_gain_pp: float = 0.0  # how much better than the best so far a model must be able to get to be worth training
    trained: dict[ModelKey, float] = field(default_factory=dict)  # model → its torch val accuracy

    def best_feasible(self) -> Candidate | None:
        done = [c for c in self.candidates if c.status == "pending" and c.val_accuracy is not None
                and self._meets_accuracy(c)]
        return max(done, key=lambda c: (c.val_accuracy, -(c.latency_ms_p90 or 0.0)), default=None)

    def _meets_accuracy(self, candidate: Candidate) -> bool:
        return self.budget.accuracy_min is None or candidate.val_accuracy >= self.budget.accuracy_min

    def upper_bound(self, key: ModelKey) -> tuple[float, ModelKey] | None:
        """The best accuracy `key`'s model could reach as far as we know, and the trained model that says so: the
        least accurate trained model of the same backbone pruned less (more pruning is taken to cost accuracy, never
        to add it), plus `slack_pp`. None: no bound yet."""
        if key in self.trained:
            return self.trained[key], key
        lighter = [(accuracy, k) for k, accuracy in self.trained.items() if k[0] == key[0] and k[1] < key[1]]
        if not lighter:
            return None
        accuracy, bounding = min(lighter)
        return accuracy + self.slack_pp, bounding

    def worth_training(self, key: ModelKey) -> tuple[bool, str]:
        """Whether `key` can still beat the best feasible candidate found so far by more than `min_gain_pp`; if not,
        why."""
        users = [c for c in self.candidates if c.model_key == key and c.status == "pending"]
        is_parent = key[1] == 0.0 and any(c.backbone == key[0] and c.prune > 0 and c.status == "pending"
                                          for c in self.candidates)
        if not users and not is_parent:
            return False, "no candidate of this model is left"
        best, bound = self.best_feasible(), self.upper_bound(key)
        # A tie does not beat it.
        if best is not None and bound is not None and bound[0] <= best.val_accuracy + self.min_gain_pp:
            by = "its unpruned parent" if bound[1][1] == 0.0 else f"the same backbone pruned {bound[1][1]:.0%}"
            margin = f" by more than {self.min_gain_pp:g} pp" if self.min_gain_pp else ""
            return False, (f"cannot beat {best.name} ({best.val_accuracy:.2f} %){margin}: {by} reached "
                           f"{self.trained[bound[1]]:.2f} %")
        return True, ""

    def skip(self, key: ModelKey, reason: str) -> None:
        for candidate in self.candidates:
            if candidate.model_key == key and candidate.status == "pending":
                candidate.reject(f"not trained: {reason}")

    def record(self, key: ModelKey, model_accuracy: float, artifacts: dict[tuple[str, str], dict]) -> None:
        """A trained model: its torch accuracy, and per (format, precision) the exported file's measured
        `val_accuracy`, `latency_ms_p90` and `size_bytes`. Artifacts over the budget are rejected here."""
        self.trained[key] = model_accuracy
        for candidate in self.candidates:
            if candidate.model_key != key:
                continue
            candidate.trained = True  # also when trained only as the parent of pruned models
            if candidate.status != "pending":
                continue
            measured = artifacts.get((candidate.format, candidate.precision))
            if measured is None:
                candidate.reject("no such artifact was exported")
                continue
            if measured.get("rejected") or measured.get("latency_ms_p90") is None:
                candidate.reject(measured.get("rejected") or "its latency could not be measured")
                continue
            candidate.val_accuracy = measured["val_accuracy"]
            candidate.val_accuracy_ci95 = measured.get("val_accuracy_ci95")
            candidate.latency_ms_p90 = measured["latency_ms_p90"]
            candidate.size_bytes = measured["size_bytes"]
            reason = self.budget.latency_reason(candidate.latency_ms_p90, candidate.size_bytes,
                                                "measured on the trained model")
            if reason:
                candidate.reject(reason)
            elif not self._meets_accuracy(candidate):
                candidate.reject(f"val accuracy {candidate.val_accuracy:.2f} % < accuracy_min "
                                 f"{self.budget.accuracy_min:g} %")


def run(candidates: list[Candidate], budget: Budget, prior: dict[str, float],
        measure_untrained: Callable[[Candidate], tuple[float, int]],
        train: Callable[[ModelKey], tuple[float, dict[tuple[str, str], dict]]], *,
        slack_pp: float = 0.0, min_gain_pp: float = 0.0, log: Callable[[str], None] = lambda _: None) -> SearchState:
    """The whole search: cheap filter, then train models most promising first while they can still win, then the
    Pareto front and the choice. `train(key)` fine-tunes (and prunes) the model and measures its artifacts."""
    cheap_filter(candidates, budget, measure_untrained)
    log(f"cheap filter: {sum(c.status == 'rejected' for c in candidates)} of {len(candidates)} candidates cannot "
        "meet the budget")
    state = SearchState(candidates, budget, slack_pp, min_gain_pp)
    for key in training_order(candidates, prior):
        worth, reason = state.worth_training(key)
        if not worth:
            state.skip(key, reason)
            log(f"skip {key[0]} pruned {key[1]:.0%}: {reason}")
            continue
        log(f"train {key[0]} pruned {key[1]:.0%}")
        accuracy, artifacts = train(key)
        state.record(key, accuracy, artifacts)
    choose(candidates)
    return state


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on accuracy, p90 latency and size at once."""
    def beats(a: Candidate, b: Candidate) -> bool:
        no_worse = (a.val_accuracy >= b.val_accuracy and a.latency_ms_p90 <= b.latency_ms_p90
                    and a.size_bytes <= b.size_bytes)
        return no_worse and (a.val_accuracy, a.latency_ms_p90, a.size_bytes) != (
            b.val_accuracy, b.latency_ms_p90, b.size_bytes)

    return [c for c in candidates if not any(beats(o, c) for o in candidates if o is not c)]


def choose(candidates: list[Candidate]) -> Candidate | None:
    """Mark the Pareto front of the feasible trained candidates and the chosen one (most accurate, then fastest,
    then smallest); the rest are rejected as dominated."""
    feasible = [c for c in candidates if c.status == "pending"]
    front = pareto_front(feasible)
    chosen = max(front, key=lambda c: (c.val_accuracy, -c.latency_ms_p90, -c.size_bytes), default=None)
    for candidate in feasible:
        if candidate is chosen:
            candidate.status, candidate.reason = "chosen", "the most accurate candidate within the budget"
        elif candidate in front:
            candidate.status, candidate.reason = "pareto", "on the Pareto front, less accurate than the chosen one"
        else:
            better = next(o for o in front if o.val_accuracy >= candidate.val_accuracy
                          and o.latency_ms_p90 <= candidate.latency_ms_p90 and o.size_bytes <= candidate.size_bytes)
            candidate.reject(f"dominated by {better.name} (at least as accurate, fast and small)")
    return chosen
