r"""The error-collapse experiment: every method x several seeds on the synthetic testbed, measured and reported.

The testbed (`data_prep.synthetic`) knows why each wrong answer is wrong: `synthetic_error_mode` names the faulty
procedure(s) that reproduce it (or ``"other"``). The tiny model is warm-started on a mix of the correct and the
faulty procedures, so its wrong answers start spread over several known modes. This module

1. **runs** each method of `METHODS` for each seed through real verl on CPU, all in one Ray cluster, with equal
   steps, prompts and rollouts (`run_experiment`, resumable: a finished run is skipped);
2. **measures** every run (`measure_run`): per training step from the trainer's dump (accuracy, error-collapse
   share, distinct error modes, cluster/mode agreement ARI and NMI, top-1 eigen ratio of the features) and per
   validation step from verl's validation dump (held-out pass@k, error-collapse share, distinct modes);
3. **reports** (`write_report`): ``results.json`` (every number, every seed), ``table.md`` (mean, 95 % t-interval
   over seeds and per-seed values; paired differences against DAPO) and plots.

Methods without MEDS run in *observe-only* mode (``meds.enable=true``, ``meds.shaping.penalty_target=none``): the
features are captured and clustered exactly as in MEDS but no reward is changed, so every method gets the same
measurements (verl's advantage is computed from the unchanged reward).

Definitions (one step = one set of rollouts; "group" = the responses to one prompt in that set):

- *error-collapse share*: for each group with at least two wrong responses, the share of its wrong responses in
  its most common error mode; averaged over those groups. 1.0 means every repeated error is the same mistake.
- *distinct modes*: number of distinct error modes among a group's wrong responses, averaged the same way.
- *pooled top-mode share*: share of all wrong responses of the step in the single most common mode.
- ARI / NMI: `verl_meds.analysis.diversity.cluster_label_agreement` between the logit-lens clusters (replayed
  offline with the default clustering, `assign_clusters`) and the true error modes, size-weighted over groups.
- held-out pass@k: unbiased estimator (`verl_meds.eval.passk`) over the validation samples of each problem, for
  every k = 1..n (`verl_meds.analysis.passk_curves`); the final curves get a t-interval over seeds (a bootstrap
  over problems for the single start run), paired differences against DAPO by seed, and the plot ``passk.png``.
- *entropy*: verl's per-step ``actor/entropy`` (the file logger's ``metrics.0.jsonl``).

Command line::

    python -m verl_meds.analysis.experiment run --out outputs/science [--methods ...] [--seeds 0 1 2 3 4]
        [--steps 8] [--val-n 8] [--train-problems 16] [--extra key=value ...] [--no-start]
    python -m verl_meds.analysis.experiment report --out outputs/science
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from verl_meds.analysis.diversity import _agreement, step_metrics
from verl_meds.analysis.passk_curves import (
    bootstrap_curve,
    curve_over_seeds,
    paired_curve_difference,
    passk_curve,
    t_interval,
)
from verl_meds.analysis.records import assign_clusters, synthetic_error_mode

logger = logging.getLogger(__name__)

CHECKOUT_ENV = "VERL_MEDS_CHECKOUT"
"""Environment variable naming the repository checkout whose `recipes/` and `data_prep/` the experiment runs."""


def checkout_root() -> Path:
    """The repository checkout the experiment runs from: `$VERL_MEDS_CHECKOUT`, else the checkout this module sits in.

    The experiment composes the recipes' Hydra config (`recipes/meds/config`) and builds the tiny CPU assets with the
    checkout's `data_prep` scripts; neither ships with an installed wheel.

    Raises:
        FileNotFoundError: when neither place holds `recipes/meds/config` (the message says what to set).
    """
    candidates = [Path(os.environ[CHECKOUT_ENV])] if os.environ.get(CHECKOUT_ENV) else []
    candidates.append(Path(__file__).resolve().parents[2])
    for root in candidates:
        if (root / "recipes" / "meds" / "config").is_dir() and (root / "data_prep").is_dir():
            return root
    raise FileNotFoundError(
        f"the experiment needs a verl_meds repository checkout (recipes/meds/config and data_prep/); looked in "
        f"{[str(c) for c in candidates]}. Clone the repository and set {CHECKOUT_ENV} to its path."
    )


def _tiny_cpu_assets(cache):
    """`data_prep.assets.tiny_cpu_assets` of the checkout (`checkout_root`)."""
    import importlib
    import sys

    root = str(checkout_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("data_prep.assets").tiny_cpu_assets(cache)


OBSERVE_ONLY = ("meds.enable=true", "meds.shaping.penalty_target=none")
"""Overrides that capture and cluster MEDS features without changing any reward (measurement for baselines)."""


@dataclass(frozen=True)
class MethodSpec:
    """One arm of the experiment.

    Args:
        recipe (`str`): a file of ``recipes/meds/config/method/`` (without ``.yaml``).
        observe (`bool`): add `OBSERVE_ONLY` (for methods that do not enable MEDS themselves).
        label (`str`): name in the table and plots.
    """

    recipe: str
    observe: bool
    label: str


METHODS: dict[str, MethodSpec] = {
    "grpo": MethodSpec("grpo", True, "GRPO"),
    "dapo": MethodSpec("dapo", True, "DAPO"),
    "grpo_entropy": MethodSpec("grpo_entropy", True, "GRPO w/ entropy adv."),
    "meds_dapo": MethodSpec("meds_dapo", False, "MEDS (DAPO)"),
    "meds_single": MethodSpec("meds_single", False, "MEDS-single cluster"),
    "meds_answer": MethodSpec("meds_answer", False, "MEDS-answer keys"),
    "explore_hist": MethodSpec("explore_hist", True, "Historical exploration (UCB)"),
    "explore_batch": MethodSpec("explore_batch", True, "Batch exploration"),
}
"""Methods of the experiment, in table order (issue 7's five, then issue 8's three)."""

START = "start"
"""Pseudo-method of the validation-only run of the warm-start model (``trainer.val_only``): the step-0 point that
every method shares (one run, first seed), so that no training run pays for its own step-0 validation."""

BASELINE = "dapo"
"""Method the paired differences are taken against (MEDS runs on DAPO)."""


@dataclass
class ExperimentConfig:
    """Budget and layout of one experiment (the defaults are the budget of ``docs/results.md``).

    Args:
        out (`str`): output folder; each run writes ``<out>/runs/<method>/seed<k>/``.
        methods (`list[str]`): keys of `METHODS`.
        seeds (`list[int]`): training seeds (data order and rollout sampling); the warm-start model is the same.
        steps (`int`): training steps per run.
        val_n (`int`): samples per held-out problem at each validation (T = 1).
        train_problems (`int`): the first this many problems of the synthetic training file form the training set,
            so that every prompt comes back every ``train_problems / 8`` steps and the per-prompt memory (and the
            collapse onto repeated errors) has a history; the held-out set is the usual 64 test problems.
        cache (`str` or `None`): where the synthetic data and the tiny model are cached (`data_prep.assets`).
        extra (`list[str]`): Hydra overrides added to every run.
        start (`bool`): also run the `START` validation (first seed); a second process that shares ``out`` with
            one that runs it passes ``False``, so the start model is validated once.
    """

    out: str
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    steps: int = 8
    val_n: int = 8
    train_problems: int = 16
    cache: str | None = None
    extra: list[str] = field(default_factory=list)
    start: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; valid: {list(METHODS)}")
        for name in ("steps", "val_n", "train_problems"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ExperimentConfig.{name} must be an integer >= 1, got {value!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"ExperimentConfig.seeds must be distinct and non-empty, got {self.seeds!r}")


def run_dir(out: str | os.PathLike, method: str, seed: int) -> Path:
    """Folder of one run: ``<out>/runs/<method>/seed<seed>``."""
    return Path(out) / "runs" / method / f"seed{seed}"


def label_of(method: str) -> str:
    """Name of a method (or `START`) in the table and plots."""
    return "Start (warm-start model, step 0)" if method == START else METHODS[method].label


def recipe_of(method: str) -> str:
    """The method file a run composes (`START` validates the untrained model under DAPO's reward)."""
    return "dapo" if method == START else METHODS[method].recipe


def run_overrides(cfg: ExperimentConfig, method: str, seed: int, assets: Mapping[str, Path]) -> list[str]:
    """The Hydra overrides of one run (on top of ``paper.yaml setup=tiny_cpu method=<recipe>``)."""
    spec = METHODS[method] if method != START else MethodSpec("dapo", True, "start")
    folder = run_dir(cfg.out, method, seed)
    overrides = [
        f"data.train_files={assets['train']}",
        f"data.val_files={assets['val']}",
        f"actor_rollout_ref.model.path={assets['model']}",
        f"trainer.default_local_dir={folder / 'checkpoints'}",
        f"trainer.validation_data_dir={folder / 'val'}",
        f"trainer.total_training_steps={cfg.steps}",
        f"trainer.test_freq={cfg.steps}",
        "trainer.val_before_train=false",
        "trainer.save_freq=-1",
        f"trainer.experiment_name={method}_seed{seed}",
        f"actor_rollout_ref.rollout.val_kwargs.n={cfg.val_n}",
        f"data.seed={seed}",
        f"actor_rollout_ref.rollout.seed={seed}",
        "meds_dump.enable=true",
    ]
    if spec.observe:
        overrides += list(OBSERVE_ONLY)
    if method == START:
        overrides += ["trainer.val_only=true", "trainer.val_before_train=true"]
    return overrides + list(cfg.extra)


def _write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=float))
    os.replace(tmp, path)


def training_subset(train_file: str | os.PathLike, n: int, folder: Path) -> Path:
    """The first ``n`` rows of a verl parquet file, written (atomically) as ``folder/train_<n>.parquet``.

    Raises:
        ValueError: when the file has fewer than ``n`` rows.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(train_file)
    if table.num_rows < n:
        raise ValueError(f"{train_file} has {table.num_rows} rows, fewer than train_problems={n}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"train_{n}.parquet"
    tmp = folder / f".train_{n}.parquet.tmp"
    pq.write_table(table.slice(0, n), tmp)
    os.replace(tmp, path)
    return path


def run_plan(cfg: ExperimentConfig) -> list[tuple[int, str]]:
    """The (seed, method) runs of `cfg` in order: the `START` validation first (first seed; left out when
    ``cfg.start`` is false), then seed-major, so that the first seeds cover every method early and a cut-short
    experiment still has complete pairs."""
    plan = [(cfg.seeds[0], START)] if cfg.start else []
    return plan + [(seed, method) for seed in cfg.seeds for method in cfg.methods]


def run_experiment(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Train every (method, seed) of `cfg` with real verl on CPU in one Ray cluster; skip runs already done.

    Each run writes ``run.json`` (status, wall seconds, overrides) when it ends; a failed run is recorded with its
    error and the experiment goes on. Returns the ``run.json`` contents in run order.
    """
    import ray
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from tqdm import tqdm

    from verl_meds.verl import cpu
    from verl_meds.verl.main import run

    assets = dict(_tiny_cpu_assets(cfg.cache))
    assets["train"] = training_subset(assets["train"], cfg.train_problems, Path(cfg.out) / "data")
    _write_json(Path(cfg.out) / "experiment.json", asdict(cfg))
    env = cpu.enable_cpu_mode()
    if not ray.is_initialized():
        ray.init(num_cpus=16, num_gpus=1, runtime_env={"env_vars": env}, include_dashboard=False)
    results = []
    for seed, method in tqdm(run_plan(cfg), desc="runs", unit="run"):
        folder = run_dir(cfg.out, method, seed)
        done = folder / "run.json"
        if done.exists() and json.loads(done.read_text()).get("status") == "ok":
            results.append(json.loads(done.read_text()))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("metrics.*.jsonl"):
            stale.unlink()
        dump = folder / "checkpoints" / "analysis.jsonl"
        if dump.exists():
            dump.unlink()
        os.environ["VERL_FILE_LOGGER_PATH"] = str(folder / "metrics.0.jsonl")
        overrides = run_overrides(cfg, method, seed, assets)
        record: dict[str, Any] = {"method": method, "seed": seed, "overrides": overrides}
        start = time.perf_counter()
        try:
            GlobalHydra.instance().clear()
            config_dir = checkout_root() / "recipes" / "meds" / "config"
            with initialize_config_dir(config_dir=str(config_dir), version_base=None):
                config = compose("paper", overrides=["setup=tiny_cpu", f"method={recipe_of(method)}", *overrides])
            run(config)
            record["status"] = "ok"
        except Exception as exc:  # one failed run must not lose the others; it is reported as failed
            logger.exception("run %s seed %d failed", method, seed)
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        record["wall_s"] = time.perf_counter() - start
        _write_json(done, record)
        results.append(record)
    return results


# ------------------------------------------------------------------------------------------------ measurement


def _group_mode_stats(labels_by_group: Mapping[Any, Sequence[str]], min_wrong: int = 2) -> dict[str, float]:
    """Error-collapse share and distinct modes averaged over groups with >= ``min_wrong`` labelled wrong answers,
    plus the pooled top-mode share; NaN when no group qualifies."""
    shares, distinct = [], []
    pooled: Counter = Counter()
    for labels in labels_by_group.values():
        pooled.update(labels)
        if len(labels) >= min_wrong:
            counts = Counter(labels)
            shares.append(max(counts.values()) / len(labels))
            distinct.append(float(len(counts)))
    total = sum(pooled.values())
    return {
        "collapse_share": float(np.mean(shares)) if shares else math.nan,
        "distinct_modes": float(np.mean(distinct)) if distinct else math.nan,
        "pooled_top_mode_share": max(pooled.values()) / total if total else math.nan,
        "other_share": pooled.get("other", 0) / total if total else math.nan,
        "num_wrong": float(total),
    }


def mode_label(question: str, answer: str | None) -> str:
    """Error mode of a wrong answer for the collapse measures: the procedure name(s), ``"other"``, or
    ``"no_answer"`` when the response has no parsable integer answer (`synthetic_error_mode` returns None)."""
    label = synthetic_error_mode(question, answer)
    return "no_answer" if label is None else label


def load_questions(parquet_path: str | os.PathLike) -> dict[str, str]:
    """``extra_info.index`` (as str, the memory's prompt id) -> question text, from a synthetic parquet file."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet_path, columns=["extra_info"]).to_pylist()
    return {str(row["extra_info"]["index"]): str(row["extra_info"]["question"]) for row in table}


def training_step_metrics(dump_path: Path, questions: Mapping[str, str]) -> list[dict[str, float]]:
    """Per training step: `step_metrics` (accuracy, eigen ratio, ARI, NMI, ...) plus the error-mode measures."""
    from verl_meds.analysis.records import load_records

    latest: dict[tuple, dict] = {}
    for record in load_records(dump_path):  # after a resume a step can appear twice: keep the last
        latest[(record["step"], record["prompt_id"], record.get("sample_index"))] = record
    records = list(latest.values())
    records.sort(key=lambda r: r["step"])  # stable: keeps the memory's order inside a step
    for record in records:
        record["question"] = questions.get(str(record["prompt_id"]), "")
        record["label"] = None if record["correct"] else mode_label(record["question"], record.get("answer"))
    clustered = assign_clusters(records)
    base = {int(m["step"]): m for m in step_metrics(clustered)}
    by_step: dict[int, dict[Any, list[str]]] = defaultdict(lambda: defaultdict(list))
    penalised: Counter = Counter()
    for record in clustered:
        if not record["correct"]:
            by_step[int(record["step"])][record["prompt_id"]].append(record["label"])
        penalised[int(record["step"])] += int((record.get("penalty") or 0.0) > 0.0)
    wrong_rows: dict[int, dict[Any, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in clustered:
        if not record["correct"]:
            wrong_rows[int(record["step"])][record["prompt_id"]].append(record)
    out = []
    for step in sorted(base):
        entry = {k: float(v) for k, v in base[step].items()}
        entry.update(_group_mode_stats(by_step.get(step, {})))
        entry.update(answer_key_agreement(list(wrong_rows.get(step, {}).values())))
        entry["penalised"] = float(penalised[step])
        out.append(entry)
    return out


def answer_key_agreement(groups: Sequence[Sequence[Mapping[str, Any]]], min_wrong: int = 2) -> dict[str, float]:
    """How final answers relate to the true error modes and to the logit-lens clusters, over the wrong responses
    of one step (``groups``: the wrong records of each prompt, with ``answer``, ``label`` and ``cluster``).

    Returns:
        `dict[str, float]`: ``ari_answer`` / ``nmi_answer`` (answer keys as clusters vs the true modes, size-weighted
        over groups with >= ``min_wrong`` wrong responses), ``nmi_cluster_answer`` (logit-lens clusters vs answer
        keys), ``shared_answer_frac`` (wrong responses whose answer two or more faulty procedures reproduce: different
        modes, one answer key) and ``split_mode_frac`` (wrong responses whose mode appears with more than one answer in
        their group: one mode, several keys). NaN where nothing qualifies.
    """
    kept = [g for g in groups if len(g) >= min_wrong]

    def ids(group: Sequence[Mapping[str, Any]]) -> list[int]:  # answer key -> small int, per group
        seen: dict[str, int] = {}
        return [seen.setdefault(str(r.get("answer")), len(seen)) for r in group]

    by_answer = [[{"cluster": i, "label": r["label"]} for i, r in zip(ids(g), g, strict=True)] for g in kept]
    ari, nmi = _agreement(by_answer)
    cluster_vs_answer = [[{"cluster": r.get("cluster"), "label": str(r.get("answer"))} for r in g] for g in kept]
    _, nmi_cluster = _agreement(cluster_vs_answer)
    rows = [r for g in groups for r in g]
    shared = sum("+" in str(r["label"]) for r in rows)
    split = 0
    for group in groups:
        answers_of: dict[str, set] = defaultdict(set)
        for r in group:
            answers_of[r["label"]].add(str(r.get("answer")))
        split += sum(len(answers_of[r["label"]]) > 1 for r in group)
    n = len(rows)
    return {
        "ari_answer": ari,
        "nmi_answer": nmi,
        "nmi_cluster_answer": nmi_cluster,
        "shared_answer_frac": shared / n if n else math.nan,
        "split_mode_frac": split / n if n else math.nan,
    }


def validation_step_metrics(val_dir: Path, ks: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Per validation step (verl's ``<step>.jsonl`` files): pass@k on the held-out problems and the error-mode
    measures of their samples.

    ``ks=None`` gives every k = 1..min n (the whole curve, ``pass@1`` .. ``pass@<n>``); a k above the smallest
    per-problem sample count is left out. Each entry also keeps the per-problem counts (``counts_n``,
    ``counts_c``, problems sorted by prompt) for the bootstrap interval of a single run.
    """
    from verl_meds.eval.passk import mean_pass_at_k

    out = []
    for path in sorted(val_dir.glob("*.jsonl"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
        if not path.stem.isdigit():
            continue
        samples: dict[str, list[tuple[bool, str | None]]] = defaultdict(list)
        for line in path.read_text().splitlines():
            row = json.loads(line)
            correct = float(row.get("acc", row.get("score", 0.0))) > 0.5
            samples[row["input"]].append((correct, row.get("pred") or None))
        problems = sorted(samples)
        n = np.array([len(samples[q]) for q in problems])
        c = np.array([sum(ok for ok, _ in samples[q]) for q in problems])
        valid_ks = [k for k in (range(1, int(n.min()) + 1) if ks is None else ks) if k <= n.min()]
        entry: dict[str, Any] = {"step": float(path.stem), "num_problems": float(len(samples))}
        entry["counts_n"] = n.tolist()
        entry["counts_c"] = c.tolist()
        for k, value in zip(valid_ks, np.atleast_1d(mean_pass_at_k(n, c, valid_ks)), strict=True):
            entry[f"pass@{k}"] = float(value)
        labels = {q: [mode_label(q, pred) for ok, pred in v if not ok] for q, v in samples.items()}
        entry.update(_group_mode_stats(labels))
        entry["mode_counts"] = dict(Counter(label for group in labels.values() for label in group))
        out.append(entry)
    return out


ENTROPY_KEY = "actor/entropy"
"""verl's per-step policy entropy (mean token entropy of the training rollouts under the current actor)."""


def logged_step_metrics(folder: Path, keys: Sequence[str] = (ENTROPY_KEY,)) -> dict[int, dict[str, float]]:
    """step -> {key: value} from verl's file logger (``metrics.*.jsonl`` of the run folder; the last line of a
    step wins, as after a resume). Keys a step did not log are absent."""
    out: dict[int, dict[str, float]] = {}
    for path in sorted(folder.glob("metrics.*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            data = row.get("data", row)
            step = row.get("step", data.get("training/global_step"))
            if step is None:
                continue
            picked = {k: float(data[k]) for k in keys if k in data and data[k] is not None}
            if picked:
                out.setdefault(int(step), {}).update(picked)
    return out


def measure_run(folder: Path, questions: Mapping[str, str], ks: Sequence[int] | None = None) -> dict[str, Any]:
    """All measurements of one finished run folder (see the module docstring); ``ks=None`` = the whole pass@k
    curve. Training steps also carry ``entropy`` (`ENTROPY_KEY`) when verl logged it."""
    dump = folder / "checkpoints" / "analysis.jsonl"
    train = training_step_metrics(dump, questions) if dump.exists() else []
    logged = logged_step_metrics(folder)
    for entry in train:
        entropy = logged.get(int(entry["step"]), {}).get(ENTROPY_KEY)
        entry["entropy"] = math.nan if entropy is None else entropy
    val = validation_step_metrics(folder / "val", ks)
    return {"train": train, "val": val}


# ------------------------------------------------------------------------------------------------ report

SUMMARY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("val", "pass@1", "held-out pass@1"),
    ("val", "pass@8", "held-out pass@8"),
    ("val", "pass@64", "held-out pass@64"),
    ("val", "collapse_share", "held-out error-collapse share"),
    ("val", "distinct_modes", "held-out distinct modes / problem"),
    ("train", "accuracy", "train accuracy"),
    ("train", "entropy", "train entropy"),
    ("train", "collapse_share", "train error-collapse share"),
    ("train", "nmi", "cluster vs mode NMI"),
    ("train", "ari", "cluster vs mode ARI"),
    ("train", "nmi_answer", "answer key vs mode NMI"),
    ("train", "eigen_ratio", "top-1 eigen ratio"),
)
"""(source, key, name) of the table's columns: ``val`` = last validation, ``train`` = mean over the last third of
the training steps (a few steps, to damp the step-to-step noise of 64 rollouts). ``pass@64`` is n/a when the
validation drew fewer than 64 samples per problem."""


def summarise_run(measured: Mapping[str, Any]) -> dict[str, float]:
    """The table's values for one run (`SUMMARY_METRICS`) plus the first validation's values as ``start_*``."""
    out: dict[str, float] = {}
    val, train = measured["val"], measured["train"]
    tail = train[-max(1, len(train) // 3) :] if train else []
    for source, key, _ in SUMMARY_METRICS:
        if source == "val":
            out[key if source == "val" else key] = float(val[-1].get(key, math.nan)) if val else math.nan
        else:
            values = [float(s.get(key, math.nan)) for s in tail]
            finite = [v for v in values if math.isfinite(v)]
            out[f"train_{key}"] = float(np.mean(finite)) if finite else math.nan
    if val:
        for key in ("pass@1", "pass@8", "pass@64", "collapse_share"):
            out[f"start_{key}"] = float(val[0].get(key, math.nan))
    out["penalised_total"] = float(sum(s.get("penalised", 0.0) for s in train))
    return out


def column_key(source: str, key: str) -> str:
    """Key of a `SUMMARY_METRICS` column in `summarise_run`'s output."""
    return key if source == "val" else f"train_{key}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval over seeds; ``(mean, nan, nan)`` with one value; all NaN with none.

    Non-finite values are left out (`verl_meds.analysis.passk_curves.t_interval`).
    """
    return t_interval(values, confidence)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def collect(out: str | os.PathLike, questions: Mapping[str, str]) -> dict[str, Any]:
    """Measure every finished run under ``<out>/runs``; returns ``{method: {seed: {"measured", "summary"}}}``."""
    collected: dict[str, dict[int, Any]] = {}
    for method in (START, *METHODS):
        method_dir = Path(out) / "runs" / method
        if not method_dir.is_dir():
            continue
        for seed_dir in sorted(method_dir.glob("seed*")):
            info_path = seed_dir / "run.json"
            if not info_path.exists():
                continue
            info = json.loads(info_path.read_text())
            if info.get("status") != "ok":
                collected.setdefault(method, {})[int(info["seed"])] = {"info": info}
                continue
            measured = measure_run(seed_dir, questions)
            collected.setdefault(method, {})[int(info["seed"])] = {
                "info": info,
                "measured": measured,
                "summary": summarise_run(measured),
            }
    return collected


def table_markdown(collected: Mapping[str, Any]) -> str:
    """Markdown: one row per method, mean [95 % interval] over seeds; a second table lists every seed's value, a
    third the paired differences against `BASELINE` (same seed)."""
    names = [name for _, _, name in SUMMARY_METRICS]
    head = "| method | seeds | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names) + "\n"
    rows, per_seed, paired = [], [], []
    base = {s: r["summary"] for s, r in collected.get(BASELINE, {}).items() if "summary" in r}
    for method, runs in collected.items():
        ok = {s: r["summary"] for s, r in runs.items() if "summary" in r}
        cells = []
        for source, key, _ in SUMMARY_METRICS:
            mean, lo, hi = mean_ci([ok[s][column_key(source, key)] for s in sorted(ok)])
            cells.append(f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]")
        failed = len(runs) - len(ok)
        seeds = f"{len(ok)}" + (f" (+{failed} failed)" if failed else "")
        rows.append(f"| {label_of(method)} | {seeds} | " + " | ".join(cells) + " |")
        for s in sorted(ok):
            values = [_fmt(ok[s][column_key(src, key)]) for src, key, _ in SUMMARY_METRICS]
            per_seed.append(f"| {label_of(method)} | {s} | " + " | ".join(values) + " |")
        if method not in (BASELINE, START) and base:
            common = sorted(set(ok) & set(base))
            cells = []
            for source, key, _ in SUMMARY_METRICS:
                k = column_key(source, key)
                mean, lo, hi = mean_ci([ok[s][k] - base[s][k] for s in common])
                cells.append(f"{_fmt(mean, 3)} [{_fmt(lo)}, {_fmt(hi)}]")
            paired.append(f"| {label_of(method)} - {label_of(BASELINE)} | {len(common)} | " + " | ".join(cells) + " |")
    text = "### Mean [95 % t-interval] over seeds\n\n" + head + "\n".join(rows) + "\n"
    if paired:
        text += (
            f"\n### Paired difference against {label_of(BASELINE)} (same seed)\n\n" + head + "\n".join(paired) + "\n"
        )
    text += "\n" + passk_markdown(collected)
    text += "\n" + mode_mix_markdown(collected)
    text += "\n" + answer_mode_markdown(collected)
    text += "\n### Per-seed values\n\n" + head.replace("| seeds |", "| seed |") + "\n".join(per_seed) + "\n"
    return text


PASSK_TABLE_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
"""The k shown in `passk_markdown` (the plot has every k)."""


def final_curves(collected: Mapping[str, Any]) -> dict[str, dict[int, np.ndarray]]:
    """method -> seed -> pass@k curve (k = 1..min n) of the run's last validation (`passk_curve` of its counts)."""
    out: dict[str, dict[int, np.ndarray]] = {}
    for method, runs in collected.items():
        for seed, run in runs.items():
            val = run.get("measured", {}).get("val", [])
            if val and val[-1].get("counts_n"):
                out.setdefault(method, {})[int(seed)] = passk_curve(val[-1]["counts_n"], val[-1]["counts_c"])
    return out


def curve_bands(collected: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """method -> (k, mean, lower, upper) of the final pass@k curve: t-interval over seeds, or, for a method with a
    single run (`START`), a bootstrap over the held-out problems."""
    bands = {}
    for method, curves in final_curves(collected).items():
        if len(curves) == 1:
            (seed,) = curves
            val = collected[method][seed]["measured"]["val"][-1]
            mean, lo, hi = bootstrap_curve(val["counts_n"], val["counts_c"], k_max=len(curves[seed]))
        else:
            mean, lo, hi = curve_over_seeds(curves)
        bands[method] = (np.arange(1, mean.size + 1), mean, lo, hi)
    return bands


def passk_markdown(collected: Mapping[str, Any]) -> str:
    """Markdown: the final held-out pass@k at `PASSK_TABLE_KS` per method (mean [95 % interval]; over seeds, or
    a bootstrap over problems for a single run), then each method minus `BASELINE` paired by seed, and minus the
    start model (per seed, against its single value)."""
    curves = final_curves(collected)
    bands = curve_bands(collected)
    if not bands:
        return ""
    k_max = max(b[0].size for b in bands.values())
    ks = [k for k in PASSK_TABLE_KS if k <= k_max]
    head = "| method | runs | " + " | ".join(f"pass@{k}" for k in ks) + " |\n|---|---|" + "---|" * len(ks) + "\n"

    def cell(mean: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int, signed: bool = False) -> str:
        if k > mean.size:
            return "n/a"
        m = f"{mean[k - 1]:+.3f}" if signed else _fmt(float(mean[k - 1]))
        return f"{m} [{_fmt(float(lo[k - 1]))}, {_fmt(float(hi[k - 1]))}]"

    rows = []
    for method, (_, mean, lo, hi) in bands.items():
        how = "bootstrap" if len(curves[method]) == 1 else "t"
        rows.append(
            f"| {label_of(method)} | {len(curves[method])} ({how}) | "
            + " | ".join(cell(mean, lo, hi, k) for k in ks)
            + " |"
        )
    text = "### Held-out pass@k (last validation; mean [95 % interval])\n\n" + head + "\n".join(rows) + "\n"
    paired = []
    for method, per_seed in curves.items():
        if method in (BASELINE, START) or BASELINE not in curves or not set(per_seed) & set(curves[BASELINE]):
            continue
        mean, lo, hi, common = paired_curve_difference(per_seed, curves[BASELINE])
        paired.append(
            f"| {label_of(method)} - {label_of(BASELINE)} | {len(common)} | "
            + " | ".join(cell(mean, lo, hi, k, signed=True) for k in ks)
            + " |"
        )
    if paired:
        text += (
            f"\n### Held-out pass@k minus {label_of(BASELINE)} (paired by seed)\n\n" + head + "\n".join(paired) + "\n"
        )
    if START in curves:
        start_curve = next(iter(curves[START].values()))
        versus = []
        for method, per_seed in curves.items():
            if method == START:
                continue
            diffs = {s: np.asarray(v)[: start_curve.size] - start_curve[: len(v)] for s, v in per_seed.items()}
            mean, lo, hi = curve_over_seeds(diffs)
            versus.append(
                f"| {label_of(method)} - start | {len(per_seed)} | "
                + " | ".join(cell(mean, lo, hi, k, signed=True) for k in ks)
                + " |"
            )
        if versus:
            text += (
                "\n### Held-out pass@k minus the start model (t-interval over seeds; the start value is fixed)\n\n"
                + head
                + "\n".join(versus)
                + "\n"
            )
    return text


ANSWER_MODE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("shared_answer_frac", "wrong answers shared by >= 2 modes"),
    ("split_mode_frac", "wrong answers whose mode has > 1 answer in the group"),
    ("nmi_answer", "answer key vs mode NMI"),
    ("nmi", "logit cluster vs mode NMI"),
    ("nmi_cluster_answer", "logit cluster vs answer key NMI"),
)
"""Columns of `answer_mode_markdown` (keys of `answer_key_agreement` and `step_metrics`)."""


def answer_mode_markdown(collected: Mapping[str, Any]) -> str:
    """Markdown: where answer keys and logit-lens clusters disagree with the true modes, per method (mean over
    every training step of every seed)."""
    head = (
        "| method | " + " | ".join(n for _, n in ANSWER_MODE_COLUMNS) + " |\n|---|" + "---|" * len(ANSWER_MODE_COLUMNS)
    )
    rows = []
    for method, runs in collected.items():
        steps = [e for run in runs.values() for e in run.get("measured", {}).get("train", [])]
        if not steps:
            continue
        cells = []
        for key, _ in ANSWER_MODE_COLUMNS:
            values = [float(e.get(key, math.nan)) for e in steps]
            finite = [v for v in values if math.isfinite(v)]
            cells.append(_fmt(float(np.mean(finite))) if finite else "n/a")
        rows.append(f"| {label_of(method)} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    title = "### Answer keys, logit clusters and true error modes (training rollouts, all steps and seeds)\n\n"
    return title + head + "\n" + "\n".join(rows) + "\n"


def mode_mix_markdown(collected: Mapping[str, Any]) -> str:
    """Markdown: share of each error mode among the wrong held-out samples of the last validation, pooled over
    seeds, one row per method (the global picture behind the per-problem collapse share)."""
    totals: dict[str, Counter] = {}
    for method, runs in collected.items():
        counter: Counter = Counter()
        for run in runs.values():
            val = run.get("measured", {}).get("val", [])
            if val:
                counter.update(val[-1].get("mode_counts", {}))
        if counter:
            totals[method] = counter
    if not totals:
        return ""
    modes = sorted({m for c in totals.values() for m in c}, key=lambda m: (-sum(c[m] for c in totals.values()), m))
    head = "| method | wrong samples | " + " | ".join(modes) + " |\n|---|---|" + "---|" * len(modes) + "\n"
    rows = []
    for method, counter in totals.items():
        total = sum(counter.values())
        rows.append(
            f"| {label_of(method)} | {total} | " + " | ".join(f"{counter[m] / total:.3f}" for m in modes) + " |"
        )
    return (
        "### Error-mode mix of the wrong held-out samples (last validation, pooled over seeds)\n\n"
        + head
        + "\n".join(rows)
        + "\n"
    )


def _curves(
    collected: Mapping[str, Any], source: str, key: str
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """method -> (steps, mean, half-width of the 95 % interval) of a per-step measure across seeds."""
    out = {}
    start_runs = list(collected.get(START, {}).values()) if source == "val" else []
    for method, runs in collected.items():
        if method == START:
            continue
        series: dict[float, list[float]] = defaultdict(list)
        for run in [*runs.values(), *start_runs]:  # the shared step-0 validation opens every held-out curve
            for entry in run.get("measured", {}).get(source, []):
                value = float(entry.get(key, math.nan))
                if math.isfinite(value):
                    series[float(entry["step"])].append(value)
        if not series:
            continue
        steps = np.array(sorted(series))
        stats = [mean_ci(series[s]) for s in steps]
        mean = np.array([m for m, _, _ in stats])
        half = np.array([(hi - m) if math.isfinite(hi) else 0.0 for m, _, hi in stats])
        out[method] = (steps, mean, half)
    return out


PLOTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "heldout.png": (
        ("val", "pass@1", "held-out pass@1"),
        ("val", "pass@8", "held-out pass@8"),
        ("val", "pass@64", "held-out pass@64"),
        ("val", "collapse_share", "held-out error-collapse share"),
        ("val", "distinct_modes", "held-out distinct modes / problem"),
    ),
    "training.png": (
        ("train", "accuracy", "train accuracy"),
        ("train", "entropy", "policy entropy (nats / token)"),
        ("train", "collapse_share", "error-collapse share"),
        ("train", "distinct_modes", "distinct modes / group"),
        ("train", "nmi", "cluster vs mode NMI"),
        ("train", "nmi_answer", "answer key vs mode NMI"),
        ("train", "eigen_ratio", "top-1 eigen ratio"),
    ),
}
"""Plot files and their panels (source, key, title); lines are means over seeds, bands the 95 % intervals."""


UNIT_INTERVAL_KEYS = frozenset(
    {
        "accuracy",
        "collapse_share",
        "nmi",
        "ari",
        "nmi_answer",
        "eigen_ratio",
        "pass@1",
        "pass@2",
        "pass@4",
        "pass@8",
        "pass@64",
    }
)
"""Measures bounded by [0, 1]: their plot axes are fixed to that range."""


def plot_curves(collected: Mapping[str, Any], folder: Path) -> list[Path]:
    """Write `PLOTS` into ``folder``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for filename, panels in PLOTS.items():
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
        for ax, (source, key, title) in zip(axes.flat, panels, strict=False):
            for method, (steps, mean, half) in _curves(collected, source, key).items():
                line = ax.plot(steps, mean, marker="o" if source == "val" else None, ms=3, label=label_of(method))
                ax.fill_between(steps, mean - half, mean + half, alpha=0.12, color=line[0].get_color())
            if key in UNIT_INTERVAL_KEYS:  # keep wide 2-3 seed intervals from hiding the lines
                ax.set_ylim(-0.02, 1.02)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8)
        fig.tight_layout(rect=(0, 0.08 if rows == 1 else 0.06, 1, 1))
        path = folder / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    bands = curve_bands(collected)
    if bands:
        from verl_meds.analysis.plots import plot_passk_curves

        labelled = {
            label_of(m) + (" (bootstrap over problems)" if m == START else ""): band for m, band in bands.items()
        }
        figure = plot_passk_curves(labelled, title="held-out pass@k, last validation (95 % intervals)")
        path = folder / PASSK_PLOT
        figure.savefig(path, dpi=110)
        written.append(path)
    return written


PASSK_PLOT = "passk.png"
"""File of the final pass@k-vs-k plot (`verl_meds.analysis.plots.plot_passk_curves`)."""


def write_report(out: str | os.PathLike, cache: str | None = None) -> dict[str, Any]:
    """Measure every run under ``out`` and write ``results.json``, ``table.md`` and the plots there.

    The questions of the prompt ids come from the synthetic training file of the checkout's `data_prep.assets`
    (`cache`, see `checkout_root`).
    """
    return report_from_runs(out, load_questions(_tiny_cpu_assets(cache)["train"]))


def report_from_runs(out: str | os.PathLike, questions: Mapping[str, str]) -> dict[str, Any]:
    """`write_report` with the prompt-id -> question map given.

    Raises:
        FileNotFoundError: when no run under ``<out>/runs`` has finished.
    """
    folder = Path(out)
    collected = collect(folder, questions)
    if not collected:
        raise FileNotFoundError(f"no finished run under {folder / 'runs'}; run `... experiment run --out {folder}`")
    _write_json(folder / "results.json", {m: {str(s): r for s, r in runs.items()} for m, runs in collected.items()})
    (folder / "table.md").write_text(table_markdown(collected))
    plot_curves(collected, folder)
    return collected


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m verl_meds.analysis.experiment", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="train every method x seed (resumable), then write the report")
    run_p.add_argument("--out", required=True)
    run_p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    run_p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    run_p.add_argument("--steps", type=int, default=ExperimentConfig.steps)
    run_p.add_argument("--val-n", type=int, default=ExperimentConfig.val_n)
    run_p.add_argument("--train-problems", type=int, default=ExperimentConfig.train_problems)
    run_p.add_argument("--cache", default=None)
    run_p.add_argument("--extra", nargs="*", default=[], help="Hydra overrides added to every run")
    run_p.add_argument(
        "--start",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="validate the warm-start model (--no-start in a second process that shares --out)",
    )
    rep_p = sub.add_parser("report", help="measure the finished runs and write results.json, table.md, plots")
    rep_p.add_argument("--out", required=True)
    rep_p.add_argument("--cache", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "run":
        cfg = ExperimentConfig(
            out=args.out,
            methods=args.methods,
            seeds=args.seeds,
            steps=args.steps,
            val_n=args.val_n,
            train_problems=args.train_problems,
            cache=args.cache,
            extra=args.extra,
            start=args.start,
        )
        results = run_experiment(cfg)
        failed = [f"{r['method']}/seed{r['seed']}" for r in results if r.get("status") != "ok"]
        if failed:
            logger.warning("failed runs: %s", failed)
    write_report(args.out, args.cache)
    print((Path(args.out) / "table.md").read_text())  # noqa: T201 - the CLI's output


if __name__ == "__main__":
    main()
