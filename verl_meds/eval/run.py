"""Evaluate a checkpoint the way the MEDS paper does: n samples per problem at temperature 1.0, math-verify grading,
pass@1 (mean accuracy) and unbiased pass@k, the Table-1 layout and pass@k curves.

Run (console script `verl-meds-eval`, or `python -m verl_meds.eval`)::

    verl-meds-eval run --model PATH --benchmark math500=/work/shared/data/math500/test.jsonl \\
        --benchmark aime24=DIR/aime24.parquet --out outputs/eval/meds [--n 128] [--limit 5] [--method MEDS]
    verl-meds-eval compare --summary GRPO=outputs/eval/grpo/summary.json \\
        --summary MEDS=outputs/eval/meds/summary.json --out outputs/eval/compare [--k 128]

`--benchmark` takes `NAME=PATH` with a verl parquet file (from `python -m data_prep.benchmarks`) or a raw JSONL copy
(converted on the fly by `verl_meds.eval.benchmarks`), or a bare `NAME` (local copy under `--data-dir`, else the hub).
`--model` is a Hugging Face folder or hub id, or a verl FSDP checkpoint (`.../global_step_N` or its `actor/`), which
is first merged into `<out>/merged_model` with `python -m verl.model_merger`.

Outputs in `--out`: `samples.jsonl` (one graded sample per line, see `verl_meds.eval.samples`), `problems.jsonl`
(problem id, benchmark, index, question, gold), `run_config.json`, `summary.json` (see `verl_meds.eval.report`),
`table.md`, `table.tex` and `pass_at_k.png`. Re-running the same command resumes: samples already in
`samples.jsonl` are not drawn again, and raising `--n` only draws the new sample indices. Changing the model or the
sampling settings of an existing output folder is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from verl_meds.answer import extract_boxed
from verl_meds.config import FeatureConfig

from .data import EvalProblem, load_problems, parse_benchmark_arg
from .generation import BACKENDS, Completion, Generator, HFGenerator, VLLMGenerator, resolve_backend
from .report import format_table, load_summary, plot_pass_at_k, summarize
from .samples import SampleStore, write_json

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
PROBLEMS_FILE = "problems.jsonl"
RUN_CONFIG_FILE = "run_config.json"
SUMMARY_FILE = "summary.json"
RESUME_KEYS = ("model", "temperature", "top_p", "max_new_tokens")
"""Settings that must match an existing output folder for a run to resume in it."""


@dataclass
class EvalConfig:
    """
    One evaluation run.

    Parameters:
        > Parameters that control what is evaluated

        model (`str`):
            Hugging Face model folder or hub id, or a verl FSDP checkpoint folder (merged first).
        benchmarks (`dict[str, str | None]`):
            Benchmark name -> parquet file, raw JSONL file, or `None` (local copy under `data_dir`, else the hub).
        output_dir (`str`):
            Folder for every output (see the module docstring); an existing folder is resumed.
        method (`str`, *optional*):
            Row name in tables; defaults to the model folder's name.
        limit (`int`, *optional*):
            Evaluate only the first `limit` problems of each benchmark.
        data_dir (`str`, *optional*):
            Folder of raw local benchmark copies (see `verl_meds.eval.benchmarks`).

        > Parameters that control sampling

        n_samples (`int`, *optional*, defaults to `128`):
            Samples per problem, n (the paper's 128).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature (the paper's 1.0); 0 means greedy.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling mass.
        max_new_tokens (`int`, *optional*, defaults to `3072`):
            Response budget in tokens.
        seed (`int`, *optional*, defaults to `0`):
            Base seed; each sample's seed is derived from it, the problem id and the sample index.
        ks (`list[int]`, *optional*):
            Reported k values; defaults to powers of two up to n, and n.

        > Parameters that control the backend

        backend (`Literal["auto", "hf", "vllm"]`, *optional*, defaults to `"auto"`):
            `"auto"` uses vLLM when it is installed and a GPU is visible (and features are not requested), else HF.
        batch_size (`int`, *optional*):
            Samples per generation call; defaults to 64 for HF and 1024 for vLLM.
        device (`str`, *optional*, defaults to `"auto"`):
            HF device: `"auto"` (CUDA when available, else CPU), `"cpu"`, `"cuda"`, ...
        dtype (`str`, *optional*, defaults to `"auto"`):
            Model dtype (see `HFGenerator`).

        > Parameters that control the outputs

        save_responses (`bool`, *optional*, defaults to `True`):
            Keep each decoded response in `samples.jsonl`.
        save_features (`bool`, *optional*, defaults to `False`):
            Also store logit-lens features at the answer token (HF backend; input of `verl_meds.analysis`).
        feature_config (`FeatureConfig`, *optional*):
            Layers for `save_features`; defaults to `FeatureConfig()` (the training default).
        progress (`bool`, *optional*, defaults to `True`):
            Show a tqdm progress bar.
    """

    model: str
    benchmarks: dict[str, str | None]
    output_dir: str
    method: str | None = None
    limit: int | None = None
    data_dir: str | None = None
    n_samples: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 3072
    seed: int = 0
    ks: list[int] | None = None
    backend: str = "auto"
    batch_size: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    save_responses: bool = True
    save_features: bool = False
    feature_config: FeatureConfig = field(default_factory=FeatureConfig)
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.benchmarks:
            raise ValueError("EvalConfig.benchmarks must name at least one benchmark.")
        for name, optional in (("n_samples", False), ("max_new_tokens", False), ("limit", True), ("batch_size", True)):
            value = getattr(self, name)
            if not (optional and value is None) and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"EvalConfig.{name} must be an integer >= 1{' or None' if optional else ''}, got {value!r}."
                )
        if self.temperature < 0:
            raise ValueError(f"EvalConfig.temperature must be >= 0, got {self.temperature!r}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"EvalConfig.top_p must be in (0, 1], got {self.top_p!r}.")
        if self.backend not in BACKENDS:
            raise ValueError(f"EvalConfig.backend must be one of {list(BACKENDS)}, got {self.backend!r}.")
        if self.ks is not None:
            bad = [k for k in self.ks if not 1 <= k <= self.n_samples]
            if bad:
                raise ValueError(f"EvalConfig.ks must lie in 1..n_samples={self.n_samples}, got {bad}.")
        if self.method is None:
            self.method = Path(str(self.model).rstrip("/")).name or str(self.model)


def sample_seed(seed: int, problem_id: str, sample_index: int) -> int:
    """Seed of one sample: CRC32 of `"<seed>:<problem_id>:<sample_index>"` (31 bits)."""
    return zlib.crc32(f"{seed}:{problem_id}:{sample_index}".encode()) & 0x7FFFFFFF


def grade_sample(
    problem: EvalProblem, sample_index: int, completion: Completion, *, save_response: bool = True
) -> dict[str, Any]:
    """
    The `samples.jsonl` line of one completion: last `\\boxed{}` content, graded with math-verify.

    Returns:
        `dict`: the fields of `verl_meds.eval.samples.SAMPLE_FIELDS` (`response` only with `save_response`,
        `features` only when the completion has them).
    """
    from verl_meds.verl.reward import is_correct  # math-verify; this module needs no verl/Ray

    answer = extract_boxed(completion.text)
    record: dict[str, Any] = {
        "benchmark": problem.benchmark,
        "problem_id": problem.problem_id,
        "index": problem.index,
        "sample_index": int(sample_index),
        "answer": answer,
        "correct": bool(answer is not None and is_correct(answer, problem.ground_truth)),
        "num_tokens": int(completion.num_tokens),
        "truncated": bool(completion.truncated),
    }
    if save_response:
        record["response"] = completion.text
    if completion.features is not None:
        record["features"] = completion.features
    return record


def is_verl_checkpoint(path: str | os.PathLike) -> Path | None:
    """The `actor/` folder of a verl FSDP checkpoint at `path` (the step folder or `actor/` itself), or `None`."""
    path = Path(path)
    for candidate in (path / "actor", path):
        if (candidate / "fsdp_config.json").is_file() and any(candidate.glob("model_world_size_*_rank_*.pt")):
            return candidate
    return None


def resolve_model(model: str, output_dir: str | os.PathLike) -> str:
    """
    A path `from_pretrained` can load: verl FSDP checkpoints are merged into `<output_dir>/merged_model` once.

    Raises:
        RuntimeError: if the merge fails (the message holds the merger's output).
    """
    actor = is_verl_checkpoint(model)
    if actor is None:
        return model
    target = Path(output_dir) / "merged_model"
    if (target / "config.json").is_file():
        return str(target)
    command = [
        sys.executable,
        "-m",
        "verl.model_merger",
        "merge",
        "--backend",
        "fsdp",
        "--local_dir",
        str(actor),
        "--target_dir",
        str(target),
    ]
    logger.info("merging verl checkpoint %s: %s", actor, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not (target / "config.json").is_file():
        raise RuntimeError(
            f"verl model merge failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return str(target)


def build_generator(config: EvalConfig, model_path: str) -> tuple[Generator, str]:
    """The generator for `config` (see `resolve_backend`) and the backend name."""
    backend = resolve_backend(config.backend, config.save_features)
    if backend == "vllm":
        generator: Generator = VLLMGenerator(
            model_path, config.max_new_tokens, config.temperature, config.top_p, seed=config.seed
        )
        return generator, backend
    device = config.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = HFGenerator(
        model_path,
        config.max_new_tokens,
        config.temperature,
        config.top_p,
        device=device,
        dtype=config.dtype,
        feature_config=config.feature_config if config.save_features else None,
    )
    return generator, backend


def _check_resume(out: Path, run_config: dict[str, Any]) -> dict[str, Any]:
    """The previous `run_config.json` of `out` (`{}` if none); raises when it holds another setting."""
    path = out / RUN_CONFIG_FILE
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text(encoding="utf-8"))
    changed = {
        key: (previous.get(key), run_config[key]) for key in RESUME_KEYS if previous.get(key) != run_config[key]
    }
    if changed:
        listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise ValueError(f"{out} holds samples of another setting ({listed}); use a new output folder")
    return previous


def write_report(
    summaries: Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike,
    k: int | None = None,
    benchmarks: Sequence[str] | None = None,
) -> dict[str, Path]:
    """
    Write `table.md`, `table.tex` and (when matplotlib is installed) `pass_at_k.png` for one or several methods.

    Returns:
        `dict[str, Path]`: output kind (`"markdown"`, `"latex"`, `"plot"`) -> written path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt, name in (("markdown", "table.md"), ("latex", "table.tex")):
        written[fmt] = out / name
        written[fmt].write_text(format_table(summaries, k=k, fmt=fmt, benchmarks=benchmarks), encoding="utf-8")
    try:
        figure = plot_pass_at_k(summaries, benchmarks)
    except ImportError:
        logger.warning("matplotlib is not installed (extra verl_meds[plots]); no pass@k plot written")
        return written
    written["plot"] = out / "pass_at_k.png"
    figure.savefig(written["plot"], dpi=120)
    return written


def evaluate(config: EvalConfig, generator: Generator | None = None) -> dict[str, Any]:
    """
    Sample, grade and summarise (see the module docstring); resumes from `config.output_dir`.

    Args:
        config (`EvalConfig`): the run.
        generator (`Generator`, *optional*): sampler to use instead of building one from `config` (tests, custom
            backends); it is only built when some sample is missing.

    Returns:
        `dict`: the summary (also written to `summary.json`).

    Raises:
        ValueError: for a bad benchmark file, or an output folder holding another setting.
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = {
        name: load_problems(name, path, limit=config.limit, data_dir=config.data_dir)
        for name, path in config.benchmarks.items()
    }
    run_config = {key: value for key, value in asdict(config).items() if key != "feature_config"}
    run_config["feature_config"] = asdict(config.feature_config) if config.save_features else None
    previous = _check_resume(out, run_config)
    run_config["resolved_backend"] = previous.get("resolved_backend")
    write_json(out / RUN_CONFIG_FILE, run_config)
    with open(out / PROBLEMS_FILE, "w", encoding="utf-8") as f:
        for problem in (p for group in problems.values() for p in group):
            f.write(
                json.dumps(
                    {
                        "problem_id": problem.problem_id,
                        "benchmark": problem.benchmark,
                        "index": problem.index,
                        "question": problem.question,
                        "ground_truth": problem.ground_truth,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )

    store = SampleStore(out / SAMPLES_FILE)
    done = store.load()
    work = [
        (problem, s)
        for group in problems.values()
        for problem in group
        for s in range(config.n_samples)
        if (problem.problem_id, s) not in done
    ]
    total = sum(len(group) for group in problems.values()) * config.n_samples
    if work:
        logger.info("%d of %d samples to draw (%d already in %s)", len(work), total, total - len(work), store.path)
        backend = "custom"
        if generator is None:
            generator, backend = build_generator(config, resolve_model(config.model, out))
        if run_config["resolved_backend"] not in (None, backend):
            logger.warning(
                "this folder mixes samples of the %s and %s backends", run_config["resolved_backend"], backend
            )
        run_config["resolved_backend"] = backend
        write_json(out / RUN_CONFIG_FILE, run_config)
        batch_size = config.batch_size or (1024 if backend == "vllm" else 64)
        _draw(work, generator, store, config, batch_size, total)

    samples = store.load().values()
    metadata = {
        "method": config.method,
        "model": config.model,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "backend": run_config["resolved_backend"],
    }
    summary = summarize(
        samples,
        {name: [p.problem_id for p in group] for name, group in problems.items()},
        config.n_samples,
        config.ks,
        metadata,
    )
    write_json(out / SUMMARY_FILE, summary)
    write_report({config.method: summary}, out)
    return summary


def _draw(
    work: list[tuple[EvalProblem, int]],
    generator: Generator,
    store: SampleStore,
    config: EvalConfig,
    batch_size: int,
    total: int,
) -> None:
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=total - len(work), unit="sample", disable=not config.progress, desc="eval") as bar:
        for start in range(0, len(work), batch_size):
            chunk = work[start : start + batch_size]
            seeds = [sample_seed(config.seed, problem.problem_id, s) for problem, s in chunk]
            completions = generator.generate([problem.messages for problem, _ in chunk], seeds)
            if len(completions) != len(chunk):
                raise RuntimeError(f"generator returned {len(completions)} completions for {len(chunk)} prompts")
            store.append(
                grade_sample(problem, s, completion, save_response=config.save_responses)
                for (problem, s), completion in zip(chunk, completions, strict=True)
            )
            bar.update(len(chunk))


def _named_paths(values: Sequence[str], flag: str) -> dict[str, str | None]:
    named: dict[str, str | None] = {}
    for text in values:
        name, path = parse_benchmark_arg(text)
        if name in named:
            raise SystemExit(f"{flag} {name!r} given twice")
        named[name] = path
    return named


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verl-meds-eval", description="pass@k evaluation of MEDS checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="sample, grade and summarise one model")
    run.add_argument("--model", required=True, help="HF folder / hub id, or a verl FSDP checkpoint folder")
    run.add_argument(
        "--benchmark",
        action="append",
        required=True,
        metavar="NAME[=PATH]",
        help="benchmark, optionally with a parquet or raw JSONL file; repeat for several",
    )
    run.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    run.add_argument("--method", default=None, help="row name in tables (default: the model folder name)")
    run.add_argument("--n", type=int, default=128, help="samples per problem")
    run.add_argument("--temperature", type=float, default=1.0)
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--max-new-tokens", type=int, default=3072)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--k", type=int, nargs="+", default=None, help="reported k values (default: powers of 2, n)")
    run.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    run.add_argument("--data-dir", default=None, help="folder of raw local benchmark copies")
    run.add_argument("--backend", choices=BACKENDS, default="auto")
    run.add_argument("--batch-size", type=int, default=None, help="samples per generation call")
    run.add_argument("--device", default="auto")
    run.add_argument("--dtype", default="auto")
    run.add_argument("--no-responses", action="store_true", help="do not keep response texts in samples.jsonl")
    run.add_argument("--save-features", action="store_true", help="store logit-lens features (HF backend)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch.set_num_threads)")
    run.add_argument("--no-progress", action="store_true")
    compare = commands.add_parser("compare", help="tables and curves of several summaries side by side")
    compare.add_argument(
        "--summary",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="method name and its summary.json; repeat in row order",
    )
    compare.add_argument("--out", required=True, help="folder for table.md, table.tex, pass_at_k.png")
    compare.add_argument("--k", type=int, default=None, help="k of the pass@k columns (default: smallest n)")
    compare.add_argument("--benchmarks", nargs="+", default=None, help="benchmark columns, in order")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point `verl-meds-eval`; see the module docstring."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "compare":
        summaries = {name: load_summary(path) for name, path in _named_paths(args.summary, "--summary").items()}
        written = write_report(summaries, args.out, k=args.k, benchmarks=args.benchmarks)
        print((Path(args.out) / "table.md").read_text(encoding="utf-8"))  # noqa: T201 - CLI output
        for path in written.values():
            print(path)  # noqa: T201 - CLI output
        return
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    config = EvalConfig(
        model=args.model,
        benchmarks=_named_paths(args.benchmark, "--benchmark"),
        output_dir=args.out,
        method=args.method,
        limit=args.limit,
        data_dir=args.data_dir,
        n_samples=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        ks=args.k,
        backend=args.backend,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        save_responses=not args.no_responses,
        save_features=args.save_features,
        progress=not args.no_progress,
    )
    summary = evaluate(config)
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"))  # noqa: T201 - CLI output
    n = summary["n"]
    for name, entry in summary["benchmarks"].items():
        line = (
            f"{name}: pass@1 {100 * entry['pass@1']:.2f}%, pass@{n} {100 * entry[f'pass@{n}']:.2f}% "
            f"over {entry['num_problems']} problems"
        )
        print(line)  # noqa: T201 - CLI output
    print(Path(args.out) / SUMMARY_FILE)  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
