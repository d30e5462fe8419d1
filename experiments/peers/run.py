"""Peer PTQ benchmark: run each peer tool's documented post-training quantization pipelines, each in its own venv,
on the same FP32 checkpoint, calibration images and test images, and write one table.

    python experiments/peers/run.py --setup                     # create the venvs, install requirements/, run all
    python experiments/peers/run.py --peers brevitas,nncf --regimes w4pc --test-images 500 --calib-images 256

Every (peer, pipeline, regime) row runs as its own subprocess (``<venv python> peer_<peer>.py --pipelines P
--regimes R ...``), writes results/raw/<peer>__<pipeline>__<regime>.json, and the tables results/peers.csv and
results/peers.md are rewritten (atomically) after every row. Logs: results/logs/. The runner itself needs only the
standard library; the 'fp32' and 'autoselect' rows run with the python that runs this script.
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime as _dt
import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
REQS = HERE / "requirements"

# peer -> (script, venv name under .venvs/ with requirements/<venv>.txt, or None: the python running this script)
PEERS: dict[str, tuple[str, str | None]] = {
    "fp32": ("peer_fp32.py", None),
    "aimet": ("peer_aimet.py", "aimet"),
    "brevitas": ("peer_brevitas.py", "brevitas"),
    "nncf": ("peer_nncf.py", "nncf"),
    "mct": ("peer_mct.py", "mct"),
    "torchao": ("peer_torchao.py", "torchao"),
    "autoselect": ("peer_autoselect.py", None),
}
DEFAULT_PEERS = list(PEERS)
COLUMNS = ["peer", "pipeline", "regime", "top1", "calib_seconds", "test_images", "calib_images",
           "settings/differences", "status"]


# --------------------------------------------------------------------------------------------------- discovery
def _literal(path: Path, name: str):
    """The literal value assigned to ``name`` at module level of ``path`` (read with ast, nothing imported)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            value = node.value
            if isinstance(value, ast.Dict):  # REGIMES = {"w8pt": Regime(...), ...}: the keys
                return [ast.literal_eval(k) for k in value.keys]
            return ast.literal_eval(value)
    raise KeyError(f"{name} not found in {path}")


ALL_REGIMES: list[str] = _literal(HERE / "common.py", "REGIMES")


def peer_pipelines(peer: str) -> list[str]:
    return _literal(HERE / PEERS[peer][0], "PIPELINES") if peer != "fp32" else ["fp32"]


def peer_python(peer: str) -> Path:
    venv = PEERS[peer][1]
    return Path(sys.executable) if venv is None else VENVS / venv / "bin" / "python"


# --------------------------------------------------------------------------------------------------- setup
def _req_hash(req: Path) -> str:
    return hashlib.sha256(req.read_bytes()).hexdigest()


def setup_venv(peer: str) -> None:
    venv = PEERS[peer][1]
    if venv is None:
        return
    req = REQS / f"{venv}.txt"
    path = VENVS / venv
    stamp = path / ".requirements.sha256"
    if not (path / "bin" / "python").exists():
        print(f"[setup] creating {path} (--system-site-packages, base {sys.executable})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True)
    if stamp.exists() and stamp.read_text().strip() == _req_hash(req):
        print(f"[setup] {venv}: requirements already installed", flush=True)
        return
    print(f"[setup] {venv}: pip install -r {req.relative_to(HERE)}", flush=True)
    subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-r", str(req)], check=True)
    stamp.write_text(_req_hash(req) + "\n")


# --------------------------------------------------------------------------------------------------- table
def _fmt(v, nd: int) -> str:
    return "" if v is None else f"{float(v):.{nd}f}"


def table_row(res: dict) -> dict:
    notes = res.get("settings") or ""
    diffs = res.get("differences") or []
    if diffs:
        notes += (" | differs: " if notes else "differs: ") + "; ".join(diffs)
    if res.get("status") != "ok" and res.get("reason"):
        notes = (res["reason"] + (" | " + notes if notes else ""))
    status = res.get("status", "failed")
    return {"peer": res.get("peer"), "pipeline": res.get("pipeline"), "regime": res.get("regime"),
            "top1": _fmt(res.get("top1"), 2), "calib_seconds": _fmt(res.get("calib_seconds"), 1),
            "test_images": res.get("test_images", ""), "calib_images": res.get("calib_images", ""),
            "settings/differences": notes, "status": status}


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _order(res: dict) -> tuple:
    """Canonical row order: peers as in PEERS, pipelines as in the peer script, regimes as in common.REGIMES."""
    peer, pipe, reg = res.get("peer"), res.get("pipeline"), res.get("regime")
    names = list(PEERS)
    try:
        pipes = peer_pipelines(peer) if peer in PEERS else []
    except (KeyError, OSError, SyntaxError):
        pipes = []
    return (names.index(peer) if peer in names else len(names), pipes.index(pipe) if pipe in pipes else len(pipes),
            str(pipe), ALL_REGIMES.index(reg) if reg in ALL_REGIMES else -1)


def write_tables(results: list[dict], out_dir: Path, header: list[str]) -> None:
    rows = [table_row(r) for r in sorted(results, key=_order)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_write(out_dir / "peers.csv", buf.getvalue())

    def cell(s) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    md = ["# Peer PTQ benchmark", ""] + header + [""]
    md.append("| " + " | ".join(COLUMNS) + " |")
    md.append("|" + "|".join("---" if c != "top1" and c != "calib_seconds" else "---:" for c in COLUMNS) + "|")
    for r in rows:
        md.append("| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |")
    _atomic_write(out_dir / "peers.md", "\n".join(md) + "\n")


# --------------------------------------------------------------------------------------------------- running
def common_args(args: argparse.Namespace, raw_dir: Path) -> list[str]:
    a = ["--checkpoint", args.checkpoint, "--calib-images", str(args.calib_images),
         "--calib-seed", str(args.calib_seed),
         "--test-images", str(args.test_images), "--calib-batch-size", str(args.calib_batch_size),
         "--adaround-iters", str(args.adaround_iters), "--threads", str(args.threads), "--out-dir", str(raw_dir)]
    if args.data:
        a += ["--data", args.data]
    return a


def _tail(path: Path, n: int = 20) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return lines[-n:]


def _last_error_line(lines: list[str]) -> str:
    for line in reversed(lines):
        s = line.strip()
        if s and not s.startswith("File ") and not s.startswith("^") and not s.startswith("~"):
            return s[:300]
    return ""


def run_row(args, peer: str, pipeline: str, regime: str, raw_dir: Path, log_dir: Path) -> dict:
    base = {"peer": peer, "pipeline": pipeline, "regime": regime, "test_images": min(args.test_images, 10000),
            "calib_images": args.calib_images}
    py = peer_python(peer)
    if not py.exists():
        return {**base, "status": "failed", "reason": f"venv missing ({py}); run with --setup"}
    name = f"{peer}__{pipeline}__{regime}"
    result_file = raw_dir / f"{name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [str(py), str(HERE / PEERS[peer][0]), *common_args(args, raw_dir)]
    if peer != "fp32":
        cmd += ["--pipelines", pipeline, "--regimes", regime]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONUNBUFFERED="1")
    out_log, err_log = log_dir / f"{name}.out", log_dir / f"{name}.err"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(out_log, "w") as fo, open(err_log, "w") as fe:
        fe.write("$ " + shlex.join(cmd) + "\n")
        fe.flush()
        try:
            rc = subprocess.run(cmd, stdout=fo, stderr=fe, env=env, cwd=str(HERE),
                                timeout=args.row_timeout or None).returncode
        except subprocess.TimeoutExpired:
            rc = None
    res = json.loads(result_file.read_text()) if result_file.exists() else None
    if rc == 0 and res is not None:
        return res
    tail = _tail(err_log)
    if rc is None:
        reason = f"timeout after {args.row_timeout}s"
    elif any("NotImplementedError" in line for line in tail):
        out = {**base, "status": "not run", "reason": _last_error_line(tail)}
        _atomic_write(result_file, json.dumps(out, indent=2) + "\n")
        return out
    else:
        reason = (res or {}).get("reason") or _last_error_line(tail) or f"exit code {rc}"
    print(f"    --- {name} failed (exit {rc}); last 20 lines of {err_log}:", flush=True)
    for line in tail:
        print("    | " + line, flush=True)
    out = dict(res or base)
    out.update(status="failed", reason=reason)
    _atomic_write(result_file, json.dumps(out, indent=2) + "\n")  # so that --merge / --table-only keep it
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default=",".join(DEFAULT_PEERS), help="comma list of " + ",".join(PEERS))
    ap.add_argument("--regimes", default=",".join(ALL_REGIMES), help="comma list of " + ",".join(ALL_REGIMES))
    ap.add_argument("--pipelines", default="",
                    help="optional filter: comma list of PIPELINE or PEER:PIPELINE (default: every pipeline)")
    ap.add_argument("--checkpoint", default=str(HERE.parents[1].parent / "shared" / "fixtures"
                                                / "mobilenet_v2_cifar10_fp32.pt"))
    ap.add_argument("--data", default="", help="CIFAR-10 ImageFolder root (default: common.py's)")
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--calib-images", type=int, default=1024)
    ap.add_argument("--calib-seed", type=int, default=0,
                    help="RandomState seed of the calibration subset (other seeds: give another --results-dir)")
    ap.add_argument("--calib-batch-size", type=int, default=32)
    ap.add_argument("--adaround-iters", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2, help="torch / OMP threads of each peer process")
    ap.add_argument("--row-timeout", type=float, default=0, help="seconds per row (0: none)")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--merge", action="store_true",
                    help="keep in the table the rows of earlier runs (results/raw) that this run does not redo")
    ap.add_argument("--table-only", action="store_true", help="rebuild the tables from results/raw, run nothing")
    ap.add_argument("--setup", action="store_true", help="create missing venvs and install requirements first")
    ap.add_argument("--dry-run", action="store_true", help="print the rows that would run")
    args = ap.parse_args(argv)

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        ap.error(f"unknown peers {bad}; known: {list(PEERS)}")
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    bad = [r for r in regimes if r not in ALL_REGIMES]
    if bad:
        ap.error(f"unknown regimes {bad}; known: {ALL_REGIMES}")
    filt = [f.strip() for f in args.pipelines.split(",") if f.strip()]

    out_dir = Path(args.results_dir)
    raw_dir, log_dir = out_dir / "raw", out_dir / "logs"
    header = [f"- command: `python {shlex.join(['experiments/peers/run.py'] + (argv if argv is not None else sys.argv[1:]))}`",
              f"- finished: {{finished}}; checkpoint `{Path(args.checkpoint).name}`; "
              f"{args.calib_images} calibration images (RandomState({args.calib_seed}) permutation of the sorted "
              "train paths), "
              f"{min(args.test_images, 10000)} test images; {args.threads} thread(s) per peer process",
              "- top1: % on the test images with each tool's own simulated-quantization (fake-quant) model; "
              "calib_seconds: wall time of the PTQ algorithm itself (graph capture, calibration, CLE/BC/GPTQ/"
              "AdaRound/search), evaluation excluded",
              "- regimes: w8pt/w5pt/w4pt = 8/5/4-bit per-tensor symmetric weights, w4pc = 4-bit per-channel; "
              "activations 8-bit asymmetric per-tensor, except w4pca4 (4-bit per-channel weights, 4-bit "
              "activations); raw JSON per row in results/raw/"]

    if args.table_only:
        results = [json.loads(p.read_text()) for p in sorted(raw_dir.glob("*.json"))]
        header = [f"- rebuilt from {len(results)} raw results by `python experiments/peers/run.py --table-only`; "
                  "each row's calibration and test image counts are in its columns"] + header[2:]
        write_tables(results, out_dir, header)
        print(f"wrote {out_dir / 'peers.csv'} and {out_dir / 'peers.md'} ({len(results)} rows)")
        return 0

    if args.setup:
        for p in peers:
            setup_venv(p)

    rows: list[tuple[str, str, str]] = []
    for p in peers:
        pipes = peer_pipelines(p)
        if filt:
            pipes = [x for x in pipes if x in filt or f"{p}:{x}" in filt]
        for pipe in pipes:
            for r in (["fp32"] if p == "fp32" else regimes):
                rows.append((p, pipe, r))
    if args.dry_run:
        for row in rows:
            print(" ".join(row))
        return 0
    print(f"{len(rows)} rows: peers {','.join(peers)}; regimes {','.join(regimes)}; "
          f"{args.calib_images} calib / {min(args.test_images, 10000)} test images; {args.threads} thread(s)",
          flush=True)

    done: dict[tuple[str, str, str], dict] = {}
    if args.merge:
        for path in sorted(raw_dir.glob("*.json")):
            res = json.loads(path.read_text())
            done[(res["peer"], res["pipeline"], res["regime"])] = res
    t_all = time.perf_counter()
    for i, (p, pipe, r) in enumerate(rows, 1):
        t0 = time.perf_counter()
        res = run_row(args, p, pipe, r, raw_dir, log_dir)
        done.pop((p, pipe, r), None)
        done[(p, pipe, r)] = res
        top1 = f"top1 {res['top1']:.2f}%" if res.get("top1") is not None else res.get("status", "?")
        calib = f"calib {res['calib_seconds']:.1f}s" if res.get("calib_seconds") is not None else ""
        extra = f" ({res.get('reason')})" if res.get("status") != "ok" and res.get("reason") else ""
        print(f"[{i:>3}/{len(rows)}] {p:<10} {pipe:<13} {r:<5} {top1:<14} {calib:<14} "
              f"wall {time.perf_counter() - t0:.0f}s{extra}", flush=True)
        now = _dt.datetime.now().isoformat(timespec="seconds")
        write_tables(list(done.values()), out_dir, [h.replace("{finished}", now) for h in header])
    n_ok = sum(1 for k in rows if done[k].get("status") == "ok")
    print(f"done: {n_ok}/{len(rows)} rows ok in {time.perf_counter() - t_all:.0f}s -> "
          f"{out_dir / 'peers.csv'}, {out_dir / 'peers.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
