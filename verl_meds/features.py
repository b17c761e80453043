r"""Logit-lens features at the final-answer token (MEDS paper, Sec. 3, "Logic Feature Extraction").

For a response whose first final-answer token `t` sits at absolute position `p` of its sequence, the feature of
layer `l` is the logit the LM head would give `t` if it read layer `l`'s hidden state at the position that
predicts `t`:

$$
f_l = \langle \mathrm{norm}(h_l[p-1]),\; W_U[t] \rangle
$$

`h_l` is HF's `hidden_states[l]` (`l = 1..L`; entry 0 is the embedding output). The last entry,
`hidden_states[L]`, has *already* passed the model's final norm, so it is never normed again. With
`final_norm=True` (our default: the standard logit lens, where every layer is read the way the LM head reads the
last one) intermediate layers pass through the final norm first; `final_norm=False` projects them raw, which is what
the authors' code does. Only the rows `W_U[t]` are read: nothing is ever projected onto the whole vocabulary.

Two implementations are kept side by side (STYLE B.1.5):

- [`LogitLensCapture`] (product path): forward hooks that keep only the `(n, D)` rows at the predicting
  positions of each selected layer, and compute the features inside the LM head's forward pre-hook, where FSDP has
  the head's weight gathered. No second forward pass and no `output_hidden_states`.
- [`logit_lens_from_hidden_states`] (reference): the same values from a full `output_hidden_states=True` pass,
  used by tests.

Shapes: N rollouts, S sequence positions, D hidden size, V vocabulary, L layers, F selected-layer features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "LogitLensCapture",
    "find_decoder_layers",
    "find_final_norm",
    "finalize_features",
    "logit_lens_from_hidden_states",
]


def _unwrap(model: nn.Module) -> nn.Module:
    # peft wraps the HF model; FSDP2 keeps the HF class (only extends it), so attributes stay where HF put them.
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of an HF causal LM (`model.model.layers` for Llama/Qwen/Mistral families).

    Raises:
        ValueError: when no `nn.ModuleList` of `config.num_hidden_layers` modules is found.
    """
    model = _unwrap(model)
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and num_layers is not None and len(module) == num_layers:
            return module
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (expected model.model.layers)")


def find_final_norm(model: nn.Module) -> nn.Module:
    """The final norm applied before the LM head (`model.model.norm` for Llama/Qwen families).

    Raises:
        ValueError: when none of the known attribute names exists.
    """
    model = _unwrap(model)
    inner = getattr(model, "model", None)
    for owner, name in ((inner, "norm"), (inner, "final_layernorm"), (getattr(model, "transformer", None), "ln_f")):
        module = getattr(owner, name, None) if owner is not None else None
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"cannot find the final norm of {type(model).__name__} (expected model.model.norm)")


def _check_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    layers = [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 1 <= layer <= num_layers]
    if not layers or bad:
        raise ValueError(f"layers must be non-empty 1-based layer numbers in [1, {num_layers}], got {layers}")
    return layers


def _project(rows: torch.Tensor, weight_rows: torch.Tensor) -> torch.Tensor:
    return (rows.float() * weight_rows.float()).sum(dim=-1)  # (n,)


class LogitLensCapture:
    """Capture logit-lens features during an ordinary forward pass of an HF causal LM (a context manager).

    Args:
        model (`nn.Module`): the HF causal LM (plain, FSDP/FSDP2-wrapped or peft-wrapped).
        layers (`Sequence[int]`): 1-based layer numbers (`hidden_states` indices) to read, e.g. `[5, 6, 7, 8]`.
        final_norm (`bool`): pass intermediate layers through the final norm before projecting (see module doc).
        flat_positions (`torch.LongTensor` of shape `(n,)`): index, into the forward's hidden states flattened to
            `(B*S, D)`, of the position that predicts each answer token (`p - 1` in sequence coordinates).
        answer_tokens (`torch.LongTensor` of shape `(n,)`): the answer token id `t` of each row.

    After the `with` block, [`features`] is a float32 tensor of shape `(n, len(layers))` on the CPU.

    Raises:
        ValueError: at construction, for layer numbers outside `[1, L]` or mismatched position/token lengths.
        RuntimeError: on exit, when the LM head never ran (e.g. fused kernels that bypass it) or a hooked layer
            produced fewer positions than requested.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        final_norm: bool,
        flat_positions: torch.Tensor,
        answer_tokens: torch.Tensor,
    ) -> None:
        self.model = model
        self.decoder_layers = find_decoder_layers(model)
        self.num_layers = len(self.decoder_layers)
        self.layers = _check_layers(layers, self.num_layers)
        self.final_norm = bool(final_norm)
        self.norm = find_final_norm(model)
        self.lm_head = _unwrap(model).get_output_embeddings()
        if flat_positions.shape != answer_tokens.shape or flat_positions.dim() != 1:
            raise ValueError(
                f"flat_positions {tuple(flat_positions.shape)} and answer_tokens {tuple(answer_tokens.shape)} "
                "must both have shape (n,)"
            )
        self.flat_positions = flat_positions.long()
        self.answer_tokens = answer_tokens.long()
        # The bound is read once, on the host: a read per hooked layer would synchronise the device each time.
        self._max_position = int(self.flat_positions.max()) if self.flat_positions.numel() else -1
        self._positions_on: dict[torch.device, torch.Tensor] = {}
        self._rows: dict[int, torch.Tensor] = {}
        self._handles: list = []
        self.features: torch.Tensor | None = None

    def _gather(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])  # (B*S, D)
        if self._max_position >= flat.shape[0]:
            raise RuntimeError(f"answer position {self._max_position} outside the forward's {flat.shape[0]} rows")
        positions = self._positions_on.get(flat.device)
        if positions is None:
            positions = self._positions_on[flat.device] = self.flat_positions.to(flat.device)
        return flat.index_select(0, positions).detach()  # (n, D)

    def _layer_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            self._rows[layer] = self._gather(hidden)

        return hook

    def _head_pre_hook(self, module: nn.Module, args: tuple) -> None:
        final_hidden = args[0]  # (B, S, D), already through the final norm
        weight = module.weight
        if hasattr(weight, "full_tensor"):  # a DTensor outside FSDP's unshard window: gather it
            weight = weight.full_tensor()
        tokens = self.answer_tokens.to(weight.device)
        weight_rows = weight.index_select(0, tokens)  # (n, D): only the answer tokens' rows of W_U
        columns = []
        with torch.no_grad():
            for layer in self.layers:
                if layer == self.num_layers:
                    rows = self._gather(final_hidden)
                else:
                    if layer not in self._rows:
                        raise RuntimeError(f"layer {layer} did not run before the LM head")
                    rows = self._rows[layer]
                    if self.final_norm:
                        rows = self.norm(rows)
                columns.append(_project(rows, weight_rows))
        self.features = torch.stack(columns, dim=-1).cpu() if columns else None  # (n, F)
        self._rows.clear()

    def __enter__(self) -> LogitLensCapture:
        self.features = None
        for layer in self.layers:
            if layer < self.num_layers:
                self._handles.append(self.decoder_layers[layer - 1].register_forward_hook(self._layer_hook(layer)))
        self._handles.append(self.lm_head.register_forward_pre_hook(self._head_pre_hook))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._rows.clear()
        if exc_type is None and self.features is None:
            if self.flat_positions.numel() == 0:
                self.features = torch.zeros((0, len(self.layers)), dtype=torch.float32)
            else:
                raise RuntimeError(
                    "MEDS feature capture: the LM head did not run during the forward pass (fused kernels bypass "
                    "it); set actor_rollout_ref.model.use_fused_kernels=false"
                )


@torch.no_grad()
def logit_lens_from_hidden_states(
    hidden_states: Sequence[torch.Tensor],
    pred_positions: torch.Tensor,
    answer_tokens: torch.Tensor,
    lm_head_weight: torch.Tensor,
    norm: nn.Module,
    layers: Sequence[int],
    final_norm: bool = True,
) -> torch.Tensor:
    """Reference logit lens from HF `output_hidden_states=True` outputs (for tests; materialises every layer).

    Args:
        hidden_states (`Sequence[torch.Tensor]`): `L + 1` tensors of shape `(N, S, D)`; entry 0 is the embedding
            output and entry `L` has passed the final norm (HF convention).
        pred_positions (`torch.LongTensor` of shape `(N,)`): position `p - 1` predicting each answer token.
        answer_tokens (`torch.LongTensor` of shape `(N,)`): answer token ids.
        lm_head_weight (`torch.Tensor` of shape `(V, D)`): the LM head (unembedding) matrix.
        norm (`nn.Module`): the model's final norm.
        layers (`Sequence[int]`): 1-based layer numbers.
        final_norm (`bool`, *optional*, defaults to `True`): norm intermediate layers first.

    Returns:
        `torch.Tensor` of shape `(N, len(layers))`, float32.
    """
    num_layers = len(hidden_states) - 1
    layers = _check_layers(layers, num_layers)
    rows_index = torch.arange(pred_positions.shape[0])
    weight_rows = lm_head_weight[answer_tokens]  # (N, D)
    columns = []
    for layer in layers:
        rows = hidden_states[layer][rows_index, pred_positions]  # (N, D)
        if layer < num_layers and final_norm:
            rows = norm(rows)
        columns.append(_project(rows, weight_rows))
    return torch.stack(columns, dim=-1)  # (N, F)


def finalize_features(raw: torch.Tensor, diff: bool) -> torch.Tensor:
    """Turn per-layer lens values into the clustering feature (the paper's "-diff" variants take differences).

    Args:
        raw (`torch.Tensor` of shape `(N, L_sel)`): per-layer logit-lens values, float.
        diff (`bool`): return consecutive differences `raw[:, 1:] - raw[:, :-1]` (shape `(N, L_sel - 1)`).

    Returns:
        `torch.Tensor` float32 of shape `(N, L_sel)` or `(N, L_sel - 1)`.

    Raises:
        ValueError: for `diff=True` with fewer than 2 layers.
    """
    raw = raw.float()
    if not diff:
        return raw
    if raw.shape[-1] < 2:
        raise ValueError(f"diff=True needs at least 2 selected layers, got {raw.shape[-1]}")
    return raw[:, 1:] - raw[:, :-1]  # (N, L_sel - 1)
