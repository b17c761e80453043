"""The tiny CPU setup's inputs: the synthetic task and the tiny warm-started model, built once and cached.

It writes the folders `recipes/tiny_cpu/run_tiny_cpu.sh` uses (`<cache>/data_seed<seed>` and
`<cache>/model_seed<seed>`), so the quick start, the tests and the benchmarks share one build.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tiny_cpu"
CACHE_ENV = "VERL_MEDS_CACHE"


def tiny_cpu_assets(
    cache: str | os.PathLike | None = None, seed: int = 0, attention: str = "default"
) -> dict[str, Path]:
    """Build (or reuse) the tiny CPU setup's data and model.

    Args:
        cache (`str` or `os.PathLike`, *optional*): cache folder; defaults to `$VERL_MEDS_CACHE` or the repository's
            `.cache/tiny_cpu`.
        seed (`int`, *optional*, defaults to `0`): seed of the task split and of the model build.
        attention (`str`, *optional*, defaults to `"default"`): head layout of the model
            (`data_prep.tiny_model.ATTENTION_PRESETS`); another layout than `default` is cached in
            `<cache>/model_seed<seed>_<attention>` (`vllm_cpu`: the vLLM rollout's model, docs/vllm-cpu.md).

    Returns:
        `dict[str, Path]`: `train` and `val` parquet files and the `model` folder.
    """
    from data_prep.synthetic import write_synthetic
    from data_prep.tiny_model import TinyModelConfig, build_tiny_model

    cache = Path(cache or os.environ.get(CACHE_ENV, DEFAULT_CACHE))
    data = cache / f"data_seed{seed}"
    if not (data / "train.parquet").exists():
        write_synthetic(data, n_train=2000, n_test=64, seed=seed)
    suffix = "" if attention == "default" else f"_{attention}"
    model = build_tiny_model(
        cache / f"model_seed{seed}{suffix}", seed=seed, config=TinyModelConfig.with_attention(attention)
    )
    return {"train": data / "train.parquet", "val": data / "test.parquet", "model": model}
