"""Azure trace parsing (header-driven minutes), the paper's mapping, and the per-minute Poisson replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadtest.make_trace import generate_counts, write_trace
from loadtest.make_trace import main as make_trace_main
from loadtest.trace import (
    TraceError,
    TraceMapping,
    find_invocation_file,
    map_to_instances,
    rates_schedule,
    read_invocations,
    trace_schedule,
)

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "azure2019-sample100" / "invocations.csv"


def write_csv(path: Path, minutes: list[int], rows: list[list[int]]) -> Path:
    lines = ["HashOwner,HashApp,HashFunction,Trigger," + ",".join(map(str, minutes))]
    for i, row in enumerate(rows):
        lines.append(f"o{i},a{i},f{i},http," + ",".join(map(str, row)))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory) -> Path:
    """The shared real sample when the checkout has it (never copied), else a generated one like it."""
    if SAMPLE.is_file():
        return SAMPLE
    out = tmp_path_factory.mktemp("trace") / "invocations.csv"
    return write_trace(out, generate_counts(100, 480, seed=3), first_minute=480, seed=3)


def test_minutes_come_from_the_header(tmp_path):
    path = write_csv(tmp_path / "t.csv", [480, 481, 482], [[1, 2, 3], [0, 0, 7]])
    trace = read_invocations(path)
    assert trace.minutes.tolist() == [480, 481, 482]
    assert trace.counts.tolist() == [[1, 2, 3], [0, 0, 7]]
    assert trace.functions == ("o0/a0/f0", "o1/a1/f1")
    assert trace.daily_counts().tolist() == [6, 7]


def test_sample_or_generated_trace_parses(trace_file):
    trace = read_invocations(trace_file)
    assert trace.counts.shape == (len(trace.functions), trace.minutes.size)
    assert trace.minutes[0] == 480 and trace.minutes[-1] == 959
    assert trace.counts.sum() > 0


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("HashOwner,HashApp,Func,Trigger,1,2", ["o,a,f,t,1,2"], "header must start"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,x", ["o,a,f,t,1,2"], "must be integers"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,3", ["o,a,f,t,1,2"], "contiguous"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2", ["o,a,f,t,1"], ":2: expected 6 fields"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2", ["o,a,f,t,1,z"], "must be numbers"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2", [], "no function rows"),
    ],
)
def test_malformed_files_are_rejected_with_the_reason(tmp_path, header, rows, message):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises(TraceError, match=message):
        read_invocations(path)


def test_find_invocation_file(tmp_path):
    day2 = write_csv(tmp_path / "invocations_per_function_md.anon.d02.csv", [1], [[1]])
    assert find_invocation_file(tmp_path) == day2
    assert find_invocation_file(day2) == day2
    with pytest.raises(TraceError, match="d03"):
        find_invocation_file(tmp_path, day=3)
    with pytest.raises(TraceError, match="does not exist"):
        find_invocation_file(tmp_path / "missing")
    sample = write_csv(tmp_path / "invocations.csv", [480], [[1]])
    assert find_invocation_file(tmp_path, day=3) == sample


def test_mean_rate_over_the_file_equals_the_target(trace_file):
    trace = read_invocations(trace_file)
    rates = map_to_instances(trace, TraceMapping(instances=7, target_rate=100.0))
    minutes = trace.minutes.size
    assert rates.per_minute.sum() / (minutes * 60.0) == pytest.approx(100.0, rel=1e-9)
    assert rates.per_minute.shape == (7, minutes)


def test_functions_fold_onto_instances_by_daily_rank(tmp_path):
    # Daily counts 10, 40, 30, 20, 50 -> ranks: f4, f1, f2, f3, f0 -> instances 0, 1, 0, 1, 0 (N = 2).
    rows = [[10, 0], [20, 20], [0, 30], [5, 15], [25, 25]]
    trace = read_invocations(write_csv(tmp_path / "t.csv", [1, 2], rows))
    rates = map_to_instances(trace, TraceMapping(instances=2, target_rate=1.0))
    assert rates.function_instance.tolist() == [0, 1, 0, 1, 0]
    raw = rates.per_minute / rates.scale
    np.testing.assert_allclose(raw, [[10 + 0 + 25, 0 + 30 + 25], [20 + 5, 20 + 15]])
    # Mean over 2 minutes of 150 invocations scaled to 1 req/s: 120 requests.
    assert rates.per_minute.sum() == pytest.approx(120.0)


def test_ties_keep_file_order(tmp_path):
    trace = read_invocations(write_csv(tmp_path / "t.csv", [1], [[5], [5], [5]]))
    rates = map_to_instances(trace, TraceMapping(instances=3, target_rate=1.0))
    assert rates.function_instance.tolist() == [0, 1, 2]


def test_window_uses_header_minute_numbers(tmp_path):
    rows = [[1, 2, 3, 4], [10, 20, 30, 40]]
    trace = read_invocations(write_csv(tmp_path / "t.csv", [480, 481, 482, 483], rows))
    rates = map_to_instances(trace, TraceMapping(instances=1, target_rate=1.0, window_start=481, window_minutes=2))
    assert rates.minutes.tolist() == [481, 482]
    np.testing.assert_allclose(rates.per_minute / rates.scale, [[22, 33]])
    for bad in (TraceMapping(1, 1.0, window_start=1), TraceMapping(1, 1.0, window_start=483, window_minutes=2)):
        with pytest.raises(TraceError, match="outside"):
            map_to_instances(trace, bad)


def test_poisson_replay_matches_the_expected_counts():
    from loadtest.trace import InstanceRates

    per_minute = np.array([[600.0, 0.0, 1200.0], [300.0, 300.0, 0.0]])
    rates = InstanceRates(np.array([1, 2, 3]), per_minute, 1.0, np.array([0, 1]))
    counts = np.zeros_like(per_minute)
    draws = 40
    for seed in range(draws):
        s = rates_schedule(rates, seed=seed)
        assert s.duration_s == 180.0
        minute = (s.times_s // 60).astype(int)
        np.add.at(counts, (s.instances, minute), 1)
    mean = counts / draws
    # Poisson: the mean of 40 draws has sd sqrt(lambda / 40); 5 sd is far outside chance.
    np.testing.assert_array_less(np.abs(mean - per_minute), 5 * np.sqrt(per_minute / draws) + 1e-9)
    assert counts[0, 1] == 0 and counts[1, 2] == 0


def test_arrivals_are_uniform_inside_each_minute():
    from loadtest.trace import InstanceRates

    rates = InstanceRates(np.array([1]), np.array([[20000.0]]), 1.0, np.array([0]))
    s = rates_schedule(rates, seed=1)
    hist, _ = np.histogram(s.times_s, bins=10, range=(0, 60))
    expected = len(s) / 10
    chi2 = ((hist - expected) ** 2 / expected).sum()
    assert chi2 < 30  # 9 degrees of freedom: p < 0.001 above ~27.9
    gaps = np.diff(s.times_s)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential gaps: CV 1


def test_time_scale_compresses_time_at_the_same_rate(trace_file):
    trace = read_invocations(trace_file)
    slow = trace_schedule(trace, TraceMapping(10, 50.0, window_minutes=60), seed=0)
    fast = trace_schedule(trace, TraceMapping(10, 50.0, window_minutes=60, time_scale=6.0), seed=0)
    assert slow.duration_s == 3600.0 and fast.duration_s == 600.0
    assert fast.expected_rate == pytest.approx(slow.expected_rate, rel=1e-9)
    assert fast.scheduled_rate == pytest.approx(fast.expected_rate, rel=0.05)


def test_schedule_is_seeded_and_valid(trace_file):
    trace = read_invocations(trace_file)
    mapping = TraceMapping(instances=5, target_rate=20.0, window_minutes=30)
    a, b = trace_schedule(trace, mapping, seed=4), trace_schedule(trace, mapping, seed=4)
    np.testing.assert_array_equal(a.times_s, b.times_s)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert not np.array_equal(a.times_s[:10], trace_schedule(trace, mapping, seed=5).times_s[:10])
    assert np.all(np.diff(a.times_s) >= 0) and a.times_s[-1] < a.duration_s
    assert set(np.unique(a.instances)) <= set(range(5))
    assert "minutes 480..509" in a.description


def test_mapping_validates_arguments():
    with pytest.raises(TraceError, match="instances"):
        TraceMapping(instances=0, target_rate=1.0)
    with pytest.raises(TraceError, match="target_rate"):
        TraceMapping(instances=1, target_rate=0.0)
    with pytest.raises(TraceError, match="time_scale"):
        TraceMapping(instances=1, target_rate=1.0, time_scale=0.0)


def test_make_trace_cli_writes_a_day_file(tmp_path, capsys):
    assert make_trace_main(["--out", str(tmp_path), "--functions", "20", "--minutes", "30", "--seed", "2"]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written.name == "invocations_per_function_md.anon.d02.csv"
    trace = read_invocations(find_invocation_file(tmp_path))
    assert trace.counts.shape == (20, 30) and trace.minutes[0] == 1
    again = tmp_path / "again.csv"
    make_trace_main(["--out", str(again), "--functions", "20", "--minutes", "30", "--seed", "2"])
    assert again.read_text() == written.read_text()  # seeded: identical output
