"""Batched, seeded, left-padded chat generation, optionally steered; and a streaming variant."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from steerheal.backtrack import Backtrack, BacktrackConfig, decode
from steerheal.batching import encode_left_padded
from steerheal.chat import chat_prompt
from steerheal.config import GenerationConfig, SteerConfig
from steerheal.errors import SteerhealError
from steerheal.models import LoadedModel
from steerheal.steering import RowAlphas, steer
from steerheal.vectors import SteeringVector

ProgressFn = Callable[[int, int], None]


@dataclass
class Completion:
    prompt: str
    text: str
    token_ids: list[int]
    finished: bool  # ended with EOS rather than hitting max_new_tokens
    backtracks: list[Backtrack] = field(default_factory=list)  # replayed spans (generation with backtracking)
    token_kl: list[float] | None = None  # KL(steered || base) per token, when backtracking watched it

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def _sampling_kwargs(lm: LoadedModel, cfg: GenerationConfig) -> dict:
    tok = lm.tokenizer
    kwargs = dict(
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=cfg.min_new_tokens or None,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        repetition_penalty=1.0,  # never penalise: loops must stay visible to the filter
    )
    if cfg.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or None)
    return kwargs


def _steering(lm: LoadedModel, vector: SteeringVector | None, steer_cfg: SteerConfig | None,
              rows: RowAlphas | None = None):
    if vector is None or steer_cfg is None:
        return nullcontext()
    return steer(lm, vector, steer_cfg, row_alphas=rows)


def _strip(ids: list[int], lm: LoadedModel) -> tuple[list[int], bool]:
    eos_ids = set(eos_token_ids(lm))
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i], True
    pad = lm.tokenizer.pad_token_id
    while ids and ids[-1] == pad and pad not in eos_ids:
        ids = ids[:-1]
    return ids, False


class _StopWhenAsked(StoppingCriteria):
    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), bool(self.should_stop()), dtype=torch.bool, device=input_ids.device)


def warpers(cfg: GenerationConfig):
    """The logits warpers `model.generate` applies when sampling with these settings, in its order."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out = LogitsProcessorList()
    if cfg.temperature != 1.0:
        out.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k:
        out.append(TopKLogitsWarper(top_k=cfg.top_k))
    if cfg.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=cfg.top_p))
    return out


def sampler(cfg: GenerationConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The token choice `model.generate` makes for these settings (same warpers in the same
    order, one multinomial draw per step), for decoding loops of our own."""
    if cfg.greedy:
        return lambda scores: scores.argmax(-1)
    warp = warpers(cfg)
    return lambda scores: torch.multinomial(torch.softmax(warp(None, scores), dim=-1), num_samples=1).squeeze(1)


def eos_token_ids(lm: LoadedModel) -> list[int]:
    eos = lm.tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _backtracking_batch(lm: LoadedModel, prompts: Sequence[str], rendered: Sequence[str], cfg: GenerationConfig,
                        vector: SteeringVector, steer_cfg: SteerConfig, alphas: Sequence[float],
                        backtrack: BacktrackConfig, should_stop) -> list[Completion]:
    tok = lm.tokenizer
    prompt_rows = [tok(r, add_special_tokens=False).input_ids for r in rendered]
    decoded = decode(lm, prompt_rows, vector, steer_cfg, alphas, backtrack, sampler(cfg), cfg.max_new_tokens,
                     cfg.min_new_tokens, eos=eos_token_ids(lm), pad=tok.pad_token_id, should_stop=should_stop)
    return [Completion(prompt=p, text=tok.decode(d.token_ids, skip_special_tokens=True), token_ids=d.token_ids,
                       finished=d.finished, backtracks=d.backtracks, token_kl=d.token_kl)
            for p, d in zip(prompts, decoded)]


def generate(lm: LoadedModel, prompts: Sequence[str], cfg: GenerationConfig | None = None,
             vector: SteeringVector | None = None, steer_cfg: SteerConfig | None = None,
             progress: ProgressFn | None = None, alphas: Sequence[float] | None = None,
             should_stop: Callable[[], bool] | None = None,
             backtrack: BacktrackConfig | None = None) -> list[Completion]:
    """Answer each user prompt (with cfg.system_prompt), in batches, seeded by cfg.seed.

    Prompts are sorted by length so batches carry little padding; results come back in
    the order given. `alphas` gives each prompt its own strength (steer_cfg's alpha is then
    unused), so a sweep over strengths runs in full batches. `should_stop` is polled at every
    decoding step; once it says True, generation ends and InterruptedError is raised.
    With `backtrack` (and a vector), windows whose KL to base passes its threshold are decoded
    again at a lower strength (steerheal.backtrack); without it, this is `model.generate`.
    """
    cfg = (cfg or GenerationConfig()).validate()
    if backtrack is not None:
        backtrack.validate(cfg.max_new_tokens)
    rendered = [chat_prompt(lm.tokenizer, p, cfg.system_prompt) for p in prompts]
    lengths = [len(lm.tokenizer(r, add_special_tokens=False).input_ids) for r in rendered]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    results: list[Completion | None] = [None] * len(prompts)
    kwargs = _sampling_kwargs(lm, cfg)
    if should_stop is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopWhenAsked(should_stop)])
    torch.manual_seed(cfg.seed)
    done = 0
    if alphas is not None and len(alphas) != len(prompts):
        raise SteerhealError(f"Got {len(alphas)} alphas for {len(prompts)} prompts: give one per prompt.")
    rows = RowAlphas() if alphas is not None else None
    backtracking = backtrack is not None and vector is not None and steer_cfg is not None
    hooks = nullcontext() if backtracking else _steering(lm, vector, steer_cfg, rows)  # decode() steers itself
    with hooks, torch.inference_mode():
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if rows is not None:
                rows.set(alphas[i] for i in idx)
            if backtracking:
                row_alphas = [alphas[i] if alphas is not None else steer_cfg.alpha for i in idx]
                for i, c in zip(idx, _backtracking_batch(lm, [prompts[i] for i in idx], [rendered[i] for i in idx],
                                                         cfg, vector, steer_cfg, row_alphas, backtrack, should_stop)):
                    results[i] = c
                done += len(idx)
                if progress:
                    progress(done, len(prompts))
                continue
            batch = encode_left_padded(lm.tokenizer, [rendered[i] for i in idx], lm.device)
            out = lm.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
            if should_stop is not None and should_stop():
                raise InterruptedError("cancelled")
            new = out[:, batch["input_ids"].shape[1]:].tolist()
            for row, i in enumerate(idx):
                ids, finished = _strip(new[row], lm)
                text = lm.tokenizer.decode(ids, skip_special_tokens=True)
                results[i] = Completion(prompt=prompts[i], text=text, token_ids=ids, finished=finished)
            done += len(idx)
            if progress:
                progress(done, len(prompts))
    return [r for r in results if r is not None]


class _StopFlag:
    """A stopping criterion the consumer of a stream can trip."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _stream_backtracking(lm: LoadedModel, prompt: str, cfg: GenerationConfig, vector: SteeringVector,
                         steer_cfg: SteerConfig, backtrack: BacktrackConfig) -> Iterator[str]:
    import queue

    tok = lm.tokenizer
    row = tok(chat_prompt(tok, prompt, cfg.system_prompt), add_special_tokens=False).input_ids
    steps: queue.Queue = queue.Queue()
    stop = threading.Event()

    def run() -> None:
        try:
            torch.manual_seed(cfg.seed)
            decode(lm, [row], vector, steer_cfg, [steer_cfg.alpha], backtrack, sampler(cfg), cfg.max_new_tokens,
                   cfg.min_new_tokens, eos=eos_token_ids(lm), pad=tok.pad_token_id, should_stop=stop.is_set,
                   on_step=lambda ids, _: steps.put(ids[0]))
        except InterruptedError:
            pass
        except BaseException as err:  # surfaced to the consumer below
            steps.put(err)
        steps.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while (item := steps.get(timeout=600)) is not None:
            if isinstance(item, BaseException):
                raise item
            yield tok.decode(item, skip_special_tokens=True)
    finally:
        stop.set()
        thread.join()


def stream(lm: LoadedModel, prompt: str, cfg: GenerationConfig | None = None,
           vector: SteeringVector | None = None, steer_cfg: SteerConfig | None = None,
           backtrack: BacktrackConfig | None = None) -> Iterator[str]:
    """Yield the completion text so far, token by token. Closing the iterator stops generation.
    With `backtrack`, a replayed window makes the text shorter for a few steps.

    Steering hooks sit on the shared model while the stream runs: do not run two streams
    on one model at once (the app's preview service holds a lock).
    """
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    cfg = (cfg or GenerationConfig()).validate()
    if backtrack is not None and vector is not None and steer_cfg is not None:
        yield from _stream_backtracking(lm, prompt, cfg, vector, steer_cfg, backtrack.validate(cfg.max_new_tokens))
        return
    text = chat_prompt(lm.tokenizer, prompt, cfg.system_prompt)
    batch = encode_left_padded(lm.tokenizer, [text], lm.device)
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    stop = _StopFlag()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            torch.manual_seed(cfg.seed)
            with torch.inference_mode():
                lm.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  streamer=streamer, stopping_criteria=StoppingCriteriaList([stop]),
                                  **_sampling_kwargs(lm, cfg))
        except BaseException as err:  # surfaced to the consumer below
            errors.append(err)
            streamer.end()

    with _steering(lm, vector, steer_cfg):
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        so_far = ""
        try:
            for piece in streamer:
                so_far += piece
                yield so_far
        finally:
            stop.event.set()
            thread.join()
    if errors:
        raise errors[0]
