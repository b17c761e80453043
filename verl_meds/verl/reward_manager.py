"""verl reward managers that also locate each response's final answer, in verl's reward workers.

MEDS needs, per response, the token after the last `\\boxed{` (where the workers capture the logit-lens values).
verl's reward loop already holds every response's token ids and the policy's tokenizer, and runs while the rollout
still generates other responses; these managers add `verl_meds.step.answer_record` (answer index, answer token,
response digest) to the reward info under `verl_meds.step.ANSWER_RECORD_KEY`, so that the trainer's MEDS hook never
reads, pads or scans the responses (`verl_meds.verl.hooks.meds`).

Registered names (`reward.reward_manager.name`), each verl's manager of the same name plus the record:

- `meds_naive`: verl's `naive`;
- `meds_dapo`: verl's `dapo` (overlong buffer included).

`verl_meds.verl.main.prepare` selects them when MEDS is on and the config names `naive` or `dapo`; with any other
manager the hook locates the answers itself, on the driver. Only single-turn trajectories with one output get a
record (`""` otherwise: a multi-turn response holds tool tokens the trainer's location skips, and verl copies a
trajectory's reward info to all of its outputs), so any other step goes to the driver.
"""

from __future__ import annotations

from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

from verl_meds.step import ANSWER_RECORD_KEY, answer_record

SINGLE_TURN = 2
"""verl's `num_turns` of a single-turn rollout (the prompt and one assistant message)."""

WRAPPED = {"naive": "meds_naive", "dapo": "meds_dapo"}
"""verl's reward manager name -> the name of the same manager with answer records."""


class AnswerRecordMixin:
    """Adds `answer_record` of the response to the reward info of verl's `run_single`."""

    async def run_single(self, data) -> dict:
        result = await super().run_single(data)
        result.setdefault("reward_extra_info", {})[ANSWER_RECORD_KEY] = self._record(data)
        return result

    def _record(self, data) -> str:
        """The answer record of a single-turn, single-output trajectory; `""` for anything else.

        verl copies the reward info of a trajectory's last output to its other outputs (each a row of its own), and a
        multi-turn response holds tool tokens the trainer's own location skips: both are left to the trainer.
        """
        if len(data) != 1:
            return ""
        item = data[0]
        num_turns = item.non_tensor_batch.get("__num_turns__")
        if num_turns is None or int(num_turns) != SINGLE_TURN:
            return ""
        response_ids = item.batch["responses"]
        length = item.non_tensor_batch.get("response_len")
        if length is None:
            length = item.batch["attention_mask"][-response_ids.shape[-1] :].sum()
        return answer_record(response_ids[: int(length)], self.tokenizer)


@register(WRAPPED["naive"])
class MEDSNaiveRewardManager(AnswerRecordMixin, NaiveRewardManager):
    """verl's `naive` reward manager plus the answer record (see the module docstring)."""


@register(WRAPPED["dapo"])
class MEDSDAPORewardManager(AnswerRecordMixin, DAPORewardManager):
    """verl's `dapo` reward manager plus the answer record (see the module docstring)."""
