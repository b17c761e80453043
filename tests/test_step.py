"""Tests for the framework-free helpers of `verl_meds.step`: stable prompt ids, canonical row order, group signal."""

import hashlib
import struct

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_meds.step import stable_prompt_ids


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


# ------------------------------------------------------------------------------------------- MEDSStep, padding rows


class _CharTokenizer:
    pad_token_id = 0

    def decode(self, token_ids) -> str:
        return "".join(chr(int(t)) for t in token_ids)


def _rows(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in texts)
    ids = torch.zeros((len(texts), width), dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for n, text in enumerate(texts):
        ids[n, : len(text)] = torch.tensor([ord(c) for c in text])
        mask[n, : len(text)] = 1
    return ids, mask


_ANSWERS = ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "no answer"]


@given(st.data())
@settings(max_examples=40, deadline=None)
def test_padding_rows_change_nothing_but_their_own_zero_penalty(data):
    """Rows flagged not real (a framework's synthetic padding, copies of real rows) are invisible to the memory."""
    from verl_meds.config import MEDSConfig
    from verl_meds.step import MEDSStep, response_digests

    n_real = data.draw(st.integers(2, 10))
    picks = data.draw(st.lists(st.integers(0, 3), min_size=n_real, max_size=n_real))
    wrong = np.array(data.draw(st.lists(st.booleans(), min_size=n_real, max_size=n_real)))
    prompt_of = data.draw(st.lists(st.integers(0, 1), min_size=n_real, max_size=n_real))
    copies = data.draw(st.lists(st.integers(0, n_real - 1), min_size=1, max_size=4))  # padding copies these rows
    rows = list(range(n_real)) + copies
    texts = [f"so {_ANSWERS[picks[r]]}" for r in rows]
    keys = [f"u{prompt_of[r]}_{r}_0" for r in range(n_real)] + [f"pad_{i}_0" for i in range(len(copies))]
    prompt_ids = [str(prompt_of[r]) for r in rows]
    correct = ~wrong[rows]
    real = np.array([True] * n_real + [False] * len(copies))
    config = MEDSConfig()

    def run(keep: np.ndarray):
        step = MEDSStep(config, num_layers=8)
        responses, mask = _rows([texts[i] for i in keep])
        location = step.locate(responses, mask, torch.zeros(len(keep), dtype=torch.long), _CharTokenizer())
        raw = location.token.float().unsqueeze(1) * 0.01 * torch.arange(1, 5)  # (N, 4): equal answers, equal values
        raw[~location.found] = float("nan")
        out = step.penalties(
            [keys[i] for i in keep],
            [prompt_ids[i] for i in keep],
            response_digests(responses, mask),
            location,
            raw,
            correct[keep],
            real=real[keep],
        )
        return step, out

    everything, with_padding = run(np.arange(len(rows)))
    alone, without = run(np.arange(n_real))
    assert not with_padding.cluster_sizes[~real].any() and not bool(
        with_padding.penalties[torch.from_numpy(~real)].any()
    )
    assert np.array_equal(with_padding.cluster_sizes[real], without.cluster_sizes)
    assert torch.equal(with_padding.penalties[torch.from_numpy(real)], without.penalties)
    assert everything.memory.num_entries == alone.memory.num_entries
    assert everything.memory.state_dict().keys() == alone.memory.state_dict().keys()

    rewards = torch.from_numpy(correct.astype(np.float32))
    shaped, metrics = everything.shape(rewards, correct, with_padding.penalties, keys, real)
    assert torch.equal(shaped[torch.from_numpy(~real)], rewards[torch.from_numpy(~real)])
    assert metrics["meds/penalty/count"] == float((without.penalties > 0).sum())
