"""The GPU recipes' configured training and validation files, read the way verl reads them.

`data_prep.qwen_math` writes the files into a temporary ``$HOME/data/meds`` (a few MATH level 3-5 problems from
the shared copy, hand-written DAPO-Math-17K rows in the original release's format, the whole AIME 2024 set), each
GPU setup's config is composed with that ``$HOME``, and verl's own ``RLHFDataset`` loads the configured files. Each
prompt is then rendered as verl's agent loop renders it (``apply_chat_template`` with the configured
``data.apply_chat_template_kwargs``), with a tiny local tokenizer whose chat template behaves like Qwen's: it adds
a default system prompt when the messages have none, and closes an empty think block when thinking is off. Every
rendered prompt must hold exactly one system prompt (the Qwen-Math one) and one user turn, and every ground truth
must grade as correct against itself with the configured reward function.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.requires_verl

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "recipes" / "meds" / "config"
DATA_DIR = Path("/work/shared/data")
GPU_SETUPS = ["qwen25_math_7b", "qwen3_1p7b", "qwen3_8b"]

# A Qwen-like ChatML template: default system prompt when none is given, optional empty think block (Qwen3).
QWEN_LIKE_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
DAPO_INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_PROBLEMS = [
    ("Let $a_1 = 1$ and $a_{n+1} = 2a_n + 1$. Find $a_{10}$.", "1023"),
    ("How many ordered pairs $(x, y)$ of positive integers satisfy $xy = 36$?", "9"),
    ("Find the remainder when $7^{2024}$ is divided by $10$.", "1"),
]


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    if not (DATA_DIR / "math_lvl3to5" / "train.jsonl").is_file():
        pytest.skip("shared data copy not available")
    from data_prep.qwen_math import build

    home = tmp_path_factory.mktemp("home")
    dapo = home / "dapo.jsonl"
    rows = [
        {
            "data_source": "math_dapo",
            "prompt": [
                {
                    "role": "user",
                    "content": f"{DAPO_INSTRUCTION}{q}\n\nRemember to put your answer on its "
                    'own line after "Answer:".',
                }
            ],
            "ability": "MATH",
            "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": str(i)},
        }
        for i, (q, a) in enumerate(DAPO_PROBLEMS)
    ]
    dapo.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build(home / "data" / "meds", data_dir=DATA_DIR, dapo_path=dapo, limit=40)
    return home


@pytest.fixture(scope="module")
def tokenizer(data_home):
    from data_prep.tiny_model import build_tokenizer
    from data_prep.verl_format import read_parquet

    corpus = [
        row["extra_info"]["question"] for row in read_parquet(data_home / "data/meds/unified_math_train.parquet")
    ]
    tok = build_tokenizer(corpus, vocab_size=1024)
    tok.chat_template = QWEN_LIKE_TEMPLATE
    return tok


def compose(setup: str, method: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = hydra_compose("paper", overrides=[f"setup={setup}", f"method={method}"])
    OmegaConf.resolve(config)
    return config


@pytest.mark.parametrize("setup", GPU_SETUPS)
@pytest.mark.parametrize("method", ["grpo", "meds_dapo"])
def test_configured_files_render_one_system_and_one_user_turn(
    setup, method, data_home, tokenizer, monkeypatch, tmp_path
):
    from omegaconf import open_dict
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from data_prep.qwen_math import QWEN_MATH_SYSTEM_PROMPT
    from data_prep.verl_format import read_parquet

    monkeypatch.setenv("HOME", str(data_home))
    monkeypatch.delenv("MEDS_TRAIN_FILE", raising=False)
    monkeypatch.delenv("MEDS_VAL_FILE", raising=False)
    config = compose(setup, method)
    with open_dict(config):
        config.data.cache_dir = str(tmp_path / "cache")
    score = get_custom_reward_fn(config)
    thinking_kwargs = dict(config.data.apply_chat_template_kwargs)
    for key, expected_rows in (("train_files", 40 + len(DAPO_PROBLEMS)), ("val_files", 30)):
        files = config.data[key]
        assert Path(files).is_file(), files
        dataset = RLHFDataset(data_files=files, tokenizer=tokenizer, config=config.data)
        # Nothing is dropped: every prompt fits in max_prompt_length.
        assert len(dataset) == len(read_parquet(files)) == expected_rows
        for i in range(len(dataset)):
            item = dataset[i]
            text = tokenizer.apply_chat_template(
                item["raw_prompt"], add_generation_prompt=True, tokenize=False, **thinking_kwargs
            )
            assert text.count("<|im_start|>system\n") == 1, text
            assert text.count("<|im_start|>user\n") == 1, text
            assert text.count("<|im_start|>") == 3, text
            assert text.startswith(f"<|im_start|>system\n{QWEN_MATH_SYSTEM_PROMPT}<|im_end|>\n"), text
            assert "You are a helpful assistant." not in text
            assert ("<think>\n\n</think>" in text) == (setup != "qwen25_math_7b")
            assert not re.search(r"Answer: \$Answer|Remember to put your answer", text)
            ground_truth = item["reward_model"]["ground_truth"]
            result = score(
                item["data_source"],
                f"Step by step ... so the answer is \\boxed{{{ground_truth}}}.",
                ground_truth,
                item["extra_info"],
            )
            assert result["score"] == 1.0 and result["acc"] == 1.0, (ground_truth, result)
            wrong = score(item["data_source"], "I give up: \\boxed{\\text{none}}", ground_truth, item["extra_info"])
            assert wrong["score"] == 0.0, (ground_truth, wrong)
