"""The host-death experiment's analysis and options (its end-to-end run: tests/integration/test_experiments.py)."""

from __future__ import annotations

import pytest

from loadtest.experiments.devices import Devices
from loadtest.experiments.host_death import gpu_names, gpu_rows, parse_args, recovery_setups
from loadtest.results import RequestRecord


def rec(model: str, send_s: float, latency_ms: float, ok: bool = True, error: str = "") -> RequestRecord:
    return RequestRecord(send_s, send_s, model, latency_ms, ok, error)


def test_outage_gap_and_failures_per_gpu() -> None:
    killed = [rec("m0", t, 10.0) for t in (1.0, 2.0, 3.0, 4.0)]
    killed += [rec("m0", 4.99, 210.0, ok=False, error="engine host lost")]  # in flight at the kill
    killed += [rec("m0", 5.5, 2500.0), rec("m0", 6.0, 2000.0), rec("m0", 8.5, 10.0)]  # waited for the new host
    killed += [rec("m2", 5.2, 4000.0), rec("m2", 9.0, 10.0)]  # GPU 0's second model: first answer at 9.01 s
    other = [rec("m1", 0.5 * k, 10.0) for k in range(20)]
    rows = gpu_rows(killed + other, {"m0": "0", "m2": "0", "m1": "1"}, kill_s=5.0, killed="0")
    dead, alive = rows
    assert (dead["gpu"], dead["killed"], alive["killed"]) == ("0", True, False)
    assert dead["outage_s"] == pytest.approx(3.0)  # the first answer to a request sent after the kill, at 8.0 s
    assert dead["last_model_back_s"] == pytest.approx(4.01) and alive["last_model_back_s"] == pytest.approx(0.01)
    assert dead["max_gap_s"] == pytest.approx(8.0 - 4.01)  # from the last answer before the kill
    assert (dead["requests_after_kill"], dead["failed_after_kill"], dead["first_error"]) == (5, 1, "engine host lost")
    assert (dead["models_asked_after_kill"], dead["models_recovered"]) == (2, 2)
    assert dead["p99_before_ms"] == pytest.approx(10.0) and dead["max_after_ms"] == 4000.0
    assert alive["outage_s"] == pytest.approx(0.01) and alive["max_gap_s"] == pytest.approx(0.5)
    assert alive["failed_after_kill"] == 0 and alive["models_recovered"] == 1


def test_a_gpu_that_never_answers_again_has_no_outage_end() -> None:
    rows = gpu_rows([rec("m0", 1.0, 5.0), rec("m0", 6.0, 30.0, ok=False, error="x")], {"m0": "0"}, 5.0, "0")
    assert rows[0]["outage_s"] is None and rows[0]["last_model_back_s"] is None
    assert rows[0]["models_recovered"] == 0 and rows[0]["models_asked_after_kill"] == 1


def test_models_are_placed_as_the_repository_places_them() -> None:
    names = [f"m-{i}" for i in range(5)]
    assert gpu_names(names, Devices((1, 3), "H100", all_gpus=False)) == {
        "m-0": "1", "m-1": "3", "m-2": "1", "m-3": "3", "m-4": "1",
    }  # fmt: skip
    assert set(gpu_names(names, Devices((), "cpu", all_gpus=False)).values()) == {"0"}


@pytest.mark.parametrize(
    "bad",
    [
        ["--kill-at-s", "30"],  # after the schedule
        ["--kill-at-s", "0"],
        ["--param", "process=instance"],  # no engine host to kill
        ["--signal", "HUP"],
    ],
)
def test_bad_options_are_refused(bad: list[str], tmp_path) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--model", "tiny-bert", "--duration-s", "20", "--out", str(tmp_path), *bad])


def test_recovery_setups_are_read_from_the_log() -> None:
    log = (
        "deepplan: m0: started engine host pid 9 for GPU 0 (its host was lost)\n"
        "deepplan: m0#ab: registered again with engine host pid 9, set up in 300 ms (weights 100, warm_up 200)\n"
        "deepplan: m1 ready: ... device empty; set up in 999 ms (weights 999)\n"  # a load, not a recovery
        "deepplan: m1#cd: registered again with engine host pid 9, set up in 500 ms (weights 0, warm_up 500)\n"
        "deepplan: host weights of bert-base (float32) prepared in image 0a.img: build 890, table 20, pack 280 ms\n"
        "deepplan: host weights of bert-base (float32) mapped from image 0a.img: map 0, skeleton 30, pin 150 ms\n"
    )
    doc = recovery_setups(log)
    assert [(w["origin"], w["laps_ms"]) for w in doc["host_weights"]] == [
        ("prepared in image", {"build": 890, "table": 20, "pack": 280}),
        ("mapped from image", {"map": 0, "skeleton": 30, "pin": 150}),
    ]
    assert doc["models_set_up_again"] == 2
    assert doc["setup_ms_max"] == 500 and doc["setup_ms_sum"] == 800
    assert doc["setup_phase_ms_median"] == {"weights": 0, "warm_up": 200}  # nearest-rank medians
    assert doc["setup_phase_ms_max"] == {"weights": 100, "warm_up": 500}
    assert recovery_setups("nothing here") == {"models_set_up_again": 0, "host_weights": []}
