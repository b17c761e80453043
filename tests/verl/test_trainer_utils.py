"""Tests for the helpers of `verl_meds.verl.trainer`: stable prompt ids and the `meds` block of a verl config."""

import hashlib
import struct

import pytest
import torch

pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402

from verl_meds.config import MEDSConfig  # noqa: E402
from verl_meds.step import stable_prompt_ids  # noqa: E402
from verl_meds.verl.hooks.meds import meds_config_from_trainer_config  # noqa: E402

pytestmark = pytest.mark.requires_verl


def _sha1_of_ids(ids: list[int]) -> str:
    return "sha1:" + hashlib.sha1(struct.pack(f"<{len(ids)}q", *ids)).hexdigest()


# ---------------------------------------------------------------------------------------------- stable_prompt_ids


def test_prompt_key_from_extra_info_is_used_as_str():
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5]), torch.tensor([6])]
    infos = [{"index": 17, "split": "train"}, {"index": "q-9"}, {"index": 0}]
    assert stable_prompt_ids(infos, prompts, "index") == ["17", "q-9", "0"]


def test_hash_fallback_matches_documented_formula():
    # "sha1:" + sha1 of the int64 little-endian bytes of the prompt ids, whatever the tensor's dtype.
    prompts = [torch.tensor([151644, 872, 198], dtype=torch.int64), torch.tensor([7, 300], dtype=torch.int32)]
    ids = stable_prompt_ids([None, None], prompts, "index")
    assert ids == [_sha1_of_ids([151644, 872, 198]), _sha1_of_ids([7, 300])]


def test_hash_is_equal_for_equal_prompts_and_differs_otherwise():
    a = torch.tensor([10, 20, 30, 40])
    same_values = torch.tensor([10, 20, 30, 40], dtype=torch.int32)
    permuted = torch.tensor([20, 10, 30, 40])
    prefix = torch.tensor([10, 20, 30])
    padded = torch.tensor([0, 10, 20, 30, 40])
    ids = stable_prompt_ids([None] * 5, [a, same_values, permuted, prefix, padded], "index")
    assert ids[0] == ids[1]
    assert len(set(ids[0:1] + ids[2:])) == 4
    # The id does not depend on the step: a second call (a later batch) gives the same strings.
    assert stable_prompt_ids([None], [a.clone()], "index") == ids[:1]


def test_fallback_when_extra_info_lacks_the_key_or_is_not_a_dict():
    prompt = torch.tensor([3, 1, 4, 1, 5])
    infos = [{"other": 1}, {"index": None}, None, "not a dict"]
    assert stable_prompt_ids(infos, [prompt] * 4, "index") == [_sha1_of_ids([3, 1, 4, 1, 5])] * 4


def test_mixed_batch_keeps_order():
    prompts = [torch.tensor([1]), torch.tensor([2]), torch.tensor([1])]
    ids = stable_prompt_ids([{"uid": "a"}, None, {"uid": "c"}], prompts, "uid")
    assert ids == ["a", _sha1_of_ids([2]), "c"]


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


def test_canonical_order_ignores_batch_permutation():
    """verl's batch balancing permutes rows; the memory must see them in the same order anyway."""
    import numpy as np

    from verl_meds.step import canonical_order

    keys = [f"uid{g}_{s}_0" for g in ("a", "b", "c") for s in range(4)]
    prompts = [f"p{g}" for g in ("2", "0", "1") for _ in range(4)]
    base = [(prompts[r], keys[r]) for r in canonical_order(prompts, keys)]
    rng = np.random.default_rng(0)
    for _ in range(20):
        perm = rng.permutation(len(keys))
        p2, k2 = [prompts[i] for i in perm], [keys[i] for i in perm]
        assert [(p2[r], k2[r]) for r in canonical_order(p2, k2)] == base
    # Rollout index 10 sorts after 9 (numeric, not string order), and prompts come in id order.
    keys = ["u_10_0", "u_9_0", "u_0_0"]
    assert list(canonical_order(["p", "p", "p"], keys)) == [2, 1, 0]


def test_groups_with_signal_keeps_groups_with_shaped_spread():
    import torch

    from verl_meds.step import groups_with_signal

    # g1: all wrong, equal penalties (flat); g2: all wrong, different cluster sizes (signal); g3: mixed; g4: singleton
    shaped = torch.tensor([-1.1, -1.1, -1.0, -1.16, 1.0, -1.0, 0.5])
    groups = ["g1", "g1", "g2", "g2", "g3", "g3", "g4"]
    assert groups_with_signal(shaped, groups).tolist() == [False, False, True, True, True, True, False]
    assert groups_with_signal(torch.zeros(0), []).tolist() == []


def test_group_degeneracy_counts_singleton_and_flat_groups():
    import torch

    from verl_meds.step import group_degeneracy

    # g1 flat (2 rows), g2 spread (2), g3 singleton (1, flat too), g4 spread (3)
    shaped = torch.tensor([-1.1, -1.1, -1.0, -1.16, 0.5, 1.0, -1.0, 1.0])
    groups = ["g1", "g1", "g2", "g2", "g3", "g4", "g4", "g4"]
    metrics = group_degeneracy(shaped, groups)
    assert metrics == {"meds/groups/singleton_frac": 1 / 8, "meds/groups/flat_frac": 3 / 8}
    # every response identical: every group flat; every group of size 1: every row singleton and flat
    assert group_degeneracy(torch.ones(4), ["a", "a", "b", "b"])["meds/groups/flat_frac"] == 1.0
    assert group_degeneracy(torch.arange(3.0), ["a", "b", "c"]) == {
        "meds/groups/singleton_frac": 1.0,
        "meds/groups/flat_frac": 1.0,
    }
    assert group_degeneracy(torch.zeros(0), []) == {"meds/groups/singleton_frac": 0.0, "meds/groups/flat_frac": 0.0}


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
