r"""Layer-by-layer logit-lens profile of one token: its lens logit, its rank in the vocabulary, the top-1 token.

MEDS's features (`verl_meds.features`) read only the answer token's row of the LM head. To see *how* a model
arrives at an answer it helps to also know where that token ranks among all `V` tokens at each depth, which needs
the full-vocabulary projection MEDS avoids. This module computes it for analysis and documentation (one forward
pass with `output_hidden_states=True`; cost `O(L * N * V * D)`):

$$
\ell_l = \mathrm{lens}_l(h_l[p-1]) \cdot W_U^\top, \qquad
\mathrm{lens}_l = \mathrm{norm} \text{ for } l < L \text{ (with final\_norm)}, \quad \mathrm{identity}
\text{ for } l = L
$$

(`hidden_states[L]` has already passed the final norm), so `logits[l - 1, n]` equals the MEDS feature of layer
`l` and, at `l = L`, the model's own output logit.

Shapes: L layers, N sequences, S positions, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from verl_meds.features import find_final_norm

__all__ = ["LensProfile", "lens_profile"]


@dataclass(frozen=True)
class LensProfile:
    """Per-layer view of one target token per sequence (layer `l` is row `l - 1`).

    Args:
        logits (`torch.Tensor` of shape `(L, N)`, float32): lens logit of the target token.
        ranks (`torch.LongTensor` of shape `(L, N)`): number of tokens with a strictly larger lens logit (0 = top-1).
        top1 (`torch.LongTensor` of shape `(L, N)`): the lens's top-1 token id.
    """

    logits: torch.Tensor
    ranks: torch.Tensor
    top1: torch.Tensor

    @property
    def num_layers(self) -> int:
        """`int`: L."""
        return int(self.ranks.shape[0])

    def first_top1_layer(self) -> torch.Tensor:
        """`torch.LongTensor` of shape `(N,)`: the first 1-based layer at which the target is top-1; 0 if never."""
        is_top = self.ranks == 0  # (L, N)
        first = is_top.int().argmax(dim=0) + 1  # (N,)
        return torch.where(is_top.any(dim=0), first, torch.zeros_like(first))

    def stable_top1_layer(self) -> torch.Tensor:
        """`torch.LongTensor` of shape `(N,)`: the first 1-based layer from which the target stays top-1 up to layer
        L; 0 if it is not top-1 at layer L (the model itself would not predict it greedily)."""
        is_top = (self.ranks == 0).flip(0)  # (L, N), layer L first
        run = is_top.int().cumprod(dim=0).sum(dim=0)  # (N,) length of the top-1 run ending at layer L
        return torch.where(run > 0, self.num_layers - run + 1, torch.zeros_like(run))


@torch.no_grad()
def lens_profile(
    model: nn.Module,
    input_ids: torch.Tensor,
    pred_positions: torch.Tensor,
    target_tokens: torch.Tensor,
    final_norm: bool = True,
    attention_mask: torch.Tensor | None = None,
) -> LensProfile:
    """Logit-lens profile of `target_tokens` at `pred_positions` across all layers of an HF causal LM.

    Args:
        model (`nn.Module`): an HF causal LM (not FSDP-wrapped) with `get_output_embeddings()`.
        input_ids (`torch.LongTensor` of shape `(N, S)`): token ids.
        pred_positions (`torch.LongTensor` of shape `(N,)`): position whose hidden state predicts the target (the
            target's own position minus one).
        target_tokens (`torch.LongTensor` of shape `(N,)`): the token whose logit and rank are reported.
        final_norm (`bool`, *optional*, defaults to `True`): pass intermediate layers through the final norm (the
            MEDS default); `False` projects them raw. Layer L is never normed again.
        attention_mask (`torch.LongTensor` of shape `(N, S)`, *optional*): for padded batches.

    Returns:
        `LensProfile` with tensors of shape `(L, N)`.

    Raises:
        ValueError: when the shapes disagree or a position is outside `[0, S)`.
    """
    n, s = input_ids.shape
    if pred_positions.shape != (n,) or target_tokens.shape != (n,):
        raise ValueError(
            f"pred_positions {tuple(pred_positions.shape)} and target_tokens "
            f"{tuple(target_tokens.shape)} must have shape ({n},)"
        )
    if n and (int(pred_positions.min()) < 0 or int(pred_positions.max()) >= s):
        raise ValueError(f"pred_positions must lie in [0, {s}), got {pred_positions.tolist()}")
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden_states = out.hidden_states  # L + 1 tensors (N, S, D); entry 0 is the embedding output
    num_layers = len(hidden_states) - 1
    norm = find_final_norm(model)
    weight = model.get_output_embeddings().weight.float()  # (V, D)
    rows = torch.arange(n)
    logits, ranks, top1 = [], [], []
    for layer in range(1, num_layers + 1):
        h = hidden_states[layer][rows, pred_positions]  # (N, D)
        if layer < num_layers and final_norm:
            h = norm(h)
        full = h.float() @ weight.T  # (N, V)
        target = full[rows, target_tokens]  # (N,)
        logits.append(target)
        ranks.append((full > target[:, None]).sum(dim=-1))  # (N,)
        top1.append(full.argmax(dim=-1))  # (N,)
    return LensProfile(logits=torch.stack(logits), ranks=torch.stack(ranks), top1=torch.stack(top1))
