"""`autoselect search --backend ray` on a real two-node Ray cluster started here: a head on 127.0.0.1 and a worker
node, each a `ray start --block` process of its own. Covers the search across both nodes, a trial worker killed
with SIGKILL mid-trial, and a killed driver resumed with --resume. Marked `ray` (skip with -m "not ray")."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from autoselect.cli import main
from autoselect.search.local_cluster import LocalCluster, trial_workers

from .helpers import finished_trials, kill_when_finished
from .test_search import SMALL

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
COMMON = [*SMALL, "--target", "generic-pt", "--weight-bits", "4", "--backend", "ray"]


@pytest.fixture(scope="module")
def empty_home(tmp_path_factory) -> Path:
    """A home directory that has never run Ray: every Ray test runs as a stranger's first run would."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def ray_cluster(empty_home) -> Iterator[LocalCluster]:
    env = {"PYTHONPATH": str(ROOT), "HOME": str(empty_home)}
    with LocalCluster(workers=1, cpus_per_node=1, env=env, cwd=ROOT) as cluster:
        yield cluster


def test_local_cluster_needs_no_ray_state_and_leaves_none(ray_cluster, empty_home):
    """The two-node cluster came up with HOME an empty folder: its token is its own, in its own folder; nothing
    is written into that HOME (no ~/.ray/auth_token) and no token from elsewhere is used."""
    env = ray_cluster.env
    assert env["HOME"] == str(empty_home) and env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in env
    token = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert token.parent == ray_cluster.workdir and len(token.read_text()) == 64
    assert token.stat().st_mode & 0o077 == 0  # private to this user
    assert ray_cluster.alive_nodes() == 2
    assert not (empty_home / ".ray").exists()
    # a driver without the cluster's token is refused: authentication is really on
    stranger = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN_PATH",)}
    code = f"import ray; ray.init(address={ray_cluster.address!r})"
    r = subprocess.run([sys.executable, "-c", code], env=stranger, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "token" in (r.stdout + r.stderr).lower()


def test_a_node_that_fails_to_start_says_why(tmp_path):
    cluster = LocalCluster(workers=0, cpus_per_node=-1, env={"HOME": str(tmp_path)}, timeout=60)
    with pytest.raises(RuntimeError) as exc:
        with cluster:
            pass
    msg = str(exc.value)
    assert "head did not start (exited with status" in msg
    assert "Resource quantities must be nonnegative" in msg  # ray start's own error, from its output
    assert not cluster.workdir.exists()  # the token folder goes with the cluster


def test_local_ray_instance_writes_nothing_into_home_and_streams_a_folder_by_reference(tmp_path):
    """--backend ray without --address starts a local instance; Ray 2.59+ would write ~/.ray/auth_token for it.
    The data is a folder streamed from disk: the trials get it by reference, not its pixels."""
    home = tmp_path / "home"
    home.mkdir()
    data = _digits_folder(tmp_path / "digits")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "autoselect", "search", *COMMON, "--trials", "2", "--out", str(out),
           "--data", str(data), "--data-mode", "stream", "--workers", "1"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "plan.json").is_file()
    assert not (home / ".ray").exists()
    assert "streamed from disk (1 loader worker)" in r.stderr
    ray_run = json.loads((out / "summary.json").read_text())["ray"]
    pixels = 400 * 3 * 32 * 32  # what the in-memory path ships for the proxy's training images alone
    assert 0 < ray_run["data_bytes"] < pixels / 20 and ray_run["setup_bytes"] > ray_run["data_bytes"]
    assert len(pd.read_csv(out / "trials.csv")) == 2


@pytest.fixture(scope="module")
def cluster(ray_cluster) -> str:
    return ray_cluster.address


@pytest.fixture(scope="module")
def env(ray_cluster) -> dict[str, str]:
    return ray_cluster.env


def _search_cmd(out: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autoselect", "search", *COMMON, "--address", address, "--out", str(out), *extra]


def _run(out: Path, address: str, env: dict, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_search_cmd(out, address, *extra), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_search_runs_across_two_nodes_and_matches_the_local_backend(cluster, env, tmp_path):
    out = tmp_path / "ray"
    proxy = ["--proxy-steps", "200", "--eval-every", "50"]  # trials long enough that both nodes start one
    r = _run(out, cluster, env, "--trials", "5", "--max-concurrent", "2", *proxy)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("study.db", "trials.csv", "pareto.csv", "pareto.png", "plan.json", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "ray" and summary["ray"]["nodes"] == 2
    assert summary["ray"]["nodes_used"] == 2  # one CPU per node, two trials at once: both nodes ran trials
    assert summary["ray"]["data_bytes"] > 400 * 3 * 32 * 32  # digits in memory: the pixels travel
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 5 and set(trials["state"]) <= {"complete", "pruned"}
    assert summary["complete"] + summary["pruned"] == 5

    # the same search with the local backend, from the same FP32 weights: the prior's plans score the same
    local = tmp_path / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray trial (--cpus-per-trial 1): the same arithmetic, the same results
    try:
        assert main(["search", *SMALL, "--target", "generic-pt", "--weight-bits", "4", "--trials", "4", *proxy,
                     "--weights", str(out / "fp32.pt"), "--out", str(local)]) == 0
    finally:
        torch.set_num_threads(threads)
    ours = trials[trials["source"] == "prior"].set_index("trial")
    theirs = pd.read_csv(local / "trials.csv").set_index("trial")
    assert len(ours) == 4
    for n, row in ours.iterrows():
        assert row["retrained"] == pytest.approx(theirs.loc[n, "retrained"])
        assert row["latency"] == pytest.approx(theirs.loc[n, "latency"])
        assert row["top1"] == pytest.approx(theirs.loc[n, "top1"])


def test_a_killed_trial_worker_is_retried_and_a_killed_search_resumes_without_redoing_finished_trials(
        cluster, env, tmp_path):
    """Two faults in one search: a trial worker SIGKILLed mid-trial is retried by Tune and its trial finishes; then
    the driver itself is SIGKILLed, and --resume runs only the missing trials (finished ones, the retried one
    included, are kept with their values)."""
    out = tmp_path / "fault"
    db = out / "study.db"
    proc = subprocess.Popen(_search_cmd(out, cluster, "--trials", "40", "--proxy-steps", "300", "--eval-every", "50",
                                        "--no-prune"),
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 300
    try:
        while killed is None and time.time() < deadline and proc.poll() is None:
            # wait for a trial that trains (the prior's first plan, all frozen, finishes at once)
            workers = trial_workers() if len(finished_trials(db)) >= 1 else []
            if workers:
                time.sleep(1.0)  # mid-trial
                if workers[0] in trial_workers():
                    os.kill(workers[0], signal.SIGKILL)
                    killed = workers[0]
            time.sleep(0.2)
        # then wait until the retried trial and two more have finished, and kill the driver
        while time.time() < deadline and proc.poll() is None and (len(finished_trials(db)) < 4 or not _retried(db)):
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    assert killed is not None, "no trial worker was seen running"
    assert proc.returncode == -signal.SIGKILL, f"the search ended before it was killed: {stderr[-2000:]}"
    before = finished_trials(db)
    assert 4 <= len(before) < 40 and _retried(db), "the retried trial did not finish in time"
    with sqlite3.connect(db) as con:
        values_before = set(con.execute("SELECT trial_id, objective, value FROM trial_values"))

    n = len(before) + 2
    r = _run(out, cluster, env, "--trials", str(n), "--resume", "--no-prune")
    assert r.returncode == 0, r.stderr[-2000:]
    after = finished_trials(db)
    assert set(before) <= set(after) and len(after) == n
    with sqlite3.connect(db) as con:
        values_after = set(con.execute("SELECT trial_id, objective, value FROM trial_values"))
        states = {k: v for k, v in con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state")}
    assert values_before <= values_after and states.get("RUNNING", 0) == 0
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == n  # every finished trial is in the study
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ray"]["ran"] == 2  # only the missing trials ran again
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials[trials["state"].isin(["complete", "pruned"])]) == n
    assert trials["retries"].fillna(0).sum() >= 1  # the retried trial says so, after the resume too


def _retried(db: Path) -> bool:
    """Whether a finished trial of the study ``db`` records a retry (Tune re-ran it after its worker died)."""
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db) as con:
            rows = con.execute("SELECT a.value_json FROM trial_user_attributes a JOIN trials t ON a.trial_id = t.trial_id "
                               "WHERE a.key = 'retries' AND t.state IN ('COMPLETE', 'PRUNED')").fetchall()
    except sqlite3.OperationalError:  # the schema is not written yet
        return False
    return any(json.loads(v) >= 1 for (v,) in rows)


def test_search_through_ray_client_returns_its_outputs_and_resumes_after_the_client_is_killed(ray_cluster, env,
                                                                                                   tmp_path):
    """--address ray://: the search runs in a task on the head node, its outputs come back here; a killed client
    resumes from the head node's copy of the study."""
    from autoselect.search.ray_client import WORK_ROOT, work_key

    out = tmp_path / "client"
    head_work = Path(tempfile.gettempdir()) / WORK_ROOT / work_key(out)
    client_env = dict(env, RAY_CLIENT_RECONNECT_GRACE_PERIOD="3")  # the killed client's task stops 3 s later
    address = ray_cluster.client_address
    r = _run(tmp_path / "empty", address, client_env, "--trials", "2", "--resume")
    assert r.returncode == 2 and "nothing to resume" in r.stderr, r.stderr[-2000:]  # one line, before any work
    before = kill_when_finished(_search_cmd(out, address, "--trials", "40", "--proxy-steps", "100", "--no-prune"),
                                head_work / "study.db", 2, cwd=ROOT, env=client_env)
    assert 2 <= len(before) < 40, "the search did not finish 2 trials on the head node in time"
    assert not (out / "study.db").exists()  # outputs come back at the end only
    n = len(before) + 1
    r = _run(out, address, client_env, "--trials", str(n), "--resume", "--no-prune")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("study.db", "trials.csv", "pareto.csv", "pareto.png", "plan.json", "summary.json", "profile"):
        assert (out / name).exists(), name  # written here, by the client
    assert not head_work.exists()  # the head node's work folder is removed once its files came back
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ray_client"]["origin"].startswith("resuming from the head node's copy")
    assert summary["ray"]["nodes"] == 2 and summary["ray"]["ran"] == 1
    after = finished_trials(out / "study.db")
    assert set(before) <= set(after) and len(after) == n
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials[trials["state"].isin(["complete", "pruned"])]) == n
    plan = json.loads((out / "plan.json").read_text())
    assert plan["model"]["name"]


def _digits_folder(root: Path) -> Path:
    from PIL import Image

    from autoselect.data import load_images

    for split in ("train", "test"):
        data = load_images("digits", split=split, input_size=32)
        for i, (img, label) in enumerate(zip(data.images, data.labels.tolist())):
            (root / split / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / split / str(label) / f"{i}.png")
    return root
