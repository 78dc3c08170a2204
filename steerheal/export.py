"""Leave the app with your work: a run's round k as files other tools load.

    DIR/adapters/round0 .. roundK   standard PEFT adapter directories (PeftModel.from_pretrained)
    DIR/merged/                     base + adapters 0..K folded, a transformers directory
                                    (AutoModelForCausalLM.from_pretrained) with its tokenizer
    DIR/vector.safetensors          round K's steering vector
    DIR/vector.gguf                 the same as a llama.cpp control vector
    DIR/steerheal_export.json       what was exported, from which run and round
    DIR/README.md, DIR/merged/README.md   a model card: config and per-round metrics

`push_to_hub` uploads the merged model (with its card) to a Hugging Face repository.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from steerheal import bake
from steerheal.errors import SteerhealError
from steerheal.model_card import model_card
from steerheal.store import Store


def completed_rounds(store: Store, run_id: int) -> list[int]:
    return sorted(r["round"] for r in store.rows("rounds", run_id) if r["status"] == "completed")


def round_adapters(store: Store, run_id: int, round_: int) -> list[Path]:
    """The adapter directories of rounds 0..round_, checked to exist."""
    done = completed_rounds(store, run_id)
    if round_ not in done:
        have = ", ".join(map(str, done)) or "none yet"
        raise SteerhealError(f"Run {run_id} has no completed round {round_} (completed: {have}).")
    paths = []
    for r in range(round_ + 1):
        path = store.artifact(run_id, r, "adapter")
        if path is None:
            raise SteerhealError(f"Run {run_id}: the adapter file of round {r} is missing from {store.artifact_root}.")
        paths.append(path)
    return paths


def model_at_round(store: Store, run_id: int, round_: int):
    """Load the run's model and rebuild it at round k (base + adapters 0..k, folded)."""
    from steerheal.models import load_model

    adapters = round_adapters(store, run_id, round_)
    lm = load_model(store.run(run_id)["model_id"])
    bake.load_adapters(lm, adapters)
    return lm


def export_round(store: Store, run_id: int, round_: int, out_dir: str | os.PathLike, merged: bool = True,
                 say: Callable[[str], None] = lambda msg: None) -> dict:
    """Write the adapters, the merged model and the vector of round k into out_dir.

    Everything is written into a temporary folder beside out_dir and renamed into place, so
    an interrupted export never leaves a half-written directory under the final name.
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise SteerhealError(f"{out} exists and is not empty: give a new --out folder.")
    adapters = round_adapters(store, run_id, round_)
    vector = store.artifact(run_id, round_, "vector.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    card = model_card(store, run_id, round_)
    try:
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for r, path in enumerate(adapters):
            shutil.copytree(path, tmp / "adapters" / bake.adapter_name(r))
            say(f"adapter round {r}")
        gguf_name = None
        if vector is not None:
            shutil.copy2(vector, tmp / "vector.safetensors")
            from steerheal.gguf_export import write_control_vector
            from steerheal.vectors import SteeringVector

            loaded = SteeringVector.load(vector)
            if loaded.meta.get("model_type"):  # llama.cpp needs the model type; older vectors lack it
                write_control_vector(loaded, tmp / "vector.gguf")
                gguf_name = "vector.gguf"
        if merged:
            say("merging adapters into the weights")
            lm = model_at_round(store, run_id, round_)
            bake.unmerge(lm)
            plain = lm.model.merge_and_unload(adapter_names=bake.adapter_names(lm)) if bake.is_peft(lm) else lm.model
            plain.save_pretrained(str(tmp / "merged"), safe_serialization=True)
            lm.tokenizer.save_pretrained(str(tmp / "merged"))
            (tmp / "merged" / "README.md").write_text(card, encoding="utf-8")
        manifest = dict(run_id=run_id, round=round_, model_id=store.run(run_id)["model_id"],
                        adapters=[f"adapters/{bake.adapter_name(r)}" for r in range(round_ + 1)],
                        merged="merged" if merged else None,
                        vector="vector.safetensors" if vector is not None else None, vector_gguf=gguf_name)
        (tmp / "steerheal_export.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SteerhealError(f"--push-to-hub needs a repository as owner/name, got {repo_id!r}.")


def push_to_hub(export_dir: str | os.PathLike, repo_id: str, private: bool = True, token: str | None = None,
                say: Callable[[str], None] = lambda msg: None) -> str:
    """Upload an export's merged model (with its model card) to the hub; returns the repo URL.

    Needs network access and a token with write access (HF_TOKEN or `huggingface-cli login`).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    merged = Path(export_dir) / "merged"
    if not (merged / "config.json").is_file():
        raise SteerhealError(f"{export_dir} has no merged model to push: export without --no-merged.")
    check_repo_id(repo_id)
    api = HfApi(token=token)
    try:
        say(f"creating {repo_id}")
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        say("uploading the merged model")
        api.upload_folder(folder_path=str(merged), repo_id=repo_id, repo_type="model",
                          commit_message="steerheal export")
    except (HfHubHTTPError, OSError) as err:
        raise SteerhealError(f"Could not push to {repo_id}: {err}. The export in {export_dir} is complete; "
                             "push it later with the same command.") from None
    return str(url)
