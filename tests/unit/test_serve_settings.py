"""Config parameters of a deepplan model: the `graphs` switch and clear errors for bad values."""

from __future__ import annotations

import pytest

from deepplan_backend.runtime.serve_settings import ConfigError, ServeSettings


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("ON", True), ("1", True), ("no", False), ("off", False)]
)
def test_graphs_switch(text: str, expected: bool) -> None:
    assert ServeSettings.from_parameters({"model": "tiny-bert", "graphs": text}).graphs is expected


def test_graphs_default_on_and_bad_value_is_a_clear_error() -> None:
    assert ServeSettings.from_parameters({"model": "tiny-bert"}).graphs is True  # ignored on CPU
    assert ServeSettings.from_parameters({"model": "tiny-bert", "graphs": ""}).graphs is True
    with pytest.raises(ConfigError, match="parameter graphs: 'maybe'; give true or false"):
        ServeSettings.from_parameters({"model": "tiny-bert", "graphs": "maybe"})


def test_unknown_parameter_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown parameter.*graph.*known:.*graphs"):
        ServeSettings.from_parameters({"model": "tiny-bert", "graph": "true"})


def test_budget_from_the_environment_unless_the_model_sets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPPLAN_BUDGET_BYTES", "2GiB")
    assert ServeSettings.from_parameters({"model": "tiny-bert"}).budget == 2 << 30
    assert ServeSettings.from_parameters({"model": "tiny-bert", "budget": "1MiB"}).budget == 1 << 20
    monkeypatch.setenv("DEEPPLAN_BUDGET_BYTES", "lots")
    with pytest.raises(ConfigError, match="budget"):
        ServeSettings.from_parameters({"model": "tiny-bert"})
