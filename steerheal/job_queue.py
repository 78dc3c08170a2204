"""The job queue inside the store: jobs submitted by the UI or the CLI, claimed atomically by
worker processes, with progress, heartbeats and cancel requests (steerheal/jobs.py runs them)."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Iterable

import sqlite_utils

from steerheal.errors import SteerhealError

JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")


class JobQueue:
    """Mixed into Store: needs `db`, `path`, `run` and `set_run`."""

    def submit_job(self, kind: str, params: dict, run_id: int | None = None, device: str | None = None) -> int:
        """Queue a job. `device` names the accelerator it needs ("default": this machine's
        own); jobs on one device run one at a time, whatever the number of workers."""
        with self.db.conn:
            table = self.db["jobs"].insert(dict(kind=kind, params=json.dumps(params), status="queued", run_id=run_id,
                                                created=time.time(), cancel_requested=0, progress="{}",
                                                device=device or "default", attempts=0))
        return int(table.last_pk)

    def claim_job(self, worker: str, only: Iterable[int] | None = None) -> dict | None:
        """Atomically take the oldest queued job whose device is free (BEGIN IMMEDIATE: one
        claimant wins; a device with a running job takes no second one); `only`: among these ids."""
        among = "" if only is None else f"AND id IN ({','.join(str(int(i)) for i in only) or 'NULL'}) "
        conn = self.db.conn
        for _ in range(50):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError:
                time.sleep(0.1)
        else:
            return None
        try:
            row = conn.execute(
                "SELECT id FROM jobs WHERE status = 'queued' AND cancel_requested = 0 " + among
                + "AND coalesce(device, 'default') NOT IN (SELECT coalesce(device, 'default') FROM jobs "
                "WHERE status = 'running') "
                "ORDER BY id LIMIT 1").fetchone()
            if row is None:
                conn.execute("COMMIT")
                return None
            now = time.time()
            conn.execute("UPDATE jobs SET status = 'running', worker = ?, started = ?, heartbeat = ?, "
                         "attempts = coalesce(attempts, 0) + 1 WHERE id = ?", [worker, now, now, row[0]])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return self.job(row[0])

    def job(self, job_id: int) -> dict:
        try:
            row = self.db["jobs"].get(job_id)
        except sqlite_utils.db.NotFoundError:
            raise SteerhealError(f"No job {job_id} in {self.path}.") from None
        return {**row, **{k: json.loads(row[k]) if row[k] else {} for k in ("params", "progress", "result")}}

    def jobs(self, limit: int = 50, kind: str | None = None, run_id: int | None = None) -> list[dict]:
        clauses, args = [], []
        if kind:
            clauses.append("kind = ?")
            args.append(kind)
        if run_id is not None:
            clauses.append("run_id = ?")
            args.append(run_id)
        rows = self.db["jobs"].rows_where(" and ".join(clauses) or None, args, order_by="id desc", limit=limit,
                                          select="id")
        return [self.job(r["id"]) for r in rows]

    def update_job(self, job_id: int, **fields) -> None:
        if "status" in fields and fields["status"] not in JOB_STATUSES:
            raise ValueError(f"bad job status {fields['status']}")
        fields = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
        with self.db.conn:
            self.db["jobs"].update(job_id, fields)

    def heartbeat(self, job_id: int) -> bool:
        """Record that the job's worker is alive; returns whether cancellation was requested."""
        with self.db.conn:
            self.db["jobs"].update(job_id, {"heartbeat": time.time()})
        return bool(self.db["jobs"].get(job_id)["cancel_requested"])

    def request_cancel(self, job_id: int) -> None:
        job = self.job(job_id)
        with self.db.conn:
            self.db["jobs"].update(job_id, {"cancel_requested": 1})
            if job["status"] == "queued":
                self.db["jobs"].update(job_id, {"status": "cancelled", "finished": time.time()})

    def mark_stale_jobs(self, timeout: float = 30.0) -> list[int]:
        """Running jobs whose worker stopped heartbeating are interrupted (and so are their runs)."""
        cutoff = time.time() - timeout
        stale = [r["id"] for r in self.db["jobs"].rows_where("status = 'running' and heartbeat < ?", [cutoff],
                                                             select="id")]
        for job_id in stale:
            job = self.job(job_id)
            self.update_job(job_id, status="interrupted", error="its worker stopped (killed or crashed)",
                            finished=time.time())
            if job["run_id"] is not None and self.run(job["run_id"])["status"] == "running":
                self.set_run(job["run_id"], status="interrupted", error="its worker stopped (killed or crashed)")
        return stale
