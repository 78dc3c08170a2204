"""What every CLI command family shares: the command registry, argument helpers, model loading."""

from __future__ import annotations

import argparse
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Callable

from steerheal.errors import SteerhealError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn
    return register


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Deprecation notices from the libraries (argument renames inside transformers / PEFT) are
    # not the user's business on the command line; `-v` shows them.
    if not logging.getLogger().isEnabledFor(logging.INFO):
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*is deprecated.*")


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="bundled", help="'bundled' (default), a Hugging Face id, or a local directory")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the hub (off by default)")
    p.add_argument("--4bit", dest="load_in_4bit", action="store_true",
                   help="load the weights in 4-bit (bitsandbytes NF4; CUDA GPUs only)")


def persona_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", default="care-over-authority", help="persona preset (care-over-authority, love-humanity)")
    p.add_argument("--pos", help="positive persona, completing 'You are ...' (overrides the preset)")
    p.add_argument("--neg", help="negative persona (overrides the preset)")
    p.add_argument("--contexts", type=Path, help="a text file of user messages, one per line (default: 80 bundled)")


def load_from_args(args) -> "object":
    from steerheal.config import ModelSpec
    from steerheal.models import load_model

    return load_model(ModelSpec(name=args.model, dtype=args.dtype, device=args.device,
                                trust_remote_code=args.trust_remote_code, load_in_4bit=args.load_in_4bit))


def pair_and_contexts(args):
    from steerheal.config import PersonaPair
    from steerheal.presets import default_contexts, persona_pair, read_lines

    pair = persona_pair(args.pair)
    if args.pos is not None or args.neg is not None:
        pair = PersonaPair(pos=args.pos if args.pos is not None else pair.pos,
                           neg=args.neg if args.neg is not None else pair.neg, name="custom")
    pair.validate()
    if args.contexts:
        if not args.contexts.is_file():
            raise SteerhealError(f"Context file {str(args.contexts)!r} does not exist.")
        contexts = read_lines(args.contexts.read_text(encoding="utf-8"))
        if not contexts:
            raise SteerhealError(f"Context file {str(args.contexts)!r} holds no messages: put one user message per line.")
    else:
        contexts = default_contexts()
    return pair, contexts


def extract_with_progress(lm, pair, contexts):
    from steerheal.progress import tqdm_progress
    from steerheal.vectors import extract_vector

    with tqdm_progress("extracting vector", unit="prompt") as progress:
        return extract_vector(lm, pair, contexts, progress=progress)


def finite_float_or_error(text: str) -> float:
    try:
        return finite_float(text)
    except argparse.ArgumentTypeError as err:
        raise SteerhealError(f"--alpha {err}: give a finite number such as 1.5 or -2.") from None


def stage_from_args(args, lm, vector) -> tuple:
    """(steer config, persona prompt, stage name) an eval command measures: steered with
    --vector/--alpha, prompted with --persona-prompt (the pair's positive persona), else base."""
    from steerheal.config import LayerBand, SteerConfig, persona_system_prompt
    from steerheal.presets import persona_pair

    steer_cfg, persona, stage = None, None, "base"
    if vector is not None:
        LayerBand(args.layers).resolve(lm.n_layers)
        steer_cfg, stage = SteerConfig(alpha=args.alpha, layers=args.layers), "steered"
    if args.persona_prompt:
        persona, stage = persona_system_prompt(persona_pair(args.pair).pos), "prompted"
    return steer_cfg, persona, stage
