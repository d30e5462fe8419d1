"""``--address ray://HOST:PORT``: a search driven from a machine outside the cluster, through Ray Client.

Under Ray Client every Ray call is proxied to the cluster, but Tune's loop and the study need a process of their
own on the cluster (Tune itself moves its loop to the head node under Ray Client). So the search is split:

* **here** (the client): the model and the data are loaded (and an FP32 baseline trained when no ``--weights`` is
  given), exactly as for a local search; they go to the cluster through Ray, not through a shared disk;
* **on the head node**: one task (no CPU reserved: the trials take the CPUs) runs the whole search with the
  ordinary Ray backend, in a work folder of its own keyed by this machine and the output folder;
* **back here**: every output file (study.db, profile/, trials.csv, pareto.csv/png, plan.json, plans/,
  summary.json, latency_cache.json) is written into ``--out``, each file atomically.

Resume: a client that disconnects has its task stopped by Ray (after Ray Client's reconnect grace period, 30 s by
default), but the head node keeps the work folder, so ``--resume`` from the same machine and ``--out`` continues
from the head's copy of the study (else from the one in ``--out``); a lock keeps a resumed task from running beside
one still in its grace period. The work folder is removed once the search has finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoselect._io import atomic_path
from autoselect.errors import AutoselectError

if TYPE_CHECKING:
    from autoselect.search.run import SearchConfig, SearchResult

__all__ = ["is_client_address", "search_via_client"]

WORK_ROOT = "autoselect-ray-client"
HEAD_RESOURCE = "node:__internal_head__"  # every Ray head node has it
LOCK_WAIT_S = 120.0  # > Ray Client's default reconnect grace period (30 s)
KEEP_ON_HEAD = ("ray", "latency_export")  # Tune's experiment state and scratch exports: not outputs


def is_client_address(address: str | None) -> bool:
    return bool(address) and str(address).startswith("ray://")


def _files(root: Path) -> dict[str, bytes]:
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in KEEP_ON_HEAD}


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


def work_key(out: str | Path) -> str:
    """The head node's work folder name for this client machine and output folder."""
    return hashlib.sha256(f"{socket.gethostname()}:{Path(out).resolve()}".encode()).hexdigest()[:16]


def _work(key: str) -> Path:
    return Path(tempfile.gettempdir()) / WORK_ROOT / key


def _nothing_to_resume(out: str | Path) -> AutoselectError:
    return AutoselectError(f"nothing to resume: neither {out} here nor the head node holds this search's study.db")


def _on_head_node(fn: Any, **options: Any) -> Any:
    """``fn`` as a Ray task pinned to the head node, reserving no CPU (the trials take them)."""
    import ray

    return ray.remote(fn).options(num_cpus=0, resources={HEAD_RESOURCE: 0.001}, **options)


def _head_has_study(key: str) -> bool:
    return (_work(key) / "study.db").is_file()


def _lock(work: Path, wait_s: float) -> Any:
    """Hold ``work``'s lock for the task's life. A client that disconnected leaves its task running for Ray's
    reconnect grace period (30 s by default); a resumed search waits for it to stop, not run beside it."""
    import fcntl

    work.parent.mkdir(parents=True, exist_ok=True)
    handle = open(work.parent / f"{work.name}.lock", "w")
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise AutoselectError(f"another search of this output folder is still running on the head node "
                                      f"({work}); try again when it has stopped") from None
            if not told:
                print("ray client: waiting for this output folder's previous search to stop on the head node",
                      file=sys.stderr, flush=True)
                told = True
            time.sleep(1.0)


def _on_head(cfg: SearchConfig, prepared: Any, files: dict[str, bytes], key: str) -> tuple[dict[str, bytes], Any, str]:
    """The task on the head node: the search, in a work folder there; returns its output files."""
    from autoselect.search.run import _search

    work = _work(key)
    lock = _lock(work, wait_s=LOCK_WAIT_S)
    try:
        if cfg.resume and (work / "study.db").is_file():
            origin = f"resuming from the head node's copy ({work})"
        else:
            if cfg.resume and "study.db" not in files:  # deleted since the client checked
                raise _nothing_to_resume(cfg.out)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            _write(work, files)
            origin = "resuming from the client's copy" if cfg.resume else "new search"
        print(f"ray client: search on the head node in {work}: {origin}", file=sys.stderr, flush=True)
        result = _search(replace(cfg, out=str(work)), prepared=prepared)
        out_files = _files(work)
        shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.close()
    return out_files, result, origin


def search_via_client(cfg: SearchConfig) -> SearchResult:
    """Run ``cfg``'s search on the cluster at ``cfg.ray.address`` (``ray://HOST:PORT``); outputs land in cfg.out."""
    import ray

    from autoselect.evaluate import resolve_device
    from autoselect.search.ray_backend import ray_session
    from autoselect.search.run import _prepare

    out = Path(cfg.out)
    with ray_session(cfg.ray.address):
        out.mkdir(parents=True, exist_ok=True)
        if not any(n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {}) for n in ray.nodes()):
            raise AutoselectError(f"the Ray cluster at {cfg.ray.address} reports no head node to run the search on")
        key = work_key(out)
        if cfg.resume and not (out / "study.db").is_file():
            if not ray.get(_on_head_node(_head_has_study).remote(key)):
                raise _nothing_to_resume(out)
        # here: the weights and data are read (or the baseline trained, on this machine's device)
        prepared = _prepare(replace(cfg, device=str(resolve_device(cfg.device))), out)
        files = _files(out) if cfg.resume else {}
        task = _on_head_node(_on_head, max_retries=0)
        try:
            out_files, result, origin = ray.get(task.remote(cfg, ray.put(prepared), files, key))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, AutoselectError):
                raise AutoselectError(str(cause)) from None
            raise AutoselectError(f"the search failed on the cluster: {str(exc).strip().splitlines()[-1]}") from None
    _write(out, out_files)
    summary = dict(result.summary, ray_client={"address": cfg.ray.address, "origin": origin,
                                               "files_returned": len(out_files)})
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return replace(result, out=out, plan_path=out / "plan.json", summary=summary)
