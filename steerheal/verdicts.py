"""The method's questions (SCIENCE.md: Q0-Q3 and the baselines) answered from a run's stored numbers.

Each answer carries its figures, a 95% bootstrap interval and a verdict: "yes", "no" or
"unclear" (unclear whenever the interval crosses the line the question draws, or the run
lacks what the question needs). The rules are the README's "The method's questions" table;
`RULES` holds the same sentences.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

from steerheal.heal import MIN_EXAMPLES
from steerheal.stats import Interval, difference_of_means, mean_interval, paired_difference, ratio_of_means, trend
from steerheal.store import Store

MIN_GROUP = 3  # completions on each side (kept, dropped) before Q0 compares them
SLOPE_TOLERANCE = 0.1  # nats of KL rmse per round: the drift Q2 tolerates (10 rounds -> +1 nat)
YES, NO, UNCLEAR = "yes", "no", "unclear"

RULES = {
    "Q0": f"yes if every round kept >= {MIN_EXAMPLES} completions (enough to heal) and the dropped completions' "
          f"steered KL rmse exceeds the kept ones' (interval of dropped - kept above 0); no if a round kept fewer "
          f"or the interval is below 0; else unclear (also when fewer than {MIN_GROUP} were dropped).",
    "Q1": "yes if steered - healed headline incoherence, paired over the neutral prompts and pooled over rounds, "
          "has its interval above 0; no if below 0; else unclear.",
    "Q2": f"yes if the slope of healed incoherence over rounds has its interval below {SLOPE_TOLERANCE} nats per "
          f"round; no if above; else unclear (and with fewer than 2 rounds).",
    "Q3": "yes if the slope of the healed axis score over rounds has its interval above 0; no if below 0; else "
          "unclear (and with fewer than 2 rounds). Also shown: the share of the steered shift (steered - base) "
          "the healed model kept (healed - base), per round.",
    "prompting": "yes if the last healed round's axis score minus the prompting baseline's, paired over items, has "
                 "its interval above 0; no if below 0; else unclear.",
    "random": "yes if round 0's steered axis score minus the random vector's (same norms, same alpha), paired over "
              "items, has its interval above 0; no if below; else unclear (and without --random-control).",
}


@dataclass
class Answer:
    key: str
    question: str
    verdict: str
    because: str
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "rule": RULES[self.key]}


def _side_verdict(interval: Interval, line: float = 0.0, above_is_yes: bool = True) -> str:
    if interval.n == 0 or math.isnan(interval.value):
        return UNCLEAR
    side = interval.side_of(line)
    if side == 0:
        return UNCLEAR
    return YES if (side > 0) == above_is_yes else NO


def _fmt(i: Interval, unit: str = "") -> str:
    return f"{i.value:+.3f}{unit} [{i.low:+.3f}, {i.high:+.3f}], n {i.n}"


def _kept(c: dict) -> bool:
    return bool(c["human_verdict"] if c["human_verdict"] is not None else c["auto_verdict"])


def q0_filter(completions: list[dict]) -> Answer:
    question = "Q0 can we filter out the bad steered completions?"
    if not completions:
        return Answer("Q0", question, UNCLEAR, "no completions stored yet")
    by_round: dict[int, list[dict]] = {}
    for c in completions:
        by_round.setdefault(c["round"], []).append(c)
    kept_per_round = {r: sum(_kept(c) for c in cs) for r, cs in sorted(by_round.items())}
    kept = [c for c in completions if _kept(c)]
    dropped = [c for c in completions if not _kept(c)]
    reasons: Counter = Counter()
    for c in dropped:
        checks = json.loads(c["scores"]).get("checks", []) if isinstance(c["scores"], str) else c["scores"]["checks"]
        reasons.update(ch["name"] for ch in checks if not ch["passed"])

    def kl(c: dict) -> float:
        scores = json.loads(c["scores"]) if isinstance(c["scores"], str) else c["scores"]
        return (scores.get("kl") or {}).get("rmse", math.nan)

    share = mean_interval([1.0 if _kept(c) else 0.0 for c in completions])
    diff = difference_of_means([kl(c) for c in dropped], [kl(c) for c in kept])
    figures = {"kept_share": share.to_dict(), "kept_per_round": kept_per_round, "drop_reasons": dict(reasons),
               "kl_rmse_dropped_minus_kept": diff.to_dict()}
    short = [r for r, k in kept_per_round.items() if k < MIN_EXAMPLES]
    if short:
        return Answer("Q0", question, NO, f"round(s) {short} kept fewer than {MIN_EXAMPLES} completions", figures)
    if len(dropped) < MIN_GROUP:
        return Answer("Q0", question, UNCLEAR, f"the filter dropped {len(dropped)} of {len(completions)}: too few "
                                               f"to compare (needs {MIN_GROUP})", figures)
    verdict = _side_verdict(diff)
    because = (f"kept {share.value:.0%} of {len(completions)}; steered KL rmse dropped - kept {_fmt(diff)}")
    return Answer("Q0", question, verdict, because, figures)


def _rows(row: dict) -> list[dict]:
    return json.loads(row["rows"]) if isinstance(row["rows"], str) else row["rows"]


def q1_heal_cuts_incoherence(drift: dict[tuple[int, str], dict]) -> Answer:
    question = "Q1 does heal remove the incoherence steering injected?"
    rounds = sorted(r for r, s in drift if s == "healed" and (r, "steered") in drift)
    if not rounds:
        return Answer("Q1", question, UNCLEAR, "no round has both steered and healed incoherence yet")
    steered, healed, per_round = [], [], {}
    for r in rounds:
        s = [x["kl_rmse"] for x in _rows(drift[(r, "steered")])]
        h = [x["kl_rmse"] for x in _rows(drift[(r, "healed")])]
        steered += s
        healed += h
        per_round[r] = paired_difference(s, h).to_dict()
    diff = paired_difference(steered, healed)
    figures = {"steered_minus_healed": diff.to_dict(), "per_round": per_round,
               "steered": {r: drift[(r, "steered")]["headline"] for r in rounds},
               "healed": {r: drift[(r, "healed")]["headline"] for r in rounds}}
    return Answer("Q1", question, _side_verdict(diff), f"steered - healed KL rmse {_fmt(diff, ' nats')}", figures)


def q2_coherent_over_loop(drift: dict[tuple[int, str], dict]) -> Answer:
    question = "Q2 does coherence hold over the rounds?"
    rounds = sorted(r for r, s in drift if s == "healed")
    base = drift.get((-1, "base"))
    figures = {"healed": {r: drift[(r, "healed")]["headline"] for r in rounds},
               "base": base["headline"] if base else None}
    if len(rounds) < 2:
        return Answer("Q2", question, UNCLEAR, f"a trend needs at least 2 healed rounds (have {len(rounds)})", figures)
    slope = trend([[x["kl_rmse"] for x in _rows(drift[(r, "healed")])] for r in rounds])
    figures["slope_per_round"] = slope.to_dict()
    verdict = _side_verdict(slope, SLOPE_TOLERANCE, above_is_yes=False)
    return Answer("Q2", question, verdict,
                  f"healed KL rmse slope {_fmt(slope, ' nats/round')} (tolerance {SLOPE_TOLERANCE})", figures)


def _scores(row: dict) -> list[float]:
    return json.loads(row["scores"]) if isinstance(row["scores"], str) else row["scores"]


def q3_keeps_moving(axis: dict[tuple[int, str], dict]) -> Answer:
    question = "Q3 does the trait keep moving in one direction over rounds?"
    rounds = sorted(r for r, s in axis if s == "healed")
    base = axis.get((-1, "base"))
    figures: dict = {"healed": {r: axis[(r, "healed")]["mean"] for r in rounds},
                     "base": base["mean"] if base else None}
    if base is not None:
        kept = {}
        for r in rounds:
            if (r, "steered") in axis:
                b = _scores(base)
                h = [x - y for x, y in zip(_scores(axis[(r, "healed")]), b)]
                s = [x - y for x, y in zip(_scores(axis[(r, "steered")]), b)]
                kept[r] = ratio_of_means(h, s).to_dict()
        figures["share_of_steered_shift_kept"] = kept
        if rounds:
            figures["healed_minus_base_last"] = paired_difference(_scores(axis[(rounds[-1], "healed")]),
                                                                  _scores(base)).to_dict()
    if not axis:
        return Answer("Q3", question, UNCLEAR, "no axis eval stored (a custom pair needs an items file)", figures)
    if len(rounds) < 2:
        return Answer("Q3", question, UNCLEAR, f"a trend needs at least 2 healed rounds (have {len(rounds)})", figures)
    slope = trend([_scores(axis[(r, "healed")]) for r in rounds])
    figures["slope_per_round"] = slope.to_dict()
    return Answer("Q3", question, _side_verdict(slope), f"healed axis score slope {_fmt(slope, '/round')}", figures)


def beats_prompting(axis: dict[tuple[int, str], dict]) -> Answer:
    question = "Does the healed model beat prompting with the persona?"
    rounds = sorted(r for r, s in axis if s == "healed")
    if not rounds or (-1, "prompted") not in axis:
        return Answer("prompting", question, UNCLEAR, "needs a healed round and the prompting baseline's axis eval")
    diff = paired_difference(_scores(axis[(rounds[-1], "healed")]), _scores(axis[(-1, "prompted")]))
    return Answer("prompting", question, _side_verdict(diff),
                  f"round {rounds[-1]} healed - prompted axis score {_fmt(diff)}", {"healed_minus_prompted": diff.to_dict(),
                                                                                   "round": rounds[-1]})


def beats_random(axis: dict[tuple[int, str], dict]) -> Answer:
    question = "Does the steering vector beat a random vector of the same norms?"
    if (0, "random") not in axis or (0, "steered") not in axis:
        return Answer("random", question, UNCLEAR, "no random-vector control in this run (--random-control)")
    diff = paired_difference(_scores(axis[(0, "steered")]), _scores(axis[(0, "random")]))
    return Answer("random", question, _side_verdict(diff), f"round 0 steered - random axis score {_fmt(diff)}",
                  {"steered_minus_random": diff.to_dict()})


def answer_questions(store: Store, run_id: int) -> list[Answer]:
    axis = {(r["round"], r["stage"]): r for r in store.rows("axis_evals", run_id)}
    drift = {(r["round"], r["stage"]): r for r in store.rows("drift_evals", run_id)}
    completions = store.rows("completions", run_id)
    return [q0_filter(completions), q1_heal_cuts_incoherence(drift), q2_coherent_over_loop(drift),
            q3_keeps_moving(axis), beats_prompting(axis), beats_random(axis)]
