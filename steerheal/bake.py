"""Round adapters stacked on the base model, and folding them into the weights.

The model "at round k" is the base plus the adapters of rounds 0..k. With the `base`
reference they stay as separate, named PEFT adapters (`round0`, `round1`, ...) so that the
reference is exact and costs no second copy of the model (`disable_adapter()`); the price is
one adapter's weights per round in memory. With the `prev` reference the earlier rounds are
folded into the weights for good before a round trains (`fold_for_good`), so the reference is
simply the model with the new adapter disabled and memory stays flat. Either way each round
saves as a standard PEFT adapter directory.
For generation and evals the adapters are merged into the weights (W += (alpha/r) B A) and
unmerged again before the next round trains; a 4-bit base keeps them unmerged.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from torch import nn

from steerheal.errors import SteerhealError
from steerheal.models import LoadedModel, unwrapped_model


def adapter_name(round_: int) -> str:
    return f"round{round_}"


def lora_targets(lm: LoadedModel, depth: tuple[float, float]) -> list[str]:
    """Full names of the linear layers inside decoder blocks within a depth band (never
    lm_head, embeddings or a vision tower)."""
    lo, hi = depth
    n = lm.n_layers
    blocks = {id(lm.layers[i]) for i in range(int(lo * n), max(int(hi * n), int(lo * n) + 1))}
    model = unwrapped_model(lm)
    prefixes = [name + "." for name, mod in model.named_modules() if id(mod) in blocks]
    from peft.tuners.lora import LoraLayer

    # On a model that already carries round adapters, the targets are the LoRA-wrapped
    # layers themselves, not their inner base_layer / lora_A / lora_B linears.
    inner = (".base_layer", ".lora_A", ".lora_B", ".lora_dropout", ".lora_magnitude")
    targets = [name for name, mod in model.named_modules()
               if isinstance(mod, (nn.Linear, LoraLayer)) and any(name.startswith(p) for p in prefixes)
               and not any(part in name for part in inner)]
    if not targets:
        raise SteerhealError(f"No linear layers found in blocks {lo:.2f}-{hi:.2f} of depth: widen the LoRA depth band.")
    return targets


def is_peft(lm: LoadedModel) -> bool:
    return hasattr(lm.model, "peft_config")


def adapter_names(lm: LoadedModel) -> list[str]:
    return sorted(lm.model.peft_config, key=lambda s: int(s.removeprefix("round"))) if is_peft(lm) else []


def fold_for_good(lm: LoadedModel) -> None:
    """Fold every adapter into the weights and drop the adapter modules (their files stay on
    disk). With the `prev` reference nothing needs the unfolded stack, so memory and step time
    stay flat however many rounds a run has. A 4-bit base cannot be folded: it keeps the stack."""
    if not is_peft(lm) or getattr(lm.spec, "load_in_4bit", False):
        return
    unmerge(lm)
    lm.model = lm.model.merge_and_unload(adapter_names=adapter_names(lm))


def add_adapter(lm: LoadedModel, round_: int, rank: int, alpha: int, depth: tuple[float, float],
                fold_previous: bool = False) -> str:
    """A fresh LoRA for this round (B = 0, so it starts as a no-op); only it is trainable.
    fold_previous folds the earlier rounds into the weights first (for the `prev` reference)."""
    from peft import LoraConfig, get_peft_model

    if fold_previous:
        fold_for_good(lm)
    name = adapter_name(round_)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=lora_targets(lm, depth), lora_dropout=0.0,
                     bias="none", init_lora_weights=True)
    unmerge(lm)
    if is_peft(lm):
        if name in lm.model.peft_config:
            lm.model.delete_adapter(name)
        lm.model.add_adapter(name, cfg)
    else:
        lm.model = get_peft_model(lm.model, cfg, adapter_name=name)
    activate(lm, adapter_names(lm), trainable=name)
    return name


def activate(lm: LoadedModel, names: Sequence[str], trainable: str | None = None) -> None:
    lm.model.base_model.set_adapter(list(names))
    for pname, param in lm.model.named_parameters():
        param.requires_grad = trainable is not None and f".{trainable}." in pname


@contextmanager
def reference(lm: LoadedModel, kind: str, training: str) -> Iterator[None]:
    """Run the block with the reference model: `base` (all adapters off) or `prev` (all but
    the adapter being trained)."""
    prev = [n for n in adapter_names(lm) if n != training]
    if kind == "base" or not prev:
        with lm.model.disable_adapter():
            yield
        return
    if kind != "prev":
        raise SteerhealError(f"Unknown reference {kind!r}: use base or prev.")
    activate(lm, prev)
    try:
        yield
    finally:
        activate(lm, adapter_names(lm), trainable=training)


def _lora_layers(lm: LoadedModel):
    from peft.tuners.lora import LoraLayer

    return [m for m in lm.model.modules() if isinstance(m, LoraLayer)]


def merge(lm: LoadedModel) -> None:
    """Fold every active adapter into the weights (fast generation); reversible with unmerge."""
    if not is_peft(lm) or getattr(lm.spec, "load_in_4bit", False):
        return
    for layer in _lora_layers(lm):
        if not layer.merged:
            layer.merge(adapter_names=adapter_names(lm))


def unmerge(lm: LoadedModel) -> None:
    if not is_peft(lm):
        return
    for layer in _lora_layers(lm):
        while layer.merged:
            layer.unmerge()


def save_adapter(lm: LoadedModel, round_: int, directory: Path) -> Path:
    """One round's adapter as a standard PEFT directory (loads with PeftModel.from_pretrained)."""
    name = adapter_name(round_)
    directory.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(str(directory), selected_adapters=[name], safe_serialization=True)
    nested = directory / name  # PEFT writes non-default adapters into a subfolder
    if nested.is_dir():
        for f in nested.iterdir():
            f.replace(directory / f.name)
        nested.rmdir()
    return directory


def load_adapters(lm: LoadedModel, directories: Sequence[Path], first_round: int = 0) -> None:
    """Rebuild the model at round k from base + the adapters of rounds 0..k, then fold them.
    With first_round > 0 the model already carries the earlier rounds and gets these on top."""
    from peft import PeftModel

    unmerge(lm)
    for round_, directory in enumerate(directories, start=first_round):
        name = adapter_name(round_)
        if not (Path(directory) / "adapter_model.safetensors").exists():
            raise SteerhealError(f"{directory} holds no adapter_model.safetensors: the run's files are incomplete.")
        if is_peft(lm):
            lm.model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        else:
            lm.model = PeftModel.from_pretrained(lm.model, str(directory), adapter_name=name, is_trainable=False)
    if directories:
        activate(lm, adapter_names(lm))
        merge(lm)
    lm.model.eval()


@contextmanager
def base_view(lm: LoadedModel) -> Iterator[None]:
    """Inside the block `lm` computes the base model (every round adapter off), then the
    adapters come back merged as before. Only for stacks never folded for good (the `base`
    reference); a model without adapters is its own base."""
    if not is_peft(lm):
        yield
        return
    was_merged = any(layer.merged for layer in _lora_layers(lm))
    unmerge(lm)
    try:
        with lm.model.disable_adapter():
            yield
    finally:
        if was_merged:
            merge(lm)
