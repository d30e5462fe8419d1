"""Generate an ImageFolder of smooth synthetic JPEGs (issue 16's streaming benchmarks; never committed).

Each image is a low-frequency colour field (a random 4x4 grid, bicubic-upsampled) with stripes whose orientation
and frequency depend on the class, so that the classes are learnable and the JPEGs small (about 3-6 KB at
224x224). ``--images`` counts all of them; ``--test-fraction`` of each class goes to test/.

    python experiments/make_image_folder.py --out /tmp/synth20k --images 20000 --size 224
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10


def _image(index: int, label: int, size: int, photo: bool = False) -> Image.Image:
    rng = np.random.default_rng(index)
    w, h = (500, 375) if photo else (size, size)
    base = Image.fromarray((rng.random((4, 4, 3)) * 200 + 28).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / size
    angle = np.pi * label / CLASSES + rng.normal(0, 0.05)
    freq = 3 + (label % 5) * 2 + rng.normal(0, 0.2)
    stripes = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6.3))
    arr = np.asarray(base, dtype=np.float32) + 40 * stripes[..., None]
    if photo:  # pixel noise: a JPEG as large and about as slow to decode as an ImageNet photo
        arr += rng.normal(0, 12, arr.shape).astype(np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def _write(job: tuple[str, int, int, int, int, bool]) -> int:
    out, start, stop, size, test_every, photo = job
    written = 0
    for i in range(start, stop):
        label = i % CLASSES
        split = "test" if (i // CLASSES) % test_every == 0 else "train"
        path = Path(out) / split / f"class_{label}" / f"{i:07d}.jpg"
        _image(i, label, size, photo).save(path, quality=85)
        written += path.stat().st_size
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--photo-like", action="store_true",
                   help="500x375 images with pixel noise (~55 KB JPEGs, decoded and resized like ImageNet photos) "
                        "instead of smooth size x size ones")
    args = p.parse_args()
    out = Path(args.out)
    for split in ("train", "test"):
        for c in range(CLASSES):
            (out / split / f"class_{c}").mkdir(parents=True, exist_ok=True)
    test_every = max(1, round(1 / args.test_fraction))
    chunk = 2000
    jobs = [(str(out), s, min(s + chunk, args.images), args.size, test_every, args.photo_like)
            for s in range(0, args.images, chunk)]
    t0, total = time.time(), 0
    with ProcessPoolExecutor(args.jobs) as pool:
        for k, n in enumerate(pool.map(_write, jobs), 1):
            total += n
            print(f"\r{min(k * chunk, args.images):,}/{args.images:,} images, {total / 2**20:.0f} MB",
                  end="", file=sys.stderr, flush=True)
    shape = "500x375, photo-like" if args.photo_like else f"{args.size}x{args.size}"
    print(f"\n{args.images:,} images ({shape}) in {out}: {total / 2**20:.0f} MB of JPEG, "
          f"{time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
