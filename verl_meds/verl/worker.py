"""Feature capture on verl's actor workers: the only place where verl_meds touches verl's worker side.

During the actor's log-prob recompute (`old_log_prob`), verl's FSDP engine runs each micro-batch through the
policy once. `MEDSEngineMixin` wraps that forward step with `verl_meds.features.LogitLensCapture`, so
the logit-lens feature of every response is read from the same forward pass (no second pass, no full-vocabulary
projection) and returned with verl's other per-sample outputs as `meds_features` (float32, shape `(L_sel,)` per
sample; NaN where the response has no answer token).

The driver (`verl_meds.verl.trainer`) asks for it by writing two per-sample fields next to the batch and three
settings into the batch's `extra_info` before calling `compute_log_prob`:

- `meds_pred_pos` (int64): position, within the sample's `[prompt | response]` sequence, of the token that
  predicts the answer token (`-1`: no answer);
- `meds_answer_token` (int64): the answer token id;
- `meds_capture` (bool), `meds_layers` (list of 1-based layers), `meds_final_norm` (bool).

`MEDSActorRolloutRefWorker` is verl's `ActorRolloutRefWorker` whose actor engine gets the mixin after
`init_model` (the engine's class is extended in place, whatever FSDP engine verl chose). Reference-policy and
training forwards are untouched. Both packed (`use_remove_padding=True`) and padded layouts are supported; Ulysses
sequence parallelism is not (the positions would be split across ranks), and asking for it raises an error.
"""

from __future__ import annotations

import logging

import torch
from verl.single_controller.base.decorator import Dispatch, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from verl_meds.features import LogitLensCapture

logger = logging.getLogger(__name__)

FEATURES_KEY = "meds_features"
PRED_POS_KEY = "meds_pred_pos"
ANSWER_TOKEN_KEY = "meds_answer_token"


def flat_positions(
    input_ids: torch.Tensor, pred_pos: torch.Tensor, use_remove_padding: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map per-sample positions to rows of the forward's hidden states flattened to `(B*S, D)`.

    Args:
        input_ids (`torch.Tensor`, nested jagged of shape `(B, j)`): the micro-batch's `[prompt | response]` ids.
        pred_pos (`torch.LongTensor` of shape `(B,)`): per-sample predicting position, `-1` for none.
        use_remove_padding (`bool`): verl packs all samples into one `(1, total)` row when true, and right-pads
            them to `(B, max_len)` otherwise.

    Returns:
        `tuple`: `(flat, valid)`; `flat` (int64, `(B,)`, meaningful where `valid`) and `valid` (bool, `(B,)`):
        the position exists and the token after it is inside the sequence.
    """
    offsets = input_ids.offsets().to(torch.long)  # (B + 1,)
    lengths = offsets.diff()  # (B,)
    pred_pos = pred_pos.to(torch.long).cpu()
    valid = (pred_pos >= 0) & (pred_pos + 1 < lengths.cpu())
    if use_remove_padding:
        flat = offsets[:-1].cpu() + pred_pos
    else:
        width = int(lengths.max().item())
        flat = torch.arange(pred_pos.shape[0]) * width + pred_pos
    return torch.where(valid, flat, torch.zeros_like(flat)), valid


class MEDSEngineMixin:
    """Adds logit-lens capture to a verl FSDP engine's `forward_step` when the batch asks for it."""

    def forward_step(self, micro_batch, loss_function, forward_only):
        wants = forward_only and tu.get_non_tensor_data(data=micro_batch, key="meds_capture", default=False)
        if not wants or PRED_POS_KEY not in micro_batch.keys():
            return super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        if getattr(self, "ulysses_sequence_parallel_size", 1) > 1:
            raise ValueError("MEDS feature capture does not support Ulysses sequence parallelism (sp_size > 1)")
        layers = list(tu.get_non_tensor_data(data=micro_batch, key="meds_layers", default=None))
        final_norm = bool(tu.get_non_tensor_data(data=micro_batch, key="meds_final_norm", default=True))
        use_rmpad = bool(tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True))
        input_ids = micro_batch["input_ids"]
        pred_pos = micro_batch[PRED_POS_KEY].reshape(-1)
        answer_tokens = micro_batch[ANSWER_TOKEN_KEY].reshape(-1).cpu().long()
        flat, valid = flat_positions(input_ids, pred_pos, use_rmpad)
        # The layout check: the token after each predicting position must be the answer token the driver located.
        values = input_ids.values().cpu()
        starts = input_ids.offsets()[:-1].cpu().long()
        following = values[(starts + pred_pos.cpu().long() + 1).clamp(0, values.numel() - 1)]
        mismatch = valid & (following != answer_tokens)
        if bool(mismatch.any()):
            logger.warning("MEDS: %d answer positions did not match the sequence layout; ignored", int(mismatch.sum()))
        valid = valid & ~mismatch
        capture = LogitLensCapture(self.module, layers, final_norm, flat[valid], answer_tokens[valid])
        with capture:
            loss, output = super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        features = torch.full((pred_pos.shape[0], len(layers)), float("nan"), dtype=torch.float32)  # (B, L_sel)
        features[valid] = capture.features
        output["model_output"][FEATURES_KEY] = features
        return loss, output


_MIXED: dict[type, type] = {}


def with_capture(engine_cls: type) -> type:
    """`engine_cls` extended by `MEDSEngineMixin` (one class per engine class, cached)."""
    if issubclass(engine_cls, MEDSEngineMixin):
        return engine_cls
    if engine_cls not in _MIXED:
        _MIXED[engine_cls] = type(f"MEDS{engine_cls.__name__}", (MEDSEngineMixin, engine_cls), {})
    return _MIXED[engine_cls]


class MEDSActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's actor/rollout/ref worker whose actor engine captures MEDS features during `compute_log_prob`."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        super().init_model()
        actor = getattr(self, "actor", None)
        if actor is not None:
            engine = actor.engine
            engine.__class__ = with_capture(type(engine))
            logger.info("MEDS feature capture enabled on %s", type(engine).__name__)
