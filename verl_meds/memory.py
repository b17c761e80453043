r"""Error memory: bounded per-prompt buffers of past feature vectors and the cluster size |C| of new responses.

[`ErrorMemory`] keeps, for each stable prompt id and outcome ("wrong", and "right" when right answers are targeted),
the feature vectors (F floats, float32) of past responses, oldest first, at most `MemoryConfig.capacity` of them.
Each training step, [`ErrorMemory.step`] gives every new response its cluster size |C| against the memory as it was
before the step (plus this step's responses, per `ClusterConfig.assignment`; see `verl_meds.clustering`) and then
stores the new responses. The state is plain python/numpy, picklable, and round-trips bit for bit through
[`ErrorMemory.state_dict`] / [`ErrorMemory.load_state_dict`].

With `ClusterConfig.method="answer"` the memory stores answer keys (`verl_meds.answer.answer_key`) instead of feature
vectors: a response's cluster is the set of stored (and, with `assignment="joint"`, this step's other) responses of
the same prompt and outcome whose key is equal; buffers, FIFO capacity, metrics and checkpoints are the same.

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

>>> keyed = ErrorMemory(MEDSConfig.from_dict({"clustering": {"method": "answer"}}))
>>> keys = ["sym:1/2", "sym:1/2", "sym:3", None, "sym:1/2"]  # (N,): the fourth response has no final answer
>>> sizes, _ = keyed.step(["p0"] * 5, None, np.ones(5, bool), np.zeros(5, bool), answer_keys=keys)
>>> sizes.tolist()
[2, 2, 0, 0, 2]

```
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import metrics as M
from .answer import ANSWER_KEY_VERSION
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


def _first_appearance_labels(keys: Sequence[str]) -> np.ndarray:
    """Label of each key: 0 for the first distinct key, 1 for the second, ... (order of first appearance)."""
    codes: dict[str, int] = {}
    return np.array([codes.setdefault(key, len(codes)) for key in keys], dtype=np.int64)  # (M,)


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
        self._keys: dict[tuple[PromptId, str], list[str]] = {}  # (prompt id, outcome) -> M answer keys ("answer")
        self._truncated_prompts: dict[PromptId, None] = {}  # an ordered set
        self._num_features: int | None = None
        self._warned_truncation = False

    # ------------------------------------------------------------------ inspection

    @property
    def keyed_by_answer(self) -> bool:
        """Whether entries are answer keys (`clustering.method="answer"`) rather than feature vectors."""
        return self.config.clustering.method == "answer"

    @property
    def num_entries(self) -> int:
        """Stored entries (feature vectors, or answer keys) over all prompts and outcomes."""
        return sum(rows.shape[0] for rows in self._features.values()) + sum(len(k) for k in self._keys.values())

    @property
    def num_prompts(self) -> int:
        """Distinct prompt ids with at least one stored entry."""
        return len({prompt_id for prompt_id, _ in self._features} | {prompt_id for prompt_id, _ in self._keys})

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

    def answer_keys(self, prompt_id: PromptId, outcome: str = "wrong") -> list[str]:
        """Copy of the stored answer keys of one prompt and outcome, oldest first (empty unless keyed by answer)."""
        return list(self._keys.get((_prompt_id(prompt_id), outcome), []))

    def labels(self, prompt_id: PromptId, outcome: str = "wrong") -> np.ndarray:
        """Copy of the `(M,)` int64 labels of the last fit of one prompt and outcome, aligned with `entries`."""
        labels = self._labels.get((_prompt_id(prompt_id), outcome))
        return np.empty(0, dtype=np.int64) if labels is None else labels.astype(np.int64)

    # ------------------------------------------------------------------ update

    def step(
        self,
        prompt_ids: Sequence[PromptId],
        features: np.ndarray | None,
        valid: np.ndarray,
        correct: np.ndarray,
        answer_keys: Sequence[str | None] | None = None,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """
        Cluster sizes of this step's responses against the memory, then store them.

        Rows are grouped by prompt id and by outcome. Only tracked outcomes (`penalty_target` "wrong": wrong rows,
        "right": right rows, "both": both, "none": nothing) are assigned and stored. For each prompt and outcome,
        |C| is computed against the memory before this step plus this step's rows of that prompt and outcome (see
        `ClusterConfig.assignment`), then the rows are appended and the buffer is cut to `capacity` (oldest first).
        Rows that are not `valid` or hold a non-finite value get size 0, are not stored, and are counted in
        `meds/features/missing_frac`. With `clustering.method="answer"` the entries are `answer_keys` and `features`
        is ignored (it may be `None`); a row whose key is `None` counts as missing.

        Args:
            prompt_ids (`Sequence[str | int]` of length N):
                Stable prompt id of each response (dataset field `MemoryConfig.prompt_key`).
            features (`np.ndarray` of shape `(N, F)`, float32, or `None` with `method="answer"`):
                Feature vector of each response; F is fixed by the first stored row.
            valid (`np.ndarray` of shape `(N,)`, bool):
                False where the response has no feature (no answer token).
            correct (`np.ndarray` of shape `(N,)`, bool):
                Whether each response was graded correct.
            answer_keys (`Sequence[str | None]` of length N, *optional*):
                Answer key of each response (`verl_meds.answer.answer_key`, `None`: no answer). Required with
                `clustering.method="answer"`, refused otherwise.

        Returns:
            `tuple[np.ndarray, dict[str, float]]`: cluster sizes of shape `(N,)`, dtype int64 (0 for untracked,
            invalid and noise rows), and the metrics `meds/memory/*`, `meds/features/missing_frac`,
            `meds/cluster_size/*`, `meds/clusters/*` (see `verl_meds.metrics.METRIC_DESCRIPTIONS`).

        Raises:
            ValueError: if the shapes do not match, a prompt id is not str/int, F differs from the stored F, or
                `answer_keys` is missing (method "answer"), given (other methods), of another length or holds a
                value that is neither str nor None.
        """
        ids = [_prompt_id(prompt_id) for prompt_id in prompt_ids]
        num_rows = len(ids)
        valid = np.asarray(valid, dtype=bool).reshape(-1)
        correct = np.asarray(correct, dtype=bool).reshape(-1)
        if valid.shape != (num_rows,) or correct.shape != (num_rows,):
            raise ValueError(
                f"valid and correct must have shape ({num_rows},), got {valid.shape} and {correct.shape}."
            )
        if self.keyed_by_answer:
            return self._step_answer_keys(ids, valid, correct, answer_keys)
        if answer_keys is not None:
            raise ValueError(
                f"answer_keys are only used with clustering.method='answer'; this memory clusters features "
                f"(method={self.config.clustering.method!r})."
            )
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != num_rows:
            raise ValueError(f"features must have shape (N, F) with N={num_rows}, got {features.shape}.")
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

        metrics = self._step_metrics(
            num_rows, usable, cluster_sizes, assigned, clusters_per_prompt, largest_wrong_share
        )
        return cluster_sizes, metrics

    def _step_answer_keys(
        self, ids: list[PromptId], valid: np.ndarray, correct: np.ndarray, answer_keys: Sequence[str | None] | None
    ) -> tuple[np.ndarray, dict[str, float]]:
        """`step` for `clustering.method="answer"`: entries are answer keys, a cluster is one key."""
        num_rows = len(ids)
        if answer_keys is None:
            raise ValueError("clustering.method='answer' needs answer_keys (one str or None per response).")
        keys = list(answer_keys)
        if len(keys) != num_rows:
            raise ValueError(f"answer_keys must have length N={num_rows}, got {len(keys)}.")
        for key in keys:
            if key is not None and not isinstance(key, str):
                raise ValueError(f"answer_keys must hold str or None, got {type(key).__name__} {key!r}.")
        usable = valid & np.array([key is not None for key in keys], dtype=bool)  # (N,)
        cluster_sizes = np.zeros(num_rows, dtype=np.int64)  # (N,)
        assigned = np.zeros(num_rows, dtype=bool)  # (N,)
        clusters_per_prompt: list[int] = []
        largest_wrong_share: list[float] = []
        joint = self.config.clustering.assignment == "joint"
        for outcome in _TRACKED_OUTCOMES[self.config.shaping.penalty_target]:
            is_outcome = correct if outcome == "right" else ~correct
            groups: dict[PromptId, list[int]] = {}
            for row in np.flatnonzero(usable & is_outcome):
                groups.setdefault(ids[row], []).append(int(row))
            for prompt_id, rows in groups.items():
                buffer_key = (prompt_id, outcome)
                old_keys = self._keys.get(buffer_key, [])
                new_keys = [keys[row] for row in rows]
                history, current = Counter(old_keys), Counter(new_keys)
                for row, key in zip(rows, new_keys, strict=True):
                    cluster_sizes[row] = history[key] + (current[key] - 1 if joint else 0)
                assigned[rows] = True
                stored = old_keys + new_keys
                if outcome == "wrong":
                    clusters_per_prompt.append(len(set(stored)))
                    largest_wrong_share.append(max(Counter(stored).values()) / len(stored))
                overflow = len(stored) - self.config.memory.capacity
                if overflow > 0:
                    stored = stored[overflow:]
                    self._note_truncation(prompt_id)
                self._keys[buffer_key] = stored
                self._labels[buffer_key] = _first_appearance_labels(stored).astype(LABEL_DTYPE)
        metrics = self._step_metrics(
            num_rows, usable, cluster_sizes, assigned, clusters_per_prompt, largest_wrong_share
        )
        return cluster_sizes, metrics

    def _step_metrics(
        self,
        num_rows: int,
        usable: np.ndarray,
        cluster_sizes: np.ndarray,
        assigned: np.ndarray,
        clusters_per_prompt: list,
        largest_wrong_share: list,
    ) -> dict[str, float]:
        """The metrics of one `step` (names in `verl_meds.metrics`), shared by the feature and answer-key paths."""
        return {
            M.MEMORY_NUM_PROMPTS: float(self.num_prompts),
            M.MEMORY_NUM_ENTRIES: float(self.num_entries),
            M.MEMORY_TRUNCATED_PROMPTS: float(len(self._truncated_prompts)),
            M.FEATURES_MISSING_FRAC: M.safe_frac(num_rows - int(usable.sum()), num_rows),
            M.CLUSTER_SIZE_MEAN: M.safe_mean(cluster_sizes[assigned]),
            M.CLUSTER_SIZE_MAX: M.safe_max(cluster_sizes[assigned]),
            M.CLUSTERS_PER_PROMPT_MEAN: M.safe_mean(clusters_per_prompt),
            M.CLUSTERS_LARGEST_WRONG_SHARE_MEAN: M.safe_mean(largest_wrong_share),
        }

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
            `labels` `(M,)` int64) and `truncated_prompt_ids` (list). Keyed by answer, each buffer holds
            `answer_keys` (list of M str) instead of `features`, and the dict also has `answer_key_version` (int).
        """
        if self.keyed_by_answer:
            return {
                "version": STATE_VERSION,
                "fingerprint": self.config.fingerprint(),
                "answer_key_version": ANSWER_KEY_VERSION,
                "num_features": None,
                "buffers": [
                    {
                        "prompt_id": prompt_id,
                        "outcome": outcome,
                        "answer_keys": list(keys),
                        "labels": self._labels[(prompt_id, outcome)].astype(np.int64),
                    }
                    for (prompt_id, outcome), keys in self._keys.items()
                ],
                "truncated_prompt_ids": list(self._truncated_prompts),
            }
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
        if self.keyed_by_answer:
            self._load_answer_keys(state)
            return
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

    def _load_answer_keys(self, state: Mapping[str, Any]) -> None:
        """`load_state_dict` for `clustering.method="answer"` (the fingerprint has been checked)."""
        version = state.get("answer_key_version")
        if version != ANSWER_KEY_VERSION:
            raise ValueError(
                f"ErrorMemory state has answer keys of version {version!r}, but this verl_meds makes version "
                f"{ANSWER_KEY_VERSION} (verl_meds.answer.ANSWER_KEY_VERSION); stored keys would not match new ones."
            )
        keys_of: dict[tuple[PromptId, str], list[str]] = {}
        labels: dict[tuple[PromptId, str], np.ndarray] = {}
        truncated = {_prompt_id(prompt_id): None for prompt_id in state.get("truncated_prompt_ids", [])}
        capacity = self.config.memory.capacity
        for buffer in state.get("buffers", []):
            key = (_prompt_id(buffer["prompt_id"]), buffer["outcome"])
            if key[1] not in OUTCOMES:
                raise ValueError(f"buffer outcome must be one of {list(OUTCOMES)}, got {key[1]!r}.")
            stored = list(buffer["answer_keys"])
            if not all(isinstance(item, str) for item in stored):
                raise ValueError(f"buffer {key} must hold str answer keys, got {stored!r}.")
            if len(stored) > capacity:
                stored = stored[-capacity:]
                truncated[key[0]] = None
                logger.warning("Loaded MEDS memory buffer %r cut to capacity=%d (newest kept).", key, capacity)
            keys_of[key], labels[key] = stored, _first_appearance_labels(stored).astype(LABEL_DTYPE)
        self._keys, self._labels, self._truncated_prompts = keys_of, labels, truncated
        self._features, self._num_features = {}, None
