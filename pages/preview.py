"""The one interactive path that runs a model inside the app process: the steering preview.

One model, loaded on first use, behind a lock (steering hooks sit on the shared model, so two
previews must not overlap). Everything heavier goes to the worker as a job.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

from steerheal.errors import SteerhealError


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

    def stream_pair(self, vector_path: str | None, prompt: str, alpha: float, layers: str, max_new_tokens: int,
                    seed: int) -> Iterator[tuple[str, str]]:
        """Yield (base so far, steered so far): first the base answer streams, then the steered."""
        from steerheal.config import GenerationConfig, LayerBand, SteerConfig
        from steerheal.generate import stream

        if not prompt or not prompt.strip():
            raise SteerhealError("The prompt is empty: type a message to answer.")
        vector = self.vector(vector_path)
        lm = self.model()
        LayerBand(layers).resolve(lm.n_layers)
        gen = GenerationConfig(max_new_tokens=max_new_tokens, seed=seed).validate()
        steer_cfg = SteerConfig(alpha=alpha, layers=layers).validate()
        if not self._lock.acquire(timeout=120):
            raise SteerhealError("Another preview is still running: try again in a moment.")
        try:
            base = ""
            for base in stream(lm, prompt, gen):
                yield base, ""
            steered = ""
            for steered in stream(lm, prompt, gen, vector, steer_cfg):
                yield base, steered
        finally:
            self._lock.release()

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
