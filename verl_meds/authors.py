r"""The authors' per-step MEDS procedure, re-stated from its description: the reference that fork parity is tested
and benchmarked against.

`MEDSConfig(fork_parity=True)` runs the authors' order and formulas through [`verl_meds.memory.ErrorMemory`] and
[`verl_meds.shaping`]; [`AuthorsProcedure`] writes the same procedure out plainly, one response at a time, with
scikit-learn-contrib `hdbscan` (imported lazily), so that the two can be compared (`tests/test_fork_parity.py`) and
timed against each other (`benchmarks/bench_cluster.py`). Its settings are the product's
(`verl_meds.config.fork_parity_preset`).

The procedure: memory keyed by (prompt, correctness), never trimmed; contrib `HDBSCAN(min_cluster_size=2,
min_samples=1)` on L2-normalised features; each new response is assigned by a `knn_k`-nearest-neighbour vote over
the labels of the previous fit, then the history is refitted with the new responses; penalty
$p = -\alpha \min(\ln(1 + |C|), C)$ with $C$ = `FORK_LOG_CAP`; a wrong answer gets $r + p$, a right one
$r / (1 - p)$. Their three clustering faults, kept with `faults=True`: identical repeated errors come back as noise
(no single cluster allowed); a response whose vote is noise is charged the number of noise points; a tied vote goes
to noise.

Example:

```python
>>> import numpy as np
>>> from verl_meds.authors import AuthorsProcedure
>>> reference = AuthorsProcedure(alpha=0.1, faults=False)
>>> features = np.tile(np.array([[1.0, 2.0, 3.0]], dtype=np.float32), (3, 1))  # (N, F): three identical errors
>>> _ = reference.step(["p"] * 3, features, np.zeros(3, bool), np.full(3, -1.0))
>>> penalties, shaped = reference.step(["p"] * 3, features, np.zeros(3, bool), np.full(3, -1.0))
>>> np.round(penalties, 4).tolist()
[0.1386, 0.1386, 0.1386]

```
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from .config import FORK_LOG_CAP, fork_parity_preset
from .groups import group_rows


def l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows of `X` `(M, F)` scaled to unit L2 norm; rows of zeros stay zero."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)  # (M, 1)
    return np.where(norms > 0, X / np.where(norms > 0, norms, 1.0), X)


class AuthorsProcedure:
    """
    The authors' per-step procedure, re-stated (the reference of `MEDSConfig.fork_parity`).

    Args:
        alpha (`float`):
            Penalty scale.
        faults (`bool`):
            Keep the authors' three clustering faults (`MEDSConfig.reproduce_fork_faults`).

    Attributes:
        history (`dict[tuple, np.ndarray]`):
            (prompt id, correct) -> `(M, F)` float64 L2-normalised features, oldest first.
        labels (`dict[tuple, np.ndarray]`):
            (prompt id, correct) -> `(M,)` labels of the last fit of that history.
    """

    def __init__(self, alpha: float, faults: bool) -> None:
        clustering = fork_parity_preset(alpha, faults)["clustering"]
        self.alpha, self.faults, self.cap = alpha, faults, FORK_LOG_CAP
        self.k = clustering["knn_k"]
        self.hdbscan_params = {
            "min_cluster_size": clustering["min_cluster_size"],
            "min_samples": clustering["min_samples"],
            "allow_single_cluster": clustering["allow_single_cluster"],
        }
        self.history: dict[tuple, np.ndarray] = {}
        self.labels: dict[tuple, np.ndarray] = {}

    def fit(self, X: np.ndarray) -> np.ndarray:
        """Labels `(M,)` of contrib HDBSCAN on the (already L2-normalised) rows `X` `(M, F)`; all noise if M < 2."""
        import hdbscan  # imported lazily: it pulls in pandas and joblib

        if len(X) < 2:
            return np.full(len(X), -1)
        return hdbscan.HDBSCAN(**self.hdbscan_params).fit_predict(X.astype(np.float64))

    def vote(self, x: np.ndarray, history: np.ndarray, labels: np.ndarray) -> int:
        """Majority label of the `k` nearest stored rows of `x` `(F,)`; a tie goes to the nearest tied label that is
        not noise (to noise with the faults)."""
        distances = np.linalg.norm(history - x, axis=1)  # (M,)
        nearest = labels[np.argsort(distances, kind="stable")[: self.k]]  # (k,)
        values, counts = np.unique(nearest, return_counts=True)
        top = values[counts == counts.max()]
        if len(top) == 1:
            return int(top[0])
        if self.faults:
            return -1  # fault: a tie goes to noise
        non_noise = [v for v in nearest if v != -1 and v in top]
        return int(non_noise[0]) if non_noise else -1

    def cluster_size(self, x: np.ndarray, history: np.ndarray, labels: np.ndarray) -> int:
        """|C| of one new row `x` `(F,)` against a stored history `(M, F)` and its labels `(M,)`."""
        if len(history) == 0:
            return 0
        label = self.vote(x, history, labels)
        if label == -1:
            return int((labels == -1).sum()) if self.faults else 0  # fault: noise is charged its count
        return int((labels == label).sum())

    def step(
        self, prompt_ids: Sequence[Hashable], features: np.ndarray, correct: np.ndarray, rewards: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        One training step: penalties of the new responses against the history, then the history refitted.

        Args:
            prompt_ids (`Sequence[Hashable]` of length N):
                Prompt id of each response.
            features (`np.ndarray` of shape `(N, F)`):
                Feature vector of each response.
            correct (`np.ndarray` of shape `(N,)`, bool):
                Whether each response was graded correct.
            rewards (`np.ndarray` of shape `(N,)`, float):
                Raw rewards.

        Returns:
            `tuple[np.ndarray, np.ndarray]`: penalties (N,) (>= 0) and shaped rewards (N,), float64.
        """
        feats = l2_normalise(np.asarray(features, dtype=np.float64))  # (N, F)
        signed = np.zeros(len(prompt_ids))  # (N,) the authors' negative penalty p
        keys = [(p, bool(c)) for p, c in zip(prompt_ids, correct, strict=True)]
        for key, rows in group_rows(keys).items():
            history = self.history.get(key, np.zeros((0, feats.shape[1])))  # (M, F)
            labels = self.labels.get(key, np.zeros(0, dtype=int))  # (M,)
            for i in rows:
                signed[i] = -self.alpha * min(math.log(1 + self.cluster_size(feats[i], history, labels)), self.cap)
            self.history[key] = np.concatenate([history, feats[rows]], axis=0)
            self.labels[key] = self.fit(self.history[key])
        shaped = np.array([r + p if not c else r / (1 - p) for r, p, c in zip(rewards, signed, correct, strict=True)])
        return -signed, shaped
