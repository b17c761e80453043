"""Config validation: every MEDS option is checked at start-up, and every error names field, value and what is allowed.

`tests/test_config.py` covers the main messages one by one; this file makes the coverage systematic (a table of bad
values that must name every field of every component, and fails when a new field has no entry), checks that the
YAML `meds` block and the dataclasses agree, and that `verl_meds.verl.main` refuses bad options, including layer
numbers the model does not have, before Ray starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from verl_meds.config import ClusterConfig, FeatureConfig, MEDSConfig, MemoryConfig, ShapingConfig

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {"features": FeatureConfig, "memory": MemoryConfig, "clustering": ClusterConfig, "shaping": ShapingConfig}

# (section, field, bad value, text naming what is allowed). Every field of every component must appear.
BAD_VALUES = [
    ("features", "layers", "first_half", "must be one of ['last_half', 'all', 'last_n']"),
    ("features", "layers", 5, "or a list of 1-based layer numbers"),
    ("features", "layers", [0, 1], "integers >= 1"),
    ("features", "layers", ["3"], "integers >= 1"),
    ("features", "layers", [2, 2], "must not repeat a layer"),
    ("features", "layers", [], "1-based layer numbers >= 1"),
    ("features", "last_n", 0, "integer >= 1"),
    ("features", "last_n", 2.5, "integer >= 1"),
    ("features", "last_n", True, "integer >= 1"),
    ("features", "diff", "yes", "bool (True or False)"),
    ("features", "final_norm", 1, "bool (True or False)"),
    ("memory", "capacity", 0, "integer >= 1"),
    ("memory", "capacity", "256", "integer >= 1"),
    ("memory", "capacity", 1.5, "integer >= 1"),
    ("memory", "prompt_key", "", "non-empty string"),
    ("memory", "prompt_key", 3, "non-empty string"),
    ("clustering", "method", "kmeans", "['hdbscan', 'single', 'answer']"),
    ("clustering", "assignment", "vote", "['joint', 'knn']"),
    ("clustering", "min_cluster_size", 1, "integer >= 2"),
    ("clustering", "min_samples", 0, "integer >= 1"),
    ("clustering", "knn_k", -3, "integer >= 1"),
    ("clustering", "metric", "cosine", "['euclidean', 'manhattan', 'chebyshev']"),
    ("clustering", "l2_normalize", "true", "bool (True or False)"),
    ("clustering", "allow_single_cluster", None, "bool (True or False)"),
    ("clustering", "merge_distance", -0.1, "finite number >= 0.0"),
    ("clustering", "max_distance", 0.0, "finite number > 0.0"),
    ("clustering", "max_distance", 0.0005, "must be >= merge_distance"),
    ("clustering", "ties", "random", "['merge', 'order']"),
    ("clustering", "fork_faults", "yes", "bool (True or False)"),
    ("clustering", "fork_faults", True, "needs assignment='knn'"),
    ("shaping", "alpha", -0.1, "finite number >= 0.0"),
    ("shaping", "alpha", math.nan, "finite number >= 0.0"),
    ("shaping", "alpha", "0.1", "finite number >= 0.0"),
    ("shaping", "beta", math.inf, "finite number >= 0.0"),
    ("shaping", "beta", True, "finite number >= 0.0"),
    ("shaping", "penalty_target", "all", "['wrong', 'right', 'both', 'none']"),
    (None, "enable", 1, "bool (True or False)"),
    (None, "fork_parity", "true", "bool (True or False)"),
    (None, "reproduce_fork_faults", 0, "bool (True or False)"),
    (None, "reproduce_fork_faults", True, "needs fork_parity=True"),
    (None, "features", 3, "mapping (dict) or FeatureConfig"),
    (None, "memory", "big", "mapping (dict) or MemoryConfig"),
    (None, "clustering", [1], "mapping (dict) or ClusterConfig"),
    (None, "shaping", 0.1, "mapping (dict) or ShapingConfig"),
]


def _case_id(case) -> str:
    section, name, value, _ = case
    return f"{section or 'MEDSConfig'}.{name}={value!r}"


def test_every_field_has_a_bad_value_case():
    covered = {(section, name) for section, name, _, _ in BAD_VALUES}
    expected = {(None, f.name) for f in dataclasses.fields(MEDSConfig)}
    expected |= {(section, f.name) for section, cls in COMPONENTS.items() for f in dataclasses.fields(cls)}
    assert expected - covered == set(), "add a bad value for each new config field to BAD_VALUES"


@pytest.mark.parametrize("case", BAD_VALUES, ids=_case_id)
def test_error_names_field_value_and_what_is_allowed(case):
    section, name, value, allowed = case
    block = {name: value} if section is None else {section: {name: value}}
    with pytest.raises(ValueError) as info:
        MEDSConfig.from_dict(block)
    message = str(info.value)
    owner = "MEDSConfig" if section is None else COMPONENTS[section].__name__
    shown = value[0] if isinstance(value, list) and value and name == "layers" and value != [2, 2] else value
    assert f"{owner}.{name}" in message, message
    assert repr(shown) in message, message
    assert allowed in message, message


@pytest.mark.parametrize(
    "block, unknown",
    [
        ({"enabled": True}, "enabled"),
        ({"features": {"layer": [1]}}, "layer"),
        ({"memory": {"capacity": 4, "max_entries": 8}}, "max_entries"),
        ({"clustering": {"k": 3}}, "k"),
        ({"shaping": {"coef": 0.1}}, "coef"),
    ],
)
def test_unknown_keys_are_errors_listing_the_valid_keys(block, unknown):
    with pytest.raises(ValueError, match=rf"Unknown config key\(s\) \['{unknown}'\] in MEDSConfig.*valid keys are \["):
        MEDSConfig.from_dict(block)


@pytest.mark.parametrize(
    "features, num_layers, match",
    [
        ({"layers": [1, 9]}, 8, r"FeatureConfig\.layers contains layer 9, outside the valid range 1\.\.8"),
        ({"layers": [36]}, 28, r"layer 36, outside the valid range 1\.\.28"),
        ({"layers": "last_n", "last_n": 9}, 8, r"FeatureConfig\.last_n=9 exceeds .* L=8; the valid range is 1\.\.8"),
        ({"layers": "last_half", "diff": True}, 3, r"FeatureConfig\.diff=True needs at least 2 selected layers, got"),
        ({"layers": [4], "diff": True}, 8, r"diff=True needs at least 2 selected layers, got \[4\]"),
    ],
)
def test_layers_that_the_model_lacks_are_refused(features, num_layers, match):
    with pytest.raises(ValueError, match=match):
        FeatureConfig(**features).resolve_layers(num_layers)


@pytest.mark.parametrize("num_layers", [0, -1, 2.0, True])
def test_resolve_layers_validates_the_model_depth(num_layers):
    with pytest.raises(ValueError, match=rf"num_layers must be an integer >= 1, got {num_layers!r}"):
        FeatureConfig().resolve_layers(num_layers)


# Fields deliberately absent from the YAML block: set through another field, as their docstrings say.
NOT_IN_YAML = {("clustering", "fork_faults")}  # set by MEDSConfig.reproduce_fork_faults


def test_yaml_meds_block_lists_every_field_with_the_dataclass_defaults():
    """The shipped `meds:` block is complete (every option visible to Hydra) and has the paper defaults."""
    with open(ROOT / "verl_meds" / "verl" / "config" / "meds_base.yaml", encoding="utf-8") as f:
        block = yaml.safe_load(f)["meds"]
    assert set(block) == {f.name for f in dataclasses.fields(MEDSConfig)}
    for section, cls in COMPONENTS.items():
        expected = {f.name for f in dataclasses.fields(cls)} - {name for sec, name in NOT_IN_YAML if sec == section}
        assert set(block[section]) == expected, section
    assert MEDSConfig.from_dict(block) == MEDSConfig()


# ------------------------------------------------------------------------------------- start-up, before Ray starts

_STARTUP_SCRIPT = """
import json, sys
import ray
from hydra import compose, initialize_config_dir
import verl.trainer.main_ppo as main_ppo
from verl_meds.verl import main

def refuse_to_train(*args, **kwargs):
    raise AssertionError("run_ppo was reached: the config was not refused at start-up")

main_ppo.run_ppo = refuse_to_train
results = {}
for name, overrides in json.loads(sys.argv[1]).items():
    with initialize_config_dir(config_dir=sys.argv[2], version_base=None):
        config = compose("paper", overrides=["setup=tiny_cpu", "method=meds_dapo", *overrides])
    try:
        main.run(config)
        results[name] = {"error": None}
    except Exception as exc:
        results[name] = {"error": type(exc).__name__ + ": " + str(exc)}
    results[name]["ray_started"] = ray.is_initialized()
print(json.dumps(results))
"""


@pytest.mark.requires_verl
def test_main_refuses_bad_options_before_ray_starts(tmp_path):
    """`python -m verl_meds.verl.main` with a local 4-layer model: bad options fail in `prepare`, Ray never starts."""
    pytest.importorskip("verl")
    from transformers import Qwen2Config

    model_dir = tmp_path / "model"
    Qwen2Config(
        num_hidden_layers=4,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    ).save_pretrained(model_dir)
    base = [
        f"actor_rollout_ref.model.path={model_dir}",
        f"data.train_files={tmp_path / 'none.parquet'}",
        f"data.val_files={tmp_path / 'none.parquet'}",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
    ]
    cases = {
        "layer_out_of_range": [*base, "meds.features.layers=[1,9]"],
        "last_n_too_large": [*base, "meds.features.layers=last_n", "meds.features.last_n=5"],
        "bad_alpha": [*base, "meds.shaping.alpha=-1"],
        "bad_target": [*base, "meds.shaping.penalty_target=all"],
        "unknown_key": [*base, "+meds.shaping.alpah=0.1"],
        "multi_turn": [*base, "actor_rollout_ref.rollout.multi_turn.enable=true"],
        "ulysses": [*base, "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"],
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HOME": str(tmp_path),
        "VERL_MEDS_CPU": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_STARTUP_SCRIPT), json.dumps(cases), str(ROOT / "recipes/meds/config")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {
        "layer_out_of_range": r"ValueError: FeatureConfig\.layers contains layer 9, outside the valid range 1\.\.4",
        "last_n_too_large": r"ValueError: FeatureConfig\.last_n=5 exceeds the model's number of layers L=4",
        "bad_alpha": r"ValueError: ShapingConfig\.alpha must be a finite number >= 0\.0, got -1",
        "bad_target": r"ValueError: ShapingConfig\.penalty_target must be one of \[.*\], got 'all'",
        "unknown_key": r"ValueError: Unknown config key\(s\) \['alpah'\] in MEDSConfig\.shaping",
        "multi_turn": r"ValueError: verl_meds cannot serve these settings:\n- actor_rollout_ref\.rollout\.multi_turn",
        "ulysses": r"ValueError: verl_meds cannot serve these settings:\n- actor_rollout_ref\.actor\.ulysses_seq",
    }
    import re

    for name, pattern in expected.items():
        assert results[name]["error"] is not None and re.match(pattern, results[name]["error"]), results[name]
        assert results[name]["ray_started"] is False, name
