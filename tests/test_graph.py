from __future__ import annotations

import pytest
import torch.nn as nn

from autoselect.models import build_layer_graph, create_model


def test_tiny_roles_blocks_and_bn(tiny):
    g = build_layer_graph(tiny)
    roles = {layer.path: layer.role for layer in g}
    assert roles["stem.0"] == "stem"
    assert roles["blocks.0.conv.0"] == "expand"
    assert roles["blocks.0.conv.3"] == "depthwise"
    assert roles["blocks.0.conv.6"] == "project"
    assert roles["head"] == "classifier"
    # a plain Sequential is a container, so the stem conv is its own block; TinyBlock modules are blocks
    assert g.blocks == ["stem.0", "blocks.0", "blocks.1", "blocks.2", "head"]
    assert g["blocks.1.conv.3"].block == "blocks.1"
    assert g.bn_pairs()["blocks.2.conv.6"] == "blocks.2.conv.7"
    assert g["head"].bn is None
    # MACs from the traced shapes: the stride-2 stem makes 16x16 outputs of 8 channels, 3*3*3 MACs each
    assert g["stem.0"].macs == 16 * 16 * 8 * 27
    assert g["blocks.1.conv.3"].macs == 8 * 8 * 16 * 9  # depthwise: one 3x3 per output element


def test_params_of_quantizable_layers_add_up(tiny):
    g = build_layer_graph(tiny)
    expected = sum(p.numel() for m in tiny.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())
    assert sum(layer.params for layer in g) == expected
    assert g.total_params == sum(p.numel() for p in tiny.parameters())


def test_mobilenet_v2_structure():
    g = build_layer_graph(create_model("mobilenet_v2", num_classes=10))
    counts = g.to_frame().role.value_counts().to_dict()
    assert counts == {"depthwise": 17, "project": 17, "expand": 16, "stem": 1, "conv": 1, "classifier": 1}
    assert len(g.blocks) == 20  # features.0 .. features.18 and the classifier
    assert g["features.0.0"].role == "stem" and g["classifier.1"].role == "classifier"
    assert g["features.18.0"].role == "conv"
    assert all(layer.bn for layer in g if layer.kind == "conv")
    # seed 001, Table 1: depthwise 3.4%, depthwise + 1x1 (projection) 46.5%, classifier 0.6% of the parameters
    def share(*roles):
        return sum(x.params for x in g if x.role in roles) / g.total_params

    assert 0.025 < share("depthwise") < 0.035
    assert 0.44 < share("depthwise", "project") < 0.48
    assert 0.005 < share("classifier") < 0.007


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet18", {"stem": 1, "conv": 19, "classifier": 1}),
        ("efficientnet_b0", {"se": 32, "depthwise": 16, "project": 16, "expand": 15, "stem": 1, "conv": 1,
                             "classifier": 1}),
    ],
)
def test_other_families_get_roles_without_tables(name, expected):
    g = build_layer_graph(create_model(name, num_classes=10))
    assert g.to_frame().role.value_counts().to_dict() == expected
    assert all(layer.macs > 0 and layer.params > 0 for layer in g)


def test_resnet_blocks_are_basic_blocks():
    g = build_layer_graph(create_model("resnet18", num_classes=10))
    assert g["layer2.0.downsample.0"].block == "layer2.0"
    assert g["layer2.0.conv1"].block == "layer2.0"
    assert g.bn_pairs()["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    assert g.blocks[0] == "conv1" and g.blocks[-1] == "fc"


def test_activation_and_block_input_are_traced(tiny):
    g = build_layer_graph(tiny)
    assert g["blocks.0.conv.0"].activation == "ReLU6" and g["blocks.0.conv.3"].activation == "ReLU6"
    assert g["blocks.0.conv.6"].activation is None  # projection: into the residual add
    assert g["blocks.0.conv.0"].reads_block_input and not g["blocks.0.conv.3"].reads_block_input
    r = build_layer_graph(create_model("resnet18", num_classes=10))
    assert r["layer1.0.conv1"].activation == "ReLU" and r["layer1.0.conv2"].activation is None
    assert r["layer2.0.conv1"].reads_block_input and r["layer2.0.downsample.0"].reads_block_input


def test_fed_by_is_the_sole_producer_of_a_layers_input(tiny):
    g = build_layer_graph(tiny)
    assert g["blocks.0.conv.3"].fed_by == "blocks.0.conv.0"  # expand -> BN -> ReLU6 -> depthwise
    assert g["blocks.0.conv.0"].activation_path == "blocks.0.conv.2"
    assert g["blocks.0.conv.6"].fed_by == "blocks.0.conv.3"
    assert g["blocks.0.conv.0"].fed_by is None  # reads its block's input, which the shortcut reads too
    assert g["blocks.1.conv.0"].fed_by is None  # reads the residual sum, not a layer's output
    m = build_layer_graph(create_model("mobilenet_v2", num_classes=10))
    assert m["features.2.conv.0.0"].fed_by == "features.1.conv.1"  # no shortcut in features.2: the projection alone
    assert m["features.3.conv.0.0"].fed_by is None  # features.3 has a shortcut
    r = build_layer_graph(create_model("resnet18", num_classes=10))
    # the same ReLU module runs twice in a BasicBlock (after bn1 and after the sum): not a private activation
    assert r["layer1.0.conv1"].activation_path == "layer1.0.relu" and r["layer1.0.conv2"].fed_by is None


def test_stages_are_split_into_their_residual_units():
    """RegNet's stages (``AnyStage``, a ``Sequential`` subclass) hold up to 12 residual units: each unit is a block
    (a search group), not the stage; a ``Conv2dNormActivation`` (one conv with its norm and activation) stays one
    block."""
    g = build_layer_graph(create_model("regnet_x_400mf", num_classes=10), (1, 3, 32, 32))
    assert "trunk_output.block4" not in g.blocks
    units = [b for b in g.blocks if b.startswith("trunk_output.block4.")]
    assert len(units) == 12 and all(len(g.block_layers(b)) >= 3 for b in units)

    class Stage(nn.Sequential):
        pass

    class Unit(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)

        def forward(self, x):
            return x + self.b(self.a(x).relu())

    net = nn.Sequential(nn.Conv2d(3, 8, 3), Stage(Unit(8), Unit(8)), Stage(nn.Conv2d(8, 8, 1), nn.ReLU()))
    blocks = build_layer_graph(net, (1, 3, 16, 16)).blocks
    assert blocks == ["0", "1.0", "1.1", "2"]
    v2 = build_layer_graph(create_model("mobilenet_v2", num_classes=10), (1, 3, 32, 32))
    assert v2.blocks[0] == "features.0" and v2.blocks[-2] == "features.18"  # Conv2dNormActivation: one block
