"""One MEDS training step on plain tensors: answer location, memory, penalties, shaped rewards.

`MEDSStep` is the per-step MEDS work of the paper (Sec. 3) with no training framework around it. A trainer calls it in
three stages around its own log-prob pass, and the tests call the same stages directly:

1. `MEDSStep.locate`: the first token of each response's final answer (the token after its last `\\boxed{`) and the
   position in `[prompt | response]` of the token that predicts it; the workers capture the logit-lens values there
   (`verl_meds.features.LogitLensCapture`).
2. `MEDSStep.penalties`: the rows in `canonical_order` through `verl_meds.memory.ErrorMemory.step` (cluster size
   |C_k| of each response), then `verl_meds.shaping.penalty_from_cluster_sizes` (min(alpha * log(|C_k| + 1), beta)).
3. `MEDSStep.shape`: `verl_meds.shaping.shape_rewards` and the per-group metrics; `shaped_token_scores` puts the
   shaped reward on the last response token of the token-level scores (where verl's reward loop puts the outcome).

Rows flagged not `real` (synthetic padding rows of a framework, copies of a real row) are never stored, get penalty 0
and keep their reward. Shape letters: N rows, T response tokens, L_sel captured layers, F feature width.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from verl_meds.answer import TokenizerLike, locate_answer_token, locate_answer_tokens
from verl_meds.config import MEDSConfig
from verl_meds.features import finalize_features
from verl_meds.groups import group_rows
from verl_meds.memory import ErrorMemory
from verl_meds.shaping import penalty_from_cluster_sizes, shape_rewards


@dataclass
class AnswerLocation:
    """Where each response's final answer starts (output of `MEDSStep.locate`).

    Attributes:
        index (`torch.LongTensor` of shape `(N,)`): index of the answer's first token within the response, -1: none.
        pred_pos (`torch.LongTensor` of shape `(N,)`): position, within `[prompt | response]`, of the token that
            predicts it (`prompt_length + index - 1`), -1: none.
        token (`torch.LongTensor` of shape `(N,)`): the answer token id, 0 where there is none.
    """

    index: torch.Tensor
    pred_pos: torch.Tensor
    token: torch.Tensor

    @property
    def found(self) -> torch.Tensor:
        """`torch.BoolTensor` of shape `(N,)`: the response has a final answer."""
        return self.index >= 0

    @classmethod
    def at(cls, index: torch.Tensor, token: torch.Tensor, prompt_lengths: torch.Tensor) -> AnswerLocation:
        """The location of answers at `index` (`(N,)`, -1: none) with answer tokens `token` (`(N,)`) after prompts
        of `prompt_lengths` (`(N,)`) tokens."""
        index = index.to(torch.long)
        found = index >= 0
        pred_pos = torch.where(found, prompt_lengths.to(torch.long) + index - 1, torch.full_like(index, -1))
        return cls(index=index, pred_pos=pred_pos, token=torch.where(found, token.to(torch.long), 0))


ANSWER_RECORD_KEY = "meds_answer"
"""Key of the answer record in a response's reward info (`answer_record`): reward workers that hold the response ids
locate the answer there, so the trainer never reads the responses."""


def answer_record(response_ids, tokenizer: TokenizerLike) -> str:
    """One response's final-answer location and digest as a string: `"{index} {token} {digest hex}"`.

    `index` is `verl_meds.answer.locate_answer_token` (-1: no answer), `token` the id at `index` (0 for none), the
    digest `response_digest`. A string, so that verl's validation metrics skip it like the extracted answer.

    Args:
        response_ids (`torch.Tensor` of shape `(T,)`, `np.ndarray` or `list[int]`): the response tokens only.
        tokenizer (`TokenizerLike`): the policy's tokenizer.

    Returns:
        `str`; `read_answer_records` parses it back.
    """
    ids = np.asarray(response_ids.detach().cpu() if isinstance(response_ids, torch.Tensor) else response_ids)
    ids = ids.astype(np.int64).reshape(-1)  # (T,)
    index = locate_answer_token(ids, tokenizer)
    token = int(ids[index]) if index >= 0 else 0
    return f"{index} {token} {response_digest(ids).hex()}"


def read_answer_records(records: list, prompt_lengths: torch.Tensor) -> tuple[AnswerLocation, list[bytes]] | None:
    """The `AnswerLocation` and response digests of N rows from their `answer_record` strings.

    Args:
        records (`list` of length N): each row's record; `None`, `""` or a non-string where a row has none.
        prompt_lengths (`torch.LongTensor` of shape `(N,)`): prompt tokens before each response.

    Returns:
        `tuple[AnswerLocation, list[bytes]]`, or `None` when a row has no record (the caller locates the answers
        itself).

    Raises:
        ValueError: for a string that is not a record (names the row and the text).
    """
    if not all(isinstance(record, str) and record for record in records):
        return None
    index, token, digests = [], [], []
    for row, record in enumerate(records):
        parts = record.split(" ")
        try:
            if len(parts) != 3 or len(parts[2]) != 40:
                raise ValueError
            index.append(int(parts[0]))
            token.append(int(parts[1]))
            digests.append(bytes.fromhex(parts[2]))
        except ValueError:
            raise ValueError(f"row {row}: {record!r} is not an answer record ('<index> <token> <sha1 hex>')") from None
        if index[-1] < -1 or token[-1] < 0:
            raise ValueError(f"row {row}: {record!r} has a negative index or token")
    location = AnswerLocation.at(
        torch.tensor(index, dtype=torch.long), torch.tensor(token, dtype=torch.long), prompt_lengths
    )
    return location, digests


@dataclass
class StepPenalties:
    """Output of `MEDSStep.penalties`, in the rows' own order.

    Attributes:
        features (`np.ndarray` of shape `(N, F)`, float32): finalized features (NaN where missing).
        has_feature (`np.ndarray` of shape `(N,)`, bool): an answer was found and its feature is finite.
        order (`np.ndarray` of shape `(N_real,)`, int64): the real rows in the order the memory saw them.
        cluster_sizes (`np.ndarray` of shape `(N,)`, int64): |C_k| of each row (0: not penalised).
        penalties (`torch.Tensor` of shape `(N,)`, float32): min(alpha * log(|C_k| + 1), beta), 0 for |C_k| = 0.
        metrics (`dict[str, float]`): `meds/memory/*`, `meds/cluster_size/*`, `meds/clusters/*`,
            `meds/features/*` (see `verl_meds.metrics.METRIC_DESCRIPTIONS`).
    """

    features: np.ndarray
    has_feature: np.ndarray
    order: np.ndarray
    cluster_sizes: np.ndarray
    penalties: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class MEDSStep:
    """The per-prompt error memory and the three stages of a MEDS step (see the module docstring).

    Args:
        config (`MEDSConfig`): the validated `meds` block.
        num_layers (`int`, *optional*): number of decoder layers L of the policy; the captured layers are resolved
            from it (without it, `penalties` needs the captured values).
        memory (`ErrorMemory`, *optional*): the memory to update (a new one for `config` if omitted).

    Attributes:
        memory (`ErrorMemory`): the memory; its `state_dict` is what a checkpoint keeps.
        layers (`list[int]` or `None`): the 1-based captured layers (L_sel of them).
    """

    def __init__(self, config: MEDSConfig, num_layers: int | None = None, memory: ErrorMemory | None = None):
        self.config = config
        self.memory = ErrorMemory(config) if memory is None else memory
        self.layers = config.features.resolve_layers(num_layers) if num_layers is not None else None

    @property
    def keyed_by_answer(self) -> bool:
        """Whether the memory holds answer keys (`clustering.method="answer"`) instead of features."""
        return self.memory.keyed_by_answer

    def locate(
        self,
        responses: torch.Tensor,
        response_mask: torch.Tensor,
        prompt_lengths: torch.Tensor,
        tokenizer: TokenizerLike,
    ) -> AnswerLocation:
        """Stage 1: the final answer's first token of each response (`verl_meds.answer.locate_answer_tokens`).

        Args:
            responses (`torch.Tensor` of shape `(N, T)`, int): response ids, right-padded.
            response_mask (`torch.Tensor` of shape `(N, T)`): 1 on response tokens.
            prompt_lengths (`torch.LongTensor` of shape `(N,)`): number of prompt tokens before each response.
            tokenizer (`TokenizerLike`): the policy's tokenizer.

        Returns:
            `AnswerLocation`.
        """
        index = locate_answer_tokens(responses, response_mask, tokenizer)  # (N,)
        token = torch.where(index >= 0, responses.gather(1, index.clamp(min=0).unsqueeze(1)).squeeze(1), 0)
        return AnswerLocation.at(index, token, prompt_lengths)

    def penalties(
        self,
        keys: list[str],
        prompt_ids: list[str],
        response_digests: list[bytes] | None,
        location: AnswerLocation,
        raw_features: torch.Tensor | None,
        correct: np.ndarray,
        real: np.ndarray | None = None,
        answer_keys: list[str | None] | None = None,
    ) -> StepPenalties:
        """Stage 2: update the memory with this step's rows and give each row its penalty.

        Args:
            keys (`list[str]` of length N): each row's rollout key, `"{group}_{rollout index}_{turn}"` (verl's
                TransferQueue key); with `prompt_ids` it fixes the order the memory sees the rows in.
            prompt_ids (`list[str]` of length N): stable id of each row's prompt (`stable_prompt_ids`).
            response_digests (`list[bytes]` of length N, or `None`): each row's `response_digest`; with the
                features it orders rows that share prompt id and rollout index (`content_tiebreak`); `None`: the
                features alone do.
            location (`AnswerLocation`): the output of `locate` for these rows.
            raw_features (`torch.Tensor` of shape `(N, L_sel)`, float, or `None`): per-layer logit-lens values the
                workers captured (NaN where none); `None` when nothing was captured (answer keys).
            correct (`np.ndarray` of shape `(N,)`, bool): whether each response was graded correct.
            real (`np.ndarray` of shape `(N,)`, bool, *optional*): False for synthetic padding rows; all True if
                omitted.
            answer_keys (`list[str | None]` of length N, *optional*): answer key of each row; required when
                `keyed_by_answer`, ignored otherwise.

        Returns:
            `StepPenalties`.

        Raises:
            ValueError: if the lengths differ, or answer keys are missing for an answer-keyed memory.
        """
        n = len(keys)
        if len(prompt_ids) != n or len(correct) != n or location.index.shape[0] != n:
            raise ValueError(f"MEDSStep.penalties: {n} keys but {len(prompt_ids)} prompt ids, {len(correct)} outcomes")
        real = np.ones(n, dtype=bool) if real is None else np.asarray(real, dtype=bool)
        if raw_features is None:
            if self.layers is None:
                raise ValueError("MEDSStep.penalties: no captured values and no layer count to size them")
            raw_features = torch.full((n, len(self.layers)), float("nan"))  # (N, L_sel)
        features = finalize_features(raw_features, self.config.features.diff).numpy()  # (N, F)
        has_feature = location.found.numpy() & np.isfinite(features).all(axis=1)
        valid = has_feature
        if self.keyed_by_answer:
            if answer_keys is None or len(answer_keys) != n:
                raise ValueError("MEDSStep.penalties: an answer-keyed memory needs one answer key per row")
            valid = np.array([key is not None for key in answer_keys], dtype=bool)
        if response_digests is not None and len(response_digests) != n:
            raise ValueError(f"MEDSStep.penalties: {n} keys but {len(response_digests)} response digests")
        tiebreak = content_tiebreak(response_digests, features)
        order = canonical_order(prompt_ids, keys, tiebreak=tiebreak)
        order = order[real[order]]
        sorted_sizes, metrics = self.memory.step(
            [prompt_ids[r] for r in order],
            features[order].astype(np.float32),
            valid[order],
            np.asarray(correct, dtype=bool)[order],
            answer_keys=[answer_keys[r] for r in order] if self.keyed_by_answer else None,
        )
        sizes = np.zeros(n, dtype=np.int64)
        sizes[order] = sorted_sizes
        shaping = self.config.shaping
        penalties = penalty_from_cluster_sizes(torch.as_tensor(sizes), shaping.alpha, shaping.beta)  # (N,)
        metrics = dict(metrics)
        found = location.found.numpy()[real]
        metrics["meds/features/answer_found_frac"] = float(found.mean()) if found.size else 0.0
        return StepPenalties(features, has_feature, order, sizes, penalties, metrics)

    def shape(
        self,
        rewards: torch.Tensor,
        correct: np.ndarray,
        penalties: torch.Tensor,
        group_ids: list,
        real: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage 3: the shaped reward of every row, r - penalty on the tracked outcome (`shape_rewards`).

        Args:
            rewards (`torch.Tensor` of shape `(N,)`, float): raw rewards (NaN/inf: no reward, kept as NaN).
            correct (`np.ndarray` of shape `(N,)`, bool): whether each response was graded correct.
            penalties (`torch.Tensor` of shape `(N,)`, float): from `penalties`.
            group_ids (`list` of length N): each row's group (the rollouts of one prompt in this step).
            real (`np.ndarray` of shape `(N,)`, bool, *optional*): False for synthetic padding rows (they keep their
                reward and stay out of the metrics).

        Returns:
            `tuple[torch.Tensor, dict[str, float]]`: shaped rewards `(N,)` float32 and the metrics of
            `shape_rewards`, `meds/penalty/count` and `group_degeneracy`.
        """
        n = rewards.shape[0]
        real_t = torch.ones(n, dtype=torch.bool) if real is None else torch.as_tensor(np.asarray(real, dtype=bool))
        rewards = rewards.float()
        correct_t = torch.as_tensor(np.asarray(correct, dtype=bool))
        shaped_real, metrics = shape_rewards(
            rewards[real_t], correct_t[real_t], penalties[real_t], self.config.shaping.penalty_target
        )
        shaped = rewards.clone()  # (N,)
        shaped[real_t] = shaped_real
        metrics = dict(metrics)
        metrics["meds/penalty/count"] = float((penalties[real_t] > 0).sum())
        kept = real_t.tolist()
        metrics.update(group_degeneracy(shaped[real_t], [g for g, r in zip(group_ids, kept, strict=True) if r]))
        return shaped, metrics

    def state_dict(self) -> dict[str, Any]:
        """The memory's state (`ErrorMemory.state_dict`)."""
        return self.memory.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the memory (`ErrorMemory.load_state_dict`)."""
        self.memory.load_state_dict(state)


def changed_rows(rewards: torch.Tensor, shaped: torch.Tensor) -> list[int]:
    """Indices of the rows whose shaped reward differs from the raw one (a NaN row counts as changed).

    Args:
        rewards, shaped (`torch.Tensor` of shape `(N,)`).

    Returns:
        `list[int]`: the rows whose token-level scores `shaped_token_scores` rewrites.
    """
    return torch.nonzero(shaped != rewards).reshape(-1).tolist()


def stable_prompt_ids(extra_infos: list, prompts: list[torch.Tensor] | None, prompt_key: str) -> list[str]:
    """Stable id of each rollout's prompt: `extra_info[prompt_key]` when present, else a hash of the prompt ids.

    The fallback is `"sha1:" + sha1(int64 little-endian bytes of the prompt token ids)`, which is the same for the
    same prompt in every step (verl's `uid` is not: it is a new uuid4 per batch).

    Args:
        extra_infos (`list` of length N): each row's dataset `extra_info` (a dict, or `None`).
        prompts (`list[torch.Tensor]` of length N, *optional*): each row's prompt ids; needed only when a row's
            `extra_info` lacks `prompt_key`.
        prompt_key (`str`): the `extra_info` field that identifies a prompt.

    Raises:
        ValueError: if a row needs the hash and `prompts` is `None`.
    """
    ids = []
    for row, info in enumerate(extra_infos):
        value = info.get(prompt_key) if isinstance(info, dict) else None
        if value is not None:
            ids.append(str(value))
            continue
        if prompts is None:
            raise ValueError(f"row {row} has no extra_info[{prompt_key!r}]; its prompt ids are needed for the hash")
        digest = hashlib.sha1(prompts[row].to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()
        ids.append(f"sha1:{digest}")
    if prompts is not None and len(prompts) != len(extra_infos):
        raise ValueError(f"{len(extra_infos)} extra_info rows but {len(prompts)} prompts")
    return ids


def shaped_token_scores(scores: list[torch.Tensor], rewards: torch.Tensor, shaped: torch.Tensor) -> list[torch.Tensor]:
    """Put each shaped reward on the last response token of verl's token-level scores.

    Args:
        scores (`list[torch.Tensor]`, N tensors of shape `(T_i,)`): verl's token-level scores (the outcome reward on
            the last response token).
        rewards (`torch.Tensor` of shape `(N,)`): the raw rewards (row sums of `scores`).
        shaped (`torch.Tensor` of shape `(N,)`): the shaped rewards (NaN where the raw reward is not finite; see
            `shape_rewards`).

    Returns:
        `list[torch.Tensor]`: float32 scores whose row sums are `shaped`. A row whose raw reward is not finite is
        rebuilt from zeros with NaN on its last token, so the `meds` estimator sees one non-finite row sum and
        gives that row advantage 0 without moving its group's statistics.
    """
    out = []
    for score, old, new in zip(scores, rewards, shaped, strict=True):
        score = score.clone().float()
        if score.numel():
            if bool(torch.isfinite(old)):
                score[-1] += new - old
            else:
                score = torch.zeros_like(score)
                score[-1] = new
        out.append(score)
    return out


def groups_with_signal(shaped: torch.Tensor, group_ids: list, atol: float = 1e-9) -> torch.Tensor:
    """Which rows belong to a group whose shaped rewards are not all equal.

    Args:
        shaped (`torch.Tensor` of shape `(N,)`, float): shaped rewards.
        group_ids (`list` of length N): group of each row (verl's per-step `uid`).
        atol (`float`, *optional*, defaults to `1e-9`): spread at or below which a group counts as flat.

    Returns:
        `torch.Tensor` of shape `(N,)`, bool. Singleton groups are flat (no within-group signal); non-finite rewards
        (no reward) are left out of the spread, as the `meds` estimator leaves them out of the group statistics.
    """
    keep = torch.zeros(len(group_ids), dtype=torch.bool)
    for rows in group_rows(group_ids).values():
        values = shaped[rows]
        values = values[torch.isfinite(values)]
        if values.numel() > 1 and float(values.max() - values.min()) > atol:
            keep[rows] = True
    return keep


def group_degeneracy(shaped: torch.Tensor, group_ids: list) -> dict[str, float]:
    """Degenerate groups of a step, as metrics: both give every row of the group a zero advantage under GRPO.

    Args:
        shaped (`torch.Tensor` of shape `(N,)`, float): shaped rewards.
        group_ids (`list` of length N): group of each row (verl's per-step `uid`).

    Returns:
        `dict[str, float]`: `meds/groups/singleton_frac` (fraction of rows alone in their group) and
        `meds/groups/flat_frac` (fraction of rows in a group whose shaped rewards are all equal, singletons
        included); both 0.0 for an empty step.
    """
    n = len(group_ids)
    if n == 0:
        return {"meds/groups/singleton_frac": 0.0, "meds/groups/flat_frac": 0.0}
    singletons = sum(1 for rows in group_rows(group_ids).values() if len(rows) == 1)
    flat = n - int(groups_with_signal(shaped, group_ids).sum())
    return {"meds/groups/singleton_frac": singletons / n, "meds/groups/flat_frac": flat / n}


def rollout_index(key: str) -> tuple:
    """`(session_id, index)` parsed from verl's TransferQueue key `"{uid}_{session_id}_{index}"`;
    `(key,)` when the key has another form."""
    parts = str(key).rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return (int(parts[1]), int(parts[2]))
    return (str(key),)


def canonical_order(prompt_ids: list[str], keys: list[str], tiebreak: list[bytes] | None = None) -> np.ndarray:
    """Row order by (prompt id, rollout index, content): the same whatever order or worker split verl gave the batch.

    Two rows share (prompt id, rollout index) when one prompt fills two groups of a step (dynamic sampling
    concatenating generation batches, or two dataset rows with the same prompt id). Such rows are ordered by
    `tiebreak` (their content); rows whose tiebreak is also equal are interchangeable for the memory.

    Args:
        prompt_ids (`list[str]` of length N): stable prompt id of each row.
        keys (`list[str]` of length N): verl's TransferQueue keys, `"{uid}_{session_id}_{index}"`, where
            `session_id` is the rollout's index within its group.
        tiebreak (`list[bytes]` of length N, *optional*): content of each row (the trainer passes
            `content_tiebreak`: response digest, then feature bytes). Without it, tied rows keep the batch order.

    Returns:
        `np.ndarray` of shape `(N,)`, int64: row indices in canonical order.

    Raises:
        ValueError: when the three lists differ in length.
    """
    n = len(keys)
    if len(prompt_ids) != n or (tiebreak is not None and len(tiebreak) != n):
        lengths = (len(prompt_ids), n, None if tiebreak is None else len(tiebreak))
        raise ValueError(f"canonical_order: prompt_ids, keys and tiebreak lengths differ: {lengths}")
    ties = tiebreak if tiebreak is not None else [b""] * n
    return np.array(
        sorted(range(n), key=lambda r: (prompt_ids[r], rollout_index(keys[r]), bytes(ties[r]))), dtype=np.int64
    )


def response_digest(response_ids) -> bytes:
    """SHA-1 of a response's token ids (int64, little-endian): 20 bytes, equal for equal responses.

    Args:
        response_ids (`torch.Tensor` of shape `(T,)`, `np.ndarray` or `list[int]`): the response tokens only (no
            prompt, no padding).

    Returns:
        `bytes` of length 20.
    """
    if isinstance(response_ids, torch.Tensor):
        response_ids = response_ids.detach().cpu().numpy()
    return hashlib.sha1(np.asarray(response_ids, dtype="<i8").tobytes()).digest()


def response_digests(responses: torch.Tensor, response_mask: torch.Tensor) -> list[bytes]:
    """`response_digest` of each row of a padded batch, over the tokens where `response_mask` is 1.

    Args:
        responses (`torch.Tensor` of shape `(N, T)`, int): response token ids, padded.
        response_mask (`torch.Tensor` of shape `(N, T)`): 1 on response tokens.

    Returns:
        `list[bytes]` of length N.
    """
    rows = zip(responses.cpu(), response_mask.cpu(), strict=True)
    return [response_digest(r[m.bool()]) for r, m in rows]


def content_tiebreak(digests: list[bytes] | None, features: np.ndarray) -> list[bytes]:
    """Each row's content as bytes, the `tiebreak` of [`canonical_order`]: its response digest, then its features.

    Args:
        digests (`list[bytes]` of length N, or `None`): `response_digest` of each row (`None`: features only).
        features (`np.ndarray` of shape `(N, F)`, float): the rows' features (NaN where missing).

    Returns:
        `list[bytes]` of length N.
    """
    heads = digests if digests is not None else [b""] * len(features)
    return [bytes(d) + np.ascontiguousarray(f).tobytes() for d, f in zip(heads, features, strict=True)]
