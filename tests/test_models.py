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


def test_module_versions_survive_training_saving_and_loading(tmp_path):
    """MNASNet refuses a state dict without its version metadata: the baseline's best weights, a saved checkpoint
    and a bare dict saved without metadata must all load."""
    from autoselect.models.checkpoint import cpu_state_dict

    m = create_model("mnasnet0_5", num_classes=10)
    best = cpu_state_dict(m)
    m.load_state_dict(best)
    path = tmp_path / "mnas.pt"
    save_checkpoint(path, m, model_name="mnasnet0_5", num_classes=10, input_size=32,
                    normalize={"mean": [0.5] * 3, "std": [0.25] * 3})
    lm = load_model("mnasnet0_5", weights=path)
    torch.testing.assert_close(lm.model.state_dict(), m.state_dict())
    torch.save({k: v for k, v in m.state_dict().items()}, tmp_path / "bare.pt")  # a plain dict: no metadata
    assert load_model("mnasnet0_5", weights=tmp_path / "bare.pt", num_classes=10).num_classes == 10


@pytest.mark.parametrize("name, size", [("googlenet", 32), ("inception_v3", 75)])
def test_models_with_auxiliary_heads_give_one_output_in_training(name, size):
    out = create_model(name, num_classes=10).train()(torch.randn(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


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
