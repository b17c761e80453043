"""Outcome-based exploration (Song, Kempe, Munos 2025, https://huggingface.co/papers/2509.06941) in verl.

`verl_meds.verl.hooks.exploration.ExplorationHook` calls `explore_advantages` in verl's `adv` stage, right after
verl's estimator wrote the GRPO advantages and before the policy loss, when the top-level `exploration` block is
enabled (`exploration.enable=true`; methods `explore_hist` and `explore_batch` of the recipes). Per step:

1. decode each response, take the content of its last `\\boxed{}` and turn it into an answer key
   (`verl_meds.grading.answer_keys`, bounded in time; no closed box, or a key that hit the bound ->
   `verl_meds.exploration.NO_ANSWER`);
2. compute `c * bonus` per response (`verl_meds.exploration.exploration_bonus`; historical exploration
   reads and updates the per-prompt answer counts N(x, a), which the trainer checkpoints next to the model);
3. add it to the per-token advantages before the answer's first token
   (`verl_meds.exploration.apply_bonus_to_advantages`).

Nothing here needs the actor workers: the answer keys come from the decoded responses, not from hidden states.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from verl_meds.answer import TokenizerLike, extract_boxed, locate_answer_tokens
from verl_meds.config import ExplorationConfig
from verl_meds.exploration import NO_ANSWER, AnswerCounts, apply_bonus_to_advantages, exploration_bonus
from verl_meds.grading import OK, TIMEOUT, answer_keys

ANSWER_KEY_TIMEOUTS = "answer_key/timeouts"
ANSWER_KEY_ERRORS = "answer_key/errors"
ANSWER_KEY_FROM_REWARD = "answer_key/from_reward"


def exploration_config_from_trainer_config(config: DictConfig) -> ExplorationConfig:
    """The validated `ExplorationConfig` of a trainer config's top-level `exploration` block.

    Raises:
        ValueError: for unknown keys or invalid values (the message names the field, the value and what is allowed).
    """
    block = config.get("exploration", None)
    return ExplorationConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block is not None else None)


def response_answer_keys(texts: list[str]) -> tuple[list[str | None], dict[str, float]]:
    """Answer key of each decoded response (content of its last closed `\\boxed{}`), `None` when it has none or
    its key hit the time bound; and the metrics `answer_key/timeouts` and `answer_key/errors`
    (number of responses whose key timed out or failed) and `answer_key/from_reward` (0.0: keyed here)."""
    keys, statuses = answer_keys([extract_boxed(text) for text in texts])
    metrics = {
        ANSWER_KEY_TIMEOUTS: float(sum(status == TIMEOUT for status in statuses)),
        ANSWER_KEY_ERRORS: float(sum(status not in (OK, TIMEOUT) for status in statuses)),
        ANSWER_KEY_FROM_REWARD: 0.0,
    }
    return keys, metrics


def keys_from_reward_info(extra_fields: list | None) -> tuple[list[str | None], dict[str, float]] | None:
    """Answer keys that `verl_meds.verl.reward` computed in the reward workers (`answer_keys=True`), or `None`
    when any response's reward info lacks one (another reward function, or the option off).

    Args:
        extra_fields (`list` of length N, *optional*): verl's per-response `extra_fields`.

    Returns:
        `tuple` or `None`: the N keys (`None` for no answer) and the `answer_key/*` metrics, as
        [`response_answer_keys`] gives them (`answer_key/from_reward` 1.0).
    """
    if not extra_fields:
        return None
    infos = [f.get("reward_extra_info", {}) if isinstance(f, dict) else {} for f in extra_fields]
    if not all(isinstance(info.get("answer_key"), str) for info in infos):
        return None
    keys = [info["answer_key"] or None for info in infos]
    metrics = {
        ANSWER_KEY_TIMEOUTS: float(sum(float(info.get("answer_key_timeout", 0.0)) for info in infos)),
        ANSWER_KEY_ERRORS: float(sum(float(info.get("answer_key_error", 0.0)) for info in infos)),
        ANSWER_KEY_FROM_REWARD: 1.0,
    }
    return keys, metrics


def batch_answer_keys(
    tokenizer: TokenizerLike, responses: torch.Tensor, response_mask: torch.Tensor, extra_fields: list | None
) -> tuple[list[str | None], dict[str, float]]:
    """Answer key of each response: from the reward info when every row has one ([`keys_from_reward_info`]), else
    computed here from the decoded responses ([`response_answer_keys`]).

    Args:
        tokenizer (`TokenizerLike`): decodes response ids.
        responses (`torch.Tensor` of shape `(N, T)`, int, or `None`): response ids, padded; `None` when the reward
            info holds every answer key and `answer_index` is given (or the answer tokens are not masked).
        response_mask (`torch.Tensor` of shape `(N, T)`): 1 on response tokens.
        extra_fields (`list` of length N, *optional*): verl's per-response `extra_fields`.

    Returns:
        `tuple`: the N keys (`None` for no answer) and the `answer_key/*` metrics.
    """
    found = keys_from_reward_info(extra_fields)
    if found is not None:
        return found
    texts = [tokenizer.decode(row[mask.bool()].tolist()) for row, mask in zip(responses, response_mask, strict=True)]
    return response_answer_keys(texts)


def explore_advantages(
    config: ExplorationConfig,
    counts: AnswerCounts,
    tokenizer: TokenizerLike,
    prompt_ids: list[str],
    group_ids: list,
    responses: torch.Tensor | None,
    response_mask: torch.Tensor,
    advantages: torch.Tensor,
    correct,
    extra_fields: list | None = None,
    answer_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages with the exploration term added, and the `explore/*` metrics; updates `counts`.

    Args:
        config (`ExplorationConfig`): the `exploration` block.
        counts (`AnswerCounts`): N(x, a) so far (historical method), updated in place.
        tokenizer (`TokenizerLike`): decodes response ids.
        prompt_ids (`list[str]` of length N): stable prompt id of each response (`stable_prompt_ids`).
        group_ids (`list` of length N): verl's per-step `uid` of each response.
        responses (`torch.Tensor` of shape `(N, T)`, int, or `None`): response ids, padded; `None` when the reward
            info holds every answer key and `answer_index` is given (or the answer tokens are not masked).
        response_mask (`torch.Tensor` of shape `(N, T)`): 1 on response tokens.
        advantages (`torch.Tensor` of shape `(N, T)`, float): verl's advantages.
        correct (`np.ndarray` of shape `(N,)`, bool): whether each response was graded correct.
        extra_fields (`list` of length N, *optional*): verl's per-response `extra_fields`; answer keys computed by
            the reward function are taken from there ([`batch_answer_keys`]).
        answer_index (`torch.LongTensor` of shape `(N,)`, *optional*): each response's answer token (-1: none), as
            the reward workers recorded it (`verl_meds.step.read_answer_records`); located here if omitted.

    Returns:
        `tuple`: advantages `(N, T)` (dtype of `advantages`) and metrics.
    """
    found = keys_from_reward_info(extra_fields)
    if found is None or (config.mask_answer_tokens and answer_index is None):
        if responses is None:
            raise ValueError("explore_advantages: the responses are needed (no answer keys or answer tokens given)")
    if found is None:
        found = batch_answer_keys(tokenizer, responses, response_mask, extra_fields)
    keys = [key if key is not None else NO_ANSWER for key in found[0]]
    bonus, metrics = exploration_bonus(config, counts, prompt_ids, keys, group_ids, correct)  # (N,)
    metrics.update(found[1])
    if not config.mask_answer_tokens:
        answer_index = None
    elif answer_index is None:
        answer_index = locate_answer_tokens(responses, response_mask, tokenizer)
    shaped = apply_bonus_to_advantages(advantages, response_mask, torch.from_numpy(bonus), answer_index)  # (N, T)
    return shaped, metrics
