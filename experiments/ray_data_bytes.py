"""Issue 16: what a Ray search puts in the object store, data in memory (pixels) against a streamed folder (paths).

On a two-node cluster on this machine (``LocalCluster``: a head and a worker node, 1 CPU each), the same short
search runs twice on the same ImageFolder, ``--data-mode memory`` and ``--data-mode stream``, and the script reports
``summary.json``'s ``ray.setup_bytes`` (the TrialSetup put once for all trials) and ``ray.data_bytes`` (its data
sets), the nodes used and the wall time.

    python experiments/ray_data_bytes.py --data /tmp/synth20k --input-size 224 --train-images 2000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from autoselect.search.local_cluster import LocalCluster

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURE = ROOT.parent / "shared" / "fixtures" / "mobilenet_v2_cifar10_fp32.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=128)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--work", default="/tmp/ray_data_bytes")
    p.add_argument("--out", default=str(HERE / "results" / "ray_data_bytes.json"))
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python", *sys.argv]),
                 "runs": {}}
    with LocalCluster(workers=1, cpus_per_node=1, env={"PYTHONPATH": str(ROOT)}, cwd=ROOT) as cluster:
        for mode in ("memory", "stream"):
            out = work / mode
            cmd = [sys.executable, "-m", "autoselect", "search", "--model", "mobilenet_v2", "--weights", str(FIXTURE),
                   "--input-size", str(args.input_size), "--data", args.data, "--data-mode", mode, "--workers", "1",
                   "--target", "generic", "--latency", "cost", "--trials", str(args.trials), "--proxy-steps", "4",
                   "--proxy-batch", "8", "--eval-every", "4", "--val-images", str(args.val_images),
                   "--train-images", str(args.train_images), "--profile-images", "64", "--calib-images", "64",
                   "--backend", "ray", "--address", cluster.address, "--max-concurrent", "2", "--quiet",
                   "--out", str(out)]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"search ({mode}) failed:\n{r.stderr[-3000:]}")
            ray = json.loads((out / "summary.json").read_text())["ray"]
            res["runs"][mode] = {"seconds": round(time.perf_counter() - t0, 1), "setup_bytes": ray["setup_bytes"],
                                 "data_bytes": ray["data_bytes"], "nodes_used": ray["nodes_used"]}
            print(mode, res["runs"][mode], file=sys.stderr)
    m, s = res["runs"]["memory"], res["runs"]["stream"]
    res["data_bytes_ratio"] = round(m["data_bytes"] / max(1, s["data_bytes"]), 1)
    text = json.dumps(res, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
