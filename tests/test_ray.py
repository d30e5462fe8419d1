"""`autoselect search --backend ray` on a real two-node Ray cluster started here: a head on 127.0.0.1 and a worker
node, each a `ray start --block` process of its own. Covers the search across both nodes, a trial worker killed
with SIGKILL mid-trial, and a killed driver resumed with --resume. Marked `ray` (skip with -m "not ray")."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from autoselect.cli import main

from .test_search import SMALL

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
# `ray start` turns token authentication on; a driver joining such a cluster must say so (README, "Ray clusters")
ENV = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
COMMON = [*SMALL, "--target", "generic-pt", "--weight-bits", "4", "--backend", "ray"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_nodes(address: str) -> int:
    code = (f"import ray; ray.init(address={address!r}, logging_level=40); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))")
    try:
        r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return 0
    return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else 0


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(["ray", "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", *args],
                            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _start(["--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats"])
    worker = None
    try:
        deadline = time.time() + 120
        while _alive_nodes(address) < 1:
            assert time.time() < deadline and head.poll() is None, "the Ray head did not start"
            time.sleep(1)
        worker = _start([f"--address={address}"])
        while _alive_nodes(address) < 2:
            assert time.time() < deadline and worker.poll() is None, "the Ray worker node did not join"
            time.sleep(1)
        yield address
    finally:
        for proc in (worker, head):
            if proc is not None:
                _stop(proc)


def _search_cmd(out: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autoselect", "search", *COMMON, "--address", address, "--out", str(out), *extra]


def _run(out: Path, address: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_search_cmd(out, address, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _finished(db: Path) -> list[int]:
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(db) as con:
            return [n for (n,) in con.execute("SELECT number FROM trials WHERE state IN ('COMPLETE', 'PRUNED')")]
    except sqlite3.OperationalError:  # the study is being created
        return []


def test_search_runs_across_two_nodes_and_matches_the_local_backend(cluster, tmp_path):
    out = tmp_path / "ray"
    r = _run(out, cluster, "--trials", "5", "--max-concurrent", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("study.db", "trials.csv", "pareto.csv", "pareto.png", "plan.json", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "ray" and summary["ray"]["nodes"] == 2
    assert summary["ray"]["nodes_used"] == 2  # one CPU per node, two trials at once: both nodes ran trials
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 5 and set(trials["state"]) <= {"complete", "pruned"}
    assert summary["complete"] + summary["pruned"] == 5

    # the same search with the local backend, from the same FP32 weights: the prior's plans score the same
    local = tmp_path / "local"
    assert main(["search", *SMALL, "--target", "generic-pt", "--weight-bits", "4", "--trials", "4",
                 "--weights", str(out / "fp32.pt"), "--out", str(local)]) == 0
    ours = trials[trials["source"] == "prior"].set_index("trial")
    theirs = pd.read_csv(local / "trials.csv").set_index("trial")
    assert len(ours) == 4
    for n, row in ours.iterrows():
        assert row["retrained"] == pytest.approx(theirs.loc[n, "retrained"])
        assert row["latency"] == pytest.approx(theirs.loc[n, "latency"])
        assert row["top1"] == pytest.approx(theirs.loc[n, "top1"], abs=2.0)  # 1 vs 2 torch threads: rounding


def _trial_workers() -> list[int]:
    """PIDs of Ray worker processes running a Tune trial right now (their title is `ray::ImplicitFunc.train`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::ImplicitFunc.train"):
                pids.append(int(entry.name))
    return pids


def test_trial_worker_killed_mid_trial_is_retried_and_the_search_finishes(cluster, tmp_path):
    out = tmp_path / "fault"
    n = 5
    proc = subprocess.Popen(_search_cmd(out, cluster, "--trials", str(n), "--proxy-steps", "300",
                                        "--eval-every", "50", "--no-prune"),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 240
    try:
        while killed is None and time.time() < deadline and proc.poll() is None:
            # wait for a trial that trains (the prior's first plan, all frozen, finishes at once)
            workers = _trial_workers() if len(_finished(out / "study.db")) >= 1 else []
            if workers:
                time.sleep(1.0)  # mid-trial
                if workers[0] in _trial_workers():
                    os.kill(workers[0], signal.SIGKILL)
                    killed = workers[0]
            time.sleep(0.2)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no trial worker was seen running"
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ray"]["retried"] >= 1  # Tune saw the worker die and ran the trial again
    assert summary["failed"] == 0 and summary["complete"] + summary["pruned"] == n  # ... and the retry finished
    trials = pd.read_csv(out / "trials.csv")
    finished = trials[trials["state"].isin(["complete", "pruned"])]
    assert len(finished) == n
    assert trials["retries"].fillna(0).sum() >= 1  # the retried trial says so
    with sqlite3.connect(out / "study.db") as con:
        done = {k: v for k, v in con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state")}
    assert done.get("RUNNING", 0) == 0
    assert done.get("COMPLETE", 0) + done.get("PRUNED", 0) == len(finished)  # every finished trial is in the CSV


def test_killed_ray_search_resumes_without_redoing_finished_trials(cluster, tmp_path):
    out = tmp_path / "resume"
    proc = subprocess.Popen(_search_cmd(out, cluster, "--trials", "40", "--proxy-steps", "100", "--no-prune"),
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while len(_finished(out / "study.db")) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = _finished(out / "study.db")
    assert 3 <= len(before) < 40, "the search did not finish 3 trials in time"
    with sqlite3.connect(out / "study.db") as con:
        values_before = set(con.execute("SELECT trial_id, objective, value FROM trial_values"))
    n = len(before) + 2
    r = _run(out, cluster, "--trials", str(n), "--resume", "--no-prune")
    assert r.returncode == 0, r.stderr[-2000:]
    after = _finished(out / "study.db")
    assert set(before) <= set(after) and len(after) == n
    with sqlite3.connect(out / "study.db") as con:
        values_after = set(con.execute("SELECT trial_id, objective, value FROM trial_values"))
        running = con.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    assert values_before <= values_after and running == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ray"]["ran"] == 2  # only the missing trials ran again
