"""The Triton front end (`deepplan_backend/model.py`) imports at load what the stub would import mid-request.

Triton's Python-backend stub imports asyncio right after a model's first `execute` returns. A `process: shared`
front end imports nothing else that pulls asyncio in, so its first response waited ~33 ms for that import (client
42 against 8 ms for later requests on the CPU host). The module imports it at load; this keeps it there.
"""

from __future__ import annotations

import ast
from pathlib import Path

MODEL_PY = Path(__file__).resolve().parents[2] / "deepplan_backend" / "model.py"


def test_model_py_imports_asyncio_at_module_level() -> None:
    tree = ast.parse(MODEL_PY.read_text())
    top = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    assert "asyncio" in top, "model.py must import asyncio at load (see this test module's docstring)"
