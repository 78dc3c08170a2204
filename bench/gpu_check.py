"""GPU check (issue 15): gemma-3-4b-it's shapes with random weights, loaded through steerheal's own
path in bfloat16 and in 4-bit (bitsandbytes NF4), each followed by one tiny round of the loop end
to end (base/prompted evals, vector, generate, filter, heal, bake, steered/healed evals, probes).
Prints seconds and peak GPU memory per phase. Run it with bench/gpu_check.sh (under 10 minutes on one
GPU; it stops itself at GPU_CHECK_TIMEOUT seconds, default 570).

    bash bench/gpu_check.sh [--json PATH] [--workdir DIR]
    bash bench/gpu_check.sh --tiny      # the same path on a tiny gemma-3: a CPU smoke test of this script

Nothing is downloaded: the model config is built here (Gemma3ForConditionalGeneration with
gemma-3-4b-it's text and vision shapes), saved to a temporary directory and loaded from there with
steerheal.models.load_model (via the loop); the tokenizer is the bundled model's (its ids fit
gemma's vocabulary) with a gemma-style chat template (no system role); the tinymfv rows come from
STEERHEAL_TINYMFV_DIR, else ../shared/tinymfv beside the checkout, else the bundled demo set.
The filters are opened wide because random weights write noise that they would all reject.

Exit codes: 0 every phase ran; 1 a precision failed (the table and the traceback say where);
3 no CUDA GPU (nothing measured; --tiny runs the CPU part anyway).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# google/gemma-3-4b-it's shapes: 34 text layers of width 2560 (8 query / 4 key-value heads of 256),
# MLP 10240, vocabulary 262208, 5 local (window 1024) : 1 global attention; a SigLIP vision tower
# (27 layers of 1152, 896-px images in 14-px patches) and 256 tokens per image. ~4.3B parameters.
SHAPES = {
    "4b": dict(text=dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                         num_key_value_heads=4, head_dim=256, vocab_size=262208, sliding_window=1024,
                         max_position_embeddings=131072),
               vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                           image_size=896, patch_size=14),
               mm_tokens_per_image=256),
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=32, vocab_size=49152, sliding_window=16,
                           max_position_embeddings=2048),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=28, patch_size=14),
                 mm_tokens_per_image=4),
}


def gb(n_bytes: int) -> float:
    return n_bytes / 1024**3


class PhaseClock:
    """Seconds and peak GPU memory per phase; a phase ends when the next one starts."""

    def __init__(self, precision: str, rows: list[dict]):
        self.precision, self.rows = precision, rows
        self.name: str | None = None
        self.t0 = 0.0

    @staticmethod
    def _peak_gb() -> float | None:
        """Peak allocated since the last reset, then reset (None without CUDA, or after a CUDA fault)."""
        if not torch.cuda.is_available():
            return None
        try:
            torch.cuda.synchronize()
            peak = gb(torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
            return peak
        except RuntimeError:
            return None

    def start(self, name: str) -> None:
        peak = self._peak_gb()
        now = time.perf_counter()
        if self.name is not None:
            self.rows.append(dict(precision=self.precision, phase=self.name, seconds=now - self.t0, peak_gb=peak))
            print(f"  {self.precision:<5} {self.name:<14} {now - self.t0:7.1f} s", flush=True)
        self.name, self.t0 = name, now

    def fail(self) -> None:
        """End the current phase marked as the one that failed."""
        if self.name is not None:
            self.name += " FAILED"
        self.stop()

    def stop(self) -> None:
        if self.name is not None:
            self.start("")
        self.name = None

    def stage(self, text: str) -> None:
        """A loop stage ("round 0: heal step 3/8", "eval steered", "done") as a phase name."""
        name = re.sub(r"^round \d+: ", "", text)
        name = re.sub(r"( step)? \d+/\d+$", "", name)
        name = {"heal step": "heal"}.get(name, name)
        if name == "stopped early":  # the loop's coherence stop after the round: not a phase
            return
        if name == "done":
            self.stop()
        elif name != self.name:
            self.start(name)


def build_model(size: str, device: torch.device, dtype: torch.dtype, path: Path) -> int:
    """Random weights of the given shapes, built straight on the device, saved as a model directory."""
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration

    from steerheal.errors import SteerhealError
    from steerheal.models import bundled_model_dir

    try:
        tokenizer_dir = bundled_model_dir()
    except SteerhealError as err:
        raise SystemExit(f"gpu_check: the bundled model's tokenizer is needed (no downloads here): {err}") from None
    shapes = SHAPES[size]
    cfg = Gemma3Config(text_config=shapes["text"], vision_config=shapes["vision"],
                       mm_tokens_per_image=shapes["mm_tokens_per_image"])
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # no float32 copy of 4B weights
    try:
        with torch.device(device):
            model = Gemma3ForConditionalGeneration(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    del model
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = GEMMA_TEMPLATE
    tokenizer.save_pretrained(path)
    return n_params


def data_dir() -> str | None:
    env = os.environ.get("STEERHEAL_TINYMFV_DIR")
    shared = ROOT.parent / "shared" / "tinymfv"
    return env or (str(shared) if any(shared.glob("*.jsonl")) else None)


def tiny_round(model_dir: Path, load_in_4bit: bool, store_dir: Path, clock: PhaseClock) -> dict:
    """One small round of steerheal's loop on the saved model (it loads the model itself)."""
    from steerheal.filters import FilterConfig
    from steerheal.heal import HealConfig
    from steerheal.loop import RunConfig, run_loop, start_run
    from steerheal.store import Store

    cfg = RunConfig(model=str(model_dir), load_in_4bit=load_in_4bit, rounds=1, n_completions=8, max_new_tokens=32,
                    think_tokens=4, eval_limit=7, n_contexts=8, probe_tokens=16, data_dir=data_dir(),
                    filters=FilterConfig(max_tail_perplexity=1e12, max_repetition=1.0, reject_narration=False,
                                         reject_refusal=False),
                    heal=HealConfig(rank=8, lora_alpha=16, epochs=1, batch_size=4, val_fraction=0.0))
    store = Store(store_dir / "runs.db")
    run_id = start_run(store, cfg)
    set_run = store.set_run

    def spy(rid, **fields):  # the loop names its stages in the store: use them as phase boundaries
        if "stage" in fields and fields["stage"]:
            clock.stage(fields["stage"])
        return set_run(rid, **fields)

    store.set_run = spy
    weights: dict = {}

    def progress(stage: str, info: dict) -> None:
        if clock.name == "load" and torch.cuda.is_available():
            weights["weights_gb"] = gb(torch.cuda.memory_allocated())
        clock.stage(stage)

    clock.start("load")
    run = run_loop(store, run_id, progress)
    clock.stop()
    evals = {r["stage"]: r for r in store.rows("evals", run_id)}
    kept = sum(1 for c in store.rows("completions", run_id, 0) if c["auto_verdict"])
    steps = len(store.rows("train_logs", run_id, 0))
    return dict(status=run["status"], kept=kept, heal_steps=steps, **weights,
                coherence={k: round(v["coherence"], 4) for k, v in evals.items()})


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment() -> dict:
    import transformers
    from transformers.utils import import_utils

    env = dict(python=sys.version.split()[0], torch=torch.__version__, torch_cuda=torch.version.cuda,
               transformers=transformers.__version__, transformers_sees_torch=import_utils.is_torch_available())
    for name in ("peft", "accelerate", "bitsandbytes"):
        try:
            env[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001 - reported, not fatal here
            env[name] = f"unavailable ({type(err).__name__}: {err})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gb=round(gb(props.total_memory), 1))
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny gemma-3 shapes (a CPU smoke test of the script)")
    ap.add_argument("--json", help="also write the environment, the phases and the results here")
    ap.add_argument("--workdir", help="where to save the random model (default: a temporary directory)")
    args = ap.parse_args()

    env = environment()
    print("gpu_check:", ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    if not torch.cuda.is_available() and not args.tiny:
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing measured. "
              "Run it on a GPU machine (or inside the image: docker run --gpus all --rm steerheal "
              "bash bench/gpu_check.sh); --tiny runs the CPU part of the path as a smoke test.", flush=True)
        return 3
    if not env["transformers_sees_torch"]:
        print(f"gpu_check: transformers {env['transformers']} disables torch {env['torch']}: upgrade torch.")
        return 1

    from steerheal.models import resolve_dtype

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype("auto", device)
    size = "tiny" if args.tiny else "4b"
    rows: list[dict] = []
    results: dict = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.workdir) as tmp:
        model_dir = Path(tmp) / f"random-gemma-3-{size}"
        clock = PhaseClock("build", rows)
        clock.start("random+save")
        n_params = build_model(size, device, dtype, model_dir)
        free()
        clock.stop()
        print(f"gpu_check: random gemma-3 ({size} shapes), {n_params / 1e6:,.1f}M parameters, saved in {dtype}",
              flush=True)
        precisions = [(str(dtype).replace("torch.", ""), False), ("4bit", True)]
        for label, four_bit in precisions:
            if four_bit and device.type != "cuda":
                print("gpu_check: 4-bit needs CUDA: skipped here", flush=True)
                results[label] = dict(status="skipped (no CUDA)")
                continue
            if four_bit and not env["bitsandbytes"][:1].isdigit():
                results[label] = dict(status=f"FAILED: bitsandbytes {env['bitsandbytes']}: install the Dockerfile's "
                                             "pin (pip install bitsandbytes==X) or run this inside the image")
                failed = True
                continue
            clock = PhaseClock(label, rows)
            run_dir = Path(tmp) / f"store-{label}"
            run_dir.mkdir()
            try:
                results[label] = tiny_round(model_dir, four_bit, run_dir, clock)
            except KeyboardInterrupt:  # GPU_CHECK_TIMEOUT (gpu_check.sh sends SIGINT): report what was measured
                clock.fail()
                results[label] = dict(status="INTERRUPTED (timeout or Ctrl-C)")
                failed = True
                break
            except Exception as err:  # noqa: BLE001 - the other precision still runs; the exit code says it failed
                clock.fail()
                traceback.print_exc()
                results[label] = dict(status=f"FAILED: {type(err).__name__}: {err}")
                failed = True
            free()

    print(f"\n{'precision':<10} {'phase':<15} {'seconds':>8} {'peak GPU GB':>12}")
    for r in rows:
        peak = f"{r['peak_gb']:12.2f}" if r["peak_gb"] is not None else f"{'-':>12}"
        print(f"{r['precision']:<10} {r['phase']:<15} {r['seconds']:8.1f} {peak}")
    for label in results:
        mine = [r for r in rows if r["precision"] == label]
        if mine:
            peaks = [r["peak_gb"] for r in mine if r["peak_gb"] is not None]
            peak = f"{max(peaks):12.2f}" if peaks else f"{'-':>12}"
            print(f"{label:<10} {'total':<15} {sum(r['seconds'] for r in mine):8.1f} {peak}")
    for label, res in results.items():
        print(f"{label}: {json.dumps(res)}")
    peaks = [r["peak_gb"] for r in rows if r["peak_gb"] is not None]
    if peaks:
        print(f"peak GPU memory over the whole check (torch.cuda.max_memory_allocated per phase): "
              f"{max(peaks):.2f} GB of {env['gpu_memory_gb']} GB")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(environment=env, size=size, phases=rows, results=results), indent=1))
    print("gpu_check:", "FAILED" if failed else "OK", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
