"""Settings MEDS cannot serve are refused by `main.prepare`'s check before Ray starts; every other one is accepted.

Both lists run on the composed paper configs (every setup x method, as users start them), so a new recipe default
that MEDS cannot serve fails here rather than after the first rollout of a cluster run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.requires_verl
pytest.importorskip("verl")

from verl_meds.verl.main import check_supported_settings, unsupported_settings  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipes" / "meds" / "config"
SETUPS = sorted(p.stem for p in (CONFIG_DIR / "setup").glob("*.yaml") if not p.stem.startswith("_"))
METHODS = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))
FEATURE_METHODS = [m for m in METHODS if m.startswith("meds") and m != "meds_answer"]


def compose(setup: str, method: str, overrides: list[str] = ()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose("paper", overrides=[f"setup={setup}", f"method={method}", *overrides])


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("method", METHODS)
def test_every_paper_row_is_supported(setup, method):
    assert unsupported_settings(compose(setup, method)) == []


SERVED = [
    ["actor_rollout_ref.model.use_remove_padding=true"],
    ["actor_rollout_ref.model.use_remove_padding=false"],
    ["actor_rollout_ref.actor.use_dynamic_bsz=true"],
    ["actor_rollout_ref.actor.strategy=fsdp2"],
    ["actor_rollout_ref.actor.strategy=fsdp"],
    ["actor_rollout_ref.actor.fsdp_config.param_offload=true"],
    ["actor_rollout_ref.actor.fsdp_config.reshard_after_forward=false"],
    ["algorithm.norm_adv_by_std_in_grpo=false"],
    ["algorithm.rollout_correction.bypass_mode=false"],
]


@pytest.mark.parametrize("overrides", SERVED, ids=lambda o: o[0])
@pytest.mark.parametrize("setup", ["tiny_cpu", "qwen25_math_7b"])
def test_settings_meds_can_serve_are_accepted(setup, overrides):
    config = compose(setup, "meds_dapo", overrides)
    assert unsupported_settings(config) == []
    check_supported_settings(config)


REFUSED = {
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2": "ulysses_sequence_parallel_size=2",
    "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size=4": "ulysses_sequence_parallel_size=4",
    "actor_rollout_ref.model.use_fused_kernels=true": "use_fused_kernels=true",
    "algorithm.rollout_correction.bypass_mode=true": "bypass_mode=true",
    "actor_rollout_ref.actor.strategy=megatron": "strategy=megatron",
}


@pytest.mark.parametrize("override", sorted(REFUSED))
@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_settings_feature_capture_cannot_serve_are_refused(override, method):
    config = compose("qwen25_math_7b", method, [override])
    problems = unsupported_settings(config)
    assert len(problems) == 1 and REFUSED[override] in problems[0]
    with pytest.raises(ValueError, match="verl_meds cannot serve these settings"):
        check_supported_settings(config)


@pytest.mark.parametrize("override", sorted(REFUSED))
@pytest.mark.parametrize("method", ["meds_answer", "dapo", "grpo"])
def test_methods_without_features_accept_the_capture_limits(override, method):
    """Answer-keyed MEDS and the baselines capture nothing, so the capture's limits do not apply to them."""
    assert unsupported_settings(compose("qwen25_math_7b", method, [override])) == []


def test_multi_turn_is_refused_for_the_meds_estimator_only():
    override = ["actor_rollout_ref.rollout.multi_turn.enable=true"]
    problems = unsupported_settings(compose("qwen25_math_7b", "meds_dapo", override))
    assert len(problems) == 1 and "multi_turn.enable=true" in problems[0]
    grpo = compose("qwen25_math_7b", "grpo", override)
    expected = 1 if grpo.algorithm.adv_estimator == "meds" else 0
    assert len(unsupported_settings(grpo)) == expected


def test_all_problems_are_listed_at_once():
    config = compose(
        "qwen25_math_7b",
        "meds_dapo",
        ["actor_rollout_ref.model.use_fused_kernels=true", "algorithm.rollout_correction.bypass_mode=true"],
    )
    assert len(unsupported_settings(config)) == 2
