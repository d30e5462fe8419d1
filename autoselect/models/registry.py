"""Model names → ``nn.Module``: torchvision classifiers, our own registered variants, and users' factories.

A name is resolved in this order:

1. ``package.module:factory`` or ``path/to/file.py:factory`` — a user's own model; ``factory(num_classes=...)``
   is called (``num_classes`` is left out when the factory does not take it). A module name is imported from
   ``sys.path``, else from the current folder;
2. a name registered here with :func:`register_model` (e.g. ``mobilenet_v2_relu``);
3. any torchvision classification model (``torchvision.models.list_models(module=torchvision.models)``).

No weights are ever downloaded: weights come from a checkpoint file (see :mod:`autoselect.models.checkpoint`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch.nn as nn

from autoselect.errors import AutoselectError, first_line

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
    try:
        model = fn(num_classes=num_classes) if takes_classes else fn()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: one line that names it
        raise AutoselectError(f"{where} raised {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise AutoselectError(f"{where} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_user_module(module_name: str, name: str) -> ModuleType:
    """The module of ``--model MODULE:factory``: a file path (``mynet.py``, ``models/mynet.py``), or a module name
    importable from ``sys.path`` or, failing that, from the current folder (the ``autoselect`` command does not put
    it on ``sys.path`` as ``python -m`` does), so that ``--model mynet:build`` works beside ``mynet.py``."""
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise AutoselectError(f"model {name!r}: no such file {module_name}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise AutoselectError(f"model {name!r}: {module_name} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)  # classes defined there can be found again (deepcopy, pickle)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file failed to run: say where, in one line
            raise AutoselectError(f"model {name!r}: running {module_name} failed: {type(exc).__name__}: "
                                  f"{first_line(exc)}") from None
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module_name.split(".")[0] or here in sys.path:
            raise AutoselectError(f"cannot import {module_name!r} for model {name!r}: {exc}") from None
        sys.path.append(here)
        return _import_user_module(module_name, name)
    except Exception as exc:  # noqa: BLE001 - e.g. a syntax error in the user's module
        raise AutoselectError(f"cannot import {module_name!r} for model {name!r}: {type(exc).__name__}: "
                              f"{first_line(exc)}") from None


def create_model(name: str, *, num_classes: int = 1000) -> nn.Module:
    """Build an untrained model by name (see the module docstring for the accepted names)."""
    if ":" in name:
        module_name, _, attr = name.rpartition(":")
        module = _import_user_module(module_name, name)
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise AutoselectError(f"model {name!r}: {module_name} has no callable {attr!r}")
        return _call_factory(fn, num_classes, name)
    if name in _REGISTRY:
        return _call_factory(_REGISTRY[name], num_classes, name)
    tv_names = _torchvision_names()
    if name in tv_names:
        import torchvision.models as tvm

        # GoogLeNet and Inception-v3 return auxiliary logits in training mode: one output, as every other model
        extra = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        return tvm.get_model(name, weights=None, num_classes=num_classes, **extra)
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `autoselect models` lists them"
    raise AutoselectError(f"unknown model {name!r}{hint}")
