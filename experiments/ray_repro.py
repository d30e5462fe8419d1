"""What differs when the same search runs on Ray (issue 15, item 3): the same command and seed, local backend against
a local Ray instance with one trial at a time and with two at a time (twice), on the tiny test network and the
embedded digits.

For each pair of runs: how many trials have the same parameters, and of those, the same top-1 and the same per-image
results. ``--out``/ray_repro.json.

    python experiments/ray_repro.py
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

import pandas as pd
import torch
from _common import RESULTS, save_result

from autoselect.cli import main as cli

SMALL = ["--model", "tests.helpers:tiny_net", "--quiet", "--data", "digits", "--baseline-epochs", "8",
         "--proxy-steps", "30", "--proxy-batch", "32", "--eval-every", "10", "--val-images", "120",
         "--train-images", "400", "--profile-images", "64", "--calib-images", "64", "--target", "generic-pt",
         "--weight-bits", "4", "--seed", "0"]


def _compare(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    a, b = a.set_index("trial"), b.set_index("trial")
    common = a.index.intersection(b.index)
    same = [t for t in common if a.loc[t, "params"] == b.loc[t, "params"]]
    done = [t for t in same if a.loc[t, "state"] == b.loc[t, "state"] == "complete"]
    return {"trials": len(common), "same_params": len(same), "complete_both": len(done),
            "same_top1": int(sum(a.loc[t, "top1"] == b.loc[t, "top1"] for t in done)),
            "same_per_image": int(sum(a.loc[t, "val_correct"] == b.loc[t, "val_correct"] for t in done)),
            "max_top1_diff": float(max((abs(a.loc[t, "top1"] - b.loc[t, "top1"]) for t in done), default=0.0)),
            "first_different_params": next((int(t) for t in common if a.loc[t, "params"] != b.loc[t, "params"]),
                                           None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--out", default=str(RESULTS / "ray_repro"))
    args = ap.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)  # as each Ray trial (--cpus-per-trial 1): the same arithmetic
    runs = {"local": [], "ray_c1": ["--backend", "ray", "--max-concurrent", "1"],
            "ray_c2_a": ["--backend", "ray", "--max-concurrent", "2"],
            "ray_c2_b": ["--backend", "ray", "--max-concurrent", "2"]}
    weights: list[str] = []
    frames = {}
    for name, extra in runs.items():
        if (out / name / "summary.json").is_file():  # a finished run is kept
            frames[name] = pd.read_csv(out / name / "trials.csv")
            weights = ["--weights", str(out / "local" / "fp32.pt")]
            continue
        rc = cli(["search", *SMALL, "--trials", str(args.trials), *weights, *extra, "--out", str(out / name)])
        if rc != 0:
            raise SystemExit(f"{name}: exit {rc}")
        weights = ["--weights", str(out / "local" / "fp32.pt")]
        frames[name] = pd.read_csv(out / name / "trials.csv")
    report = {"date": date.today().isoformat(), "trials": args.trials, "args": SMALL,
              "pairs": {f"{a} vs {b}": _compare(frames[a], frames[b])
                        for a, b in (("local", "ray_c1"), ("local", "ray_c2_a"), ("ray_c2_a", "ray_c2_b"))}}
    for pair, r in report["pairs"].items():
        print(f"{pair}: {r}")
    save_result(out / "ray_repro.json", report)


if __name__ == "__main__":
    main()
