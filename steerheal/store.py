"""The SQLite store (sqlite-utils, WAL): the only module that writes runs.db.

Large artefacts (vectors, adapters) live in files beside the DB, written under a temporary
name and renamed into place; the DB keeps their paths (relative to the DB's folder) and hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils

from steerheal.errors import SteerhealError

RUN_STATUSES = ("running", "completed", "failed", "interrupted", "waiting")
_LIBRARIES = ("steerheal", "torch", "transformers", "peft", "gradio", "sqlite-utils", "altair")

SCHEMA: dict[str, dict[str, Any]] = {
    "runs": dict(columns={"id": int, "created": float, "updated": float, "status": str, "model_id": str,
                          "seed": int, "config": str, "versions": str, "git_commit": str, "error": str,
                          "stage": str}, pk="id"),
    "rounds": dict(columns={"run_id": int, "round": int, "status": str, "started": float, "finished": float},
                   pk=("run_id", "round")),
    "vectors": dict(columns={"run_id": int, "round": int, "path": str, "sha256": str, "norms": str,
                             "cos_v0": float}, pk=("run_id", "round")),
    "completions": dict(columns={"id": int, "run_id": int, "round": int, "idx": int, "prompt": str, "alpha": float,
                                 "text": str, "n_tokens": int, "scores": str, "auto_verdict": int,
                                 "human_verdict": int, "reasons": str}, pk="id"),
    "evals": dict(columns={"id": int, "run_id": int, "round": int, "stage": str, "auth_nats": float,
                           "care_nats": float, "coherence": float, "top1_acc": float, "metrics": str,
                           "rows": str, "meta": str}, pk="id"),
    "probes": dict(columns={"id": int, "run_id": int, "round": int, "prompt": str, "answer": str, "n_tokens": int},
                   pk="id"),
    "train_logs": dict(columns={"id": int, "run_id": int, "round": int, "step": int, "loss": float, "nll": float,
                                "divergence": float, "barrier_fired": int, "lr": float}, pk="id"),
    "artifacts": dict(columns={"id": int, "run_id": int, "round": int, "kind": str, "path": str, "sha256": str},
                      pk="id"),
}
UNIQUE = {
    "completions": ("run_id", "round", "idx"),
    "evals": ("run_id", "round", "stage"),
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


class Store:
    """runs.db and the artefact folder beside it."""

    def __init__(self, path: str | os.PathLike = "runs.db"):
        self.path = Path(path).expanduser().resolve()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite_utils.Database(sqlite3.connect(str(self.path), timeout=30, check_same_thread=False))
            self.db.enable_wal()
        except (OSError, sqlite3.Error) as err:
            raise SteerhealError(f"Cannot open the store {str(self.path)!r}: {err}. Give a writable --db path.") from None
        self.artifact_root = self.path.parent / f"{self.path.stem}_artifacts"
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        with self.db.conn:
            for name, spec in SCHEMA.items():
                if not self.db[name].exists():
                    self.db[name].create(spec["columns"], pk=spec["pk"])
            for name, cols in UNIQUE.items():
                index = f"idx_{name}_unique"
                if index not in {i.name for i in self.db[name].indexes}:
                    self.db[name].create_index(cols, index_name=index, unique=True)

    # runs -------------------------------------------------------------
    def create_run(self, config: dict, model_id: str, seed: int) -> int:
        now = time.time()
        with self.db.conn:
            table = self.db["runs"].insert(dict(created=now, updated=now, status="running", model_id=model_id,
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

    def runs(self) -> list[dict]:
        return [self.run(r["id"]) for r in self.db["runs"].rows_where(order_by="id", select="id")]

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

    def rows(self, table: str, run_id: int, round: int | None = None, **where) -> list[dict]:
        clauses, args = ["run_id = ?"], [run_id]
        if round is not None:
            clauses.append("round = ?")
            args.append(round)
        for k, v in where.items():
            clauses.append(f"[{k}] = ?")
            args.append(v)
        return list(self.db[table].rows_where(" and ".join(clauses), args, order_by="rowid"))

    def set_human_verdict(self, completion_id: int, verdict: bool | None) -> None:
        with self.db.conn:
            self.db["completions"].update(completion_id, {"human_verdict": None if verdict is None else int(verdict)})

    # artefacts ---------------------------------------------------------
    def artifact_dir(self, run_id: int) -> Path:
        return self.artifact_root / f"run-{run_id}"

    def save_artifact(self, run_id: int, round: int, kind: str, write) -> Path:
        """`write(tmp_path)` writes a file or folder; it is renamed into place, then recorded."""
        final = self.artifact_dir(run_id) / f"round-{round}" / kind
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=final.parent)) / kind
        try:
            write(tmp)
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
        self.put("artifacts", [dict(run_id=run_id, round=round, kind=kind,
                                    path=str(final.relative_to(self.path.parent)), sha256=sha256_of(final))])
        return final

    def remove_orphans(self, run_id: int) -> list[Path]:
        """Delete temporary files a killed writer left behind (names starting with '.')."""
        root = self.artifact_dir(run_id)
        removed = [p for p in root.rglob(".*")] if root.exists() else []
        for p in sorted(removed, key=lambda p: len(p.parts), reverse=True):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return removed

    def artifact(self, run_id: int, round: int, kind: str) -> Path | None:
        rows = self.rows("artifacts", run_id, round, kind=kind)
        if not rows:
            return None
        path = self.path.parent / rows[0]["path"]
        return path if path.exists() else None
