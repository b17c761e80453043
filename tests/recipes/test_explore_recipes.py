"""The answer-keyed and outcome-exploration methods compose with every setup and set what their yaml promises.

`tests/recipes/test_paper_recipes.py` composes and validates every setup x method pair (these included); this file
checks the fields that only these three methods set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.requires_verl

CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipes" / "meds" / "config"
SETUPS = sorted(p.stem for p in (CONFIG_DIR / "setup").glob("*.yaml") if not p.stem.startswith("_"))
METHODS = ["meds_answer", "explore_hist", "explore_batch"]


def compose(setup: str, method: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    overrides = [f"setup={setup}", f"method={method}", "data.train_files=t.parquet", "data.val_files=v.parquet"]
    overrides.append("actor_rollout_ref.model.path=m")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose("paper", overrides=overrides)


def test_the_methods_exist():
    assert set(METHODS) <= {p.stem for p in (CONFIG_DIR / "method").glob("*.yaml")}


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("method", METHODS)
def test_method_fields(setup, method, monkeypatch):
    from omegaconf import OmegaConf

    from verl_meds.verl.explore import exploration_config_from_trainer_config
    from verl_meds.verl.hooks.meds import meds_config_from_trainer_config

    monkeypatch.setenv("HOME", "/home/user")
    config = compose(setup, method)
    OmegaConf.resolve(config)
    meds = meds_config_from_trainer_config(config)
    explore = exploration_config_from_trainer_config(config)
    assert config.trainer.experiment_name == method
    if method == "meds_answer":
        # MEDS on DAPO, as meds_dapo, with the answer-keyed memory.
        assert meds.enable and meds.clustering.method == "answer" and not explore.enable
        assert config.algorithm.adv_estimator == "meds" and config.algorithm.filter_groups.enable
        # The DAPO rows' reward is the setup's: +1/-1 on the CPU setups, the authors' 0/1 on GPU.
        expected = "compute_score" if setup.endswith("_cpu") else "compute_score_acc"
        assert config.reward.custom_reward_function.name == expected
    else:
        # GRPO (as in the paper) plus the exploration bonus with the paper's c = 0.2.
        assert not meds.enable and explore.enable and explore.bonus_coef == 0.2
        assert config.algorithm.adv_estimator == "grpo" and not config.algorithm.filter_groups.enable
        assert config.reward.custom_reward_function.name == "compute_score_acc"
        assert explore.skip_all_correct and explore.mask_answer_tokens
        if method == "explore_hist":
            assert (explore.method, explore.baseline, explore.baseline_value) == ("historical", "constant", 0.5)
        else:
            assert explore.method == "batch"
