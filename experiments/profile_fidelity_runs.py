"""The profile's fidelity (issue 15, item 4) for finished searches: each profile metric's Spearman with the groups'
QAT benefit measured from the search's own trials (what a search now reports itself, computed for runs made before).

    python experiments/profile_fidelity_runs.py experiments/results/confirm_w4pca4_s{0,1,2}
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import pandas as pd
from _common import RESULTS, save_result

from autoselect.models import build_layer_graph, load_model
from autoselect.search.confirm import config_from_dict
from autoselect.search.fidelity import describe, profile_fidelity
from autoselect.search.noise import unpack
from autoselect.search.run import _space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=str(RESULTS / "profile_fidelity.json"))
    args = ap.parse_args()
    report = {"date": date.today().isoformat(), "runs": {}}
    for run in map(Path, args.runs):
        summary = json.loads((run / "summary.json").read_text())
        cfg = config_from_dict(summary["config"])
        lm = load_model(cfg.model, weights=cfg.weights or str(run / "fp32.pt"))
        graph = build_layer_graph(lm.model, (1, 3, lm.input_size, lm.input_size))
        space, _ = _space(cfg, summary["target"])
        groups = space.groups(graph.layers)
        layers = pd.read_csv(run / "profile" / "layers.csv")
        rank_by = json.loads((run / "profile" / "summary.json").read_text())["rank_by"]
        ptq = summary.get("ptq_val_correct")
        fid = profile_fidelity(layers, groups, pd.read_csv(run / "trials.csv"),
                               ptq_correct=unpack(ptq) if ptq else None)
        print(f"{run.name}: {describe(fid, rank_by)}")
        table = fid.pop("table")
        report["runs"][str(run)] = {**fid, "rank_by": rank_by, "table": table.to_dict("records")}
    save_result(args.out, report)


if __name__ == "__main__":
    main()
