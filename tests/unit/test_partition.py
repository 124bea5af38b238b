"""PT partition: even byte split and the searched partition."""

from __future__ import annotations

import random

import pytest

from deepplan_backend.runtime.plan import DHA, LayerProfile, LinkProfile, ModelProfile, PlanError, PlanKey
from planner.partition import best_partition, byte_shares, even_byte_split, weighted_cuts, weighted_split
from planner.simulate import simulate

KEY = PlanKey("toy", 1, 8, "float32", "Test GPU")


def profile(rows, *, h2d=50.0, p2p=400.0, concurrent=None) -> ModelProfile:
    """rows: (nbytes, load_ms, exec_ms, dha_exec_ms) per layer."""
    layers = tuple(LayerProfile(i, f"l{i}", *row) for i, row in enumerate(rows))
    return ModelProfile(KEY, "fp", layers, LinkProfile(h2d, p2p, concurrent or {}), warm_ms=1.0)


def uniform(n: int, nbytes: int = 50_000_000) -> ModelProfile:
    load = nbytes / 50e9 * 1e3
    return profile([(nbytes, load, 0.1, 5.0)] * n)


def assert_contiguous(sources, num_devices):
    loaded = [s for s in sources if s != DHA]
    assert loaded == sorted(loaded), "runs must be contiguous and in slot order"
    assert all(0 <= s < num_devices for s in loaded)


def test_even_split_halves_uniform_layers():
    s = even_byte_split(uniform(8), (), 2)
    assert s.sources == (0, 0, 0, 0, 1, 1, 1, 1)
    assert s.num_devices == 2


def test_even_split_skips_dha_layers_and_stays_contiguous():
    s = even_byte_split(uniform(6), {0, 3}, 2)
    assert s.sources == (DHA, 0, 0, DHA, 1, 1)


def test_even_split_one_device_is_all_target():
    assert even_byte_split(uniform(3), (), 1).sources == (0, 0, 0)


def test_weighted_cuts_put_big_layer_by_midpoint():
    assert weighted_cuts([10, 100, 30], [1, 1]) == [2]
    assert weighted_cuts([100, 10, 10], [1, 1]) == [1]
    assert weighted_cuts([], [1, 1, 1]) == [0, 0]
    assert weighted_cuts([10] * 4, [3, 1]) == [3]


def test_weighted_split_and_shares_round_trip():
    p = uniform(8)
    s = weighted_split(p, (), [0.75, 0.25])
    assert s.sources == (0,) * 6 + (1,) * 2
    assert byte_shares(p, s) == pytest.approx([0.75, 0.25])


def test_errors_name_model():
    with pytest.raises(PlanError, match="toy: DHA layer indices"):
        even_byte_split(uniform(2), {5}, 2)
    with pytest.raises(PlanError, match="toy: a partition needs at least one device"):
        even_byte_split(uniform(2), (), 0)


def test_best_partition_moves_load_to_peer_when_target_must_start_early():
    # the first layer is slow to execute, so the target link has spare time while the peer should carry more;
    # best_partition must find something at least as good, and here strictly better than the even split.
    rows = [(50_000_000, 1.0, 6.0, 99.0)] + [(50_000_000, 1.0, 0.1, 99.0)] * 7
    p = profile(rows, p2p=100.0)
    even = simulate(p, even_byte_split(p, (), 2)).total_ms
    best_sched = best_partition(p, (), 2)
    assert_contiguous(best_sched.sources, 2)
    assert simulate(p, best_sched).total_ms <= even


def test_best_partition_can_drop_a_link_when_contention_makes_it_slower():
    # Two links share 10 GB/s of host memory, one alone gets 10 GB/s: splitting only adds NVLink time.
    p = profile([(10_000_000, 1.0, 0.01, 99.0)] * 4, h2d=10.0, p2p=1.0, concurrent={2: 10.0})
    even = simulate(p, even_byte_split(p, (), 2)).total_ms
    best_sched = best_partition(p, (), 2)
    assert simulate(p, best_sched).total_ms < even
    assert set(best_sched.sources) == {0}


@pytest.mark.parametrize("seed", range(40))
def test_best_partition_never_worse_than_even_split(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    rows = []
    for _ in range(n):
        nbytes = rng.choice([0, rng.randint(1, 10**5), rng.randint(10**6, 10**8)])
        rows.append((nbytes, nbytes / 50e9 * 1e3 + 0.005, rng.uniform(0.0, 0.5), rng.uniform(0.0, 3.0)))
    p = profile(rows, p2p=rng.choice([50.0, 400.0]), concurrent={2: 81.0, 3: 110.0, 4: 132.0})
    devices = rng.randint(1, 4)
    dha = {i for i in range(n) if rng.random() < 0.2}
    even = simulate(p, even_byte_split(p, dha, devices)).total_ms
    found = best_partition(p, dha, devices)
    assert_contiguous(found.sources, devices)
    assert found.dha_layers == tuple(sorted(dha))
    assert simulate(p, found).total_ms <= even + 1e-9
