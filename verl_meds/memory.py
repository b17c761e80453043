r"""Error memory: bounded per-prompt buffers of past feature vectors and the cluster size |C| of new responses.

[`ErrorMemory`] keeps, for each stable prompt id and outcome ("wrong", and "right" when right answers are targeted),
the feature vectors (F floats, float32) of past responses, oldest first, at most `MemoryConfig.capacity` of them.
Each training step, [`ErrorMemory.step`] gives every new response its cluster size |C| against the memory as it was
before the step (plus this step's responses, per `ClusterConfig.assignment`; see `verl_meds.clustering`) and then
stores the new responses. The state is plain python/numpy, picklable, and round-trips bit for bit through
[`ErrorMemory.state_dict`] / [`ErrorMemory.load_state_dict`].

Every rank must hold the same memory: call `step` on gathered tensors (or in a single driver process).

Example:

```python
>>> import numpy as np
>>> from verl_meds.config import MEDSConfig
>>> from verl_meds.memory import ErrorMemory
>>> memory = ErrorMemory(MEDSConfig())
>>> features = np.tile(np.array([[0.5, 1.0, 2.0]], dtype=np.float32), (5, 1))  # (N, F): five identical errors
>>> sizes, metrics = memory.step(["p0"] * 5, features, valid=np.ones(5, bool), correct=np.zeros(5, bool))
>>> sizes.tolist(), metrics["meds/memory/num_entries"]
([4, 4, 4, 4, 4], 5.0)

```
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import metrics as M
from .clustering import cluster_sizes_for_new, largest_cluster_size, num_clusters
from .config import MEDSConfig

logger = logging.getLogger(__name__)

STATE_VERSION = 1
LABEL_DTYPE = np.int32
"""dtype of the stored labels (4 bytes per response; `state_dict` and `labels()` give int64)."""
OUTCOMES = ("wrong", "right")
_TRACKED_OUTCOMES = {"wrong": ("wrong",), "right": ("right",), "both": ("wrong", "right"), "none": ()}

PromptId = str | int


def _prompt_id(value: Any) -> PromptId:
    """Plain python `str`/`int` form of a prompt id (numpy scalars are converted); the int 1 and str "1" differ."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"prompt ids must be str or int, got the bool {value!r}.")
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, (str, int)):
        return value
    raise ValueError(f"prompt ids must be str or int, got {type(value).__name__} {value!r}.")


class ErrorMemory:
    """
    Per-prompt memory of feature vectors of past responses, used to count how often an error repeats.

    `ErrorMemory` ignores `MEDSConfig.enable`; the integration decides whether to call it.

    Args:
        config (`MEDSConfig`):
            Full config; `memory`, `clustering` and `shaping.penalty_target` are used here.

    Attributes:
        config (`MEDSConfig`):
            The config given to the constructor.
    """

    def __init__(self, config: MEDSConfig) -> None:
        if not isinstance(config, MEDSConfig):
            raise ValueError(f"config must be a MEDSConfig, got {type(config).__name__}.")
        self.config = config
        self._features: dict[tuple[PromptId, str], np.ndarray] = {}  # (prompt id, outcome) -> (M, F) float32
        self._labels: dict[tuple[PromptId, str], np.ndarray] = {}  # (prompt id, outcome) -> (M,) LABEL_DTYPE
        self._truncated_prompts: dict[PromptId, None] = {}  # an ordered set
        self._num_features: int | None = None
        self._warned_truncation = False

    # ------------------------------------------------------------------ inspection

    @property
    def num_entries(self) -> int:
        """Stored feature vectors over all prompts and outcomes."""
        return sum(rows.shape[0] for rows in self._features.values())

    @property
    def num_prompts(self) -> int:
        """Distinct prompt ids with at least one stored entry."""
        return len({prompt_id for prompt_id, _ in self._features})

    @property
    def num_features(self) -> int | None:
        """F, fixed by the first stored entry; `None` while the memory is empty."""
        return self._num_features

    def __len__(self) -> int:
        return self.num_entries

    def entries(self, prompt_id: PromptId, outcome: str = "wrong") -> np.ndarray:
        """Copy of the stored `(M, F)` float32 features of one prompt and outcome, oldest first (M may be 0)."""
        rows = self._features.get((_prompt_id(prompt_id), outcome))
        return np.empty((0, self._num_features or 0), dtype=np.float32) if rows is None else rows.copy()

    def labels(self, prompt_id: PromptId, outcome: str = "wrong") -> np.ndarray:
        """Copy of the `(M,)` int64 labels of the last fit of one prompt and outcome, aligned with `entries`."""
        labels = self._labels.get((_prompt_id(prompt_id), outcome))
        return np.empty(0, dtype=np.int64) if labels is None else labels.astype(np.int64)

    # ------------------------------------------------------------------ update

    def step(
        self,
        prompt_ids: Sequence[PromptId],
        features: np.ndarray,
        valid: np.ndarray,
        correct: np.ndarray,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """
        Cluster sizes of this step's responses against the memory, then store them.

        Rows are grouped by prompt id and by outcome. Only tracked outcomes (`penalty_target` "wrong": wrong rows,
        "right": right rows, "both": both, "none": nothing) are assigned and stored. For each prompt and outcome,
        |C| is computed against the memory before this step plus this step's rows of that prompt and outcome (see
        `ClusterConfig.assignment`), then the rows are appended and the buffer is cut to `capacity` (oldest first).
        Rows that are not `valid` or hold a non-finite value get size 0, are not stored, and are counted in
        `meds/features/missing_frac`.

        Args:
            prompt_ids (`Sequence[str | int]` of length N):
                Stable prompt id of each response (dataset field `MemoryConfig.prompt_key`).
            features (`np.ndarray` of shape `(N, F)`, float32):
                Feature vector of each response; F is fixed by the first stored row.
            valid (`np.ndarray` of shape `(N,)`, bool):
                False where the response has no feature (no answer token).
            correct (`np.ndarray` of shape `(N,)`, bool):
                Whether each response was graded correct.

        Returns:
            `tuple[np.ndarray, dict[str, float]]`: cluster sizes of shape `(N,)`, dtype int64 (0 for untracked,
            invalid and noise rows), and the metrics `meds/memory/*`, `meds/features/missing_frac`,
            `meds/cluster_size/*`, `meds/clusters/*` (see `verl_meds.metrics.METRIC_DESCRIPTIONS`).

        Raises:
            ValueError: if the shapes do not match, a prompt id is not str/int, or F differs from the stored F.
        """
        ids = [_prompt_id(prompt_id) for prompt_id in prompt_ids]
        num_rows = len(ids)
        features = np.asarray(features, dtype=np.float32)
        valid = np.asarray(valid, dtype=bool).reshape(-1)
        correct = np.asarray(correct, dtype=bool).reshape(-1)
        if features.ndim != 2 or features.shape[0] != num_rows:
            raise ValueError(f"features must have shape (N, F) with N={num_rows}, got {features.shape}.")
        if valid.shape != (num_rows,) or correct.shape != (num_rows,):
            raise ValueError(
                f"valid and correct must have shape ({num_rows},), got {valid.shape} and {correct.shape}."
            )
        usable = valid & np.isfinite(features).all(axis=1)  # (N,)
        if usable.any() and self._num_features is not None and features.shape[1] != self._num_features:
            raise ValueError(f"features have F={features.shape[1]} but the memory stores F={self._num_features}.")

        cluster_sizes = np.zeros(num_rows, dtype=np.int64)  # (N,)
        assigned = np.zeros(num_rows, dtype=bool)  # (N,)
        clusters_per_prompt: list[int] = []
        largest_wrong_share: list[float] = []
        for outcome in _TRACKED_OUTCOMES[self.config.shaping.penalty_target]:
            is_outcome = correct if outcome == "right" else ~correct
            groups: dict[PromptId, list[int]] = {}
            for row in np.flatnonzero(usable & is_outcome):
                groups.setdefault(ids[row], []).append(int(row))
            for prompt_id, rows in groups.items():
                labels_all = self._assign_and_store((prompt_id, outcome), features[rows], rows, cluster_sizes)
                assigned[rows] = True
                if outcome == "wrong":
                    clusters_per_prompt.append(num_clusters(labels_all))
                    largest_wrong_share.append(largest_cluster_size(labels_all) / labels_all.shape[0])

        metrics = {
            M.MEMORY_NUM_PROMPTS: float(self.num_prompts),
            M.MEMORY_NUM_ENTRIES: float(self.num_entries),
            M.MEMORY_TRUNCATED_PROMPTS: float(len(self._truncated_prompts)),
            M.FEATURES_MISSING_FRAC: M.safe_frac(num_rows - int(usable.sum()), num_rows),
            M.CLUSTER_SIZE_MEAN: M.safe_mean(cluster_sizes[assigned]),
            M.CLUSTER_SIZE_MAX: M.safe_max(cluster_sizes[assigned]),
            M.CLUSTERS_PER_PROMPT_MEAN: M.safe_mean(clusters_per_prompt),
            M.CLUSTERS_LARGEST_WRONG_SHARE_MEAN: M.safe_mean(largest_wrong_share),
        }
        return cluster_sizes, metrics

    def _assign_and_store(
        self, key: tuple[PromptId, str], new_rows: np.ndarray, rows: list[int], cluster_sizes: np.ndarray
    ) -> np.ndarray:
        """Write |C| of `new_rows` (n, F) into `cluster_sizes[rows]`, append them to `key`; return the fit's labels."""
        num_features = new_rows.shape[1]
        old_rows = self._features.get(key, np.empty((0, num_features), dtype=np.float32))  # (m, F)
        sizes, labels_all = cluster_sizes_for_new(old_rows, new_rows, self.config.clustering, self._labels.get(key))
        cluster_sizes[rows] = sizes
        stored = np.concatenate([old_rows, new_rows], axis=0)  # (m + n, F)
        stored_labels = labels_all
        overflow = stored.shape[0] - self.config.memory.capacity
        if overflow > 0:  # copies, so that the dropped rows are freed
            stored, stored_labels = stored[overflow:].copy(), labels_all[overflow:]
            self._note_truncation(key[0])
        self._features[key] = np.ascontiguousarray(stored, dtype=np.float32)
        self._labels[key] = stored_labels.astype(LABEL_DTYPE)
        self._num_features = num_features
        return labels_all

    def _note_truncation(self, prompt_id: PromptId) -> None:
        self._truncated_prompts[prompt_id] = None
        if not self._warned_truncation:
            self._warned_truncation = True
            logger.warning(
                "MEDS memory reached MemoryConfig.capacity=%d for prompt %r; the oldest entries are being dropped "
                "(FIFO). This is logged once; see meds/memory/truncated_prompts.",
                self.config.memory.capacity,
                prompt_id,
            )

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """
        Plain python/numpy snapshot of the memory.

        Returns:
            `dict`: `version` (int), `fingerprint` (`MEDSConfig.fingerprint()`), `num_features` (int or None),
            `buffers` (list, in insertion order, of dicts with `prompt_id`, `outcome`, `features` `(M, F)` float32,
            `labels` `(M,)` int64) and `truncated_prompt_ids` (list).
        """
        return {
            "version": STATE_VERSION,
            "fingerprint": self.config.fingerprint(),
            "num_features": self._num_features,
            "buffers": [
                {
                    "prompt_id": prompt_id,
                    "outcome": outcome,
                    "features": rows.copy(),
                    "labels": self._labels[(prompt_id, outcome)].astype(np.int64),
                }
                for (prompt_id, outcome), rows in self._features.items()
            ],
            "truncated_prompt_ids": list(self._truncated_prompts),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """
        Replace the memory with a snapshot from [`state_dict`]; nothing changes if the snapshot is rejected.

        Buffers longer than the current `capacity` keep their newest entries.

        Args:
            state (`Mapping`):
                A dict returned by `state_dict()`.

        Raises:
            ValueError: if the version or the config fingerprint differ (the message names both values), or if
                the arrays are malformed.
        """
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"ErrorMemory state version {version!r} is not supported; expected {STATE_VERSION}.")
        saved, current = state.get("fingerprint"), self.config.fingerprint()
        if saved != current:
            raise ValueError(
                f"ErrorMemory state was saved under feature fingerprint {saved!r}, but the current config has "
                f"{current!r}; stored features would mean something else. Start with an empty memory instead."
            )
        num_features = state.get("num_features")
        features: dict[tuple[PromptId, str], np.ndarray] = {}
        labels: dict[tuple[PromptId, str], np.ndarray] = {}
        truncated = {_prompt_id(prompt_id): None for prompt_id in state.get("truncated_prompt_ids", [])}
        capacity = self.config.memory.capacity
        for buffer in state.get("buffers", []):
            key = (_prompt_id(buffer["prompt_id"]), buffer["outcome"])
            if key[1] not in OUTCOMES:
                raise ValueError(f"buffer outcome must be one of {list(OUTCOMES)}, got {key[1]!r}.")
            rows = np.array(buffer["features"], dtype=np.float32, copy=True)
            row_labels = np.array(buffer["labels"], dtype=np.int64, copy=True)
            if rows.ndim != 2 or rows.shape[1] != num_features or row_labels.shape != (rows.shape[0],):
                raise ValueError(
                    f"buffer {key} has features {rows.shape} and labels {row_labels.shape}; expected (M, "
                    f"{num_features}) and (M,)."
                )
            if not np.array_equal(row_labels.astype(LABEL_DTYPE), row_labels):
                raise ValueError(f"buffer {key} has labels outside the {np.dtype(LABEL_DTYPE).name} range.")
            if rows.shape[0] > capacity:
                rows, row_labels = rows[-capacity:].copy(), row_labels[-capacity:]
                truncated[key[0]] = None
                logger.warning("Loaded MEDS memory buffer %r cut to capacity=%d (newest kept).", key, capacity)
            features[key], labels[key] = rows, row_labels.astype(LABEL_DTYPE)
        self._features, self._labels, self._truncated_prompts = features, labels, truncated
        self._num_features = num_features if features else None
