from __future__ import annotations

import pytest
import torch

from autoselect.errors import AutoselectError
from autoselect.models import create_model, list_models, load_model, save_checkpoint


def test_registry_names_and_unknown_model():
    names = list_models()
    assert {"mobilenet_v2", "resnet18", "efficientnet_b0", "mobilenet_v2_relu"} <= set(names)
    with pytest.raises(AutoselectError, match="unknown model 'mobilenetv2'.*mobilenet_v2"):
        create_model("mobilenetv2")


def test_user_factory_and_bad_factories():
    m = create_model("tests.helpers:tiny_net", num_classes=4)
    head = m.get_submodule("head")
    assert isinstance(head, torch.nn.Linear) and head.out_features == 4
    with pytest.raises(AutoselectError, match="cannot import"):
        create_model("no_such_pkg.mod:fn")
    with pytest.raises(AutoselectError, match="no callable 'nope'"):
        create_model("tests.helpers:nope")


def test_checkpoint_roundtrip_and_metadata(tmp_path):
    m = create_model("tests.helpers:tiny_net", num_classes=3)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, m, model_name="tests.helpers:tiny_net", num_classes=3, input_size=24,
                    normalize={"mean": [0.5] * 3, "std": [0.25] * 3}, test_acc=50.0)
    lm = load_model("tests.helpers:tiny_net", weights=path)
    assert (lm.num_classes, lm.input_size, lm.trained_acc) == (3, 24, 50.0)
    assert lm.normalize == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert lm.weights_sha256 is not None and len(lm.weights_sha256) == 64
    torch.save(m.state_dict(), tmp_path / "raw.pt")
    assert load_model("tests.helpers:tiny_net", weights=tmp_path / "raw.pt", num_classes=3).num_classes == 3


def test_weights_that_do_not_fit(tmp_path):
    m = create_model("tests.helpers:tiny_net", num_classes=3)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, m, model_name="tests.helpers:tiny_net", num_classes=3, input_size=32,
                    normalize={"mean": [0.5] * 3, "std": [0.25] * 3})
    with pytest.raises(AutoselectError, match="--num-classes 10 does not match"):
        load_model("tests.helpers:tiny_net", weights=path, num_classes=10)
    with pytest.raises(AutoselectError, match="do not fit model 'resnet18'.*saved for model"):
        load_model("resnet18", weights=path)
    torch.save(m.state_dict(), tmp_path / "raw.pt")
    with pytest.raises(AutoselectError, match="shape mismatch.*head.weight"):
        load_model("tests.helpers:tiny_net", weights=tmp_path / "raw.pt", num_classes=10)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(AutoselectError, match="cannot read weights file"):
        load_model("tests.helpers:tiny_net", weights=tmp_path / "junk.pt")
    with pytest.raises(AutoselectError, match="weights file not found"):
        load_model("tests.helpers:tiny_net", weights=tmp_path / "missing.pt")
