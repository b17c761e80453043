"""Every paper row on every GPU setup composes to the authors' settings or to a deviation listed on purpose.

`recipes/meds/authors_settings.yaml` holds the authors' value of each field per row (from their scripts) and the
deviations we keep, each with its reason. Here each GPU setup x paper row is composed with Hydra exactly as
`recipes/meds/run_paper.sh` does and every listed field is compared: a field without a deviation must equal the
authors' value; a field with one must equal the deviation's `ours` value. A drift in either direction fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.requires_verl

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "recipes" / "meds" / "config"
TABLE_PATH = ROOT / "recipes" / "meds" / "authors_settings.yaml"
MISSING = object()


def load_table() -> dict[str, Any]:
    import yaml

    with open(TABLE_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


TABLE = load_table()
CASES = [
    (setup, row, method)
    for setup in TABLE["setups"]
    for row, spec in TABLE["rows"].items()
    for method in spec["methods"]
]


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


def lookup(config, field: str) -> Any:
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, field, default=MISSING)
    assert value is not MISSING, f"{field} is not in the composed config"
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def matches(value: Any, expected: Any) -> bool:
    if isinstance(expected, dict) and set(expected) == {"endswith"}:
        return isinstance(value, str) and value.endswith(expected["endswith"])
    if isinstance(expected, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return value == pytest.approx(expected)
    return value == expected


def expected_fields(row: str) -> dict[str, Any]:
    return {**TABLE["common"], **TABLE["rows"][row]["values"]}


def deviation_for(field: str, row: str, setup: str) -> dict[str, Any] | None:
    for deviation in TABLE["deviations"]:
        rows, setups = deviation["rows"], deviation["setups"]
        if deviation["field"] == field and (rows == "all" or row in rows) and (setups == "all" or setup in setups):
            return deviation
    return None


def test_table_lists_the_paper_rows_and_gpu_setups():
    setups = {p.stem for p in (CONFIG_DIR / "setup").glob("*.yaml") if not p.stem.startswith("_")}
    assert set(TABLE["setups"]) == {s for s in setups if not s.endswith("_cpu")}
    methods = {m for spec in TABLE["rows"].values() for m in spec["methods"]}
    assert methods == {
        "grpo",
        "dapo",
        "grpo_entropy",
        "meds_dapo",
        "meds_single",
        "meds_all",
        "meds_all_diff",
        "meds_half_diff",
    }


def test_every_deviation_is_consistent_with_the_table():
    for deviation in TABLE["deviations"]:
        assert deviation["reason"].strip(), deviation
        rows = list(TABLE["rows"]) if deviation["rows"] == "all" else deviation["rows"]
        assert rows and set(rows) <= set(TABLE["rows"]), deviation
        setups = deviation["setups"]
        assert setups == "all" or set(setups) <= set(TABLE["setups"]), deviation
        for row in rows:
            fields = expected_fields(row)
            assert deviation["field"] in fields, f"{deviation['field']} is not a listed field of row {row}"
            assert matches(deviation["authors"], fields[deviation["field"]]), (row, deviation)
        assert not matches(deviation["ours"], deviation["authors"]), f"not a deviation: {deviation}"
    for note in TABLE["notes"]:
        assert note["what"].strip() and note["reason"].strip(), note


@pytest.mark.parametrize(("setup", "row", "method"), CASES)
def test_row_composes_to_the_authors_settings(setup, row, method, monkeypatch):
    monkeypatch.setenv("HOME", "/home/user")
    monkeypatch.delenv("MEDS_TRAIN_FILE", raising=False)
    monkeypatch.delenv("MEDS_VAL_FILE", raising=False)
    config = compose(setup, method)
    wrong = []
    for field, authors in expected_fields(row).items():
        value = lookup(config, field)
        deviation = deviation_for(field, row, setup)
        expected = authors if deviation is None else deviation["ours"]
        if not matches(value, expected):
            kind = "authors' value" if deviation is None else "listed deviation"
            wrong.append(f"{field} = {value!r}, {kind} {expected!r}")
    assert not wrong, f"{setup} x {method} ({row}):\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("setup", TABLE["setups"])
def test_meds_reads_half_the_layers(setup, monkeypatch):
    from verl_meds.verl.hooks.meds import meds_config_from_trainer_config

    monkeypatch.setenv("HOME", "/home/user")
    depth = {"qwen25_math_7b": 28, "qwen3_1p7b": 28, "qwen3_8b": 36}[setup]
    layers = meds_config_from_trainer_config(compose(setup, "meds_dapo")).features.resolve_layers(depth)
    # The authors read the last 14 of 28; the paper's N/2 gives 18 of Qwen3-8B's 36.
    assert list(layers) == list(range(depth // 2 + 1, depth + 1))


@pytest.mark.parametrize("setup", TABLE["setups"])
def test_thinking_is_decided_explicitly(setup, monkeypatch):
    monkeypatch.setenv("HOME", "/home/user")
    kwargs = lookup(compose(setup, "meds_dapo"), "data.apply_chat_template_kwargs")
    assert kwargs == ({} if setup == "qwen25_math_7b" else {"enable_thinking": False})


def test_cpu_setups_keep_the_project_settings(monkeypatch):
    """The GPU rows' settings do not leak into the CPU setups (their measured results used the project's)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    overrides = [
        "setup=tiny_cpu",
        "method=grpo",
        "data.train_files=t",
        "data.val_files=v",
        "actor_rollout_ref.model.path=m",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = hydra_compose("paper", overrides=overrides)
    assert config.data.max_response_length == 48
    assert not config.actor_rollout_ref.actor.use_kl_loss
    assert config.actor_rollout_ref.actor.loss_agg_mode == "token-mean"
    assert config.actor_rollout_ref.actor.clip_ratio_c == 3.0
