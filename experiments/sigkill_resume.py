"""Issue 4: a search killed with SIGKILL mid-way, then resumed with ``--resume``: finished trials before and after.

Starts ``autoselect search`` as a child process, waits until its SQLite study holds ``--kill-after`` finished
trials, sends SIGKILL (no chance to clean up), counts the trials by state straight from the database, resumes the
search with ``--resume`` until it holds ``--trials`` finished trials, and checks that every trial finished before
the kill is still there with the same values.

    python experiments/sigkill_resume.py --kill-after 5 --trials 10
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from _common import RESULTS, save_result

ROOT = Path(__file__).resolve().parents[1]


def _states(db: Path) -> dict[str, int]:
    if not db.is_file():
        return {}
    try:
        with sqlite3.connect(db) as con:
            return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    except sqlite3.OperationalError:  # the schema is not written yet
        return {}


def _values(db: Path) -> set[tuple]:
    with sqlite3.connect(db) as con:
        return set(con.execute("SELECT t.number, v.objective, v.value FROM trial_values v JOIN trials t "
                               "ON t.trial_id = v.trial_id").fetchall())


def _finished(states: dict[str, int]) -> int:
    return states.get("COMPLETE", 0) + states.get("PRUNED", 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-after", type=int, default=5, help="finished trials before the kill")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--out", default=str(RESULTS / "sigkill_resume"))
    ap.add_argument("--search-args", default="--model mobilenet_v2 --data digits --target generic-pt --weight-bits 4 "
                                               "--proxy-steps 40 --eval-every 20 --baseline-epochs 8",
                    help="the search's other arguments")
    args = ap.parse_args()
    out = Path(args.out)
    run = out / "search"
    if run.exists():
        sys.exit(f"{run} exists: remove it first")
    db = run / "study.db"
    base = [sys.executable, "-m", "autoselect", "search", *args.search_args.split(), "--out", str(run), "--quiet",
            "--trials", str(args.trials)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(base, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while _finished(_states(db)) < args.kill_after and proc.poll() is None:
        time.sleep(0.2)
    if proc.poll() is not None:
        sys.exit(f"the search ended before the kill (exit {proc.returncode}): {proc.stderr.read()[-500:]}")
    time.sleep(1.0)  # let the next trial get under way, so the kill lands mid-trial
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_s = time.perf_counter() - t0
    before = _states(db)
    values_before = _values(db)
    print(f"killed after {killed_s:.0f} s (exit {proc.returncode}): {before}", flush=True)
    t1 = time.perf_counter()
    rc = subprocess.run([*base, "--resume"], cwd=ROOT, stdout=subprocess.DEVNULL).returncode
    after = _states(db)
    values_after = _values(db)
    print(f"resumed (exit {rc}) in {time.perf_counter() - t1:.0f} s: {after}", flush=True)
    result = {
        "date": str(date.today()), "command": " ".join(base[2:]), "kill_after": args.kill_after,
        "trials": args.trials, "exit_code_killed": proc.returncode, "exit_code_resumed": rc,
        "states_before": before, "states_after": after,
        "finished_before": _finished(before), "finished_after": _finished(after),
        "finished_values_kept": values_before <= values_after,
    }
    save_result(out / "result.json", result)
    print(result)
    if rc != 0 or not result["finished_values_kept"] or result["finished_after"] != args.trials:
        sys.exit("resume lost or changed finished trials")


if __name__ == "__main__":
    main()
