from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import random_batches, tiny_net

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "mobilenet_v2_cifar10_fp32.pt"
CIFAR = SHARED / "datasets" / "cifar10"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny():
    return tiny_net()


@pytest.fixture
def batches():
    return random_batches()
