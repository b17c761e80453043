"""Optional per-step dump of MEDS's view of every rollout, for `verl_meds.analysis` (off by default).

I/O is kept out of the algorithm (STYLE B.6.26): the trainer hands each step's arrays to `AnalysisDump`, which
appends one JSON line per rollout to `<trainer.default_local_dir>/<filename>` in the record format of
`verl_meds.analysis.records` (`step`, `prompt_id`, `sample_index`, `correct`, `answer`, `features`,
`cluster_size`, `penalty`, and `response` when asked for). Rows are written in the order the memory saw them,
so that `verl_meds.analysis.records.assign_clusters` replays exactly the same clusters.

After a crash and resume, steps between the last checkpoint and the crash are dumped twice; readers should keep the
last record of each `(step, prompt_id, sample_index)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class DumpConfig:
    """
    Parameters:
        enable (`bool`, *optional*, defaults to `False`):
            Write the per-rollout records.
        filename (`str`, *optional*, defaults to `"analysis.jsonl"`):
            File name inside `trainer.default_local_dir`.
        responses (`bool`, *optional*, defaults to `False`):
            Also write the decoded response text (large on long responses).
    """

    enable: bool = False
    filename: str = "analysis.jsonl"
    responses: bool = False

    def __post_init__(self) -> None:
        for name in ("enable", "responses"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"meds_dump.{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.filename, str) or not self.filename or os.sep in self.filename:
            raise ValueError(f"meds_dump.filename must be a plain file name, got {self.filename!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DumpConfig:
        """Build from a plain dict; unknown keys raise `ValueError` listing the valid ones."""
        d = dict(d or {})
        unknown = sorted(set(d) - {"enable", "filename", "responses"})
        if unknown:
            raise ValueError(f"unknown meds_dump keys {unknown}; valid keys: ['enable', 'filename', 'responses']")
        return cls(**d)


class AnalysisDump:
    """Appends per-rollout records to a JSONL file (one `write_step` call per training step)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write_step(
        self,
        step: int,
        order: np.ndarray,
        prompt_ids: Sequence[str],
        sample_indices: Sequence[int],
        correct: np.ndarray,
        answers: Sequence[str | None],
        features: np.ndarray,
        valid: np.ndarray,
        cluster_sizes: np.ndarray,
        penalties: np.ndarray,
        responses: Sequence[str] | None = None,
    ) -> int:
        """Append the step's rows in `order`; returns the number of lines written.

        Args:
            step (`int`): the training step.
            order (`np.ndarray` of shape `(N,)`, int): row order (the order the memory saw).
            prompt_ids, sample_indices, answers, responses (`Sequence` of length N): per-row values.
            correct, valid (`np.ndarray` of shape `(N,)`, bool); features (`np.ndarray` of shape `(N, F)`, float);
            cluster_sizes (`np.ndarray` of shape `(N,)`, int); penalties (`np.ndarray` of shape `(N,)`, float).
        """
        lines = []
        for r in np.asarray(order, dtype=np.int64).tolist():
            record = {
                "step": int(step),
                "prompt_id": str(prompt_ids[r]),
                "sample_index": int(sample_indices[r]),
                "correct": bool(correct[r]),
                "answer": answers[r] or None,
                "features": [float(v) for v in features[r]] if bool(valid[r]) else None,
                "cluster_size": int(cluster_sizes[r]),
                "penalty": float(penalties[r]),
            }
            if responses is not None:
                record["response"] = responses[r]
            lines.append(json.dumps(record))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
            f.flush()
        return len(lines)
