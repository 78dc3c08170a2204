"""Left-padded batches of prompt text, with position ids that ignore the padding."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row sees the same
    positions as it would alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def encode_left_padded(tokenizer, texts: Iterable[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Tokenise rendered chat text (which already holds its special tokens)."""
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = old_side
    batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    batch["position_ids"] = position_ids_for(batch["attention_mask"])
    return batch


def pad_rows(rows: Sequence[Sequence[int]], pad: int, device: torch.device, side: str = "left"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, attention mask), padded on the left (generation, reading the
    last position) or on the right (training, teacher forcing)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            ids[i, span] = torch.tensor(list(r))
            mask[i, span] = 1
    return ids.to(device), mask.to(device)
