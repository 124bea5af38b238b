"""Step 7: Triton's own load (`plain_model`) vs. a fresh deepplan model, both through the model-control API."""

from __future__ import annotations

import time

from deepplan_backend.repository import write_model

from .client import Answer
from .plain_model import PLAIN_MODEL_PY, plain_config
from .progress import say
from .repository import deepplan_config
from .session import Session


def load_compare(session: Session, model: str) -> None:
    """Plain Python model vs. a fresh deepplan model, both loaded through the model-control API (step 7).

    The times land in the model's ``loads`` (`stats.ModelStats`): API call alone, and until the first answer.
    """
    s = session
    st = s.stats[model]
    device = "cuda:0" if s.lay.gpu else "cpu"
    plain = f"{model}-python"
    config = plain_config(plain, model, s.refs[model].checkpoint, device)
    write_model(s.lay.repo, plain, config, PLAIN_MODEL_PY)
    api, total, answer = timed_load(s, plain, model, with_cold=False)
    st.loads.update(triton_load_api_ms=api, triton_load_ms=total, triton_correct=answer.correct)
    say(f"{plain}: load API {api:.0f} ms, ready+first answer {total:.0f} ms, correct={answer.correct}")
    fresh = f"{model}-load"
    write_model(s.lay.repo, fresh, deepplan_config(fresh, model, s.args, s.lay))
    api, total, answer = timed_load(s, fresh, model, with_cold=True)
    st.loads.update(
        deepplan_load_api_ms=api,
        deepplan_load_ms=total,
        deepplan_load_first_cold=answer.cold,
        deepplan_load_first_engine_ms=answer.engine_ms,
        deepplan_load_correct=answer.correct,
    )
    say(f"{fresh}: load API {api:.0f} ms, ready+first (cold) answer {total:.0f} ms, correct={answer.correct}")


def timed_load(session: Session, name: str, model: str, with_cold: bool) -> tuple[float, float, Answer]:
    """Load `name`, ask it once, unload it: (ms of the load call, ms until the answer, the answer)."""
    assert session.client is not None
    c = session.client
    t0 = time.perf_counter()
    c.client.load_model(name, headers=c.headers, client_timeout=300)
    try:
        t1 = time.perf_counter()
        answer = c.infer(name, model, ("output", "cold_start") if with_cold else ("output",))
        t2 = time.perf_counter()
    finally:  # never leave it loaded (the plain model holds device memory outside the budget)
        try:
            c.client.unload_model(name, headers=c.headers, client_timeout=120)
        except Exception as exc:  # the numbers stand; an unload failure is only reported
            session.errors.append(f"unload {name}: {exc}")
    return (t1 - t0) * 1e3, (t2 - t0) * 1e3, answer
