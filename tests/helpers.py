"""A tiny CNN with the structure that matters (stem, inverted residual blocks with depthwise convs, classifier)."""

from __future__ import annotations

import torch
import torch.nn as nn


class TinyBlock(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int = 2, stride: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(TinyBlock(8, 8), TinyBlock(8, 16, stride=2), TinyBlock(16, 16))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def tiny_net(num_classes: int = 10) -> TinyNet:
    """Factory for ``--model tests.helpers:tiny_net``; BN statistics are randomized so that folding matters."""
    torch.manual_seed(0)
    model = TinyNet(num_classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def tiny_net_unseeded(num_classes: int = 10) -> TinyNet:
    """Like :func:`tiny_net`, but its weights come from the global random state (as torchvision models' do)."""
    return TinyNet(num_classes).eval()


def random_batches(n_batches: int = 3, batch: int = 8, size: int = 32, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n_batches)]


def finished_trials(db) -> list[tuple[int, str]]:
    """(number, state) of the complete and pruned trials in a search's SQLite study; [] while it is not written."""
    import sqlite3
    from pathlib import Path

    if not Path(db).is_file():
        return []
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT number, state FROM trials WHERE state IN ('COMPLETE', 'PRUNED') "
                               "ORDER BY number").fetchall()
    except sqlite3.OperationalError:  # the schema is not written yet
        return []


def running_trials(db) -> list[int]:
    """Numbers of the trials a search's SQLite study lists as running; [] while it is not written."""
    import sqlite3
    from pathlib import Path

    if not Path(db).is_file():
        return []
    try:
        with sqlite3.connect(db) as con:
            return [n for (n,) in con.execute("SELECT number FROM trials WHERE state = 'RUNNING'").fetchall()]
    except sqlite3.OperationalError:
        return []


def kill_when_finished(cmd: list[str], db, n: int, *, cwd, env, timeout: float = 240) -> list[tuple[int, str]]:
    """Start a search (``cmd``), SIGKILL it once its study ``db`` holds ``n`` finished trials (or at ``timeout``),
    and return the finished trials it left."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while len(finished_trials(db)) < n and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return finished_trials(db)
