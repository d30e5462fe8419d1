"""Issue 5: the Ray backend on this machine: 1 vs 2 concurrent trials, and a fault test on a two-node cluster.

Phase ``concurrency``: the same N-trial search (reference MobileNetV2, CIFAR-10 copy; no pruning and the seeded
random sampler after the prior's plans, so that both runs train the same plans) with ``--max-concurrent 1`` and ``2``, one CPU and one torch thread per trial, on a local Ray instance.
The second run reuses the first's profile, so that the ratio compares the trials. Optionally (``--local``) the
local backend (trials one after another, 2 torch threads) as a reference.

Phase ``fault``: a two-node cluster on this machine (``LocalCluster``: a head and a worker node, 1 CPU each, each a
``ray start --block`` process); during the search one trial's worker process is killed with SIGKILL, and later
the whole worker node. Reports trials launched, retried, failed, finished and present in ``trials.csv``.

    cd experiments && python ray_bench.py --trials 16 --proxy-steps 60 --local
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd
from _common import ROOT, reference_parser, save_result

from autoselect.search.local_cluster import LocalCluster, trial_workers


def _search_args(args, out: Path) -> list[str]:
    return [sys.executable, "-m", "autoselect", "search", "--model", "mobilenet_v2", "--weights", args.weights,
            "--data", args.data, "--target", "generic-pt", "--weight-bits", "5", "--trials", str(args.trials),
            "--proxy-steps", str(args.proxy_steps), "--proxy-batch", str(args.proxy_batch),
            "--eval-every", str(args.eval_every), "--val-images", str(args.val_images),
            "--train-images", str(args.train_images), "--profile-images", "256", "--no-prune", "--sampler", args.sampler, "--quiet",
            "--out", str(out)]


def _timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"search failed ({' '.join(cmd[3:])}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def concurrency(args, out: Path) -> dict:
    runs = {}
    first = None
    for name, extra in [("ray_c1", ["--backend", "ray", "--max-concurrent", "1", "--cpus-per-trial", "1"]),
                        ("ray_c2", ["--backend", "ray", "--max-concurrent", "2", "--cpus-per-trial", "1"]),
                        *([("local", [])] if args.local else [])]:
        run = out / name
        if run.exists():
            shutil.rmtree(run)
        if first is not None:  # the same profile: the comparison is of the trials
            shutil.copytree(first / "profile", run / "profile")
        wall = _timed([*_search_args(args, run), *extra])
        s = json.loads((run / "summary.json").read_text())
        t = pd.read_csv(run / "trials.csv")
        runs[name] = {"wall_s": wall, "trials_s": s["seconds"]["trials"], "trial_sum_s": s["seconds"]["trial_sum"],
                      "complete": s["complete"], "pruned": s["pruned"], "failed": s["failed"],
                      "top1": t["top1"].round(3).tolist(), "ray": s.get("ray")}
        print(f"{name}: wall {wall:.0f} s, trials phase {s['seconds']['trials']:.0f} s", flush=True)
        first = first or run
    c1, c2 = runs["ray_c1"], runs["ray_c2"]
    res = {"runs": runs, "ratio_trials_phase": c2["trials_s"] / c1["trials_s"],
           "ratio_wall": c2["wall_s"] / c1["wall_s"], "same_plans_same_top1": c1["top1"] == c2["top1"]}
    if "local" in runs:
        res["ratio_ray_c2_vs_local_trials_phase"] = c2["trials_s"] / runs["local"]["trials_s"]
    return res


def _finished(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def fault(args, out: Path) -> dict:
    run = out / "fault"
    if run.exists():
        shutil.rmtree(run)
    events = []
    with LocalCluster(workers=1, cpus_per_node=1, env={"PYTHONPATH": str(ROOT)}, cwd=ROOT) as cluster:
        cmd = [*_search_args(args, run), "--backend", "ray", "--address", cluster.address, "--max-failures", "1"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        killed_worker = killed_node = False
        while proc.poll() is None:
            done = _finished(run / "study.db")
            if not killed_worker and done >= 1 and trial_workers():
                time.sleep(5)  # well into the trial
                pids = trial_workers()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed_worker = True
                    events.append({"t_s": time.perf_counter() - t0, "finished": done,
                                   "event": f"SIGKILL trial worker process {pids[0]}"})
            elif killed_worker and not killed_node and done >= 3 and len(trial_workers()) >= 2:
                time.sleep(5)
                LocalCluster.stop_node(cluster.workers[0], kill=True)
                killed_node = True
                events.append({"t_s": time.perf_counter() - t0, "finished": _finished(run / "study.db"),
                               "event": "SIGKILL the worker node (its raylet and workers)"})
            time.sleep(0.5)
        _, stderr = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"fault search failed:\n{stderr[-3000:]}")
    s = json.loads((run / "summary.json").read_text())
    t = pd.read_csv(run / "trials.csv")
    with sqlite3.connect(run / "study.db") as con:
        states = dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    finished = int(t["state"].isin(["complete", "pruned"]).sum())
    return {"events": events, "trials_requested": args.trials, "launched": int(len(t)),
            "retried": s["ray"]["retried"], "failed": s["failed"], "finished": states.get("COMPLETE", 0)
            + states.get("PRUNED", 0), "in_trials_csv": finished, "study_states": states,
            "retries_per_trial": t["retries"].fillna(0).astype(int).tolist(), "nodes_used": s["ray"]["nodes_used"],
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = reference_parser(__doc__, "ray_bench")
    ap.add_argument("--phases", default="concurrency,fault")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--proxy-steps", type=int, default=40)
    ap.add_argument("--proxy-batch", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--val-images", type=int, default=1000)
    ap.add_argument("--train-images", type=int, default=10000)
    ap.add_argument("--sampler", default="random",
                    help="random: the same plans whatever the concurrency (TPE's depend on the pending trials)")
    ap.add_argument("--local", action="store_true", help="also time the local backend (2 torch threads)")
    args = ap.parse_args()
    out = Path(args.out).resolve()  # the searches run from the repository root
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report.update({"date": str(date.today()), "command": " ".join(sys.argv), "cpus": os.cpu_count()})
    for phase in args.phases.split(","):
        report[phase] = {"concurrency": concurrency, "fault": fault}[phase](args, out)
        save_result(report_path, report)
        print(json.dumps({k: v for k, v in report[phase].items() if k != "runs"}, indent=1), flush=True)


if __name__ == "__main__":
    main()
