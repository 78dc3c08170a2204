"""The SQLite store (sqlite-utils, WAL): the only module that writes runs.db.

Large artefacts (vectors, adapters) live in files beside the DB, written under a temporary
name and renamed into place; the DB keeps their paths (relative to the DB's folder) and hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils

from steerheal.errors import SteerhealError
from steerheal.faults import crash_point
from steerheal.job_queue import JobQueue

RUN_STATUSES = ("running", "completed", "failed", "interrupted", "cancelled", "waiting", "queued")
_LIBRARIES = ("steerheal", "torch", "transformers", "peft", "gradio", "sqlite-utils", "altair")

SCHEMA: dict[str, dict[str, Any]] = {
    "runs": dict(columns={"id": int, "created": float, "updated": float, "status": str, "model_id": str,
                          "seed": int, "config": str, "versions": str, "git_commit": str, "error": str,
                          "stage": str, "kind": str, "stop_reason": str, "sweep_id": int, "sweep_point": str,
                          "attempts": int},
                 pk="id"),
    "sweeps": dict(columns={"id": int, "created": float, "updated": float, "name": str, "spec": str, "backend": str,
                            "status": str, "max_parallel": int, "cancel_requested": int, "error": str,
                            "preset": str}, pk="id"),
    "rounds": dict(columns={"run_id": int, "round": int, "status": str, "started": float, "finished": float,
                            "rss_mb": float, "db_mb": float},
                   pk=("run_id", "round")),
    "vectors": dict(columns={"run_id": int, "round": int, "path": str, "sha256": str, "norms": str,
                             "cos_v0": float}, pk=("run_id", "round")),
    "completions": dict(columns={"id": int, "run_id": int, "round": int, "idx": int, "prompt": str, "alpha": float,
                                 "text": str, "n_tokens": int, "scores": str, "auto_verdict": int,
                                 "human_verdict": int, "reasons": str}, pk="id"),
    "evals": dict(columns={"id": int, "run_id": int, "round": int, "stage": str, "auth_nats": float,
                           "care_nats": float, "coherence": float, "top1_acc": float, "metrics": str,
                           "rows": str, "meta": str}, pk="id"),
    "axis_evals": dict(columns={"id": int, "run_id": int, "round": int, "stage": str, "mean": float, "ci_low": float,
                                "ci_high": float, "share_positive": float, "n": int, "scores": str, "meta": str},
                       pk="id"),
    "drift_evals": dict(columns={"id": int, "run_id": int, "round": int, "stage": str, "headline": float,
                                 "kl_mean": float, "kl_rmse": float, "kl_p95": float, "share_over_1": float,
                                 "nll_excess": float, "repetition": float, "intervals": str, "rows": str,
                                 "meta": str}, pk="id"),
    "absorption": dict(columns={"id": int, "run_id": int, "round": int, "cos": float, "coef": float,
                                "share_of_alpha": float, "alpha": float, "detail": str}, pk="id"),
    "calibrations": dict(columns={"id": int, "run_id": int, "round": int, "kind": str, "target": float,
                                  "alpha": float, "measure": float, "evaluations": int, "reached": int,
                                  "alphas": str, "points": str, "seconds": float}, pk="id"),
    "probes": dict(columns={"id": int, "run_id": int, "round": int, "prompt": str, "answer": str, "n_tokens": int},
                   pk="id"),
    "train_logs": dict(columns={"id": int, "run_id": int, "round": int, "step": int, "loss": float, "nll": float,
                                "divergence": float, "barrier_fired": int, "lr": float}, pk="id"),
    "artifacts": dict(columns={"id": int, "run_id": int, "round": int, "kind": str, "path": str, "sha256": str},
                      pk="id"),
    "jobs": dict(columns={"id": int, "kind": str, "params": str, "status": str, "run_id": int, "worker": str,
                          "created": float, "started": float, "finished": float, "heartbeat": float,
                          "progress": str, "result": str, "error": str, "cancel_requested": int,
                          "device": str, "attempts": int}, pk="id"),
}
UNIQUE = {
    "completions": ("run_id", "round", "idx"),
    "evals": ("run_id", "round", "stage"),
    "axis_evals": ("run_id", "round", "stage"),
    "drift_evals": ("run_id", "round", "stage"),
    "absorption": ("run_id", "round"),
    "calibrations": ("run_id", "round"),
    "probes": ("run_id", "round", "prompt"),
    "train_logs": ("run_id", "round", "step"),
    "artifacts": ("run_id", "round", "kind"),
}


def library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class Store(JobQueue):
    """runs.db and the artefact folder beside it."""

    def __init__(self, path: str | os.PathLike = "runs.db"):
        self.path = Path(path).expanduser().resolve()
        self._local = threading.local()  # one connection per thread: sqlite3 transactions are per connection
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db.enable_wal()
        except (OSError, sqlite3.Error) as err:
            raise SteerhealError(f"Cannot open the store {str(self.path)!r}: {err}. Give a writable --db path.") from None
        self.artifact_root = self.path.parent / f"{self.path.stem}_artifacts"
        self._ensure_schema()

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite_utils.Database(sqlite3.connect(str(self.path), timeout=30))
            db.execute("PRAGMA busy_timeout = 30000")
            self._local.db = db
        return db

    def _ensure_schema(self) -> None:
        with self.db.conn:
            for name, spec in SCHEMA.items():
                if not self.db[name].exists():
                    self.db[name].create(spec["columns"], pk=spec["pk"])
            for name, spec in SCHEMA.items():  # columns added since a DB was created
                missing = set(spec["columns"]) - set(self.db[name].columns_dict)
                for col in sorted(missing):
                    self.db[name].add_column(col, spec["columns"][col])
            for name, cols in UNIQUE.items():
                index = f"idx_{name}_unique"
                if index not in {i.name for i in self.db[name].indexes}:
                    self.db[name].create_index(cols, index_name=index, unique=True)

    # runs -------------------------------------------------------------
    def create_run(self, config: dict, model_id: str, seed: int, kind: str = "loop", status: str = "running") -> int:
        """kind 'loop' is a heal run; 'batch' is a set of lab completions made for curation."""
        now = time.time()
        with self.db.conn:
            table = self.db["runs"].insert(dict(created=now, updated=now, status=status, model_id=model_id, kind=kind,
                                                seed=seed, config=json.dumps(config),
                                                versions=json.dumps(library_versions()), git_commit=git_commit(),
                                                error=None, stage="created"))
        return int(table.last_pk)

    def run(self, run_id: int) -> dict:
        try:
            row = self.db["runs"].get(run_id)
        except sqlite_utils.db.NotFoundError:
            raise SteerhealError(f"No run {run_id} in {self.path}: `steerheal runs` lists them.") from None
        return {**row, "config": json.loads(row["config"]), "versions": json.loads(row["versions"])}

    def runs(self, kind: str | None = "loop") -> list[dict]:
        where, args = ("coalesce(kind, 'loop') = ?", [kind]) if kind else (None, [])
        return [self.run(r["id"]) for r in self.db["runs"].rows_where(where, args, order_by="id", select="id")]

    def set_run(self, run_id: int, **fields) -> None:
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"bad status {fields['status']}")
        with self.db.conn:
            self.db["runs"].update(run_id, {**fields, "updated": time.time()})

    # rows keyed by (run, round, ...) are upserted, so a resumed stage never duplicates them
    def put(self, table: str, rows: Iterable[dict]) -> None:
        rows = [{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()} for r in rows]
        if not rows:
            return
        with self.db.conn:
            if table in UNIQUE:
                keys = UNIQUE[table]
                for r in rows:
                    self.db[table].delete_where(" and ".join(f"[{k}] = ?" for k in keys), [r[k] for k in keys])
                self.db[table].insert_all(rows)
            else:
                self.db[table].upsert_all(rows, pk=SCHEMA[table]["pk"])
            crash_point(f"store:{table}")  # inside the transaction: a kill here must leave no rows

    def rows(self, table: str, run_id: int, round: int | None = None, **where) -> list[dict]:
        clauses, args = ["run_id = ?"], [run_id]
        if round is not None:
            clauses.append("round = ?")
            args.append(round)
        for k, v in where.items():
            clauses.append(f"[{k}] = ?")
            args.append(v)
        return list(self.db[table].rows_where(" and ".join(clauses), args, order_by="rowid"))

    def completion_sets(self) -> list[dict]:
        """Every (run, round) holding completions, newest first, with its run's kind and state."""
        rows = self.db.execute(
            "select c.run_id, c.round, count(*), r.kind, r.status, r.stage from completions c "
            "join runs r on r.id = c.run_id group by c.run_id, c.round order by c.run_id desc, c.round desc").fetchall()
        return [dict(run_id=r[0], round=r[1], count=r[2], kind=r[3], status=r[4], stage=r[5]) for r in rows]

    def change_marker(self, table: str, run_id: int) -> tuple[int, int | None]:
        """(row count, newest id) of a run's rows in a table: changes whenever rows are added."""
        if table not in SCHEMA:
            raise ValueError(f"unknown table {table}")
        count, newest = self.db.execute(f"select count(*), max(rowid) from [{table}] where run_id = ?",
                                        [run_id]).fetchone()
        return int(count), newest

    def set_human_verdict(self, completion_id: int | Iterable[int], verdict: bool | None) -> None:
        ids = [completion_id] if isinstance(completion_id, int) else list(completion_id)
        with self.db.conn:
            for cid in ids:
                self.db["completions"].update(cid, {"human_verdict": None if verdict is None else int(verdict)})

    def mark_curated(self, run_id: int, round: int) -> None:
        """A person has reviewed this round's completions: the loop may train on them."""
        with self.db.conn:
            self.db["rounds"].upsert(dict(run_id=run_id, round=round, status="curated"), pk=("run_id", "round"))
            self.db["runs"].update(run_id, {"status": "running", "stage": f"round {round}: curated",
                                            "updated": time.time()})

    def set_auto_verdicts(self, verdicts: dict[int, bool]) -> None:
        with self.db.conn:
            for cid, ok in verdicts.items():
                self.db["completions"].update(cid, {"auto_verdict": int(ok)})

    def size_mb(self) -> float:
        """The DB file and its write-ahead log, in MB."""
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal"))
                   if p.exists()) / 2**20

    # artefacts ---------------------------------------------------------
    def lab_dir(self) -> Path:
        """Where lab artefacts made outside a run (vectors from the Personas page) live."""
        path = self.artifact_root / "lab"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def artifact_dir(self, run_id: int) -> Path:
        return self.artifact_root / f"run-{run_id}"

    def save_artifact(self, run_id: int, round: int, kind: str, write) -> Path:
        """`write(tmp_path)` writes a file or folder under a temporary name; it is renamed to
        a fresh name (never over an existing file), then recorded, then any older version is
        deleted. So a crash at any point leaves the DB pointing at a complete file, and at
        worst an unrecorded file that `remove_orphans` deletes on resume."""
        folder = self.artifact_dir(run_id) / f"round-{round}"
        folder.mkdir(parents=True, exist_ok=True)
        stem, dot, suffix = kind.partition(".")
        final = folder / f"{stem}-{uuid.uuid4().hex[:8]}{dot}{suffix}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=folder)) / kind
        try:
            try:
                write(tmp)
            except OSError:
                raise
            except Exception as err:  # safetensors (Rust) reports OS errors as its own type: keep the errno
                found = re.search(r"os error (\d+)", str(err))
                if not found:
                    raise
                code = int(found.group(1))
                raise OSError(code, os.strerror(code), str(folder)) from err
            crash_point(f"artifact-written:{kind}")
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
        crash_point(f"artifact-renamed:{kind}")
        older = [self.path.parent / r["path"] for r in self.rows("artifacts", run_id, round, kind=kind)]
        self.put("artifacts", [dict(run_id=run_id, round=round, kind=kind,
                                    path=str(final.relative_to(self.path.parent)), sha256=sha256_of(final))])
        for path in older:
            if path != final:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return final

    def remove_orphans(self, run_id: int) -> list[Path]:
        """Delete what a killed writer left in the run's folder: temporary files (names
        starting with '.') and files no artifacts row points to."""
        root = self.artifact_dir(run_id)
        if not root.exists():
            return []
        recorded = {(self.path.parent / r["path"]).resolve() for r in self.rows("artifacts", run_id)}
        rounds = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("round-"))
        removed = [entry for folder in rounds for entry in folder.iterdir() if entry.resolve() not in recorded]
        removed += [p for p in root.iterdir() if p.name.startswith(".")]
        for p in removed:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return removed

    def artifact(self, run_id: int, round: int, kind: str) -> Path | None:
        rows = self.rows("artifacts", run_id, round, kind=kind)
        if not rows:
            return None
        path = self.path.parent / rows[0]["path"]
        return path if path.exists() else None
