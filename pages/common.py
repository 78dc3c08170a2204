"""What every page shares: the store, the preview service, error handling and small views."""

from __future__ import annotations

import functools
import html
import inspect
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gradio as gr

from pages.preview import PreviewService
from steerheal.config import _finite
from steerheal.errors import SteerhealError
from steerheal.store import Store

log = logging.getLogger("steerheal.app")


@dataclass
class Lab:
    """The app's own wiring: one store and one preview model for all sessions."""

    store: Store
    preview: PreviewService
    data_dir: Path

    @classmethod
    def open(cls, db_path: str, model: str = "bundled", load_in_4bit: bool = False) -> "Lab":
        store = Store(db_path)
        return cls(store=store, preview=PreviewService(model, load_in_4bit), data_dir=store.path.parent)


def friendly(fn: Callable) -> Callable:
    """Show engine errors as a readable gr.Error, and anything unexpected as one line (the
    trace goes to the server log, never to the page)."""

    def _raise(err: BaseException):
        if isinstance(err, gr.Error):
            raise err
        if isinstance(err, SteerhealError):
            raise gr.Error(str(err), print_exception=False) from None
        log.exception("unexpected error in %s", fn.__name__)
        raise gr.Error(f"Something went wrong ({type(err).__name__}: {err}). The details are in the server log.",
                       print_exception=False) from None

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                _raise(err)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            _raise(err)
    return wrapper


def error_html(what: str, message: str) -> str:
    """A refusal shown beside the control that caused it ("Not extracted: ..."); it stays until
    that input changes, where a toast would vanish."""
    return f"<div class='sh-error sh-refusal'>{html.escape(what)}: {html.escape(str(message))}</div>"


def beside(fn: Callable, n_outputs: int, what: str = "Not done") -> Callable:
    """fn's outputs plus "" for an error slot; on a refusal, its outputs left as they are and the
    reason in that slot (beside the buttons, until the next action), never a raised error that
    leaves bare red "Error" badges on the outputs."""

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            out = friendly(fn)(*args)
        except gr.Error as err:
            message = getattr(err, "message", None) or str(err)
            gr.Warning(message)
            return (*(gr.skip(),) * n_outputs, error_html(what, message))
        return (*(out if isinstance(out, tuple) else (out,)), "")

    return wrapper


def job_status_md(job: dict | None, what: str = "job", busy_bar: bool = False) -> str:
    """One readable line (with a progress bar) for a background job. busy_bar: a running job
    whose stage has no count gets a moving bar instead of none."""
    if not job:
        return ""
    prog = job.get("progress") or {}
    stage = prog.get("stage") or ""
    done, total = prog.get("done"), prog.get("total")
    bar = ""
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        frac = min(1.0, done / total)
        bar = (f"<div class='sh-bar'><div style='width:{frac:.0%}'></div></div>"
               f"<span class='sh-muted'>{done}/{total}</span>")
    elif busy_bar and job["status"] == "running":
        bar = "<div class='sh-bar sh-busy'><div></div></div>"
    status = job["status"]
    extra = ""
    if status == "failed" and job.get("error"):
        extra = f"<div class='sh-error'>{html.escape(job['error'])}</div>"
    elif status == "interrupted":
        extra = "<div class='sh-error'>Its worker stopped (killed or crashed). You can resume it.</div>"
    elif status == "queued":
        extra = "<div class='sh-muted'>Waiting for a worker (<code>steerheal worker</code>).</div>"
    elapsed = ""
    if job.get("started"):
        end = job.get("finished") or time.time()
        elapsed = f" · {end - job['started']:.0f} s"
    round_ = prog.get("round")
    where = f" · round {round_}" if round_ is not None and round_ >= 0 else ""
    return (f"<div class='sh-job' data-status='{status}'><b>{what} #{job['id']}</b> "
            f"<span class='sh-badge sh-{status}'>{status}</span>"
            f"{' · ' + html.escape(stage) if stage and status == 'running' else ''}{where}{elapsed}{bar}{extra}</div>")


def parse_floats(text: str, what: str) -> list[float]:
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise SteerhealError(f"Give at least one {what}, e.g. 2, 3, 4.")
    return [_finite(what, p) for p in parts]


def as_int(value, what: str, lo: int | None = None, hi: int | None = None) -> int:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raise SteerhealError(f"{what} must be a whole number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SteerhealError(f"{what} must be a whole number, got {value!r}.") from None
    if number != int(number):
        raise SteerhealError(f"{what} must be a whole number, got {value!r}.")
    number = int(number)
    if lo is not None and number < lo:
        raise SteerhealError(f"{what} must be at least {lo}, got {number}.")
    if hi is not None and number > hi:
        raise SteerhealError(f"{what} must be at most {hi}, got {number}.")
    return number


def as_float(value, what: str, lo: float | None = None, hi: float | None = None) -> float:
    number = _finite(what, value)
    if lo is not None and number < lo:
        raise SteerhealError(f"{what} must be at least {lo:g}, got {number:g}.")
    if hi is not None and number > hi:
        raise SteerhealError(f"{what} must be at most {hi:g}, got {number:g}.")
    return number


def count(n: int, word: str) -> str:
    """"1 context", "3 contexts"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def run_choices(store: Store) -> list[tuple[str, int]]:
    """(label, id) for the heal runs, newest first."""
    out = []
    for run in reversed(store.runs()):
        cfg = run["config"]
        pair = f"custom pair '{clip(cfg.get('pos') or cfg.get('neg') or '', 32)}'" if cfg.get("pos") or cfg.get("neg") \
            else cfg.get("pair")
        label = f"run {run['id']} · {run['status']} · {count(cfg.get('rounds'), 'round')} · {pair}"
        out.append((label, run["id"]))
    return out


def latest_job(store: Store, kind: str) -> dict | None:
    jobs = store.jobs(limit=1, kind=kind)
    return jobs[0] if jobs else None


# The lab's current persona pair and vector live in the store as vector jobs: the newest one holds
# the pair and contexts last written on the Personas page (pos, neg, contexts in its params), the
# newest completed one the vector in use (path and n_layers in its result). A refresh reads them back.
def lab_vector_job(store: Store, search: int = 50) -> dict | None:
    """The newest completed vector job: the vector the Steer page uses."""
    return next((j for j in store.jobs(limit=search, kind="vector") if j["status"] == "completed"), None)


def preset_for(pos: str, neg: str, presets: dict) -> str | None:
    """The preset whose personas these are, or None for a custom pair."""
    return next((name for name, p in presets.items() if (p["pos"], p["neg"]) == (pos, neg)), None)


def clip(text: str, width: int = 60) -> str:
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    if " " in cut[width // 2:]:  # end on a whole word
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip() + "…"


def pair_label(pos: str, neg: str, presets: dict) -> str:
    """"preset 'care-over-authority'" or "custom pair 'someone who ...' vs '...'" (plain text)."""
    name = preset_for(pos, neg, presets)
    return f"preset '{name}'" if name else f"custom pair '{clip(pos)}' vs '{clip(neg)}'"


def clock(ts: float | None, now: float | None = None) -> str:
    """A job's time as 11:32 today, else 2026-11-29 11:32."""
    if not ts:
        return "at an unknown time"
    now = time.time() if now is None else now
    same_day = time.localtime(ts)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", time.localtime(ts))


def vector_summary(job: dict | None, presets: dict, now: float | None = None) -> str:
    """One plain-text line for a vector job: its pair, contexts, layers and when it was made."""
    if not job:
        return "No vector yet: extract one on the Personas page."
    params, result = job.get("params") or {}, job.get("result") or {}
    n_ctx = len(params.get("contexts") or [])
    contexts = count(n_ctx, "context") if n_ctx else "the default contexts"
    layers = f", {result['n_layers']} layers" if result.get("n_layers") else ""
    return (f"{pair_label(params.get('pos', ''), params.get('neg', ''), presets)}, {contexts}{layers}, "
            f"extracted {clock(job.get('finished'), now)} (job {job['id']})")


def theme() -> gr.themes.Base:
    """Gradio's default theme with whole font files. Its bundled Source Sans Pro and IBM Plex Mono
    SemiBold (weight 600) files hold only a few glyphs, so every bold heading, label and button
    mixed a small, lighter "A" from that file with DejaVu Sans Bold for the other letters ("A
    batch for curation", "A friend asks you..."). With only 400 and 700 declared, weight 600
    resolves to the complete Bold file."""
    return gr.themes.Default(font=[FONTS[0], "ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=[FONTS[1], "ui-monospace", "Consolas", "monospace"])


FONTS = (gr.themes.LocalFont("Source Sans Pro", weights=(400, 700)),
         gr.themes.LocalFont("IBM Plex Mono", weights=(400, 700)))


CSS = """
.gradio-container { max-width: 1280px !important; }
.sh-job { padding: .5rem .75rem; border-radius: 8px; background: var(--block-background-fill);
          border: 1px solid var(--border-color-primary); }
.sh-bar { display: inline-block; width: 180px; height: 8px; background: #e5e7eb; border-radius: 4px;
          margin: 0 .5rem; vertical-align: middle; }
.sh-bar > div { height: 8px; background: #2563eb; border-radius: 4px; }
.sh-bar.sh-busy { overflow: hidden; }
.sh-bar.sh-busy > div { width: 30%; animation: sh-busy 1.4s ease-in-out infinite alternate; }
@keyframes sh-busy { from { margin-left: 0; } to { margin-left: 70%; } }
.sh-muted { color: #6b7280; font-size: .9em; }
.sh-badge { display: inline-block; padding: 0 .5rem; border-radius: 999px; font-size: .85em; color: white;
            background: #6b7280; }
.sh-running, .sh-queued { background: #2563eb; } .sh-completed { background: #16a34a; }
.sh-failed { background: #dc2626; } .sh-interrupted, .sh-waiting, .sh-cancelled { background: #d97706; }
.sh-error { color: #b91c1c; margin-top: .25rem; }
.sh-warn { color: #92400e; background: #fffbeb; border: 1px solid #fcd34d; border-radius: 8px;
           padding: .5rem .75rem; }
.sh-kl span { border-radius: 3px; padding: 0 1px; }
.sh-kl { line-height: 1.9; white-space: pre-wrap; font-family: var(--font-mono); font-size: .9em; }
.sh-kl span.sh-replayed { outline: 2px solid #2563eb; outline-offset: -1px; }
.sh-probe mark { background: #fde68a; }
.sh-probe td, .sh-probe th { vertical-align: top; padding: .4rem; border: 1px solid var(--border-color-primary); }
.sh-probe table { border-collapse: collapse; width: 100%; }
/* A disabled button looks disabled (a disabled Cancel was still red and looked pressable). */
button:disabled, button[disabled] { opacity: .45 !important; filter: grayscale(1); cursor: not-allowed !important;
                                    box-shadow: none !important; }
/* Curate's column headers wrap between words, never inside one ("repetiti/on"). */
#curate-table th, #curate-table th * { word-break: keep-all !important; overflow-wrap: normal !important;
                                       hyphens: none !important; }
"""
