"""The one interactive path that runs a model inside the app process: the steering preview.

One model, loaded on first use, behind a lock (steering hooks sit on the shared model, so two
previews must not overlap). Everything heavier goes to the worker as a job.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Iterator

from steerheal.errors import SteerhealError


class _PairStreamer:
    """A transformers streamer for a batch of two rows (base, steered): each decoding step's
    two tokens go on a queue; None ends it."""

    def __init__(self) -> None:
        self.steps: queue.Queue = queue.Queue()
        self.prompt = True

    def put(self, value) -> None:
        if self.prompt:  # the first put is the prompt itself
            self.prompt = False
            return
        self.steps.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.steps.put(None)


def _stop_when_set(event: threading.Event):
    """A stopping criterion that ends generation once the consumer sets `event`."""
    import torch
    from transformers import StoppingCriteria

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhenSet()


def _shared_noise(seed: int):
    """Sampling with one set of random numbers for both rows (Gumbel-max on the warped logits,
    the same noise for every row): each row still samples from its own distribution, and where
    the two distributions agree (alpha = 0) they pick the same token, so alpha = 0 reproduces
    the base answer exactly, and a small alpha departs from it only where steering matters."""
    import torch
    from transformers import LogitsProcessor

    class SharedNoise(LogitsProcessor):
        def __init__(self) -> None:
            self.generator = torch.Generator().manual_seed(seed)

        def __call__(self, input_ids, scores):
            u = torch.rand(scores.shape[-1], generator=self.generator).clamp_(1e-10, 1.0 - 1e-7)
            return scores + (-torch.log(-torch.log(u))).to(device=scores.device, dtype=scores.dtype)

    return SharedNoise()


class PreviewService:
    def __init__(self, model: str = "bundled", load_in_4bit: bool = False):
        self.model_name = model
        self.load_in_4bit = load_in_4bit
        self._lm = None
        self._lock = threading.Lock()
        self._vectors: dict[str, object] = {}

    def model(self):
        if self._lm is None:
            from steerheal.config import ModelSpec
            from steerheal.models import load_model

            self._lm = load_model(ModelSpec(name=self.model_name, load_in_4bit=self.load_in_4bit))
        return self._lm

    def vector(self, path: str | None):
        from steerheal.vectors import SteeringVector

        if not path:
            raise SteerhealError("No steering vector yet: extract one on the Personas page first.")
        if path not in self._vectors:
            if not Path(path).is_file():
                raise SteerhealError(f"The vector file {path} is gone: extract the vector again.")
            vector = SteeringVector.load(path)
            lm = self.model()
            if (vector.n_layers, vector.hidden_size) != (lm.n_layers, lm.hidden_size):
                raise SteerhealError(f"This vector has shape ({vector.n_layers}, {vector.hidden_size}) but the preview "
                                     f"model has {lm.n_layers} layers of width {lm.hidden_size}.")
            self._vectors = {path: vector}
        return self._vectors[path]

    def _checked(self, vector_path: str | None, prompt: str, layers: str, max_new_tokens: int, seed: int):
        """(vector, model, generation config) for a preview, or a SteerhealError saying what to change."""
        from steerheal.config import GenerationConfig, LayerBand

        if not prompt or not prompt.strip():
            raise SteerhealError("The prompt is empty: type a message to answer.")
        vector = self.vector(vector_path)
        lm = self.model()
        LayerBand(layers).resolve(lm.n_layers)
        return vector, lm, GenerationConfig(max_new_tokens=max_new_tokens, seed=seed).validate()

    def stream_pair(self, vector_path: str | None, prompt: str, alpha: float, layers: str, max_new_tokens: int,
                    seed: int) -> Iterator[tuple[str, str]]:
        """Yield (base so far, steered so far), token by token: base and steered decode together,
        as one batch of two rows (alpha 0 and alpha) with shared random numbers. Closing the
        iterator stops the generation."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from steerheal.batching import encode_left_padded
        from steerheal.chat import chat_prompt
        from steerheal.config import SteerConfig
        from steerheal.generate import warpers
        from steerheal.steering import RowAlphas, steer

        vector, lm, gen = self._checked(vector_path, prompt, layers, max_new_tokens, seed)
        steer_cfg = SteerConfig(alpha=alpha, layers=layers).validate()
        tok = lm.tokenizer
        text = chat_prompt(tok, prompt, gen.system_prompt)
        batch = encode_left_padded(tok, [text, text], lm.device)
        processors = LogitsProcessorList()
        if not gen.greedy:
            processors = warpers(gen)
            processors.append(_shared_noise(seed))
        stop = threading.Event()
        streamer = _PairStreamer()
        errors: list[BaseException] = []
        rows = RowAlphas()
        rows.set([0.0, alpha])
        eos = tok.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])

        def run() -> None:
            try:
                with torch.inference_mode():
                    lm.model.generate(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], streamer=streamer,
                        max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                        repetition_penalty=1.0, pad_token_id=tok.pad_token_id, eos_token_id=eos,
                        logits_processor=processors,
                        stopping_criteria=StoppingCriteriaList([_stop_when_set(stop)]))
            except BaseException as err:  # surfaced to the consumer below
                errors.append(err)
            finally:
                streamer.end()

        if not self._lock.acquire(timeout=120):
            raise SteerhealError("Another preview is still running: try again in a moment.")
        try:
            with steer(lm, vector, steer_cfg, row_alphas=rows):
                thread = threading.Thread(target=run, daemon=True)
                thread.start()
                ids: list[list[int]] = [[], []]
                done = [False, False]
                try:
                    while (step := streamer.steps.get(timeout=600)) is not None:
                        for row, token in enumerate(step):
                            if done[row] or token in eos_ids:
                                done[row] = True
                            else:
                                ids[row].append(token)
                        yield tuple(tok.decode(i, skip_special_tokens=True) for i in ids)
                finally:
                    stop.set()
                    thread.join()
        finally:
            self._lock.release()
        if errors:
            raise errors[0]

    def stream_pair_replayed(self, vector_path: str | None, prompt: str, alpha: float, layers: str,
                             max_new_tokens: int, seed: int, backtrack, should_stop=None
                             ) -> Iterator[tuple[str, str, object]]:
        """Like stream_pair, decoding with backtrack-and-replay (steerheal.backtrack): the steered
        row's windows whose KL to base passes the threshold are decoded again at a lower alpha (its
        text can shrink while that happens). Yields (base, steered, None) per step, then
        (base, steered, the steered row's DecodedRow: per-token KL and the replays)."""
        import torch
        from steerheal.backtrack import decode
        from steerheal.chat import chat_prompt
        from steerheal.config import SteerConfig
        from steerheal.generate import eos_token_ids, warpers

        vector, lm, gen = self._checked(vector_path, prompt, layers, max_new_tokens, seed)
        backtrack = backtrack.validate(max_new_tokens)
        tok = lm.tokenizer
        row = tok(chat_prompt(tok, prompt, gen.system_prompt), add_special_tokens=False).input_ids
        processors = warpers(gen)
        processors.append(_shared_noise(seed))
        steps: queue.Queue = queue.Queue()
        stop = threading.Event()

        def run() -> None:
            try:
                with torch.inference_mode():
                    rows = decode(lm, [row, row], vector, SteerConfig(alpha=alpha, layers=layers), [0.0, alpha],
                                  backtrack, lambda scores: processors(None, scores).argmax(-1), max_new_tokens,
                                  eos=eos_token_ids(lm), pad=tok.pad_token_id,
                                  should_stop=lambda: stop.is_set() or bool(should_stop and should_stop()),
                                  on_step=lambda ids, _: steps.put(("step", ids)))
                steps.put(("done", rows))
            except BaseException as err:  # surfaced to the consumer below
                steps.put(("error", err))

        if not self._lock.acquire(timeout=120):
            raise SteerhealError("Another preview is still running: try again in a moment.")
        try:
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            try:
                while True:
                    kind, value = steps.get(timeout=600)
                    if kind == "error":
                        if isinstance(value, InterruptedError):
                            return
                        raise value
                    ids = value if kind == "step" else [r.token_ids for r in value]
                    texts = [tok.decode(i, skip_special_tokens=True) for i in ids]
                    yield texts[0], texts[1], (value[1] if kind == "done" else None)
                    if kind == "done":
                        return
            finally:
                stop.set()
                thread.join()
        finally:
            self._lock.release()

    def token_pieces(self, ids: list[int]) -> list[str]:
        """Each token's text (growing prefixes decoded, so multi-byte characters come out whole)."""
        tok = self.model().tokenizer
        pieces, shown = [], ""
        for k in range(len(ids)):
            now = tok.decode(ids[: k + 1], skip_special_tokens=True)
            pieces.append(now[len(shown):])
            shown = now
        return pieces

    def token_kl(self, vector_path: str | None, prompt: str, text: str, alpha: float, layers: str,
                 system: str | None = None) -> list[tuple[str, float]]:
        """Each token of a steered completion with KL(steered || base) at its position (nats)."""
        from steerheal.config import GenerationConfig, SteerConfig
        from steerheal.divergence import token_kl
        from steerheal.scoring import completion_token_logprobs
        from steerheal.steering import steer

        vector = self.vector(vector_path)
        lm = self.model()
        system = GenerationConfig().system_prompt if system is None else system
        ids = lm.tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            return []
        with self._lock:
            base = completion_token_logprobs(lm, [prompt], [ids], system, full=True)[0]
            with steer(lm, vector, SteerConfig(alpha=alpha, layers=layers)):
                steered = completion_token_logprobs(lm, [prompt], [ids], system, full=True)[0]
        kl = token_kl(steered, base).tolist()
        pieces, shown = [], ""
        for k in range(len(ids)):  # decode growing prefixes so multi-byte characters come out whole
            now = lm.tokenizer.decode(ids[: k + 1], skip_special_tokens=True)
            pieces.append(now[len(shown):])
            shown = now
        return list(zip(pieces, kl))
