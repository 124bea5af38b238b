"""Freezing loaded models out of the garbage collector's view (`runtime/gc_pauses.py`) must leak nothing."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepplan_backend.runtime.gc_pauses import freeze_long_lived
from deepplan_backend.runtime.serve_settings import ServeSettings
from deepplan_backend.runtime.served_model import ServedModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """Run a test with freezing allowed, and hand every frozen object back to the collector afterwards."""
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


def test_freezing_moves_live_objects_out_of_collections(frozen_heap: None) -> None:
    before = gc.get_freeze_count()
    freeze_long_lived()
    assert gc.get_freeze_count() > before
    assert gc.get_count()[2] == 0  # nothing left in the oldest generation for a full pass to scan


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-gpt2", "tiny-resnet"])
def test_a_frozen_served_model_is_freed_on_close_without_a_collection(
    frozen_heap: None, tmp_path: Path, model: str
) -> None:
    # A frozen object in a reference cycle is never freed: this fails if a served model ever holds one.
    settings = ServeSettings.from_parameters(
        {
            "model": model,
            "engine": "deepplan",
            "plan_repository": str(tmp_path / "plans"),
            "residency_dir": str(tmp_path / "state"),  # not the shared /dev/shm default
            "budget": "64MiB",
        },
        model_dir=tmp_path,
    )
    served = ServedModel(settings, f"{model}#gc", 2, None)
    inputs = served.prepared.model.example_inputs(1, None)
    request = {name: tensor.numpy() for name, tensor in inputs.items()}
    assert served.answer([request])[0].error is None  # a cold start, so the engine's layout exists too
    assert served.answer([request])[0].error is None  # and a warm one
    freeze_long_lived()
    alive = [weakref.ref(served), weakref.ref(served.prepared), weakref.ref(served.prepared.model.module)]
    served.close()
    del served
    assert [ref() is not None for ref in alive] == [False, False, False]
