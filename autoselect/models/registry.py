"""Model names → ``nn.Module``: torchvision classifiers, our own registered variants, and users' factories.

A name is resolved in this order:

1. ``package.module:factory`` — a user's own model; ``factory(num_classes=...)`` is called (``num_classes`` is left
   out when the factory does not take it);
2. a name registered here with :func:`register_model` (e.g. ``mobilenet_v2_relu``);
3. any torchvision classification model (``torchvision.models.list_models(module=torchvision.models)``).

No weights are ever downloaded: weights come from a checkpoint file (see :mod:`autoselect.models.checkpoint`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable

import torch.nn as nn

from autoselect.errors import AutoselectError

__all__ = ["register_model", "list_models", "create_model"]

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``factory(num_classes=...)`` available as ``create_model(name)``."""

    def deco(fn: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


@register_model("mobilenet_v2_relu")
def _mobilenet_v2_relu(num_classes: int = 1000) -> nn.Module:
    """torchvision's quantizable MobileNetV2: plain ReLU instead of ReLU6 (the variant the selective-QAT study used)."""
    from torchvision.models.quantization import mobilenet_v2

    return mobilenet_v2(weights=None, num_classes=num_classes, quantize=False)


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def list_models() -> list[str]:
    """All names :func:`create_model` accepts (besides ``package.module:factory``)."""
    return sorted(set(_REGISTRY) | set(_torchvision_names()))


def _call_factory(fn: ModelFactory, num_classes: int, where: str) -> nn.Module:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes_classes = "num_classes" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    model = fn(num_classes=num_classes) if takes_classes else fn()
    if not isinstance(model, nn.Module):
        raise AutoselectError(f"{where} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def create_model(name: str, *, num_classes: int = 1000) -> nn.Module:
    """Build an untrained model by name (see the module docstring for the accepted names)."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise AutoselectError(f"cannot import {module_name!r} for model {name!r}: {exc}") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise AutoselectError(f"model {name!r}: {module_name} has no callable {attr!r}")
        return _call_factory(fn, num_classes, name)
    if name in _REGISTRY:
        return _call_factory(_REGISTRY[name], num_classes, name)
    tv_names = _torchvision_names()
    if name in tv_names:
        import torchvision.models as tvm

        return tvm.get_model(name, weights=None, num_classes=num_classes)
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `autoselect models` lists them"
    raise AutoselectError(f"unknown model {name!r}{hint}")
