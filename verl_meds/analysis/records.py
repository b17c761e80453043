r"""The record format of the diversity and memory analysis, and how records are read, clustered and labelled.

One JSON object per line, one line per rollout (a training step's response, or an evaluation sample):

- `step` (int, required): training step (or the checkpoint's step for evaluation samples).
- `prompt_id` (str or int, required): stable prompt id (the memory key, `MemoryConfig.prompt_key`).
- `correct` (bool, required): graded correct.
- `answer` (str or null): extracted final answer (null: no `\boxed{}`).
- `features` (list[float] or null): the F MEDS features of the response (null: no answer token).
- `cluster` (int or null): label of the response in its prompt's HDBSCAN fit of this step (history + this step's
  rows); -1 noise; null when not clustered (right answers, no features).
- `past_members` (int or null): members of that cluster stored in the memory *before* this step (0 for noise).
- `cluster_size` (int or null): |C| used for the penalty (other members of the cluster, past and present).
- `penalty` (float or null): penalty applied to the reward.
- `sample_index` (int): index of the response within its group.
- `label` (str or null): a given label to compare clusters with (e.g. the synthetic task's error mode).
- `pattern` (str or null): reasoning-pattern label from the LLM judge (`verl_meds.analysis.judge`).
- `question` (str): prompt text (needed by the judge and by `synthetic_error_mode`).
- `response` (str): response text (needed by the judge).

`cluster`/`past_members` come from the trainer's dump when it writes them; otherwise [`assign_clusters`] replays the
memory offline from `features` (same `verl_meds.clustering` code, joint assignment), which is also how evaluation
samples of successive checkpoints ([`records_from_eval`]) get clusters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from verl_meds.answer import integer_answer
from verl_meds.clustering import NOISE, cluster_sizes_for_new
from verl_meds.config import ClusterConfig

logger = logging.getLogger(__name__)

REQUIRED_FIELDS: tuple[str, ...] = ("step", "prompt_id", "correct")
"""Fields every record must have."""

OPTIONAL_FIELDS: tuple[str, ...] = (
    "answer",
    "features",
    "cluster",
    "past_members",
    "cluster_size",
    "penalty",
    "sample_index",
    "label",
    "pattern",
    "question",
    "response",
)
"""Fields a record may have (others are kept and ignored)."""

Record = dict[str, Any]


def validate_record(record: Any, where: str = "record") -> Record:
    """
    Check one record against the format above.

    Args:
        record (`Any`): a parsed JSON line.
        where (`str`, *optional*, defaults to `"record"`): location used in error messages.

    Returns:
        `dict`: the same record.

    Raises:
        ValueError: when a required field is missing or has the wrong type, or `features` is not a list of numbers.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise ValueError(f"{where}: missing required fields {missing}")
    if isinstance(record["step"], bool) or not isinstance(record["step"], int):
        raise ValueError(f"{where}: step must be an int, got {record['step']!r}")
    if isinstance(record["prompt_id"], bool) or not isinstance(record["prompt_id"], (str, int)):
        raise ValueError(f"{where}: prompt_id must be a str or int, got {record['prompt_id']!r}")
    if not isinstance(record["correct"], bool):
        raise ValueError(f"{where}: correct must be a bool, got {record['correct']!r}")
    features = record.get("features")
    if features is not None and (
        not isinstance(features, list)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in features)
    ):
        raise ValueError(f"{where}: features must be a list of numbers or null")
    return record


def load_records(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Record]:
    """
    Read and validate records from one or several JSONL files (in order).

    Raises:
        ValueError: on a malformed line (the message gives file and line).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    records: list[Record] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: invalid JSON ({err})") from err
                records.append(validate_record(record, f"{path}:{number}"))
    return records


def write_records(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write records as JSONL (one object per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def records_from_eval(eval_dir: str | os.PathLike, step: int) -> list[Record]:
    """
    Records from an evaluation folder of `verl_meds.eval` (its `samples.jsonl` and `problems.jsonl`).

    `prompt_id` is the problem id, `step` the given checkpoint step; `features` are present only when the
    evaluation ran with `--save-features`. `question` comes from `problems.jsonl`.

    Args:
        eval_dir (`str` or `os.PathLike`): the evaluation output folder.
        step (`int`): training step of the evaluated checkpoint.

    Returns:
        `list[dict]`: one record per sample, ordered by problem then sample index.

    Raises:
        FileNotFoundError: if `samples.jsonl` is missing.
    """
    eval_dir = Path(eval_dir)
    questions: dict[str, str] = {}
    problems_path = eval_dir / "problems.jsonl"
    if problems_path.is_file():
        for line in problems_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                problem = json.loads(line)
                questions[problem["problem_id"]] = problem.get("question", "")
    records = []
    with open(eval_dir / "samples.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            sample = json.loads(line)
            record: Record = {
                "step": int(step),
                "prompt_id": sample["problem_id"],
                "correct": bool(sample["correct"]),
                "answer": sample.get("answer"),
                "features": sample.get("features"),
                "sample_index": int(sample["sample_index"]),
            }
            if sample["problem_id"] in questions:
                record["question"] = questions[sample["problem_id"]]
            if "response" in sample:
                record["response"] = sample["response"]
            records.append(record)
    records.sort(key=lambda r: (str(r["prompt_id"]), r["sample_index"]))
    return records


def _usable_features(record: Mapping[str, Any]) -> bool:
    features = record.get("features")
    return bool(features) and all(math.isfinite(v) for v in features)


def assign_clusters(
    records: Sequence[Record],
    cluster_config: ClusterConfig | None = None,
    capacity: int = 256,
    overwrite: bool = False,
) -> list[Record]:
    """
    Replay the error memory over the records to give each wrong response its `cluster`, `past_members` and
    `cluster_size`.

    Steps are processed in increasing order. For each step and prompt, the step's wrong responses with usable
    features are clustered together with the prompt's stored wrong features (`verl_meds.clustering.
    cluster_sizes_for_new`, i.e. the memory's joint fit; the `assignment` field of the config is not used here), then
    stored, keeping the newest `capacity` rows. Rows that are right, or have no usable features, get `None`.

    Args:
        records (`Sequence[dict]`): records (see the module docstring); not modified.
        cluster_config (`ClusterConfig`, *optional*): clustering options; defaults to `ClusterConfig()`.
        capacity (`int`, *optional*, defaults to `256`): stored rows per prompt (`MemoryConfig.capacity`).
        overwrite (`bool`, *optional*, defaults to `False`): replace `cluster`/`past_members`/`cluster_size`
            that records already hold (by default only missing values are filled).

    Returns:
        `list[dict]`: copies of the records, in the input order, with the three fields set.

    Raises:
        ValueError: if feature lengths differ within a prompt, or `capacity < 1`.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    cfg = dataclasses.replace(cluster_config or ClusterConfig(), assignment="joint")
    out = [dict(record) for record in records]
    by_step: dict[int, dict[Any, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row, record in enumerate(out):
        if not record["correct"] and _usable_features(record):
            by_step[int(record["step"])][record["prompt_id"]].append(row)
    memory: dict[Any, np.ndarray] = {}
    results: dict[int, tuple[int, int, int]] = {}
    for step in sorted(by_step):
        for prompt_id, rows in by_step[step].items():
            new = np.asarray([out[r]["features"] for r in rows], dtype=np.float64)  # (n, F)
            old = memory.get(prompt_id, np.empty((0, new.shape[1]), dtype=np.float64))  # (m, F)
            if old.shape[1] != new.shape[1]:
                raise ValueError(
                    f"prompt {prompt_id!r}: features of length {new.shape[1]} at step {step}, {old.shape[1]} before"
                )
            results.update(zip(rows, _replay_prompt(old, new, cfg), strict=True))
            memory[prompt_id] = np.concatenate([old, new], axis=0)[-capacity:]
    for row, record in enumerate(out):
        values = results.get(row, (None, None, None))
        for name, value in zip(("cluster", "past_members", "cluster_size"), values, strict=True):
            if overwrite or record.get(name) is None:
                record[name] = value
    return out


def _replay_prompt(old: np.ndarray, new: np.ndarray, cfg: ClusterConfig) -> list[tuple[int, int, int]]:
    """(cluster, past members, |C|) of each new row of one prompt, clustered with the stored rows `old` (m, F)."""
    sizes, labels = cluster_sizes_for_new(old, new, cfg)  # (n,), (m + n,)
    past_labels = labels[: old.shape[0]]  # (m,)
    out = []
    for j in range(new.shape[0]):
        label = int(labels[old.shape[0] + j])
        past = 0 if label == NOISE else int(np.sum(past_labels == label))
        out.append((label, past, int(sizes[j])))
    return out


def synthetic_error_mode(question: str, answer: str | None) -> str | None:
    """
    Error-mode label of an answer to a synthetic arithmetic question (`verl_meds.tasks.synthetic`).

    Returns:
        `str` or `None`: the faulty procedure that reaches `answer` (several joined with `+`), `"other"` when none
        does, `None` for a right answer, a missing or non-integer answer, or a non-synthetic question.
    """
    from verl_meds.tasks.synthetic import error_modes, parse_question

    value = integer_answer(answer)
    if value is None:
        return None
    try:
        problem = parse_question(question)
    except ValueError:
        return None
    if value == problem.answer:
        return None
    modes = error_modes(problem, value)
    return "+".join(modes) if modes else "other"


def _label_synthetic(record: Mapping[str, Any]) -> str | None:
    return synthetic_error_mode(str(record.get("question", "")), record.get("answer"))


LABELERS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {"synthetic_error_mode": _label_synthetic}
"""Functions that derive a record's `label` from its other fields, by name."""


def get_labeler(name: str) -> Callable[[Mapping[str, Any]], str | None]:
    """The labeler called `name`.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in LABELERS:
        raise ValueError(f"unknown labeler {name!r}; valid names: {sorted(LABELERS)}")
    return LABELERS[name]


def add_labels(records: Sequence[Record], labeler: str) -> list[Record]:
    """Copies of the records whose `label` is set by the labeler called `labeler` (wrong records only)."""
    function = get_labeler(labeler)
    out = []
    for record in records:
        record = dict(record)
        record["label"] = None if record["correct"] else function(record)
        out.append(record)
    return out
