"""Ready plan files: the manual scopes of the selective-QAT study (seed 001, Table 1).

``"Depthwise + 1x1"`` is the depthwise and the projection (1x1 down) layers: Table 1 gives it 46.5% of the
parameters, which is what those two roles hold in MobileNetV2 (46.3% here, BatchNorm folded).
"""

from __future__ import annotations

from pathlib import Path

from autoselect.errors import AutoselectError
from autoselect.plan import Plan, load_plan

__all__ = ["builtin_plans", "builtin_plan", "builtin_plan_path"]

_DIR = Path(__file__).parent


def builtin_plans() -> list[str]:
    return sorted(p.stem for p in _DIR.glob("*.json"))


def builtin_plan_path(name: str) -> Path:
    path = _DIR / f"{name}.json"
    if not path.is_file():
        raise AutoselectError(f"no built-in plan {name!r}; built-in plans: {', '.join(builtin_plans())}")
    return path


def builtin_plan(name: str) -> Plan:
    return load_plan(builtin_plan_path(name))
