"""Per-step memory-and-clustering cost at the MEDS paper's shape: `ErrorMemory.step` vs the authors' procedure.

Usage (default = the paper's shape, about 3-4 minutes on 2 busy cores):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cluster.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cluster.py --prompts 64 --repeats 1   # quick look

Shape (MEDS paper training setup): B = 512 prompts per step, G = 16 rollouts each, F = 14 features (the last half of
28 layers), about 60 % wrong. Every prompt is seen once per epoch, so before the step of epoch e a prompt has
16 * (e - 1) stored responses: 1,584 (about 1,600) at epoch 100. Epochs are simulated by pre-filling the history
to that size (not timed); only the step itself is timed.

Synthetic features: per prompt, three "wrong" blobs and one "right" blob in R^F on top of a shared logit-lens-like
ramp (values growing with depth); blob centres drift linearly over the 100 epochs by about one blob width; 5 % of the
responses repeat an earlier response of the same prompt exactly (identical responses give identical features).

Compared, side by side in one process, interleaved (A B C, then C B A, ...), median over `--repeats`:

- **ours**: `verl_meds.memory.ErrorMemory.step` with the default `MEDSConfig` (joint assignment, wrong answers
  only, `memory.capacity` = 256 entries per prompt, FIFO).
- **ours (reference)**: the same step with `verl_meds.clustering.fit_labels` replaced by `fit_labels_reference`;
  its cluster sizes are compared with ours. For the default config (absolute scale, `ties="merge"`) the reference
  is the plain re-statement from the definition (Kruskal over all pairs, level by level); for
  `merge_distance=0, max_distance=None, ties="order"` it is contrib's `hdbscan.HDBSCAN`.
- **authors**: the authors' per-step procedure as `verl_meds.authors.AuthorsProcedure` re-states it, with their
  clustering faults (`faults=True`, contrib's default `allow_single_cluster=False`): for every (prompt, outcome)
  group in the batch, each new response takes the majority label of its k = 3 nearest stored responses (euclidean on
  L2-normalised rows) under the previous fit's labels; then the group's entire, unbounded history (new responses
  included) is refitted with `hdbscan.HDBSCAN(min_cluster_size=2, min_samples=1)`. The authors' recipe keeps one
  buffer per prompt and correctness and refits both; "authors (wrong)" counts only the time spent on the wrong
  groups. The vote is one numpy distance computation per response (the recipe fits a scikit-learn
  `NearestNeighbors` per response, which is slower).

Also printed: whether our penalties match the reference computation (fraction of responses whose cluster size or
penalty differs, largest penalty difference), and the memory footprint after the epoch-100 step: bytes per stored
response (arrays only, and with the per-buffer containers) and the size of the checkpoint file written by
`verl_meds.verl.checkpoint.save_memory`.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from unittest import mock

import numpy as np
import torch

from verl_meds import clustering
from verl_meds.authors import AuthorsProcedure, l2_normalise
from verl_meds.config import MEDSConfig
from verl_meds.memory import ErrorMemory
from verl_meds.shaping import penalty_from_cluster_sizes

# ----------------------------------------------------------------------------------------------- synthetic features


def make_features(args: argparse.Namespace, last_epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (E, B, G, F) float32 and wrong mask (E, B, G) bool for epochs 1..last_epoch (index e - 1)."""
    rng = np.random.default_rng(args.seed)
    num_prompts, rollouts, dim = args.prompts, args.rollouts, args.features
    ramp = np.linspace(1.0, 8.0, dim)[None, :] * rng.uniform(0.5, 1.5, size=(num_prompts, 1))  # (B, F)
    wrong_centres = ramp[:, None, :] + rng.normal(0.0, 1.0, size=(num_prompts, 3, dim))  # (B, 3, F)
    right_centres = ramp[:, None, :] + rng.normal(0.0, 1.0, size=(num_prompts, 1, dim))  # (B, 1, F)
    drift = rng.normal(0.0, 0.3, size=(num_prompts, 4, dim))  # (B, 4, F): about one blob width over 100 epochs
    blob_weights = rng.dirichlet(np.ones(3), size=num_prompts)  # (B, 3)
    features = np.empty((last_epoch, num_prompts, rollouts, dim), dtype=np.float32)
    wrong = rng.random((last_epoch, num_prompts, rollouts)) < args.wrong_frac
    prompt_index = np.arange(num_prompts)[:, None]
    for epoch in range(last_epoch):
        progress = epoch / 100.0
        blob = np.stack([rng.choice(3, size=rollouts, p=w) for w in blob_weights])  # (B, G)
        centres = np.where(
            wrong[epoch][..., None],
            wrong_centres[prompt_index, blob] + progress * drift[prompt_index, blob],
            right_centres[:, :1] + progress * drift[:, 3:4],
        )  # (B, G, F)
        features[epoch] = centres + rng.normal(0.0, args.noise, size=centres.shape)
    repeat = rng.random((last_epoch, num_prompts, rollouts)) < args.dup_frac
    for epoch, prompt, rollout in zip(*np.nonzero(repeat), strict=True):
        same = np.nonzero(wrong[: epoch + 1, prompt] == wrong[epoch, prompt, rollout])
        earlier = [(e, r) for e, r in zip(*same, strict=True) if (e, r) < (epoch, rollout)]
        if earlier:
            e, r = earlier[rng.integers(len(earlier))]
            features[epoch, prompt, rollout] = features[e, prompt, r]
    return features, wrong


# ------------------------------------------------------------------------------------------ the authors' procedure


def authors_step(
    reference: AuthorsProcedure, prompt_ids: np.ndarray, features: np.ndarray, wrong: np.ndarray
) -> dict[str, float]:
    """One step of the authors' procedure on `reference`; the seconds spent on the wrong and on the right groups."""
    seconds = {}
    rewards = np.where(wrong, -1.0, 1.0)  # (N,)
    for outcome, rows in (("wrong", wrong), ("right", ~wrong)):  # groups are (prompt, outcome): one call each
        start = time.perf_counter()
        reference.step(prompt_ids[rows].tolist(), features[rows], ~wrong[rows], rewards[rows])
        seconds[outcome] = time.perf_counter() - start
    return seconds


def authors_state(features: np.ndarray, wrong: np.ndarray, epoch: int) -> AuthorsProcedure:
    """The authors' state before the step of `epoch`: every earlier response, labels of the last refit."""
    reference = AuthorsProcedure(alpha=MEDSConfig().shaping.alpha, faults=True)
    past_features, past_wrong = features[: epoch - 1], wrong[: epoch - 1]  # (e - 1, B, G, F), (e - 1, B, G)
    for prompt in range(features.shape[1]):
        for correct, mask in ((False, past_wrong[:, prompt]), (True, ~past_wrong[:, prompt])):
            history = l2_normalise(past_features[:, prompt][mask].astype(np.float64))  # (m, F), oldest first
            if history.shape[0]:
                reference.history[(prompt, correct)] = history
                reference.labels[(prompt, correct)] = reference.fit(history)
    return reference


def copy_state(reference: AuthorsProcedure) -> AuthorsProcedure:
    """A copy whose step leaves `reference` unchanged (entries are replaced, never mutated)."""
    clone = copy.copy(reference)
    clone.history, clone.labels = dict(reference.history), dict(reference.labels)
    return clone


# ----------------------------------------------------------------------------------------------- ours


def our_state(config: MEDSConfig, features: np.ndarray, wrong: np.ndarray, epoch: int) -> dict:
    """`ErrorMemory.state_dict()` before the step of `epoch`: the newest `capacity` wrong responses per prompt."""
    capacity = config.memory.capacity
    buffers, truncated = [], []
    past_features, past_wrong = features[: epoch - 1], wrong[: epoch - 1]
    for prompt in range(features.shape[1]):
        history = past_features[:, prompt][past_wrong[:, prompt]]  # (m, F) float32, oldest first
        if history.shape[0] == 0:
            continue
        if history.shape[0] > capacity:
            history, truncated = history[-capacity:], [*truncated, prompt]
        labels = clustering.fit_labels(history, config.clustering)
        buffers.append({"prompt_id": prompt, "outcome": "wrong", "features": history, "labels": labels})
    num_features = features.shape[-1] if buffers else None
    return {
        "version": 1,
        "fingerprint": config.fingerprint(),
        "num_features": num_features,
        "buffers": buffers,
        "truncated_prompt_ids": truncated,
    }


def our_step(config: MEDSConfig, state: dict, batch: tuple, reference: bool) -> tuple[float, np.ndarray, ErrorMemory]:
    memory = ErrorMemory(config)
    memory.load_state_dict(state)
    patch = mock.patch.object(clustering, "fit_labels", clustering.fit_labels_reference) if reference else None
    if patch is not None:
        patch.start()
    try:
        start = time.perf_counter()
        sizes, _ = memory.step(*batch)
        seconds = time.perf_counter() - start
    finally:
        if patch is not None:
            patch.stop()
    return seconds, sizes, memory


def footprint(memory: ErrorMemory) -> dict[str, float]:
    """Bytes per stored response: arrays only, and with the per-buffer containers (dict slots, keys, array headers)."""
    arrays = sum(a.nbytes for a in memory._entries.values()) + sum(a.nbytes for a in memory._labels.values())
    containers = sum(sys.getsizeof(d) for d in (memory._entries, memory._labels, memory._truncated_prompts))
    for key in memory._entries:  # the two dicts share their keys: (prompt id, outcome) tuples
        containers += sys.getsizeof(key) + sys.getsizeof(key[0]) + sys.getsizeof(key[1])
        for array in (memory._entries[key], memory._labels[key]):
            containers += sys.getsizeof(array) - array.nbytes  # the ndarray object itself
    entries = memory.num_entries
    with tempfile.TemporaryDirectory() as folder:
        from verl_meds.verl.checkpoint import memory_path, save_memory

        file_bytes = save_memory(memory, memory_path(folder), global_step=1)
    return {
        "entries": entries,
        "array_bytes_per_response": arrays / entries,
        "total_bytes_per_response": (arrays + containers) / entries,
        "checkpoint_bytes": file_bytes,
        "checkpoint_bytes_per_response": file_bytes / entries,
    }


# ----------------------------------------------------------------------------------------------- driver


def describe_machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, load average "
        f"{', '.join(f'{x:.2f}' for x in load)}; python {platform.python_version()}, numpy {np.__version__}, "
        f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


def penalties(sizes: np.ndarray, config: MEDSConfig) -> np.ndarray:
    return penalty_from_cluster_sizes(torch.as_tensor(sizes), config.shaping.alpha, config.shaping.beta).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--features", type=int, default=14)
    parser.add_argument("--wrong-frac", type=float, default=0.6)
    parser.add_argument("--noise", type=float, default=0.3, help="std of a blob, per feature")
    parser.add_argument("--dup-frac", type=float, default=0.05, help="responses that repeat an earlier one exactly")
    parser.add_argument("--epochs", default="1,10,50,100", help="comma-separated epochs to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per epoch and method (median reported)")
    parser.add_argument("--capacity", type=int, default=None, help="memory.capacity (default: MEDSConfig's)")
    parser.add_argument("--no-authors", action="store_true", help="skip the authors' procedure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")]
    config = MEDSConfig.from_dict({"memory": {"capacity": args.capacity}} if args.capacity else None)
    print(f"machine: {describe_machine()}")
    print(
        f"shape: {args.prompts} prompts x {args.rollouts} rollouts, F={args.features}, wrong_frac={args.wrong_frac}, "
        f"capacity={config.memory.capacity}, repeats={args.repeats}"
    )
    features, wrong = make_features(args, max(epochs))
    prompt_ids = np.repeat(np.arange(args.prompts), args.rollouts)  # (N,)
    logging.getLogger("verl_meds").setLevel(logging.ERROR)  # the one-time FIFO warning
    warm = features[0, :2].reshape(-1, args.features)  # first calls import scipy and hdbscan: not timed
    for reference in (False, True):
        our_step(
            config,
            our_state(config, features, wrong, 1),
            ([0] * len(warm), warm, np.ones(len(warm), bool), np.zeros(len(warm), bool)),
            reference,
        )
    warm_ids = np.zeros(len(warm), dtype=np.int64)
    authors_step(authors_state(features, wrong, 1), warm_ids, warm, np.ones(len(warm), bool))
    gc.disable()
    rows, agreement, last_memory = [], [], None
    for epoch in epochs:
        start = time.perf_counter()
        state = our_state(config, features, wrong, epoch)
        authors = None if args.no_authors else authors_state(features, wrong, epoch)
        step_features = features[epoch - 1].reshape(-1, args.features)  # (N, F)
        step_wrong = wrong[epoch - 1].reshape(-1)  # (N,)
        batch = (prompt_ids.tolist(), step_features, np.ones(step_wrong.shape, dtype=bool), ~step_wrong)
        setup = time.perf_counter() - start
        times: dict[str, list[float]] = {"ours": [], "contrib": [], "authors_wrong": [], "authors": []}
        for repeat in range(args.repeats):
            order = ["ours", "contrib", "authors"]
            for method in order if repeat % 2 == 0 else order[::-1]:
                if method == "authors":
                    if authors is None:
                        continue
                    seconds = authors_step(copy_state(authors), prompt_ids, step_features, step_wrong)
                    times["authors_wrong"].append(seconds["wrong"])
                    times["authors"].append(seconds["wrong"] + seconds["right"])
                else:
                    seconds, sizes, memory = our_step(config, state, batch, reference=method == "contrib")
                    times[method].append(seconds)
                    if method == "ours":
                        our_sizes, last_memory = sizes, memory
                    else:
                        ref_sizes = sizes
                gc.collect()
        history = args.rollouts * (epoch - 1)
        medians = {name: statistics.median(values) if values else float("nan") for name, values in times.items()}
        rows.append((epoch, history, medians, setup))
        differ = our_sizes != ref_sizes
        penalty_gap = np.abs(penalties(our_sizes, config) - penalties(ref_sizes, config))
        agreement.append((epoch, int(step_wrong.sum()), differ.mean(), (penalty_gap > 0).mean(), penalty_gap.max()))
        print(f"  epoch {epoch}: done (setup {setup:.0f} s, load {os.getloadavg()[0]:.2f})", flush=True)

    print("\nTime per step (median, seconds); ratio = authors / ours")
    header = (
        f"{'epoch':>5} {'history/prompt':>14} {'ours':>8} {'ours(ref)':>13} {'authors(wrong)':>14} "
        f"{'authors':>8} {'ratio(wrong)':>12} {'ratio':>8}"
    )
    print(header)
    for epoch, history, m, _ in rows:
        print(
            f"{epoch:>5} {history:>14} {m['ours']:>8.3f} {m['contrib']:>13.3f} {m['authors_wrong']:>14.3f} "
            f"{m['authors']:>8.3f} {m['authors_wrong'] / m['ours']:>11.1f}x {m['authors'] / m['ours']:>7.1f}x"
        )
    print("\nAgreement with the reference computation (same inputs, same memory; all responses of the step)")
    print(f"{'epoch':>5} {'wrong rows':>10} {'|C| differs':>12} {'penalty differs':>16} {'max |penalty diff|':>19}")
    for epoch, num_wrong, size_frac, penalty_frac, gap in agreement:
        print(f"{epoch:>5} {num_wrong:>10} {size_frac:>12.4%} {penalty_frac:>16.4%} {gap:>19.4f}")
    if last_memory is not None:
        fp = footprint(last_memory)
        print(f"\nMemory footprint after the epoch-{epochs[-1]} step ({fp['entries']} stored responses)")
        print(f"  arrays only:          {fp['array_bytes_per_response']:.1f} bytes per response")
        print(f"  with containers:      {fp['total_bytes_per_response']:.1f} bytes per response")
        print(
            f"  checkpoint file:      {fp['checkpoint_bytes'] / 2**20:.2f} MiB "
            f"({fp['checkpoint_bytes_per_response']:.1f} bytes per response)"
        )
    print(f"\nmachine at the end: {describe_machine()}")


if __name__ == "__main__":
    main()
