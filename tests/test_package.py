from __future__ import annotations

import subprocess
import sys


def test_import_loads_no_optional_backend():
    code = "import sys, autoselect; print(sorted(m for m in ('ray', 'onnxruntime', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_api_names_exist():
    import autoselect

    for name in autoselect.__all__:
        assert hasattr(autoselect, name), name
