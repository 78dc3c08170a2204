"""A steering vector as a llama.cpp control-vector GGUF (the layout repeng writes).

    general.architecture = "controlvector"
    controlvector.model_hint = model type (e.g. "llama", "gemma3")
    controlvector.layer_count = number of layers
    direction.N = the float32 vector added to the output of block N (0-based)

Use it with `llama-cli --control-vector-scaled FILE ALPHA` (llama.cpp applies no vector to
block 0's output; steerheal's default band never steers there either).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from steerheal.errors import SteerhealError
from steerheal.vectors import SteeringVector

ARCH = "controlvector"


def write_control_vector(vector: SteeringVector, out: str | os.PathLike, model_hint: str | None = None) -> Path:
    import gguf

    hint = model_hint or vector.meta.get("model_type") or ""
    if not hint:
        raise SteerhealError("This vector does not record its model type: pass --model-hint (e.g. llama, gemma3).")
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cvec-", suffix=".gguf", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_uint32(f"{ARCH}.layer_count", vector.n_layers)
        for layer in range(vector.n_layers):
            writer.add_tensor(f"direction.{layer}", vector.directions[layer].float().numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
