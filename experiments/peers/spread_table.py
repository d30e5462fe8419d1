"""Mean and spread over calibration seeds of the rows spread.sh wrote: one line per (peer, pipeline, regime).

    python experiments/peers/spread_table.py experiments/peers/results_seeds [--out spread.md]

Reads <dir>/seed*/raw/*.json; prints (and with --out writes) a markdown table: top-1 per seed, mean, sample standard
deviation, min-max, and calibration seconds per seed and mean; then, per regime, autoselect's mean minus the best
peer's mean next to the larger of the two standard deviations (a difference below it is a tie).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def load(root: Path) -> dict[tuple[str, str, str], dict[int, dict]]:
    rows: dict[tuple[str, str, str], dict[int, dict]] = defaultdict(dict)
    for path in sorted(root.glob("seed*/raw/*.json")):
        res = json.loads(path.read_text())
        if res.get("status") != "ok" or res.get("top1") is None:
            continue
        seed = int(res.get("calib_seed", path.parts[-3].removeprefix("seed")))
        rows[(res["regime"], res["peer"], res["pipeline"])][seed] = res
    return rows


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def table(rows: dict[tuple[str, str, str], dict[int, dict]]) -> list[str]:
    seeds = sorted({s for per in rows.values() for s in per})
    head = ["regime", "peer", "pipeline", *[f"seed {s}" for s in seeds], "mean", "sd", "calib s (mean)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    means: dict[str, dict[tuple[str, str], tuple[float, float, float]]] = defaultdict(dict)
    for (regime, peer, pipeline), per in sorted(rows.items()):
        top = [per[s]["top1"] for s in seeds if s in per]
        secs = [per[s]["calib_seconds"] for s in seeds if s in per]
        cells = [f"{per[s]['top1']:.2f} ({per[s]['calib_seconds']:.0f} s)" if s in per else "—" for s in seeds]
        mean, sd, sec = statistics.mean(top), _sd(top), statistics.mean(secs)
        means[regime][(peer, pipeline)] = (mean, sd, sec)
        out.append(f"| {regime} | {peer} | {pipeline} | " + " | ".join(cells)
                   + f" | {mean:.2f} | {sd:.2f} | {sec:.0f} |")
    out += ["", "| regime | autoselect | best peer | difference of means | larger sd | time ratio (autoselect / peer) |",
            "|---|---|---|---|---|---|"]
    for regime, per in sorted(means.items()):
        ours = {k: v for k, v in per.items() if k[0] == "autoselect"}
        peers = {k: v for k, v in per.items() if k[0] != "autoselect"}
        if not ours or not peers:
            continue
        (ok, (om, osd, osec)) = max(ours.items(), key=lambda kv: kv[1][0])
        (pk, (pm, psd, psec)) = max(peers.items(), key=lambda kv: kv[1][0])
        out.append(f"| {regime} | {ok[1]} {om:.2f} ± {osd:.2f} | {pk[0]} {pk[1]} {pm:.2f} ± {psd:.2f} | "
                   f"{om - pm:+.2f} | {max(osd, psd):.2f} | {osec / psec:.2f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    lines = table(load(args.root))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
