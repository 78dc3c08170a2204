"""Loading the Moral Foundations Vignettes as packaged by tinymfv.

Where the data comes from, in order: an explicit directory (--data), the environment
variable STEERHEAL_TINYMFV_DIR, the Hugging Face dataset wassname/tiny-mfv, and, offline,
a small demo set written for steerheal (NOT comparable to tinymfv numbers). Every result
records which one it used.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from steerheal.errors import SteerhealError

log = logging.getLogger(__name__)

HUB_DATASET = "wassname/tiny-mfv"
CONFIGS = ("classic", "scifi", "ai-actor")
CONDITIONS = ("other_violate", "self_violate")
FOUNDATIONS = ("Care", "Fairness", "Loyalty", "Authority", "Sanctity", "Liberty", "Social Norms")
HUMAN_COLUMNS = {f: "human_" + f.replace(" ", "") for f in FOUNDATIONS}
REQUIRED_FIELDS = ("id", "text", "foundation_coarse", *HUMAN_COLUMNS.values())
DEMO_SOURCE = "steerheal demo vignettes (NOT comparable to tinymfv)"


@dataclass(frozen=True)
class Vignette:
    id: str
    text: str
    foundation: str  # coarse: one of FOUNDATIONS
    human: tuple[float, ...]  # normalised human distribution over FOUNDATIONS (sums to 1)

    @property
    def human_label(self) -> int:
        return max(range(len(self.human)), key=lambda i: self.human[i])


@dataclass(frozen=True)
class VignetteSet:
    rows: list[Vignette]
    config: str
    condition: str
    source: str  # where the rows came from, stored with every result

    @property
    def comparable(self) -> bool:
        return self.source != DEMO_SOURCE


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SteerhealError(f"Unknown tinymfv {name} {value!r}: use one of {', '.join(allowed)}.")


def parse_rows(lines: list[str], origin: str) -> list[Vignette]:
    """Validate and parse JSONL lines; errors name the file and line."""
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise SteerhealError(f"{origin}:{lineno}: not valid JSON ({err.msg}).") from None
        if not isinstance(raw, dict):
            raise SteerhealError(f"{origin}:{lineno}: each line must be a JSON object.")
        missing = [k for k in REQUIRED_FIELDS if k not in raw]
        if missing:
            raise SteerhealError(f"{origin}:{lineno}: missing field(s) {', '.join(missing)}.")
        if raw["foundation_coarse"] not in FOUNDATIONS:
            raise SteerhealError(
                f"{origin}:{lineno}: unknown foundation {raw['foundation_coarse']!r} (expected one of {', '.join(FOUNDATIONS)})."
            )
        try:
            human = [float(raw[HUMAN_COLUMNS[f]]) for f in FOUNDATIONS]
        except (TypeError, ValueError):
            raise SteerhealError(f"{origin}:{lineno}: human_* columns must be numbers.") from None
        total = sum(human)
        if total <= 0 or any(h < 0 for h in human):
            raise SteerhealError(f"{origin}:{lineno}: human_* percentages must be >= 0 with a positive sum.")
        if not str(raw["text"]).strip():
            raise SteerhealError(f"{origin}:{lineno}: empty vignette text.")
        rows.append(Vignette(id=str(raw["id"]), text=str(raw["text"]), foundation=raw["foundation_coarse"],
                             human=tuple(h / total for h in human)))
    if not rows:
        raise SteerhealError(f"{origin} holds no vignettes.")
    return rows


def _file_name(config: str, condition: str) -> str:
    return f"vignettes_{config}_{condition}.jsonl"


def _from_dir(directory: Path, config: str, condition: str) -> VignetteSet:
    if not directory.is_dir():
        raise SteerhealError(f"tinymfv data directory {str(directory)!r} does not exist.")
    path = directory / _file_name(config, condition)
    if not path.is_file():
        raise SteerhealError(f"{str(directory)!r} has no {path.name}: point --data at the folder holding the tinymfv JSONL files.")
    rows = parse_rows(path.read_text(encoding="utf-8").splitlines(), str(path))
    return VignetteSet(rows, config, condition, source=f"tinymfv files: {path.resolve()}")


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub(config: str, condition: str) -> VignetteSet | None:
    """The hub dataset, via the standard client (cached under the HF cache)."""
    if not _hub_reachable():
        return None
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(HUB_DATASET, repo_type="dataset"))
    except Exception as err:  # any hub failure falls back to the demo set, with a warning
        log.warning("Could not fetch %s from the Hugging Face hub: %s", HUB_DATASET, err)
        return None
    jsonl = list(local.rglob(_file_name(config, condition)))
    if jsonl:
        rows = parse_rows(jsonl[0].read_text(encoding="utf-8").splitlines(), str(jsonl[0]))
        return VignetteSet(rows, config, condition, source=f"hub dataset {HUB_DATASET}")
    parquet = [p for p in local.rglob("*.parquet") if config in str(p) and condition in p.name]
    if parquet:
        import pandas as pd

        frame = pd.read_parquet(parquet[0])
        lines = [json.dumps(r) for r in frame.to_dict(orient="records")]
        return VignetteSet(parse_rows(lines, str(parquet[0])), config, condition, source=f"hub dataset {HUB_DATASET}")
    log.warning("The hub dataset %s has no %s/%s split in a format steerheal reads.", HUB_DATASET, config, condition)
    return None


def demo_data_note(evals: Iterable[dict]) -> str | None:
    """A warning when any of these stored eval rows (their `meta`, JSON or dict) came from the
    demo set: those numbers must never pass for tinymfv ones. None when all are tinymfv."""
    for e in evals:
        meta = e.get("meta") or {}
        if isinstance(meta, str):
            meta = json.loads(meta) if meta.strip() else {}
        if meta.get("comparable") is False or meta.get("data_source") == DEMO_SOURCE:
            return ("These eval numbers come from steerheal's 28 demo vignettes (the offline fallback), NOT from "
                    "tinymfv: they are not comparable with tinymfv results. Give the real data with --data DIR "
                    "or STEERHEAL_TINYMFV_DIR (the tinymfv jsonl files).")
    return None


def demo_set(condition: str = "other_violate") -> VignetteSet:
    text = resources.files("steerheal").joinpath("assets", "demo_vignettes.jsonl").read_text(encoding="utf-8")
    return VignetteSet(parse_rows(text.splitlines(), "demo_vignettes.jsonl"), "demo", condition, source=DEMO_SOURCE)


def load_vignettes(config: str = "classic", condition: str = "other_violate", data_dir: str | os.PathLike | None = None,
                   allow_hub: bool = True) -> VignetteSet:
    _check_choice("config", config, CONFIGS)
    _check_choice("condition", condition, CONDITIONS)
    if data_dir:
        return _from_dir(Path(data_dir).expanduser(), config, condition)
    env_dir = os.environ.get("STEERHEAL_TINYMFV_DIR")
    if env_dir:
        return _from_dir(Path(env_dir).expanduser(), config, condition)
    if allow_hub:
        hub = _from_hub(config, condition)
        if hub is not None:
            return hub
    log.warning("tinymfv data unavailable offline: using the small demo set (%s).", DEMO_SOURCE)
    return demo_set(condition)


def stratified_subset(rows: list[Vignette], n: int, seed: int = 0) -> list[Vignette]:
    """n rows keeping each foundation's share (largest remainder), in the original order.

    Never a prefix: the files are sorted by foundation (the first 32 classic rows are all Care).
    """
    if not isinstance(n, int) or n < 1:
        raise SteerhealError(f"The subset size must be a positive integer, got {n!r}.")
    if n > len(rows):
        raise SteerhealError(f"The subset size {n} is larger than the data ({len(rows)} rows): use --limit {len(rows)} or less.")
    if n == len(rows):
        return list(rows)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.foundation, []).append(i)
    exact = {f: n * len(ix) / len(rows) for f, ix in groups.items()}
    take = {f: int(x) for f, x in exact.items()}
    by_remainder = sorted(groups, key=lambda f: (-(exact[f] - take[f]), f))
    for f in by_remainder[: n - sum(take.values())]:
        take[f] += 1
    rng = random.Random(seed)
    picked = [i for f, ix in groups.items() for i in rng.sample(ix, take[f])]
    return [rows[i] for i in sorted(picked)]
