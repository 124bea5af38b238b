"""`benchmark.coldstart_breakdown`: a cold request's medians split into engine, backend and Triton parts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmark.coldstart_breakdown import SEGMENTS, BreakdownError, main, read_rows, segments
from benchmark.triton_coldstart.rows import COLUMNS

ROW = {
    "model": "bert-base", "process": "shared", "gpu_name": "cpu", "client_cold_ms": "13.40", "backend_cold_ms": "12.25",
    "trace_read_ms": "0.16", "trace_answer_ms": "11.29", "trace_respond_ms": "0.25", "trace_metrics_ms": "0.03",
    "trace_exchange_ms": "11.16", "trace_host_ms": "10.41", "trace_validate_ms": "0.27", "trace_queue_ms": "0.08",
    "trace_room_ms": "1.75", "trace_evict_ms": "1.25", "trace_engine_ms": "7.55", "trace_release_ms": "0.50",
}  # fmt: skip


def test_segments_add_up_to_the_client_latency_when_the_medians_agree() -> None:
    parts = dict(zip((name for name, _ in SEGMENTS), segments(ROW), strict=True))
    assert parts["engine: cold forward"] == pytest.approx(7.55)
    assert parts["engine: evicting victims (room)"] == pytest.approx(1.25)  # inside room: the rest is bookkeeping
    assert parts["engine: budget bookkeeping (room)"] == pytest.approx(1.75 - 1.25)
    assert parts["backend: hop to the engine host"] == pytest.approx(11.16 - 10.41)
    assert parts["Triton: gRPC front"] == pytest.approx(13.40 - 12.25)
    assert parts["Triton: Python-backend IPC"] == pytest.approx(12.25 - 11.29 - 0.44)
    assert sum(parts.values()) == pytest.approx(13.40)
    no_hop = {**ROW, "trace_exchange_ms": "", "trace_host_ms": ""}  # process: instance
    hop = [name for name, _ in SEGMENTS].index("backend: hop to the engine host")
    assert segments(no_hop)[hop] == 0.0 and sum(segments(no_hop)) == pytest.approx(13.40)
    before_evict_phase = {k: v for k, v in ROW.items() if k != "trace_evict_ms"}  # older CSVs: room undivided
    assert segments(before_evict_phase)[:2] == [pytest.approx(1.75), 0.0]


def test_the_csv_is_drawn_and_foreign_or_untraced_rows_are_refused(tmp_path: Path, capsys) -> None:
    table = tmp_path / "triton_coldstart.csv"
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerow(ROW)
        writer.writerow({**ROW, "model": "resnet50", "process": "instance"})
    assert main([str(table), str(table), "-o", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(BreakdownError, match="trace phases"):
        segments({**ROW, "trace_answer_ms": ""})
    foreign = tmp_path / "fig10.csv"
    foreign.write_text("model,cold_ms\na,1\n")
    with pytest.raises(BreakdownError, match="not a triton_coldstart CSV"):
        read_rows([foreign])
    assert main([str(foreign)]) == 2 and "not a triton_coldstart CSV" in capsys.readouterr().err
