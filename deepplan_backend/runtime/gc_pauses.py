"""Keep the garbage collector's full passes off the request path.

A process serving models holds a few hundred thousand objects the cyclic collector tracks (PyTorch,
transformers, each model's modules, tensors and views): with one BERT-Base on the CPU machine it is 380 k, and a
full collection of them took 209 ms (`scripts/gc_pause_probe.py`; 0.0 ms once they are frozen). Python starts
such a pass on its own, at a moment of its choosing, and it holds the GIL throughout: every request of every
model in the process waits. (On 4 x H200, Fig. 12, deepplan+pt at 20 instances, one engine host stalled ~0.3 s
at once for all of its GPU's models; such a pass fits that stall, but it was not caught in the act: the same
script's replay of 4000 requests over 8 models saw none.)

Once a model is loaded, everything alive is moved out of the collector's view (`gc.freeze`, the permanent
generation), so later passes only look at what requests allocate. Frozen objects are still freed by reference
counting: a served model holds no reference cycles (tests/unit/test_gc_pauses.py checks it), so unloading one
frees it as before and nothing leaks.
"""

from __future__ import annotations

import gc


def freeze_long_lived() -> None:
    """Exempt every object alive now from future collections (call when a model has finished loading)."""
    gc.freeze()
