"""The axis eval: a continuation-likelihood trait score that works at any model size.

An item is a user prompt (a dilemma on the pair's axis) with a positive-side and a
negative-side answer written for it. Its score is the mean per-token log-probability of the
positive answer minus that of the negative answer, given the chat prompt (default system
message unless a persona is asked for). The stage decides the model: base, steered at alpha,
healed round k, prompted with the positive persona, or a random vector.

The prompt is shared by both answers, so it runs once: its KV cache is repeated for the two
answers, which then run as one batch.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from steerheal.attention import folded_gqa
from steerheal.batching import pad_rows, position_ids_for
from steerheal.chat import chat_prompt
from steerheal.config import DEFAULT_SYSTEM_PROMPT, SteerConfig
from steerheal.errors import SteerhealError
from steerheal.models import LoadedModel, final_hidden, project_logits, unwrapped_model
from steerheal.parallel import auto_workers, map_batches
from steerheal.stats import mean_interval
from steerheal.steering import steer

ITEM_FIELDS = ("prompt", "pos", "neg")
OPTIONAL_FIELDS = ("split", "id", "note")
SPLITS = ("dev", "eval")
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class AxisItem:
    prompt: str
    pos: str
    neg: str
    split: str = "eval"
    where: str = ""  # file:line it came from


@dataclass
class AxisResult:
    """Mean score over items with its 95% bootstrap interval, the share of items above 0,
    and every item's score (in item order) for paired comparisons."""

    mean: float
    ci_low: float
    ci_high: float
    share_positive: float
    n: int
    scores: list[float]
    meta: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "share_positive": self.share_positive, "n": self.n}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def parse_items(lines: Sequence[str], name: str) -> list[AxisItem]:
    """Items from JSON Lines text; any problem is one SteerhealError naming name:line."""
    items: list[AxisItem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{name}:{number}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise SteerhealError(f"{where}: not valid JSON ({err.msg}): write one object per line, "
                                 '{"prompt": ..., "pos": ..., "neg": ...}.') from None
        if not isinstance(obj, dict):
            raise SteerhealError(f"{where}: each line must be a JSON object with prompt, pos and neg.")
        missing = [k for k in ITEM_FIELDS if k not in obj]
        if missing:
            raise SteerhealError(f"{where}: missing field {', '.join(missing)} (each item needs prompt, pos, neg).")
        unknown = sorted(set(obj) - set(ITEM_FIELDS) - set(OPTIONAL_FIELDS))
        if unknown:
            raise SteerhealError(f"{where}: unknown field {', '.join(unknown)} (allowed: prompt, pos, neg, split).")
        for key in ITEM_FIELDS:
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise SteerhealError(f"{where}: {key} is empty: every item needs a prompt and two non-empty answers.")
        if _norm(obj["pos"]) == _norm(obj["neg"]):
            raise SteerhealError(f"{where}: pos and neg are the same answer: they must take opposite sides.")
        split = obj.get("split", "eval")
        if split not in SPLITS:
            raise SteerhealError(f"{where}: split must be dev or eval, got {split!r}.")
        key = _norm(obj["prompt"])
        if key in seen:
            raise SteerhealError(f"{where}: duplicate prompt (first on line {seen[key]}): each item needs its own prompt.")
        seen[key] = number
        items.append(AxisItem(obj["prompt"].strip(), obj["pos"].strip(), obj["neg"].strip(), split, where))
    if not items:
        raise SteerhealError(f"{name}: holds no items: write one JSON object per line with prompt, pos, neg.")
    return items


def load_items(path: str | Path) -> list[AxisItem]:
    path = Path(path)
    if not path.is_file():
        raise SteerhealError(f"Items file {str(path)!r} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SteerhealError(f"{path}: not UTF-8 text: save the items file as UTF-8 JSON Lines.") from None
    return parse_items(text.splitlines(), str(path))


def bundled_items_path(pair: str):
    return resources.files("steerheal").joinpath("assets", "axis_items", f"{pair}.jsonl")


def has_bundled_items(pair: str) -> bool:
    return bundled_items_path(pair).is_file()


def bundled_items(pair: str) -> list[AxisItem]:
    path = bundled_items_path(pair)
    if not path.is_file():
        raise SteerhealError(f"No bundled axis items for the pair {pair!r}: give an items file (--items FILE).")
    return parse_items(path.read_text(encoding="utf-8").splitlines(), f"axis_items/{pair}.jsonl")


def check_no_overlap(items: Sequence[AxisItem], generation_prompts: Sequence[str]) -> None:
    """The eval set must never hold a prompt that generates training completions."""
    training = {_norm(p) for p in generation_prompts}
    for item in items:
        if _norm(item.prompt) in training:
            raise SteerhealError(f"{item.where}: this prompt also generates training completions; an axis item "
                                 "must be held out from them: drop it or reword it.")


def select(items: Sequence[AxisItem], split: str | None) -> list[AxisItem]:
    if split is None or split == "all":
        return list(items)
    chosen = [i for i in items if i.split == split]
    if not chosen:
        raise SteerhealError(f"No items in the {split!r} split.")
    return chosen


def _answer_ids(lm: LoadedModel, text: str) -> list[int]:
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise SteerhealError(f"An answer tokenises to nothing: {text!r}.")
    return ids


def _score_batch(lm: LoadedModel, prompt_rows: list[list[int]], answer_rows: list[list[int]]) -> list[float]:
    """Mean per-token log p of each answer (answer_rows holds two per prompt, in order) after its
    prompt. The prefix every prompt shares (chat template and system message, ~20 tokens of ~50)
    runs once; each prompt's own part runs once; its KV cache is repeated for its two answers.
    Padding sits before each part; the mask and position ids skip it."""
    pad = lm.tokenizer.pad_token_id
    common = 0
    shortest = min(len(r) for r in prompt_rows)
    while common < shortest - 1 and all(r[common] == prompt_rows[0][common] for r in prompt_rows):
        common += 1
    cache = DynamicCache(config=unwrapped_model(lm).config)
    if common:
        prefix = torch.tensor([prompt_rows[0][:common]], device=lm.device)
        final_hidden(lm, prefix, torch.ones_like(prefix), torch.arange(common, device=lm.device)[None, :],
                     past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(len(prompt_rows))
    ids, rest_mask = pad_rows([r[common:] for r in prompt_rows], pad, lm.device, side="left")
    mask = torch.cat([rest_mask.new_ones((len(prompt_rows), common)), rest_mask], dim=1)
    positions = common + position_ids_for(rest_mask)
    hidden = final_hidden(lm, ids, mask, positions, past_key_values=cache, use_cache=True)
    first = torch.log_softmax(project_logits(lm, hidden[:, -1, :].contiguous()).float(), dim=-1)
    first = first.repeat_interleave(2, dim=0)  # rows: item0 A, item0 B, item1 A, ...
    cache.batch_repeat_interleave(2)
    ans_ids, ans_mask = pad_rows(answer_rows, pad, lm.device, side="right")
    full_mask = torch.cat([mask.repeat_interleave(2, dim=0), ans_mask], dim=1)
    ans_pos = positions[:, -1:].repeat_interleave(2, dim=0) + 1 + torch.arange(ans_ids.shape[1],
                                                                            device=lm.device)[None, :]
    hidden = final_hidden(lm, ans_ids, full_mask, ans_pos, past_key_values=cache, use_cache=True)
    means = []
    for r, answer in enumerate(answer_rows):
        target = torch.tensor(answer, device=lm.device)
        lp = first[r, target[0]]
        if len(answer) > 1:
            logp = torch.log_softmax(project_logits(lm, hidden[r, : len(answer) - 1]).float(), dim=-1)
            lp = lp + logp.gather(-1, target[1:, None]).sum()
        means.append(float(lp) / len(answer))
    return means


def answer_logprobs(lm: LoadedModel, prompts: Sequence[str], answers: Sequence[tuple[str, str]],
                    system: str | None = DEFAULT_SYSTEM_PROMPT, batch_size: int = 16,
                    progress: ProgressFn | None = None, workers: int = 0) -> list[tuple[float, float]]:
    """(mean per-token log p of answer A, of answer B) for each prompt, the prompt run once.
    Prompts are batched by length (little padding) and two batches run at once on a CPU."""
    tok = lm.tokenizer
    prompt_rows = [tok(chat_prompt(tok, p, system), add_special_tokens=False).input_ids for p in prompts]
    answer_rows = [[_answer_ids(lm, a), _answer_ids(lm, b)] for a, b in answers]
    order = sorted(range(len(prompts)), key=lambda i: (len(prompt_rows[i]), i))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    out: list[tuple[float, float] | None] = [None] * len(prompts)

    def run(idx: list[int]) -> list[float]:
        with torch.inference_mode():
            return _score_batch(lm, [prompt_rows[i] for i in idx], [a for i in idx for a in answer_rows[i]])

    done = 0
    with folded_gqa(lm.model):
        for index, means in map_batches(run, batches, auto_workers(lm.device, workers)):
            for k, i in enumerate(batches[index]):
                out[i] = (means[2 * k], means[2 * k + 1])
            done += len(batches[index])
            if progress is not None:
                progress(done, len(prompts))
    return [o for o in out if o is not None]


def evaluate_axis(lm: LoadedModel, items: Sequence[AxisItem], *, stage: str = "base", vector=None,
                  steer_cfg: SteerConfig | None = None, persona_prompt: str | None = None, batch_size: int = 16,
                  seed: int = 0, progress: ProgressFn | None = None) -> AxisResult:
    """Score the model as it is (base / healed), steered (vector + steer_cfg), or prompted with
    a persona as the system message."""
    if not items:
        raise SteerhealError("No axis items to evaluate.")
    if (vector is None) != (steer_cfg is None):
        raise SteerhealError("A steered axis eval needs both a vector and an alpha.")
    t0 = time.time()
    context = steer(lm, vector, steer_cfg) if vector is not None else nullcontext()
    with context:
        pairs = answer_logprobs(lm, [i.prompt for i in items], [(i.pos, i.neg) for i in items],
                                system=persona_prompt or DEFAULT_SYSTEM_PROMPT, batch_size=batch_size,
                                progress=progress, workers=1 if steer_cfg is not None and steer_cfg.depends_on_pass
                                else 0)
    scores = [a - b for a, b in pairs]
    interval = mean_interval(scores, seed=seed)
    meta = {"stage": stage, "model_id": lm.model_id, "seconds": round(time.time() - t0, 2),
            "persona_prompt": persona_prompt, "steer": None if steer_cfg is None else asdict(steer_cfg),
            "splits": sorted({i.split for i in items}), "bootstrap_seed": seed,
            "logp_pos": [a for a, _ in pairs], "logp_neg": [b for _, b in pairs]}
    return AxisResult(mean=interval.value, ci_low=interval.low, ci_high=interval.high,
                      share_positive=sum(s > 0 for s in scores) / len(scores), n=len(scores), scores=scores,
                      meta=meta)
