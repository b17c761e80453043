r"""Property-based tests: random and adversarial responses through locate -> features -> memory -> shaping.

Inputs are built from adversarial fragments (empty responses, all padding, `\boxed{` without its closing brace,
nested and multiple boxes, escaped braces, unicode, combining marks, 80-digit numbers, special tokens) and from
adversarial feature values (NaN, +-inf, +-3.4e38, subnormals, exact duplicates), with groups of size 1, prompts seen
once, whole groups of identical responses and tiny memory capacities. Every example must run without an exception,
keep NaN and inf out of every reward and advantage, and give each degenerate case its documented result:

- no answer token (empty response, all padding, no box, empty box, `\boxed{` at the very end):
  `locate_answer_token` gives -1, the row is not stored and has |C| = 0 (`ErrorMemory.step`);
  counted in `meds/features/missing_frac` and `meds/features/answer_found_frac`.
- non-finite feature (a model that overflows): as above; counted in `meds/features/missing_frac`.
- non-finite raw reward (a reward that failed to compute): stays NaN through `shape_rewards`, no penalty, advantage 0
  and left out of its group's statistics; counted in `meds/rewards/nonfinite_frac`.
- outcome not targeted by `penalty_target`: |C| = 0 and the reward is unchanged.
- group of size 1: advantage s / (1 + eps) (`grpo_advantages`, verl's rule).
- group whose shaped rewards are equal (e.g. every response identical): advantage exactly 0.
- identical responses of one prompt and outcome: the same |C|.
- buffer over capacity: the oldest entries are dropped (FIFO); counted in `meds/memory/truncated_prompts`.

Profiles (tests/reliability/conftest.py): `ci` runs 200 examples per property; the `slow`-marked twins run 10,000.
"""

from __future__ import annotations

import math
import pickle
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("verl")

from meds_pipeline import CharTokenizer, driver_step, pad_rows  # noqa: E402

from verl_meds.answer import extract_boxed, locate_answer_tokens  # noqa: E402
from verl_meds.config import (  # noqa: E402
    ASSIGNMENTS,
    CLUSTER_METHODS,
    CLUSTER_METRICS,
    PENALTY_TARGETS,
    MEDSConfig,
)
from verl_meds.memory import ErrorMemory  # noqa: E402
from verl_meds.shaping import grpo_advantages, penalty_from_cluster_sizes, shape_rewards  # noqa: E402

pytestmark = pytest.mark.requires_verl
torch.set_num_threads(1)

SLOW = settings.get_profile("slow")
EPS = 1e-6  # verl's GRPO epsilon, used by the `meds` estimator
CALLS: Counter[str] = Counter()  # examples run per property (valid or not), so the slow twins can prove their count


def run_slow(name: str, prop, **overrides) -> None:
    """Run a property with the `slow` profile and check that at least `max_examples` examples really ran."""
    chosen = settings(SLOW, **overrides)
    before = CALLS[name]
    chosen(prop)()
    ran = CALLS[name] - before
    assert ran >= chosen.max_examples, f"{name}: only {ran} examples ran"
    print(f"{name}: {ran} examples")


# ------------------------------------------------------------------------------------------------ strategies

FRAGMENTS = [
    "\\boxed{",
    "\\fbox{",
    "\\boxed{}",
    "\\boxed{ }",
    "\\boxed {7}",
    "\\fbox\n\t{8}",
    "\\boxed",
    "\\boxed{\\boxed{1}}",
    "\\boxed{1}\\boxed{2}",
    "\\boxed{\\frac{1}{2}}",
    "\\{",
    "\\}",
    "\\\\",
    "{",
    "}",
    "}}",
    "{{",
    "\\",
    " ",
    "\n",
    "\t",
    "\u2003",
    "\u200b",
    "42",
    "-7",
    "3.14",
    "9" * 80,
    "1e309",
    "NaN",
    "inf",
    "é",
    "e\u0301",
    "数学",
    "🙂",
    "<|endoftext|>",
    "<|im_end|>",
]
texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=10).map("".join)
SPECIAL_VALUES = [0.0, -0.0, 1.0, -1.0, 3.4e38, -3.4e38, 1e-45, 1e30, math.nan, math.inf, -math.inf]
feature_values = st.one_of(st.sampled_from(SPECIAL_VALUES), st.floats(width=32))
FINITE_REWARDS = [-1.0, 0.0, 1.0, 0.5, -0.5, 1e30, -1e30, 3.0e38]
finite_rewards = st.one_of(st.sampled_from(FINITE_REWARDS), st.floats(-10, 10, width=32))
any_rewards = st.one_of(finite_rewards, st.sampled_from([math.nan, math.inf, -math.inf]))
PROMPTS = ["p0", "p1", "p2", "p3"]
FAULTS = {"reproduce_fork_faults": True}


def reference_answer_char(text: str) -> int:
    r"""Char index of the first answer character after the last `\boxed{`/`\fbox{` of `text` (whitespace allowed
    before the brace), -1 if none. A plain scan from the end, independent of the regex in `verl_meds.answer`."""
    start = -1
    for i in range(len(text) - 1, -1, -1):
        for command in ("\\boxed", "\\fbox"):
            if text.startswith(command, i):
                j = i + len(command)
                while j < len(text) and text[j].isspace():
                    j += 1
                if j < len(text) and text[j] == "{":
                    start = j + 1
        if start >= 0:
            break
    if start < 0:
        return -1
    rest = text[start:].lstrip()
    if not rest or rest[0] == "}":
        return -1
    return start + len(text[start:]) - len(rest)


@st.composite
def masked_responses(draw, tokenizer, width: int = 48):
    """Token rows (N, width) and masks: contiguous (verl's layout), empty, all padding with mask 1, or with holes."""
    rows, masks = [], []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["text", "text", "text", "empty", "pad_tokens", "holes"]))
        pad_id = tokenizer.pad_token_id
        if kind == "pad_tokens":  # a response made of padding ids that the mask calls real tokens
            ids = [pad_id] * draw(st.integers(1, 6))
        elif kind == "empty":
            ids = []
        else:
            ids = tokenizer.encode(draw(texts))
        ids_t, mask_t = pad_rows([ids], width, pad_id)
        if kind == "holes":
            holes = draw(st.lists(st.booleans(), min_size=width, max_size=width))
            mask_t = mask_t * torch.tensor([not h for h in holes], dtype=torch.long)
        rows.append(ids_t[0])
        masks.append(mask_t[0])
    return torch.stack(rows), torch.stack(masks)  # (N, T), (N, T)


@lru_cache(maxsize=1)
def bpe_tokenizer():
    """The tiny task's kind of tokenizer (byte-level BPE, `\\boxed{` one token), trained on a small corpus."""
    from data_prep.tiny_model import build_tokenizer

    corpus = [
        "What is 7*3+24? 7*3=21, 24+21=45. \\boxed{45}<|im_end|>",
        "so x = \\frac{1}{2} and \\boxed{\\frac{1}{2}} or \\fbox{12}",
        "数学 é 🙂 {a} \\{b\\} 3.14 -7",
    ] * 20
    return build_tokenizer(corpus, vocab_size=300)


# ------------------------------------------------------------------------------------------------ 1. locate


def check_locate(tokenizer, responses: torch.Tensor, mask: torch.Tensor, exact: bool) -> None:
    index = locate_answer_tokens(responses, mask, tokenizer)  # (N,)
    assert index.shape == (responses.shape[0],) and index.dtype == torch.long
    for n in range(responses.shape[0]):
        positions = torch.nonzero(mask[n]).flatten().tolist()
        ids = responses[n, positions].tolist()
        text = tokenizer.decode(ids) if ids else ""
        expected_char = reference_answer_char(text)
        got = int(index[n])
        assert -1 <= got < responses.shape[1]
        assert (got == -1) == (expected_char == -1), (text, got)
        if got == -1:
            continue
        assert bool(mask[n, got]), "the answer token must be a real (unmasked) token"
        k = positions.index(got)
        if exact:  # one char per token: the answer token is the answer character itself
            assert k == expected_char, (text, k, expected_char)
        else:  # the answer character starts inside token k of the decoded response
            before, through = len(tokenizer.decode(ids[:k])), len(tokenizer.decode(ids[: k + 1]))
            assert before <= expected_char < through or "\ufffd" in tokenizer.decode(ids[: k + 1]), (text, k)
        # extract_boxed agrees on unclosed boxes and on where the answer starts (a closed box is never empty here).
        boxed = extract_boxed(text)
        assert boxed is None or boxed.strip() != ""


def _locate_char_property():
    tokenizer = CharTokenizer()

    @given(masked_responses(tokenizer))
    def prop(batch):
        CALLS["locate_char"] += 1
        check_locate(tokenizer, *batch, exact=True)

    return prop


def _locate_bpe_property():
    @given(st.data())
    def prop(data):
        CALLS["locate_bpe"] += 1
        tokenizer = bpe_tokenizer()
        check_locate(tokenizer, *data.draw(masked_responses(tokenizer)), exact=False)

    return prop


test_locate_char_tokenizer = _locate_char_property()
test_locate_bpe_tokenizer = _locate_bpe_property()


@pytest.mark.slow
def test_locate_char_tokenizer_10k():
    run_slow("locate_char", _locate_char_property())


@pytest.mark.slow
def test_locate_bpe_tokenizer_10k():
    run_slow("locate_bpe", _locate_bpe_property())


# ------------------------------------------------------------------------------------------------ 2-4. pipeline


@st.composite
def meds_configs(draw) -> tuple[MEDSConfig, int]:
    """A valid config covering every clustering/shaping choice, and L_sel (raw values per response)."""
    num_layers = draw(st.integers(1, 4))
    bounds = st.one_of(st.sampled_from([0.0, 0.1, 0.2, 1.0, 1e6]), st.floats(0, 5))
    assignment = draw(st.sampled_from(ASSIGNMENTS))
    config = MEDSConfig.from_dict(
        {
            "features": {"layers": list(range(1, num_layers + 1)), "diff": num_layers >= 2 and draw(st.booleans())},
            "memory": {"capacity": draw(st.integers(1, 12))},
            "clustering": {
                # Answer-keyed memory has no features to draw; tests/test_memory_answer.py covers it.
                "method": draw(st.sampled_from([m for m in CLUSTER_METHODS if m != "answer"])),
                "assignment": assignment,
                "fork_faults": assignment == "knn" and draw(st.booleans()),  # the authors' kNN faults
                "min_cluster_size": draw(st.integers(2, 4)),
                "min_samples": draw(st.integers(1, 3)),
                "knn_k": draw(st.integers(1, 4)),
                "metric": draw(st.sampled_from(CLUSTER_METRICS)),
                "l2_normalize": draw(st.booleans()),
                "allow_single_cluster": draw(st.booleans()),
            },
            "shaping": {
                "alpha": draw(bounds),
                "beta": draw(bounds),
                "penalty_target": draw(st.sampled_from(PENALTY_TARGETS)),
            },
            # The authors' order and formulas (overwrites clustering/shaping fields), with or without their faults.
            **draw(st.sampled_from([{}, {}, {}, {"fork_parity": True}, {"fork_parity": True, **FAULTS}])),
        }
    )
    return config, num_layers


@st.composite
def training_steps(draw, num_values: int, rewards=finite_rewards, max_steps: int = 4):
    """Steps of (prompt, group) batches. Each row: text, raw values (L_sel,), correct, reward."""
    pool = draw(st.lists(st.lists(feature_values, min_size=num_values, max_size=num_values), min_size=1, max_size=4))
    row_values = st.one_of(
        st.sampled_from(pool),  # an exact repeat of an earlier error
        st.tuples(st.sampled_from(pool), st.integers(-3, 3)).map(lambda t: [v + 1e-3 * t[1] for v in t[0]]),
        st.lists(feature_values, min_size=num_values, max_size=num_values),
    )
    row = st.tuples(texts, row_values, st.booleans(), rewards)
    steps = []
    for _ in range(draw(st.integers(1, max_steps))):
        groups = []
        for _ in range(draw(st.integers(1, 4))):
            prompt = draw(st.sampled_from(PROMPTS))
            size = draw(st.integers(1, 6))
            if draw(st.booleans()):  # every response of the group identical
                groups.append((prompt, [draw(row)] * size))
            else:
                groups.append((prompt, draw(st.lists(row, min_size=size, max_size=size))))
        permutation = draw(st.permutations(range(sum(len(g[1]) for g in groups))))
        steps.append((groups, permutation))
    return steps


def build_batch(groups, permutation, step: int, tokenizer):
    """Flatten groups into verl's row layout (keys `{uid}_{rollout}_0`), then reorder rows by `permutation`."""
    rows = []
    for g, (prompt, members) in enumerate(groups):
        uid = f"uid-{step}-{g}"
        for i, (text, values, correct, reward) in enumerate(members):
            rows.append((prompt, f"{uid}_{i}_0", uid, text, values, correct, reward))
    rows = [rows[i] for i in permutation]
    prompts, keys, uids, texts_, values, correct, rewards = (list(c) for c in zip(*rows, strict=True))
    responses, mask = pad_rows([tokenizer.encode(t) for t in texts_], 48, tokenizer.pad_token_id)
    raw = torch.tensor(np.array(values, dtype=np.float64).astype(np.float32))  # (N, L_sel)
    return prompts, keys, uids, responses, mask, raw, torch.tensor(rewards, dtype=torch.float32), np.array(correct)


class ShadowMemory:
    """What the memory must hold: per (prompt, outcome) min(capacity, rows stored so far); truncated prompt set."""

    def __init__(self, config: MEDSConfig) -> None:
        self.capacity = config.memory.capacity
        self.tracked = {"wrong": ("wrong",), "right": ("right",), "both": ("wrong", "right"), "none": ()}[
            config.shaping.penalty_target
        ]
        self.counts: dict[tuple[str, str], int] = {}
        self.truncated: set[str] = set()

    def update(self, prompts, usable, correct) -> np.ndarray:
        tracked = np.array([("right" if c else "wrong") in self.tracked for c in correct], dtype=bool)
        for prompt, ok, c, t in zip(prompts, usable, correct, tracked, strict=True):
            if ok and t:
                key = (prompt, "right" if c else "wrong")
                self.counts[key] = self.counts.get(key, 0) + 1
                if self.counts[key] > self.capacity:
                    self.truncated.add(prompt)
        return tracked

    @property
    def num_entries(self) -> int:
        return sum(min(self.capacity, c) for c in self.counts.values())

    @property
    def num_prompts(self) -> int:
        return len({prompt for prompt, _ in self.counts})


def check_step(result, config: MEDSConfig, shadow: ShadowMemory, memory: ErrorMemory, batch) -> None:
    prompts, keys, uids, responses, mask, raw, rewards, correct = batch
    n = len(prompts)
    usable = result.valid
    tracked = shadow.update(prompts, usable, correct)
    sizes, penalties = result.cluster_sizes, result.penalties
    # No exception happened; nothing non-finite left the step.
    for name in ("penalties", "shaped", "token_scores", "advantages"):
        assert bool(torch.isfinite(getattr(result, name)).all()), f"non-finite {name}"
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    # Rows without a usable feature or an untracked outcome: |C| = 0, penalty 0, reward unchanged.
    assert sizes.dtype == np.int64 and (sizes >= 0).all()
    assert (sizes[~(usable & tracked)] == 0).all()
    assert bool((penalties >= 0).all()) and bool((penalties <= config.shaping.beta + 1e-6).all())
    assert bool((penalties[torch.from_numpy(sizes == 0)] == 0).all())
    unpenalised = torch.from_numpy(sizes == 0) | torch.from_numpy(~tracked)
    assert torch.equal(result.shaped[unpenalised], result.rewards[unpenalised])
    # Degenerate cases are counted.
    assert result.metrics["meds/features/missing_frac"] == pytest.approx(1.0 - usable.mean())
    has_answer = (result.answer_index >= 0).float().mean().item()
    assert result.metrics["meds/features/answer_found_frac"] == pytest.approx(has_answer)
    assert result.metrics["meds/rewards/nonfinite_frac"] == 0.0
    # Memory: bounded, equal to the shadow count, FIFO truncation counted.
    assert memory.num_entries == shadow.num_entries == result.metrics["meds/memory/num_entries"]
    assert memory.num_prompts == shadow.num_prompts == result.metrics["meds/memory/num_prompts"]
    assert result.metrics["meds/memory/truncated_prompts"] == len(shadow.truncated)
    for prompt in PROMPTS:
        for outcome in ("wrong", "right"):
            entries = memory.entries(prompt, outcome)
            assert entries.shape[0] <= config.memory.capacity and np.isfinite(entries).all()
            assert memory.labels(prompt, outcome).shape == (entries.shape[0],)
    # Identical usable rows of one prompt and outcome get the same |C|.
    seen: dict[tuple, int] = {}
    for r in np.flatnonzero(usable & tracked):
        key = (prompts[r], bool(correct[r]), result.features[r].tobytes())
        assert seen.setdefault(key, int(sizes[r])) == int(sizes[r]), "identical responses got different |C|"
    # GRPO: singleton groups get s / (1 + eps); groups with equal shaped rewards get exactly 0.
    members: dict[str, list[int]] = {}
    for r, uid in enumerate(uids):
        members.setdefault(uid, []).append(r)
    for rows in members.values():
        live = [r for r in rows if mask[r].any()]
        row_sums = result.token_scores[rows].sum(dim=1)  # the scores the estimator normalises
        if len(rows) == 1 and live:  # the advantage is broadcast over the row's response tokens
            expected = (row_sums[0].double() / (1 + EPS)).float()
            got = result.advantages[rows[0]][mask[rows[0]].bool()]
            assert torch.allclose(got, expected.expand_as(got), rtol=1e-5, atol=1e-6)
        elif len(rows) > 1 and bool((row_sums == row_sums[0]).all()):
            assert bool((result.advantages[rows] == 0).all()), result.shaped[rows]
    assert n == len(keys)


def _pipeline_property():
    tokenizer = CharTokenizer()

    @given(st.data())
    def prop(data):
        CALLS["pipeline"] += 1
        config, num_values = data.draw(meds_configs())
        steps = data.draw(training_steps(num_values))
        memory, shadow = ErrorMemory(config), ShadowMemory(config)
        for step, (groups, permutation) in enumerate(steps):
            batch = build_batch(groups, permutation, step, tokenizer)
            prompts, keys, uids, responses, mask, raw, rewards, correct = batch
            result = driver_step(
                memory, config, prompts, keys, uids, responses, mask, tokenizer, raw, rewards, correct
            )
            check_step(result, config, shadow, memory, batch)
        # The state survives a checkpoint round trip bit for bit.
        state = memory.state_dict()
        restored = ErrorMemory(config)
        restored.load_state_dict(pickle.loads(pickle.dumps(state)))
        assert pickle.dumps(restored.state_dict()) == pickle.dumps(state)

    return prop


test_pipeline_random_and_adversarial = _pipeline_property()


@pytest.mark.slow
def test_pipeline_random_and_adversarial_10k():
    run_slow("pipeline", _pipeline_property())


# ------------------------------------------------------------------------------------------------ non-finite rewards


def _shaping_nonfinite_property():
    @given(
        st.lists(
            st.tuples(any_rewards, st.booleans(), st.integers(0, 50), st.integers(0, 3)), min_size=1, max_size=24
        ),
        st.sampled_from(PENALTY_TARGETS),
    )
    def prop(rows, target):
        CALLS["shaping_nonfinite"] += 1
        rewards = torch.tensor([r[0] for r in rows], dtype=torch.float32)
        correct = torch.tensor([r[1] for r in rows])
        penalties = penalty_from_cluster_sizes(torch.tensor([r[2] for r in rows]), 0.1, 0.2)
        shaped, metrics = shape_rewards(rewards, correct, penalties, target)
        finite = torch.isfinite(rewards)
        assert torch.equal(torch.isfinite(shaped), finite)  # missing stays missing, never a wrong answer
        nonfinite_frac = float((~finite).float().mean())
        assert metrics["meds/rewards/nonfinite_frac"] == pytest.approx(nonfinite_frac)
        assert all(math.isfinite(v) for v in metrics.values())
        # The finite rows are shaped exactly as without the missing ones.
        alone, _ = shape_rewards(rewards[finite], correct[finite], penalties[finite], target)
        assert torch.equal(shaped[finite], alone)
        groups = [r[3] for r in rows]
        advantages = grpo_advantages(shaped, groups)
        assert bool(torch.isfinite(advantages).all())
        assert not bool(advantages[~finite].any())
        kept = torch.nonzero(finite).flatten().tolist()
        if kept:
            expected = grpo_advantages(shaped[kept], [groups[r] for r in kept])
            torch.testing.assert_close(advantages[kept], expected, atol=1e-6, rtol=0)

    return prop


test_shaping_leaves_nonfinite_rewards_out = _shaping_nonfinite_property()


@pytest.mark.slow
def test_shaping_leaves_nonfinite_rewards_out_10k():
    run_slow("shaping_nonfinite", _shaping_nonfinite_property())


def _trainer_nonfinite_property():
    tokenizer = CharTokenizer()

    @given(st.data())
    def prop(data):
        config, num_values = data.draw(meds_configs())
        steps = data.draw(training_steps(num_values, rewards=any_rewards, max_steps=1))
        groups, permutation = steps[0]
        batch = build_batch(groups, permutation, 0, tokenizer)
        prompts, keys, uids, responses, mask, raw, rewards, correct = batch
        live = mask.sum(dim=1) > 0
        assume(bool((~torch.isfinite(rewards) & live).any()))
        memory = ErrorMemory(config)
        result = driver_step(memory, config, prompts, keys, uids, responses, mask, tokenizer, raw, rewards, correct)
        assert bool(torch.isfinite(result.advantages).all())
        nonfinite = ~torch.isfinite(rewards) & live
        assert result.metrics["meds/rewards/nonfinite_frac"] > 0
        # A non-finite raw reward stays missing: its row sum is NaN and its advantage 0.
        assert bool(torch.isnan(result.token_scores[nonfinite].sum(dim=1)).all())
        assert not bool(result.advantages[nonfinite].any())
        assert bool(torch.isfinite(result.token_scores[~nonfinite & live]).all())

    return prop


def test_nonfinite_rewards_never_reach_advantages_in_the_trainer_step():
    settings(max_examples=50)(_trainer_nonfinite_property())()


# ------------------------------------------------------------------------------------------------ features


@lru_cache(maxsize=1)
def tiny_qwen2():
    """A random 2-layer Qwen2 (D=32) over the BPE tokenizer's vocabulary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(bpe_tokenizer()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config).eval()


def _features_property():
    from verl_meds.features import LogitLensCapture, find_final_norm, logit_lens_from_hidden_states

    @given(st.data())
    def prop(data):
        CALLS["features"] += 1
        tokenizer, model = bpe_tokenizer(), tiny_qwen2()
        vocab = len(tokenizer)
        layers = data.draw(st.sampled_from([[2], [1, 2]]))
        final_norm = data.draw(st.booleans())
        config = MEDSConfig.from_dict(
            {
                "features": {
                    "layers": layers,
                    "diff": len(layers) == 2 and data.draw(st.booleans()),
                    "final_norm": final_norm,
                }
            }
        )
        responses, mask = data.draw(masked_responses(tokenizer, width=24))
        mask = (torch.cumsum(1 - mask, dim=1) == 0).long() * mask  # verl's layout: real tokens first
        n = responses.shape[0]
        prompt_lens = data.draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
        answer_index = locate_answer_tokens(responses, mask, tokenizer)  # (N,)
        width = max(prompt_lens) + responses.shape[1]
        input_ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)  # (N, S) [prompt | response]
        attention = torch.zeros((n, width), dtype=torch.long)
        for r, plen in enumerate(prompt_lens):
            input_ids[r, :plen] = torch.tensor(
                data.draw(st.lists(st.integers(0, vocab - 1), min_size=plen, max_size=plen))
            )
            input_ids[r, plen : plen + responses.shape[1]] = responses[r]
            attention[r, : plen + int(mask[r].sum())] = 1
        has_answer = answer_index >= 0
        pred_pos = torch.tensor(prompt_lens) + answer_index - 1  # (N,)
        flat = torch.arange(n) * width + pred_pos  # padded layout, as the worker's flat_positions
        answer_tokens = responses.gather(1, answer_index.clamp(min=0)[:, None]).squeeze(1)
        # Overflow: an LM head scaled far beyond float32 range gives inf/NaN lens values.
        scale = data.draw(st.sampled_from([1.0, 1.0, 1e20, 1e38]))
        head = model.lm_head.weight
        original = head.detach().clone()
        try:
            with torch.no_grad():
                head.mul_(scale)
                capture = LogitLensCapture(model, layers, final_norm, flat[has_answer], answer_tokens[has_answer])
                with capture:
                    model(input_ids=input_ids, attention_mask=attention)
                out = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=True)
                hidden = [h[has_answer] for h in out.hidden_states]  # L + 1 tensors (n, S, D): rows with an answer
                reference = logit_lens_from_hidden_states(
                    hidden,
                    pred_pos[has_answer],
                    answer_tokens[has_answer],
                    head,
                    find_final_norm(model),
                    layers,
                    final_norm,
                )
        finally:
            with torch.no_grad():
                head.copy_(original)
        torch.testing.assert_close(capture.features, reference.float(), equal_nan=True, rtol=1e-5, atol=1e-5)
        raw = torch.full((n, len(layers)), math.nan)  # the worker's output: NaN where there is no answer
        raw[has_answer] = capture.features
        rewards = torch.tensor(data.draw(st.lists(finite_rewards, min_size=n, max_size=n)), dtype=torch.float32)
        correct = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        prompts = [f"p{r % 2}" for r in range(n)]
        keys = [f"u{r % 2}_{r}_0" for r in range(n)]
        memory = ErrorMemory(config)
        result = driver_step(
            memory,
            config,
            prompts,
            keys,
            [f"u{r % 2}" for r in range(n)],
            responses,
            mask,
            tokenizer,
            raw,
            rewards,
            correct,
        )
        assert bool(torch.isfinite(result.advantages).all()) and bool(torch.isfinite(result.shaped).all())
        finite_rows = has_answer.numpy() & np.isfinite(result.features).all(axis=1)
        assert np.array_equal(result.valid, finite_rows)
        assert result.metrics["meds/features/missing_frac"] == pytest.approx(1.0 - finite_rows.mean())
        assert memory.num_entries <= int(finite_rows.sum())

    return prop


test_features_on_tiny_qwen2 = settings(max_examples=25)(_features_property())


@pytest.mark.slow
def test_features_on_tiny_qwen2_slow():
    run_slow("features", _features_property(), max_examples=500)


# ------------------------------------------------------------------------------------------------ regressions found


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("\\boxed{\u2003", None),  # found by test_locate_bpe_tokenizer_10k: a 3-byte space alone is no answer
        ("\\boxed{\u3000}", None),
        ("\\boxed{\u3000 42}", "4"),  # ... and is skipped before the answer
        ("\\boxed{\u00a0数}", "数"),  # the answer's first byte token when the answer char itself is split
    ],
)
def test_multibyte_space_after_box_with_byte_level_tokenizer(text, answer):
    tokenizer = bpe_tokenizer()
    ids = tokenizer.encode(text)
    assert any(tokenizer.decode([i]) == "\ufffd" for i in ids), "the case needs a character split over tokens"
    index = int(locate_answer_tokens(torch.tensor([ids]), torch.ones(1, len(ids)), tokenizer)[0])
    if answer is None:
        assert index == -1
    else:
        assert index >= 0
        decoded_through = tokenizer.decode(ids[: index + 1])
        assert tokenizer.decode(ids[:index]).endswith(("{", " ", "\u00a0")) and len(decoded_through) > 0
        assert answer.startswith(decoded_through[-1]) or decoded_through[-1] == "\ufffd"
