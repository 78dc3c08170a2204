"""The settings of one run (a loop): validated before any work, saved with the run as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from steerheal.backtrack import BacktrackConfig
from steerheal.config import BUNDLED_MODEL, GenerationConfig, LayerBand, _finite
from steerheal.errors import SteerhealError
from steerheal.evals.tinymfv import EvalConfig
from steerheal.filters import FilterConfig
from steerheal.heal import MIN_EXAMPLES, HealConfig
from steerheal.models import BUNDLED_ID, check_4bit_possible
from steerheal.presets import persona_pair

TINYMFV_MODES = ("auto", "off", "subset", "full")
SUBSET_ROWS = 36


@dataclass(frozen=True)
class RunConfig:
    """Defaults run the care-over-authority experiment on the bundled model (CPU demo preset)."""

    model: str = "bundled"
    pair: str = "care-over-authority"
    pos: str | None = None  # custom personas override the preset's
    neg: str | None = None
    rounds: int = 3
    # Fixed strengths, or "auto": each round calibrates alpha on the current model and vector to
    # target_kl (p95 per-token KL to base, nats) or target_kept (share of completions kept), and
    # generates at that alpha times each of auto_spread.
    alphas: tuple[float, ...] | str = (2.0, 3.0, 4.0)
    target_kl: float | None = None
    target_kept: float | None = None
    auto_spread: tuple[float, ...] = (0.75, 1.0, 1.25)
    dose_prompts: int = 16  # prompts (x 32 tokens) each calibration evaluation decodes
    layers: str = "0.45-0.55"
    n_completions: int = 32
    max_new_tokens: int = 64
    think_tokens: int = 16
    eval_limit: int | None = None
    # tinymfv: "full" (all rows), "subset" (a stratified subset: eval_limit rows, default 36), "off",
    # or "auto": off on the bundled model (it cannot answer the format), full on any other.
    # "on" (older runs) means full.
    tinymfv: str = "auto"
    data_dir: str | None = None
    curation: str = "auto"  # or "manual": pause after filtering until a person has reviewed
    coherence_floor: float = 0.95  # tinymfv early stop, used only when the base model answers its format
    axis_items: str | None = None  # a JSONL items file (prompt, pos, neg); None: the preset pair's bundled items
    axis_split: str = "eval"  # which split of the items the run scores (bundled items: dev / eval)
    axis_limit: int | None = None  # score only the first N items of that split (None: all)
    drift_tokens: int = 32  # length of each greedy continuation scored for incoherence
    drift_prompts: int | None = 32  # the first N of the 40 bundled neutral prompts (None: all)
    absorption_contexts: int = 16  # contexts the healed model's shift along v is averaged over
    incoherence_ceiling: float = 2.0  # stop early when healed KL rmse to base exceeds the base's by this (nats)
    contexts: tuple[str, ...] | None = None  # a custom context pool (None: the 80 bundled ones)
    n_contexts: int | None = None  # extract from the first N contexts only (None: all)
    probe_tokens: int = 96
    random_control: bool = False  # also eval a random vector of the same norms (round 0, stage "random")
    load_in_4bit: bool = False  # QLoRA on a 4-bit base (CUDA only); adapters stay stacked
    seed: int = 42
    filters: FilterConfig = field(default_factory=FilterConfig)
    backtrack: BacktrackConfig | None = None  # replay windows whose KL to base passes a threshold (None: off)
    heal: HealConfig = field(default_factory=lambda: HealConfig(rank=16, lora_alpha=32, epochs=2))

    def validate(self) -> "RunConfig":
        """Every setting checked before any work; a SteerhealError says what to change."""
        for name in ("model", "pair", "layers", "curation"):
            if not isinstance(getattr(self, name), str):
                raise SteerhealError(f"{name} must be text, got {getattr(self, name)!r}.")
        for name in ("pos", "neg", "data_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise SteerhealError(f"{name} must be text, got {value!r}.")
        for name in ("pos", "neg"):
            if getattr(self, name) is not None and len(getattr(self, name)) > 20_000:
                raise SteerhealError(f"The {name} persona is too long (over 20000 characters).")
        for name in ("random_control", "load_in_4bit"):
            if not isinstance(getattr(self, name), bool):
                raise SteerhealError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if self.load_in_4bit:
            check_4bit_possible()
        if self.data_dir is not None and "\x00" in self.data_dir:
            raise SteerhealError("data_dir is not a valid path.")
        try:
            return self._validate()
        except (TypeError, ValueError, OverflowError) as err:  # a malformed value the checks above missed
            raise SteerhealError(f"Bad run setting: {err}.") from None

    def _validate(self) -> "RunConfig":
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or not 1 <= self.rounds <= 1000:
            raise SteerhealError(f"rounds must be an integer in 1..1000, got {self.rounds!r}.")
        self._validate_alphas()
        LayerBand(self.layers).resolve(100_000)  # syntax; the model's own depth is checked once it loads
        if not isinstance(self.model, str) or not self.model.strip() or len(self.model) > 500:
            raise SteerhealError("model must be 'bundled', a Hugging Face id or a local directory.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise SteerhealError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 8192:
            raise SteerhealError(f"max_new_tokens must be an integer in 1..8192, got {self.max_new_tokens!r}.")
        if not isinstance(self.n_completions, int) or self.n_completions > 100_000:
            raise SteerhealError(f"n_completions must be an integer up to 100000, got {self.n_completions!r}.")
        if self.contexts is not None and (not self.contexts or any(
                not isinstance(c, str) or not c.strip() for c in self.contexts)):
            raise SteerhealError("The context pool must hold at least one non-empty message.")
        if not 0 < _finite("coherence_floor", self.coherence_floor) <= 1:
            raise SteerhealError("coherence_floor must be in (0, 1].")
        if not isinstance(self.n_completions, int) or self.n_completions < MIN_EXAMPLES:
            raise SteerhealError(f"n_completions must be >= {MIN_EXAMPLES} (heal needs that many kept completions).")
        if self.n_contexts is not None and (not isinstance(self.n_contexts, int) or self.n_contexts < 1):
            raise SteerhealError(f"n_contexts must be a positive integer or unset, got {self.n_contexts!r}.")
        if not isinstance(self.probe_tokens, int) or not 1 <= self.probe_tokens <= 4096:
            raise SteerhealError(f"probe_tokens must be an integer in 1..4096, got {self.probe_tokens!r}.")
        if self.tinymfv not in TINYMFV_MODES + ("on",):
            raise SteerhealError(f"Unknown tinymfv setting {self.tinymfv!r}: use {', '.join(TINYMFV_MODES)}.")
        if self.axis_split not in ("dev", "eval", "all"):
            raise SteerhealError(f"axis_split must be dev, eval or all, got {self.axis_split!r}.")
        if self.axis_items is not None and (not isinstance(self.axis_items, str) or not self.axis_items.strip()):
            raise SteerhealError("axis_items must be the path of a JSONL items file, or unset.")
        if self.axis_limit is not None and (not isinstance(self.axis_limit, int) or self.axis_limit < 2):
            raise SteerhealError(f"axis_limit must be at least 2 items or unset, got {self.axis_limit!r}.")
        if not isinstance(self.drift_tokens, int) or not 2 <= self.drift_tokens <= 2048:
            raise SteerhealError(f"drift_tokens must be an integer in 2..2048, got {self.drift_tokens!r}.")
        if self.drift_prompts is not None and (not isinstance(self.drift_prompts, int) or self.drift_prompts < 2):
            raise SteerhealError(f"drift_prompts must be at least 2 or unset, got {self.drift_prompts!r}.")
        if not isinstance(self.absorption_contexts, int) or not 1 <= self.absorption_contexts <= 80:
            raise SteerhealError(f"absorption_contexts must be an integer in 1..80, got {self.absorption_contexts!r}.")
        if not 0 < _finite("incoherence_ceiling", self.incoherence_ceiling):
            raise SteerhealError("incoherence_ceiling must be > 0 (nats of KL rmse above the base's).")
        if self.curation not in ("auto", "manual"):
            raise SteerhealError(f"Unknown curation {self.curation!r}: use auto or manual.")
        self.persona_pair()
        if self.axis_items:
            self.axis_items_for_run()  # a bad file fails before anything is stored, naming file:line
        GenerationConfig(max_new_tokens=self.max_new_tokens).validate()
        EvalConfig(think_tokens=self.think_tokens, limit=self.eval_limit).validate()
        self.filters.validate()
        self.heal.validate()
        return self

    def _validate_alphas(self) -> None:
        if self.alphas == "auto":
            self.dose_target()
            spread = self.auto_spread
            if not spread or len(spread) > 16 or any(not isinstance(k, (int, float)) or not 0 < float(k) <= 10
                                                     for k in spread):
                raise SteerhealError("auto_spread must hold 1 to 16 multipliers in (0, 10], e.g. [0.75, 1, 1.25].")
            if not isinstance(self.dose_prompts, int) or not 1 <= self.dose_prompts <= 256:
                raise SteerhealError(f"dose_prompts must be an integer in 1..256, got {self.dose_prompts!r}.")
        elif isinstance(self.alphas, str):
            raise SteerhealError(f"alphas must be a list of numbers or \"auto\", got {self.alphas!r}.")
        else:
            if not self.alphas or len(self.alphas) > 64 or any(
                    not isinstance(a, (int, float)) or not math.isfinite(float(a)) for a in self.alphas):
                raise SteerhealError("Give between 1 and 64 finite alphas.")
            for a in self.alphas:
                if abs(float(a)) > 1000:
                    raise SteerhealError(f"alpha {a:g} is far outside any useful strength (|alpha| <= 1000).")
            if self.target_kl is not None or self.target_kept is not None:
                raise SteerhealError("A dose target needs alphas = \"auto\" (fixed alphas are used as given).")
        if self.backtrack is not None:
            self.backtrack.validate(self.max_new_tokens)

    def dose_target(self):
        """The calibration target of alphas = "auto" (one of target_kl, target_kept)."""
        from steerheal.dose import DoseTarget

        if (self.target_kl is None) == (self.target_kept is None):
            raise SteerhealError("alphas = \"auto\" needs one target: target_kl (a KL budget in nats, e.g. 1.0) "
                                 "or target_kept (a kept share, e.g. 0.5).")
        if self.target_kl is not None:
            return DoseTarget(kind="kl", value=self.target_kl).validate()
        return DoseTarget(kind="kept", value=self.target_kept).validate()

    def fixed_alphas(self) -> tuple[float, ...] | None:
        return None if self.alphas == "auto" else tuple(float(a) for a in self.alphas)

    def tinymfv_mode(self, model_id: str | None = None) -> str:
        """off / subset / full for this run ("auto" decided by the model)."""
        if self.tinymfv == "on":
            return "full"
        if self.tinymfv == "auto":
            return "off" if (model_id or self.model) in (BUNDLED_MODEL, BUNDLED_ID) else "full"
        return self.tinymfv

    def tinymfv_limit(self, model_id: str | None = None) -> int | None:
        mode = self.tinymfv_mode(model_id)
        if mode == "subset":
            return self.eval_limit or SUBSET_ROWS
        return self.eval_limit if mode == "full" else None

    def axis_items_for_run(self):
        """The axis items this run scores (its split, at most axis_limit), checked against its
        generation prompts; None when the pair has no items (a custom pair without a file)."""
        from steerheal.evals.axis import bundled_items, check_no_overlap, has_bundled_items, load_items, select
        from steerheal.presets import generation_prompts

        preset = self.persona_pair().name != "custom"
        if self.axis_items:
            items = load_items(self.axis_items)
        elif preset and has_bundled_items(self.pair):
            items = bundled_items(self.pair)
        else:
            return None
        chosen = select(items, self.axis_split) if any(i.split == self.axis_split for i in items) else items
        check_no_overlap(chosen, generation_prompts(self.pair if preset else None))
        return chosen[: self.axis_limit]

    def persona_pair(self):
        from steerheal.config import PersonaPair

        pair = persona_pair(self.pair)
        if self.pos is not None or self.neg is not None:
            pair = PersonaPair(pos=self.pos if self.pos is not None else pair.pos,
                               neg=self.neg if self.neg is not None else pair.neg, name="custom")
        return pair.validate()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """Build from plain data (TOML, JSON, a form); anything malformed is a SteerhealError."""
        if not isinstance(data, dict):
            raise SteerhealError("A run config must be a table of settings.")
        try:
            return cls._from_dict(data)
        except (TypeError, ValueError) as err:
            raise SteerhealError(f"Bad run setting: {err}.") from None

    @classmethod
    def _from_dict(cls, data: dict) -> "RunConfig":
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"filters", "heal", "backtrack"}
        if unknown:
            raise SteerhealError(f"Unknown run setting(s): {', '.join(sorted(unknown))}.")
        filters_data, heal_data = data.pop("filters", {}), data.pop("heal", {})
        if not isinstance(filters_data, dict) or not isinstance(heal_data, dict):
            raise SteerhealError("filters and heal must be tables of settings.")
        filters = FilterConfig(**filters_data)
        backtrack_data = data.pop("backtrack", None)
        if backtrack_data is not None and not isinstance(backtrack_data, dict):
            raise SteerhealError("backtrack must be a table of settings (threshold, window, scale, max_backtracks).")
        backtrack = BacktrackConfig(**backtrack_data) if backtrack_data is not None else None
        heal_data = dict(heal_data)
        for key in ("depth", "betas"):
            if key in heal_data:
                heal_data[key] = tuple(heal_data[key])
        if data.get("contexts") is not None:
            data["contexts"] = tuple(str(c) for c in data["contexts"])
        if "alphas" in data and data["alphas"] != "auto":
            if isinstance(data["alphas"], str):
                raise SteerhealError(f"alphas must be a list of numbers or \"auto\", got {data['alphas']!r}.")
            data["alphas"] = tuple(float(a) for a in data["alphas"])
        if "auto_spread" in data:
            data["auto_spread"] = tuple(float(a) for a in data["auto_spread"])
        return cls(**{k: v for k, v in data.items() if k in known}, filters=filters, heal=HealConfig(**heal_data),
                   backtrack=backtrack)
