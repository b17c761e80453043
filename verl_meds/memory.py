r"""Error memory: bounded per-prompt buffers of past feature vectors and the cluster size |C| of new responses.

[`ErrorMemory`] keeps, for each stable prompt id and outcome ("wrong", and "right" when right answers are targeted),
the feature vectors (F floats, float32) of past responses, oldest first, at most `MemoryConfig.capacity` of them.
Each training step, [`ErrorMemory.step`] gives every new response its cluster size |C| against the memory as it was
before the step (plus this step's responses, per `ClusterConfig.assignment`; see `verl_meds.clustering`) and then
stores the new responses. The state is plain python/numpy, picklable, and round-trips bit for bit through
[`ErrorMemory.state_dict`] / [`ErrorMemory.load_state_dict`].

What an entry is and how a new one gets its |C| is a [`Clusterer`]'s job; the memory owns the buffers, their FIFO
capacity, the metrics and the checkpoints. [`FeatureClusterer`] stores feature vectors and clusters them with
`verl_meds.clustering`. With `ClusterConfig.method="answer"`, [`AnswerKeyClusterer`] stores answer keys
(`verl_meds.answer.answer_key`) instead: a response's cluster is the set of stored (and, with `assignment="joint"`,
this step's other) responses of the same prompt and outcome whose key is equal.

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
from typing import Any, Protocol

import numpy as np

from . import metrics as M
from .answer import ANSWER_KEY_VERSION
from .clustering import cluster_sizes_for_new, largest_cluster_size, num_clusters
from .config import ClusterConfig, MEDSConfig
from .groups import group_codes, group_rows

logger = logging.getLogger(__name__)

STATE_VERSION = 1
LABEL_DTYPE = np.int32
"""dtype of the stored labels (4 bytes per response; `state_dict` and `labels()` give int64)."""
OUTCOMES = ("wrong", "right")
_TRACKED_OUTCOMES = {"wrong": ("wrong",), "right": ("right",), "both": ("wrong", "right"), "none": ()}

PromptId = str | int
BufferKey = tuple[PromptId, str]
Entries = Any
"""One buffer's entries: a `(M, F)` float32 array (features) or a list of M str (answer keys)."""


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
    return np.array(group_codes(keys), dtype=np.int64)  # (M,)


class Clusterer(Protocol):
    """
    What one memory buffer stores and how new entries get their cluster size |C|.

    `ErrorMemory` owns the buffers (one per prompt and outcome), their FIFO capacity, the metrics and the
    checkpoints; a clusterer only knows its kind of entry. Entries are an `(M, F)` float32 array
    ([`FeatureClusterer`]) or a list of M answer keys ([`AnswerKeyClusterer`]).

    Attributes:
        state_field (`str`):
            Name of the entries in a saved buffer (`"features"` or `"answer_keys"`).
        num_features (`int` or `None`):
            F of stored feature vectors; `None` while there are none (always for answer keys).
    """

    state_field: str
    num_features: int | None

    def inputs(
        self, valid: np.ndarray, features: np.ndarray | None, answer_keys: Sequence[str | None] | None
    ) -> tuple[Entries, np.ndarray]:
        """Entries of the N rows of one step and which are usable (`valid` and complete, `(N,)` bool); checks them."""

    def select(self, step_entries: Entries, rows: list[int]) -> Entries:
        """The entries of `rows` (in that order)."""

    def assign(
        self, old: Entries | None, new: Entries, old_labels: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, Entries]:
        """|C| of each new entry `(n,)` int64, the labels `(m + n,)` int64 of old + new, and old + new."""

    def keep_newest(self, entries: Entries, labels: np.ndarray, count: int) -> tuple[Entries, np.ndarray]:
        """The newest `count` entries and their labels (copies, so that the dropped entries are freed)."""

    def save(self, entries: Entries) -> Any:
        """A copy of `entries` for `ErrorMemory.state_dict`."""

    def load(self, buffer: Mapping[str, Any], key: BufferKey, num_features: int | None) -> tuple[Entries, np.ndarray]:
        """Entries and labels `(M,)` int64 of a saved buffer; raises `ValueError` when it is malformed."""


class FeatureClusterer:
    """
    Entries are logit-lens feature vectors; |C| comes from `verl_meds.clustering.cluster_sizes_for_new`.

    Args:
        config (`ClusterConfig`):
            Clustering options (`method` `"hdbscan"` or `"single"`).

    Attributes:
        num_features (`int` or `None`):
            F of the stored entries, `None` while the memory is empty (new rows must match it).
    """

    state_field = "features"

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.num_features: int | None = None

    def inputs(
        self, valid: np.ndarray, features: np.ndarray | None, answer_keys: Sequence[str | None] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        num_rows = valid.shape[0]
        if answer_keys is not None:
            raise ValueError(
                f"answer_keys are only used with clustering.method='answer'; this memory clusters features "
                f"(method={self.config.method!r})."
            )
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != num_rows:
            raise ValueError(f"features must have shape (N, F) with N={num_rows}, got {features.shape}.")
        usable = valid & np.isfinite(features).all(axis=1)  # (N,)
        if usable.any() and self.num_features is not None and features.shape[1] != self.num_features:
            raise ValueError(f"features have F={features.shape[1]} but the memory stores F={self.num_features}.")
        return features, usable

    def select(self, step_entries: np.ndarray, rows: list[int]) -> np.ndarray:
        return step_entries[rows]  # (n, F)

    def assign(
        self, old: np.ndarray | None, new: np.ndarray, old_labels: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if old is None:
            old = np.empty((0, new.shape[1]), dtype=np.float32)  # (m = 0, F)
        sizes, labels = cluster_sizes_for_new(old, new, self.config, old_labels)
        self.num_features = new.shape[1]
        return sizes, labels, np.concatenate([old, new], axis=0)  # (m + n, F)

    def keep_newest(self, entries: np.ndarray, labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        entries = np.ascontiguousarray(entries[entries.shape[0] - count :], dtype=np.float32).copy()
        return entries, labels[labels.shape[0] - count :].astype(LABEL_DTYPE)

    def save(self, entries: np.ndarray) -> np.ndarray:
        return entries.copy()

    def load(
        self, buffer: Mapping[str, Any], key: BufferKey, num_features: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = np.array(buffer["features"], dtype=np.float32, copy=True)
        labels = np.array(buffer["labels"], dtype=np.int64, copy=True)
        if rows.ndim != 2 or rows.shape[1] != num_features or labels.shape != (rows.shape[0],):
            raise ValueError(
                f"buffer {key} has features {rows.shape} and labels {labels.shape}; expected (M, "
                f"{num_features}) and (M,)."
            )
        if not np.array_equal(labels.astype(LABEL_DTYPE), labels):
            raise ValueError(f"buffer {key} has labels outside the {np.dtype(LABEL_DTYPE).name} range.")
        return rows, labels


class AnswerKeyClusterer:
    """
    Entries are answer keys (`verl_meds.answer.answer_key`); a cluster is the set of entries with one key.

    With `assignment="joint"` |C| counts the stored and the other new entries with the key of the new entry, with
    `"knn"` only the stored ones. Labels number the keys of a buffer in order of first appearance.

    Args:
        config (`ClusterConfig`):
            Clustering options (`method="answer"`; `assignment` is the only other field used).
    """

    state_field = "answer_keys"
    num_features = None

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config

    def inputs(
        self, valid: np.ndarray, features: np.ndarray | None, answer_keys: Sequence[str | None] | None
    ) -> tuple[list[str | None], np.ndarray]:
        num_rows = valid.shape[0]
        if answer_keys is None:
            raise ValueError("clustering.method='answer' needs answer_keys (one str or None per response).")
        keys = list(answer_keys)
        if len(keys) != num_rows:
            raise ValueError(f"answer_keys must have length N={num_rows}, got {len(keys)}.")
        for key in keys:
            if key is not None and not isinstance(key, str):
                raise ValueError(f"answer_keys must hold str or None, got {type(key).__name__} {key!r}.")
        return keys, valid & np.array([key is not None for key in keys], dtype=bool)  # (N,)

    def select(self, step_entries: list[str], rows: list[int]) -> list[str]:
        return [step_entries[row] for row in rows]

    def assign(
        self, old: list[str] | None, new: list[str], old_labels: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        old = old or []
        history, current = Counter(old), Counter(new)
        extra = 1 if self.config.assignment == "joint" else 0
        sizes = [history[key] + extra * (current[key] - 1) for key in new]
        stored = old + new
        return np.array(sizes, dtype=np.int64), _first_appearance_labels(stored), stored

    def keep_newest(self, entries: list[str], labels: np.ndarray, count: int) -> tuple[list[str], np.ndarray]:
        entries = entries[len(entries) - count :]
        return entries, _first_appearance_labels(entries).astype(LABEL_DTYPE)

    def save(self, entries: list[str]) -> list[str]:
        return list(entries)

    def load(
        self, buffer: Mapping[str, Any], key: BufferKey, num_features: int | None
    ) -> tuple[list[str], np.ndarray]:
        stored = list(buffer["answer_keys"])
        if not all(isinstance(item, str) for item in stored):
            raise ValueError(f"buffer {key} must hold str answer keys, got {stored!r}.")
        return stored, _first_appearance_labels(stored)


def make_clusterer(config: ClusterConfig) -> FeatureClusterer | AnswerKeyClusterer:
    """The clusterer of `config.method`: answer keys for `"answer"`, feature vectors otherwise."""
    return AnswerKeyClusterer(config) if config.method == "answer" else FeatureClusterer(config)


class ErrorMemory:
    """
    Per-prompt memory of past responses (feature vectors or answer keys), used to count how often an error repeats.

    `ErrorMemory` ignores `MEDSConfig.enable`; the integration decides whether to call it. What an entry is and how
    a new one gets its cluster size is the job of its [`Clusterer`] (`make_clusterer(config.clustering)`).

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
        self._clusterer = make_clusterer(config.clustering)
        self._entries: dict[BufferKey, Entries] = {}  # (prompt id, outcome) -> entries, oldest first
        self._labels: dict[BufferKey, np.ndarray] = {}  # (prompt id, outcome) -> (M,) LABEL_DTYPE
        self._truncated_prompts: dict[PromptId, None] = {}  # an ordered set
        self._warned_truncation = False

    # ------------------------------------------------------------------ inspection

    @property
    def keyed_by_answer(self) -> bool:
        """Whether entries are answer keys (`clustering.method="answer"`) rather than feature vectors."""
        return isinstance(self._clusterer, AnswerKeyClusterer)

    @property
    def num_entries(self) -> int:
        """Stored entries (feature vectors, or answer keys) over all prompts and outcomes."""
        return sum(len(entries) for entries in self._entries.values())

    @property
    def num_prompts(self) -> int:
        """Distinct prompt ids with at least one stored entry."""
        return len({prompt_id for prompt_id, _ in self._entries})

    @property
    def num_features(self) -> int | None:
        """F, fixed by the first stored entry; `None` while the memory is empty or keyed by answer."""
        return self._clusterer.num_features

    def __len__(self) -> int:
        return self.num_entries

    def entries(self, prompt_id: PromptId, outcome: str = "wrong") -> np.ndarray:
        """Copy of the stored `(M, F)` float32 features of one prompt and outcome, oldest first (M may be 0)."""
        rows = None if self.keyed_by_answer else self._entries.get((_prompt_id(prompt_id), outcome))
        return np.empty((0, self.num_features or 0), dtype=np.float32) if rows is None else rows.copy()

    def answer_keys(self, prompt_id: PromptId, outcome: str = "wrong") -> list[str]:
        """Copy of the stored answer keys of one prompt and outcome, oldest first (empty unless keyed by answer)."""
        return list(self._entries.get((_prompt_id(prompt_id), outcome), [])) if self.keyed_by_answer else []

    def labels(self, prompt_id: PromptId, outcome: str = "wrong") -> np.ndarray:
        """Copy of the `(M,)` int64 labels of the last fit of one prompt and outcome, aligned with the entries."""
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
        step_entries, usable = self._clusterer.inputs(valid, features, answer_keys)  # usable: (N,)

        cluster_sizes = np.zeros(num_rows, dtype=np.int64)  # (N,)
        assigned = np.zeros(num_rows, dtype=bool)  # (N,)
        clusters_per_prompt: list[int] = []
        largest_wrong_share: list[float] = []
        for outcome in _TRACKED_OUTCOMES[self.config.shaping.penalty_target]:
            is_outcome = correct if outcome == "right" else ~correct
            for prompt_id, rows in group_rows(ids, rows=np.flatnonzero(usable & is_outcome)).items():
                new = self._clusterer.select(step_entries, rows)
                cluster_sizes[rows], labels_all = self._assign_and_store((prompt_id, outcome), new)
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

    def _assign_and_store(self, key: BufferKey, new: Entries) -> tuple[np.ndarray, np.ndarray]:
        """|C| `(n,)` of the `new` entries of one buffer and the labels `(m + n,)` of its fit; stores the entries."""
        sizes, labels_all, stored = self._clusterer.assign(self._entries.get(key), new, self._labels.get(key))
        stored_labels = labels_all.astype(LABEL_DTYPE)
        capacity = self.config.memory.capacity
        if len(stored) > capacity:
            stored, stored_labels = self._clusterer.keep_newest(stored, labels_all, capacity)
            self._note_truncation(key[0])
        self._entries[key], self._labels[key] = stored, stored_labels
        return sizes, labels_all

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
        state: dict[str, Any] = {"version": STATE_VERSION, "fingerprint": self.config.fingerprint()}
        if self.keyed_by_answer:
            state["answer_key_version"] = ANSWER_KEY_VERSION
        state["num_features"] = self.num_features
        state["buffers"] = [
            {
                "prompt_id": prompt_id,
                "outcome": outcome,
                self._clusterer.state_field: self._clusterer.save(entries),
                "labels": self._labels[(prompt_id, outcome)].astype(np.int64),
            }
            for (prompt_id, outcome), entries in self._entries.items()
        ]
        state["truncated_prompt_ids"] = list(self._truncated_prompts)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """
        Replace the memory with a snapshot from [`state_dict`]; nothing changes if the snapshot is rejected.

        Buffers longer than the current `capacity` keep their newest entries.

        Args:
            state (`Mapping`):
                A dict returned by `state_dict()`.

        Raises:
            ValueError: if the version, the config fingerprint or (keyed by answer) the answer-key version differ
                (the message names both values), or if the buffers are malformed.
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
        if self.keyed_by_answer and state.get("answer_key_version") != ANSWER_KEY_VERSION:
            raise ValueError(
                f"ErrorMemory state has answer keys of version {state.get('answer_key_version')!r}, but this "
                f"verl_meds makes version {ANSWER_KEY_VERSION} (verl_meds.answer.ANSWER_KEY_VERSION); stored keys "
                "would not match new ones."
            )
        num_features = None if self.keyed_by_answer else state.get("num_features")
        entries_of: dict[BufferKey, Entries] = {}
        labels_of: dict[BufferKey, np.ndarray] = {}
        truncated = {_prompt_id(prompt_id): None for prompt_id in state.get("truncated_prompt_ids", [])}
        capacity = self.config.memory.capacity
        for buffer in state.get("buffers", []):
            key = (_prompt_id(buffer["prompt_id"]), buffer["outcome"])
            if key[1] not in OUTCOMES:
                raise ValueError(f"buffer outcome must be one of {list(OUTCOMES)}, got {key[1]!r}.")
            entries, labels = self._clusterer.load(buffer, key, num_features)
            if len(entries) > capacity:
                entries, labels = self._clusterer.keep_newest(entries, labels, capacity)
                truncated[key[0]] = None
                logger.warning("Loaded MEDS memory buffer %r cut to capacity=%d (newest kept).", key, capacity)
            entries_of[key], labels_of[key] = entries, labels.astype(LABEL_DTYPE)
        self._entries, self._labels, self._truncated_prompts = entries_of, labels_of, truncated
        if not self.keyed_by_answer:
            self._clusterer.num_features = num_features if entries_of else None
