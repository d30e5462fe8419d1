"""Issue 16: streamed image folders at 224x224 — loader throughput against the model, and peak memory against the
folder's size.

    python experiments/make_image_folder.py --out /tmp/synth20k --images 20000
    python experiments/make_image_folder.py --out /tmp/synth100k --images 100000
    python experiments/streaming_bench.py throughput --data /tmp/synth20k
    python experiments/streaming_bench.py memory --folders /tmp/synth20k /tmp/synth100k

``throughput``: images per second of the streamed loader (2 workers; evaluation and training transforms), of one
FP32 forward pass of the reference MobileNetV2 at 224x224 on the same images already in memory, and of the two together (the loader feeding
the model, as calibration and training run). ``memory``: ``autoselect profile`` and a short ``autoselect search`` on
each folder as subprocesses, sampling the resident memory of the process and of its whole tree (loader workers
included) every 0.1 s; also the command's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent.parent / "shared" / "fixtures" / "mobilenet_v2_cifar10_fp32.pt"


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def throughput(args: argparse.Namespace) -> dict:
    import torch

    from autoselect.data import load_images

    torch.set_num_threads(args.threads)
    files = load_images(args.data, split="train", input_size=args.size, mode="stream", workers=args.workers,
                        limit=args.images, seed=0)
    files.mean  # noqa: B018 - the statistics' sample, decoded once, outside the timings
    out: dict = {"images": len(files), "workers": args.workers, "threads": args.threads, "size": args.size,
                 "batch": args.batch}
    for name, kw in (("loader_eval", {}), ("loader_train", {"shuffle": True, "augment": True})):
        t0 = time.perf_counter()
        n = sum(len(x) for x, _ in files.batches(args.batch, **kw))
        out[name] = _rate(n, time.perf_counter() - t0)
        print(f"{name}: {out[name]} images/s", file=sys.stderr)
    from autoselect.models import load_model

    model = load_model("mobilenet_v2", weights=str(FIXTURE), input_size=args.size).model.eval()
    held = files.in_memory()  # the same images, decoded once: the forward pass alone
    batches = list(held.batches(args.batch))
    with torch.inference_mode():
        model(batches[0][0])
        t0 = time.perf_counter()
        n = 0
        for xb, _ in batches:
            model(xb)
            n += len(xb)
        out["forward_fp32"] = _rate(n, time.perf_counter() - t0)
        print(f"forward_fp32: {out['forward_fp32']} images/s", file=sys.stderr)
        t0 = time.perf_counter()
        n = 0
        for xb, _ in files.batches(args.batch):
            model(xb)
            n += len(xb)
        out["loader_eval_plus_forward"] = _rate(n, time.perf_counter() - t0)
        print(f"loader_eval_plus_forward: {out['loader_eval_plus_forward']} images/s", file=sys.stderr)
        t0 = time.perf_counter()  # again, after: a machine whose speed drifted within the run shows here
        for xb, _ in batches:
            model(xb)
        out["forward_fp32_after"] = _rate(len(held), time.perf_counter() - t0)
        print(f"forward_fp32_after: {out['forward_fp32_after']} images/s", file=sys.stderr)
    out["loader_share_of_pipeline"] = round(out["forward_fp32"] / out["loader_eval_plus_forward"], 3)
    return out


def _tree_rss(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, RSS summed over ``pid`` and its descendants), bytes, from /proc."""
    page = os.sysconf("SC_PAGE_SIZE")
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * page
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return rss.get(pid, 0), total


def _measure(cmd: list[str], log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        peak_main = peak_tree = 0
        while proc.poll() is None:
            main, tree = _tree_rss(proc.pid)
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
            time.sleep(0.1)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_main / 2**20, 1),
            "peak_tree_rss_mb": round(peak_tree / 2**20, 1)}


def memory(args: argparse.Namespace) -> dict:
    common = ["--model", "mobilenet_v2", "--weights", str(FIXTURE), "--input-size", str(args.size),
              "--data-mode", args.data_mode, "--workers", str(args.workers), "--quiet"]
    out: dict = {"size": args.size, "workers": args.workers, "data_mode": args.data_mode, "runs": {}}
    work = Path(args.work)
    for folder in args.folders:
        n = sum(1 for _ in Path(folder, "train").rglob("*.jpg"))
        name = f"{Path(folder).name} ({n} train images)"
        runs: dict = {}
        for what, cmd in (
            ("profile", ["profile", *common, "--data", folder, "--calib-images", str(args.profile_images),
                         "--out", str(work / f"profile_{Path(folder).name}")]),
            ("search", ["search", *common, "--data", folder, "--target", "generic", "--latency", "cost",
                        "--trials", str(args.trials), "--proxy-steps", str(args.proxy_steps), "--proxy-batch", "16",
                        "--eval-every", str(args.proxy_steps), "--val-images", str(args.val_images),
                        "--profile-images", str(args.profile_images), "--calib-images", str(args.profile_images),
                        "--out", str(work / f"search_{Path(folder).name}")]),
        ):
            full = [sys.executable, "-m", "autoselect", *cmd]
            runs[what] = _measure(full, work / f"{what}_{Path(folder).name}.log")
            print(f"{name} {what}: {runs[what]}", file=sys.stderr)
        summary = work / f"search_{Path(folder).name}" / "summary.json"
        if summary.is_file():
            runs["search"]["stage_seconds"] = json.loads(summary.read_text()).get("seconds")
        out["runs"][name] = runs
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--data", required=True)
    t.add_argument("--images", type=int, default=1024)
    m = sub.add_parser("memory")
    m.add_argument("--folders", nargs="+", required=True)
    m.add_argument("--work", default="/tmp/streaming_bench")
    m.add_argument("--data-mode", default="auto")
    m.add_argument("--profile-images", type=int, default=256)
    m.add_argument("--val-images", type=int, default=256)
    m.add_argument("--trials", type=int, default=2)
    m.add_argument("--proxy-steps", type=int, default=8)
    for q in (t, m):
        q.add_argument("--size", type=int, default=224)
        q.add_argument("--workers", type=int, default=2)
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--batch", type=int, default=32)
        q.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()
    if args.what == "memory":
        Path(args.work).mkdir(parents=True, exist_ok=True)
    res = throughput(args) if args.what == "throughput" else memory(args)
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    res["command"] = " ".join(["python", "experiments/streaming_bench.py", *sys.argv[1:]])
    res["max_rss_children_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
