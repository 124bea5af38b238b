"""Summary math against a hand-built per-request log; log round trip; windows; plots and CLIs."""

from __future__ import annotations

import json

import pytest

from loadtest.plots import write_plots
from loadtest.results import (
    RequestRecord,
    percentile,
    read_log,
    summarize,
    windowed,
    write_log,
)
from loadtest.results import (
    main as results_main,
)


def hand_built_log() -> list[RequestRecord]:
    """100 successes with latencies 1..100 ms and 4 errors, alternating models a/b.

    Latencies 1..10 ms do not report cold_start; 96..100 ms are cold with provision = 10 x latency.
    Request i is sent at 0.1 i s, 2 ms after it was scheduled.
    """
    records = []
    for i in range(104):
        latency = float(i + 1)
        ok = i < 100
        if latency <= 10:
            cold, provision = None, None
        elif 96 <= latency <= 100:
            cold, provision = True, 10.0 * latency
        else:
            cold, provision = False, 0.0
        records.append(
            RequestRecord(
                send_s=0.1 * i + 0.002,
                scheduled_s=0.1 * i,
                model="a" if i % 2 == 0 else "b",
                latency_ms=latency if ok else 5000.0,
                ok=ok,
                error="" if ok else "InferenceServerException: boom",
                cold_start=cold if ok else None,
                provision_ms=provision if ok else None,
            )
        )
    return records


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 99) is None


def test_summary_matches_hand_computed_values():
    s = summarize(hand_built_log(), slo_ms=90.0, duration_s=10.0, target_rate=10.0, scheduled_requests=104)
    assert (s["requests"], s["ok"], s["errors"]) == (104, 100, 4)
    assert s["p50_ms"] == 50.0 and s["p99_ms"] == 99.0
    assert s["latency_ms"]["p90"] == 90.0 and s["latency_ms"]["max"] == 100.0
    assert s["latency_ms"]["mean"] == pytest.approx(50.5)
    # 90 successes within 90 ms out of 104 sent (errors are misses).
    assert s["goodput_pct"] == pytest.approx(100.0 * 90 / 104)
    # 90 successes reported the flag (latencies 11..100), 5 of them cold.
    assert s["cold_starts"] == 5
    assert s["cold_start_rate"] == pytest.approx(5 / 90)
    assert s["provision_ms"]["mean"] == pytest.approx(980.0)
    assert s["provision_ms"]["p99"] == 1000.0
    # Last send at 10.302 s > duration 10 s: the achieved rate is over the stretched span.
    assert s["achieved_rate_rps"] == pytest.approx(104 / 10.302)
    assert s["scheduled_rate_rps"] == pytest.approx(10.4)
    assert s["target_rate_rps"] == 10.0
    assert s["dispatch_lag_ms"]["p50"] == pytest.approx(2.0) and s["dispatch_lag_ms"]["max"] == pytest.approx(2.0)
    # Last response: request 103 (error) sent at 10.302 s, 5 s latency.
    assert s["throughput_rps"] == pytest.approx(100 / 15.302)


def test_per_model_breakdown():
    s = summarize(hand_built_log(), slo_ms=90.0)
    a, b = s["per_model"]["a"], s["per_model"]["b"]
    assert (a["requests"], a["ok"], a["errors"]) == (52, 50, 2)
    assert (b["requests"], b["ok"], b["errors"]) == (52, 50, 2)
    # a: odd latencies 1, 3, ..., 99 -> p50 = 25th = 49, p99 = 50th = 99; 45 within 90 ms.
    assert a["p50_ms"] == 49.0 and a["p99_ms"] == 99.0
    assert a["goodput_pct"] == pytest.approx(100.0 * 45 / 52)
    # a: cold latencies 97, 99; reported: 11..99 odd = 45.
    assert a["cold_starts"] == 2 and a["cold_start_rate"] == pytest.approx(2 / 45)
    assert b["cold_starts"] == 3 and b["cold_start_rate"] == pytest.approx(3 / 45)


def test_steady_state_leaves_the_warm_up_out():
    s = summarize(hand_built_log(), slo_ms=90.0, warmup_s=5.0)
    steady = s["steady"]
    # Sent at >= 5 s: requests 50..103 (0.1 i + 0.002 s): latencies 51..100 and the 4 errors.
    assert steady["warmup_s"] == 5.0 and (steady["requests"], steady["ok"], steady["errors"]) == (54, 50, 4)
    assert steady["p50_ms"] == 75.0 and steady["p99_ms"] == 100.0
    assert steady["goodput_pct"] == pytest.approx(100.0 * 40 / 54)  # 51..90 within 90 ms
    assert steady["cold_starts"] == 5 and steady["cold_start_rate"] == pytest.approx(5 / 50)
    whole = summarize(hand_built_log(), slo_ms=90.0)["steady"]
    assert whole["warmup_s"] == 0.0 and whole["requests"] == 104 and whole["p99_ms"] == 99.0
    with pytest.raises(ValueError, match="warmup_s"):
        summarize(hand_built_log(), slo_ms=90.0, warmup_s=-1.0)


def test_empty_log_summarizes_to_nones():
    s = summarize([], slo_ms=100.0, duration_s=5.0)
    assert s["requests"] == 0 and s["p99_ms"] is None and s["goodput_pct"] is None
    assert s["cold_start_rate"] is None and s["achieved_rate_rps"] == 0.0


def test_log_round_trip_keeps_the_summary(tmp_path):
    records = hand_built_log()
    path = write_log(tmp_path / "requests.csv", records)
    back = read_log(path)
    assert len(back) == len(records)
    assert back[0].cold_start is None and back[-5].cold_start is True and not back[-1].ok
    a, b = summarize(back, 90.0, 10.0), summarize(records, 90.0, 10.0)
    for key in ("requests", "ok", "errors", "p50_ms", "p99_ms", "goodput_pct", "cold_start_rate", "achieved_rate_rps"):
        assert a[key] == pytest.approx(b[key], rel=1e-6), key
    assert a["per_model"]["a"] == pytest.approx(b["per_model"]["a"])


def test_read_log_rejects_other_csv(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected columns"):
        read_log(path)


def test_windows():
    stats = windowed(hand_built_log(), window_s=5.0, slo_ms=90.0, duration_s=10.0)
    assert [w.start_s for w in stats] == [0.0, 5.0, 10.0]
    assert [w.requests for w in stats] == [50, 50, 4]
    assert stats[0].sent_rate_rps == 10.0
    assert stats[0].p99_ms == 50.0  # latencies 1..50
    assert stats[2].goodput_pct == 0.0 and stats[2].p99_ms is None  # only errors


def test_results_cli_and_plots(tmp_path, capsys):
    log = write_log(tmp_path / "requests.csv", hand_built_log())
    assert results_main([str(log), "--slo-ms", "90", "--duration-s", "10", "--out", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["goodput_pct"] == pytest.approx(100.0 * 90 / 104)
    assert results_main([str(log), "--slo-ms", "90", "--warmup-s", "5", "--out", str(tmp_path / "w.json")]) == 0
    assert json.loads((tmp_path / "w.json").read_text())["steady"]["requests"] == 54
    paths = write_plots(read_log(log), tmp_path / "plots", slo_ms=90.0, duration_s=10.0)
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    capsys.readouterr()
