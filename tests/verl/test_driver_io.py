"""The MEDS driver path against a real TransferQueue: what it reads, what it writes, and verl's padding rows.

`MEDSTrainer._compute_old_log_prob` and `_compute_advantage` run on rows written the way verl's agent loop writes them
(nested fields, per-row tags with ``prompt_len``), with padding rows added by verl's own
``upsample_batch_to_divisible_size``. Only verl's two calls into the workers (the log-prob recompute and its
advantage estimator) are replaced: the first writes a feature per row that depends only on the located answer token,
the second records the token-level scores it would train on.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

import ray  # noqa: E402
import transfer_queue as tq  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tiny_tokenizers import byte_level  # noqa: E402
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size  # noqa: E402
from verl.trainer.ppo.v1 import PPOTrainerSync  # noqa: E402
from verl.utils.tensordict_utils import list_of_dict_to_tensordict  # noqa: E402

from verl_meds.config import MEDSConfig  # noqa: E402
from verl_meds.step import ANSWER_RECORD_KEY, answer_record  # noqa: E402
from verl_meds.verl.hooks.grading import GradingMetricsHook  # noqa: E402
from verl_meds.verl.hooks.meds import PREFETCH_FIELDS, MEDSHook  # noqa: E402
from verl_meds.verl.step_data import tq_fields  # noqa: E402
from verl_meds.verl.trainer import MEDSTrainer  # noqa: E402
from verl_meds.verl.worker import ANSWER_TOKEN_KEY, FEATURES_KEY, PRED_POS_KEY  # noqa: E402

pytestmark = pytest.mark.requires_verl

NUM_LAYERS = 8
PARTITION = "train"


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level()


@pytest.fixture(scope="module")
def transfer_queue():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # TransferQueue's actors take a CPU each
    tq.init()
    yield
    tq.close()
    if started:
        ray.shutdown()


_counter = itertools.count()


def _write_batch(tokenizer, groups: list[list[tuple[str, bool]]], multiple: int, recorded: bool = True):
    """Rows as verl's agent loop writes them; groups[p] = [(response text, correct), ...] for prompt p. With
    `recorded`, the reward info carries the answer record of `verl_meds.verl.reward_manager`."""
    from transfer_queue.metadata import KVBatchMeta

    run = next(_counter)
    keys, tags, rows = [], [], []
    for p, group in enumerate(groups):
        prompt = torch.tensor(tokenizer.encode(f"Question {p}: what is it?"), dtype=torch.long)
        for j, (text, correct) in enumerate(group):
            response = torch.tensor(tokenizer.encode(text), dtype=torch.long)
            scores = torch.zeros(response.numel())
            scores[-1] = float(correct)
            keys.append(f"r{run}u{p}_{j}_0")
            tags.append({"status": "success", "prompt_len": prompt.numel(), "response_len": response.numel()})
            tags[-1]["seq_len"] = prompt.numel() + response.numel()
            rows.append(
                {
                    "prompts": prompt,
                    "responses": response,
                    "response_mask": torch.ones(response.numel(), dtype=torch.long),
                    "input_ids": torch.cat([prompt, response]),
                    "rm_scores": scores,
                    "uid": f"r{run}u{p}",
                    "extra_info": {"index": p},
                    "extra_fields": {"reward_extra_info": {"acc": float(correct), "pred": text[-2:]}},
                }
            )
            if recorded:
                rows[-1]["extra_fields"]["reward_extra_info"][ANSWER_RECORD_KEY] = answer_record(response, tokenizer)
    tq.kv_batch_put(keys=keys, partition_id=PARTITION, fields=list_of_dict_to_tensordict(rows), tags=tags)
    batch = KVBatchMeta(keys=keys, tags=tags, partition_id=PARTITION)
    return upsample_batch_to_divisible_size(batch, multiple, tokenizer.eos_token_id)


def _trainer(tokenizer, folder) -> MEDSTrainer:
    trainer = object.__new__(MEDSTrainer)
    config = OmegaConf.create({"trainer": {"default_local_dir": str(folder)}})
    meds = MEDSHook(config, MEDSConfig(), tokenizer, num_layers=NUM_LAYERS)
    trainer._hooks = [GradingMetricsHook(), meds]
    trainer._step = None
    trainer.timing_raw = {}
    trainer.global_steps = 1
    return trainer


class _Recorder:
    """Stands in for verl's two worker-facing calls and counts the driver's TransferQueue reads and writes."""

    def __init__(self, monkeypatch):
        self.gets: list[list[str]] = []
        self.puts: list[tuple[list[str], list[str]]] = []
        self.trained_scores: list[torch.Tensor] | None = None
        real_get, real_put = tq.kv_batch_get, tq.kv_batch_put

        def get(keys, partition_id, select_fields=None):
            self.gets.append(list(select_fields or []))
            return real_get(keys=keys, partition_id=partition_id, select_fields=select_fields)

        def put(keys, partition_id, fields=None, tags=None):
            self.puts.append((list(keys), sorted(fields.keys()) if fields is not None else []))
            return real_put(keys=keys, partition_id=partition_id, fields=fields, tags=tags)

        def old_log_prob(trainer, batch, metrics):
            data = real_get(
                keys=batch.keys, partition_id=batch.partition_id, select_fields=[PRED_POS_KEY, ANSWER_TOKEN_KEY]
            )
            token = data[ANSWER_TOKEN_KEY].reshape(-1).float()  # (N,)
            has = data[PRED_POS_KEY].reshape(-1) >= 0
            layers = torch.arange(1, len(trainer.hook("meds").step.layers) + 1, dtype=torch.float32)
            features = token.unsqueeze(1) * 0.01 * layers  # (N, L_sel): equal answers, equal features
            features[~has] = float("nan")
            nested = torch.nested.as_nested_tensor(list(features), layout=torch.jagged)
            real_put(
                keys=batch.keys, partition_id=batch.partition_id, fields=tq_fields({FEATURES_KEY: nested}, len(batch))
            )
            return batch

        def advantage(trainer, batch, metrics):
            data = real_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["rm_scores"])
            self.trained_scores = list(data["rm_scores"].unbind())
            return batch

        monkeypatch.setattr(tq, "kv_batch_get", get)
        monkeypatch.setattr(tq, "kv_batch_put", put)
        monkeypatch.setattr(PPOTrainerSync, "_compute_old_log_prob", old_log_prob)
        monkeypatch.setattr(PPOTrainerSync, "_compute_advantage", advantage)


ANSWERS = ["\\boxed{3}", "\\boxed{4}", "\\boxed{5}", "no box here"]


def _run_step(tokenizer, groups, multiple, recorded, monkeypatch, folder):
    batch = _write_batch(tokenizer, groups, multiple, recorded)
    raw = [
        s.clone()
        for s in tq.kv_batch_get(keys=batch.keys, partition_id=PARTITION, select_fields=["rm_scores"])[
            "rm_scores"
        ].unbind()
    ]
    trainer = _trainer(tokenizer, folder)
    recorder = _Recorder(monkeypatch)
    metrics: dict = {}
    trainer._compute_advantage(trainer._compute_old_log_prob(batch, metrics), metrics)
    return batch, raw, trainer, recorder, metrics


@pytest.mark.parametrize("seed", range(4))
def test_one_read_per_step_only_changed_rows_written_and_padding_left_out(
    tokenizer, transfer_queue, monkeypatch, tmp_path, seed
):
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(int(rng.integers(2, 5))):
        size = int(rng.integers(2, 6))
        groups.append([(f"so {ANSWERS[int(rng.integers(0, 4))]}", bool(rng.random() < 0.25)) for _ in range(size)])
    num_real = sum(len(g) for g in groups)
    multiple = num_real + int(rng.integers(1, 4))  # verl adds 1-3 synthetic padding rows
    # The same rows located on the driver (no answer records in the reward info) give the same shaped scores.
    _, _, _, driver, driver_metrics = _run_step(tokenizer, groups, multiple, False, monkeypatch, tmp_path / "d")
    assert sorted(sorted(fields) for fields in driver.gets) == sorted(
        [["extra_fields"], sorted(PREFETCH_FIELDS), ["response_mask", "responses"], [FEATURES_KEY]]
    )
    assert driver_metrics["meds/features/located_in_reward"] == 0.0
    batch, raw, trainer, recorder, metrics = _run_step(tokenizer, groups, multiple, True, monkeypatch, tmp_path)
    real = np.array([not t.get("is_padding", False) for t in batch.tags])
    assert real.sum() == num_real and (~real).sum() >= 1

    # Reads: each field once per step (three calls, one of them in the background during the log-prob pass);
    # neither the prompts (verl's tags carry their lengths) nor the responses (the reward workers located the
    # answers).
    assert sorted(sorted(fields) for fields in recorder.gets) == sorted(
        [["extra_fields"], sorted(PREFETCH_FIELDS), [FEATURES_KEY]]
    )
    assert metrics["meds/features/located_in_reward"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(recorder.trained_scores, driver.trained_scores, strict=True))
    # The memory holds exactly the real wrong rows that have an answer (the padding copies of a real row do not).
    texts = [text for group in groups for text, _ in group]
    flags = [correct for group in groups for _, correct in group]
    stored = sum(1 for text, ok in zip(texts, flags, strict=True) if not ok and "boxed" in text)
    assert trainer.hook("meds").memory.num_entries == stored
    # Scores: only the last token of a wrong, penalised row moves; only those rows are written back.
    shaped = recorder.trained_scores
    changed = [i for i in range(len(batch)) if not torch.equal(shaped[i], raw[i])]
    rm_puts = [keys for keys, fields in recorder.puts if fields == ["rm_scores"]]
    assert rm_puts == ([[batch.keys[i] for i in changed]] if changed else [])
    for i in changed:
        assert real[i]
        assert torch.equal(shaped[i][:-1], raw[i][:-1])
        penalty = float(raw[i][-1] - shaped[i][-1])
        assert 0 < penalty <= MEDSConfig().shaping.beta + 1e-6
    for i in np.flatnonzero(~real):
        assert torch.equal(shaped[i], raw[i])
    # Two or more equal wrong answers of one prompt form a cluster; each such row is penalised.
    row = 0
    for group in groups:
        wrong = [text for text, ok in group if not ok and "boxed" in text]
        for j, (text, ok) in enumerate(group):
            if not ok and "boxed" in text and wrong.count(text) >= 2:
                assert row + j in changed
        row += len(group)
    assert metrics["meds/penalty/count"] == len(changed)
