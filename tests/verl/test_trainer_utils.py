"""Tests for the trainer-config readers and grading metrics of the verl glue (`verl_meds.verl.hooks`)."""

import pytest

pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402

from verl_meds.config import MEDSConfig  # noqa: E402
from verl_meds.verl.hooks.meds import meds_config_from_trainer_config  # noqa: E402

pytestmark = pytest.mark.requires_verl


# ---------------------------------------------------------------------------------------------- meds config block


def test_missing_block_gives_defaults():
    config = OmegaConf.create({"trainer": {"total_epochs": 1}, "algorithm": {"adv_estimator": "grpo"}})
    assert meds_config_from_trainer_config(config) == MEDSConfig()


def test_null_block_gives_defaults():
    assert meds_config_from_trainer_config(OmegaConf.create({"meds": None})) == MEDSConfig()


def test_block_values_are_read_and_interpolations_resolved():
    config = OmegaConf.create(
        {
            "data": {"prompt_key": "problem_id"},
            "meds": {
                "enable": True,
                "features": {"layers": "all", "diff": True},
                "memory": {"capacity": 32, "prompt_key": "${data.prompt_key}"},
                "shaping": {"alpha": 0.05},
            },
        }
    )
    cfg = meds_config_from_trainer_config(config)
    assert cfg.features.layers == "all" and cfg.features.diff is True
    assert cfg.memory.capacity == 32 and cfg.memory.prompt_key == "problem_id"
    assert cfg.shaping.alpha == 0.05
    assert cfg.clustering == MEDSConfig().clustering  # untouched sections keep their defaults


def test_enable_false_is_kept():
    assert meds_config_from_trainer_config(OmegaConf.create({"meds": {"enable": False}})).enable is False


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ({"enabled": True}, "enabled"),  # a typo at the top level
        ({"shaping": {"alpah": 0.1}}, "alpah"),  # a typo inside a section
        ({"features": {"layers": "last_quarter"}}, "last_quarter"),  # an invalid value
    ],
)
def test_unknown_keys_and_bad_values_raise(block, named):
    with pytest.raises(ValueError, match=named):
        meds_config_from_trainer_config(OmegaConf.create({"meds": block}))


def test_grading_metrics_from_reward_info():
    from verl_meds.verl.hooks.grading import grading_metrics

    fields = [
        {"reward_extra_info": {"acc": 1.0, "pred": "4", "grading_timeout": 0.0, "grading_error": 0.0}},
        {"reward_extra_info": {"acc": 0.0, "pred": "", "grading_timeout": 0.0, "grading_error": 0.0}},
        {"reward_extra_info": {"acc": 0.0, "pred": "10^{10^{10}}", "grading_timeout": 1.0, "grading_error": 0.0}},
        {"reward_extra_info": {"acc": 0.0, "pred": "x", "grading_timeout": 0.0, "grading_error": 1.0}},
    ]
    metrics = grading_metrics(fields)
    assert metrics == {
        "reward/grading_timeout_frac": 0.25,
        "reward/grading_error_frac": 0.25,
        "reward/answer_found_frac": 0.75,
    }
    # Another library's reward function reports none of these: no metric rather than a made-up 0.
    assert grading_metrics([{"reward_extra_info": {"acc": 1.0}}, None]) == {}
