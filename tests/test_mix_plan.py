"""Mixture accounting on constructed sizes: weights, targets, epochs, warnings, phases."""
import pytest

from phi_lib.config import ConfigError, load
from phi_lib.data.mixture import MixtureError, MixtureWarning, plan_mixture

pytestmark = pytest.mark.unit


def test_phi_1_5_mixture_epochs():
    """phi-1.5: 150B tokens of 80% synthetic (~20B) + 20% phi-1 data (~7B): ~5 epochs of ~30B."""
    plan = plan_mixture({"synthetic": 20_000_000_000, "phi1": 7_000_000_000},
                        {"synthetic": 0.8, "phi1": 0.2}, 150_000_000_000, max_epochs_warning=8)
    assert plan.sources["synthetic"].target_tokens == 120_000_000_000
    assert plan.sources["phi1"].target_tokens == 30_000_000_000
    assert plan.sources["synthetic"].epochs == pytest.approx(6.0)
    assert plan.sources["phi1"].epochs == pytest.approx(30 / 7)
    assert plan.unique_tokens == 27_000_000_000
    assert plan.epochs == pytest.approx(150 / 27)  # "~5 epochs of ~30B"
    assert plan.warnings == []
    table = plan.table()
    assert table.loc["synthetic", "share"] == pytest.approx(0.8)


def test_targets_sum_exactly_to_budget_and_follow_weights():
    weights = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    plan = plan_mixture({"a": 1000, "b": 2000, "c": 3000}, weights, 1001)
    targets = [s.target_tokens for s in plan.sources.values()]
    assert sum(targets) == 1001 and max(targets) - min(targets) <= 1
    assert plan.sources["a"].epochs == pytest.approx(plan.sources["a"].target_tokens / 1000)


def test_warns_when_a_source_repeats_too_often():
    with pytest.warns(MixtureWarning, match=r"'small' is repeated 50\.0 epochs"):
        plan = plan_mixture({"big": 10_000, "small": 100}, {"big": 0.5, "small": 0.5}, 10_000,
                            max_epochs_warning=10)
    assert len(plan.warnings) == 1 and "max_epochs_warning=10" in plan.warnings[0]
    assert bool(plan.table().loc["small", "over_warning"]) is True


@pytest.mark.parametrize("weights, match", [
    ({"a": 0.5, "b": 0.6}, "weights must sum to 1, got 1.1"),
    ({"a": 0.5, "z": 0.5}, "unknown source 'z'"),
])
def test_bad_weights_fail_clearly(weights, match):
    with pytest.raises(MixtureError, match=match):
        plan_mixture({"a": 10, "b": 10}, weights, 100)


def test_weighted_source_without_tokens_fails():
    with pytest.raises(MixtureError, match="'b' has weight but no training tokens"):
        plan_mixture({"a": 10, "b": 0}, {"a": 0.5, "b": 0.5}, 100)


def test_phase_schedule_phi3():
    """phi-3: phase 1 mostly web, phase 2 filtered web + synthetic."""
    plan = plan_mixture({"web": 1_000, "synthetic": 500}, {"web": 0.5, "synthetic": 0.5}, 3_000,
                        phases=[(2_000, {"web": 0.9, "synthetic": 0.1}),
                                (3_000, {"web": 0.3, "synthetic": 0.7})],
                        phase_names=["knowledge", "reasoning"])
    assert [(p.name, p.start_tokens, p.end_tokens) for p in plan.phases] == [
        ("knowledge", 0, 2_000), ("reasoning", 2_000, 3_000)]
    assert plan.phases[0].targets == {"web": 1_800, "synthetic": 200}
    assert plan.phases[1].targets == {"web": 300, "synthetic": 700}
    assert plan.sources["web"].target_tokens == 2_100
    assert plan.sources["synthetic"].epochs == pytest.approx(900 / 500)
    assert list(plan.phase_table().index) == ["knowledge", "reasoning"]


def test_plot_has_both_panels(tmp_path):
    plan = plan_mixture({"web": 1_000, "synthetic": 500}, {"web": 0.5, "synthetic": 0.5}, 3_000,
                        phases=[(2_000, {"web": 1.0}), (3_000, {"synthetic": 1.0})])
    fig = plan.plot(tmp_path / "mix.png")
    assert len(fig.axes) == 2 and (tmp_path / "mix.png").stat().st_size > 1000


def test_config_phases_must_end_at_budget_and_name_sources():
    base = {"mix": {"total_tokens": 1000, "seq_len": 10, "sources": {
        "web": {"path": "x", "weight": 0.5}, "syn": {"path": "y", "weight": 0.5}}}}
    with pytest.raises(ConfigError, match=r"^mix\.phases\.1\.until_tokens: the last phase must end"):
        load(base, {"mix.phases": [{"until_tokens": 500, "weights": {"web": 1.0}},
                                   {"until_tokens": 900, "weights": {"syn": 1.0}}]})
    with pytest.raises(ConfigError, match=r"^mix\.phases\.0\.weights\.wbe: unknown source 'wbe'"):
        load(base, {"mix.phases": [{"until_tokens": 1000, "weights": {"wbe": 1.0}}]})
    cfg = load(base, {"mix.phases": [{"until_tokens": 500, "weights": {"web": 1.0}},
                                      {"until_tokens": 1000, "weights": {"syn": 1.0}}]})
    assert [p.until_tokens for p in cfg.mix.phases] == [500, 1000]
