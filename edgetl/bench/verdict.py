"""The latency gate's verdict in words: one line per compared row, and the warnings that qualify it (what
`edgetl bench --baseline` prints). Torch-free."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from edgetl.bench.baseline import environment_warnings
from edgetl.bench.gate import STATE_BAND


@dataclass
class Verdict:
    """What to print — (line, to stderr) in order — and how many rows regressed."""

    lines: list[tuple[str, bool]] = field(default_factory=list)
    regressions: int = 0


def gate_verdict(reference, comparisons: list, tolerance: float, confidence: float, where: dict | None = None
                 ) -> Verdict:
    """The verdict of `comparisons` against `reference` (a baseline, or the models given as --baseline); `where`:
    the device's `edgetl_runner info` record when the rows were measured on a device."""
    verdict = Verdict()

    def say(line: str, err: bool = False) -> None:
        verdict.lines.append((line, err))

    for warning in environment_warnings(reference, where):
        say(f"warning: {warning} (the comparison may not be like for like)", err=True)
    against_saved = [c for c in comparisons if c.mode == "saved" and c.baseline_row]
    saved = any(not c.baseline_row.get("reference_trial_p50_ms") for c in against_saved)
    if against_saved and where:  # on a device no machine state is tracked, whatever the baseline holds
        say("note: compared against the baseline's saved trials on the device (its model file is not where it was, "
            "or has changed); a device's machine state is not tracked, so a change of its speed since then counts "
            "as a change of the model. Keep the baseline's model file beside it, or pass the old model or run "
            "directory as --baseline, so it is re-measured in the same rounds.", err=True)
    elif saved:
        say("note: compared against the baseline's saved trials (its model file is not where it was, or has "
            "changed), and the baseline holds no machine-state reference (saved by an older edgetl): a change "
            "of machine speed since then counts as a change of the model. Save the baseline again, keep the "
            "baseline's model file, or pass it as --baseline, so it is re-measured in the same rounds.",
            err=True)
    if tolerance < STATE_BAND and any(c.state is not None for c in comparisons):
        say(f"warning: rounds count as the same machine state within ±{STATE_BAND:.0%}; a tolerance of "
            f"{tolerance:.0%} is below that, so against saved trials a change of state within that band can "
            "pass for a change of the model.", err=True)
    for comparison in comparisons:
        label = f"{comparison.row['name']} @ {comparison.row['threads']} thread(s), batch {comparison.row['batch']}"
        for note in comparison.warnings:
            say(f"warning: {label}: {note}", err=True)
        decision = comparison.decision
        if decision is None:
            say(f"{label}: no baseline row; not checked")
            continue
        verdict.regressions += decision.status == "regression"
        before, after = (statistics.median(trials) for trials in comparison.compared_trials())
        say(f"{label}: {decision.status.upper()} median of repeats {before:.3f} → {after:.3f} ms, "
            f"×{decision.ratio:.3f} (×{decision.low:.3f}–×{decision.high:.3f} "
            f"at {confidence:.0%}, p={decision.p_value:.3f}); tolerance +{tolerance:.0%}; "
            + ("baseline model re-measured in the same rounds" if comparison.mode == "interleaved"
               else "against the baseline's saved trials" + _state_note(comparison))
            + (f"; measured again after a first {comparison.first.status.upper()} ×{comparison.first.ratio:.3f}"
               if comparison.first else ""))
    return verdict


def _state_note(comparison) -> str:
    """Which rounds a saved-mode verdict used, by the machine-state reference."""
    state = comparison.state
    if state is None:
        return ""
    if state.enough:
        return (f" ({len(state.rounds)} of {state.total} rounds and {len(state.baseline_rounds)} of "
                f"{state.baseline_total} baseline rounds in the same machine state; reference ×{state.ratio:.2f})")
    if comparison.unsettled:
        return (f"; NOT JUDGED: only {len(state.rounds)} of {state.total} rounds (and {len(state.baseline_rounds)} of "
                f"{state.baseline_total} baseline rounds) ran in a machine state both share (reference ×{state.ratio:.2f} "
                "of that state's), too few to tell the model's own change from the machine's; run again, or keep "
                "the baseline's model file so it is re-measured in the same rounds")
    return (f" (all rounds, too few in a shared machine state: the machine ran {'faster' if state.ratio < 1 else 'slower'}"
            f" by more than {STATE_BAND:.0%} in every round than in any baseline round, so it cannot have caused this "
            "verdict)")
