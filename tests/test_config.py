"""Tests for `verl_meds.config`: defaults, validation messages, layer resolution, dict round trips, fingerprint."""

import pytest

from verl_meds.config import ClusterConfig, FeatureConfig, MEDSConfig, MemoryConfig, ShapingConfig


def test_defaults_are_the_paper_values():
    cfg = MEDSConfig()
    assert cfg.enable is True
    assert cfg.features.layers == "last_half" and cfg.features.diff is False and cfg.features.final_norm is True
    assert cfg.memory.capacity == 256 and cfg.memory.prompt_key == "index"
    assert (cfg.clustering.method, cfg.clustering.assignment) == ("hdbscan", "joint")
    assert (cfg.clustering.min_cluster_size, cfg.clustering.min_samples, cfg.clustering.knn_k) == (2, 1, 3)
    assert (cfg.shaping.alpha, cfg.shaping.beta, cfg.shaping.penalty_target) == (0.1, 0.2, "wrong")
    assert not hasattr(cfg.shaping, "std_eps")  # the advantage's epsilon and std switch are verl's


@pytest.mark.parametrize(
    ("layers", "num_layers", "expected"),
    [
        ("last_half", 28, list(range(15, 29))),
        ("last_half", 5, [4, 5]),
        ("last_half", 1, [1]),
        ("all", 4, [1, 2, 3, 4]),
        ([7, 2, 5], 8, [2, 5, 7]),
    ],
)
def test_resolve_layers(layers, num_layers, expected):
    assert FeatureConfig(layers=layers).resolve_layers(num_layers) == expected


def test_last_n_and_num_features():
    cfg = FeatureConfig(layers="last_n", last_n=3)
    assert cfg.resolve_layers(10) == [8, 9, 10]
    assert cfg.num_features(10) == 3
    assert FeatureConfig(layers="last_n", last_n=3, diff=True).num_features(10) == 2
    with pytest.raises(ValueError, match=r"last_n=3 exceeds .* L=2.*1\.\.2"):
        cfg.resolve_layers(2)


def test_explicit_layer_out_of_range_names_index_and_range():
    with pytest.raises(ValueError, match=r"layer 29, outside the valid range 1\.\.28"):
        FeatureConfig(layers=[3, 29]).resolve_layers(28)


def test_diff_needs_two_layers():
    with pytest.raises(ValueError, match="diff=True needs at least 2"):
        FeatureConfig(layers=[4], diff=True).resolve_layers(8)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: FeatureConfig(layers="first_half"), r"FeatureConfig\.layers must be one of"),
        (lambda: FeatureConfig(layers=[0, 1]), r"1-based layer numbers .* got 0"),
        (lambda: FeatureConfig(layers=[True]), r"got True"),
        (lambda: FeatureConfig(layers=[2, 2]), "must not repeat"),
        (lambda: FeatureConfig(layers=[]), "must not be an empty list"),
        (lambda: FeatureConfig(last_n=0), r"FeatureConfig\.last_n must be an integer >= 1, got 0"),
        (lambda: FeatureConfig(diff="yes"), r"FeatureConfig\.diff must be a bool"),
        (lambda: MemoryConfig(capacity=0), r"MemoryConfig\.capacity must be an integer >= 1, got 0"),
        (lambda: MemoryConfig(prompt_key=""), r"MemoryConfig\.prompt_key"),
        (
            lambda: ClusterConfig(method="kmeans"),
            r"ClusterConfig\.method must be one of \['hdbscan', 'single', 'answer'\]",
        ),
        (lambda: ClusterConfig(assignment="vote"), r"ClusterConfig\.assignment"),
        (lambda: ClusterConfig(min_cluster_size=1), r"min_cluster_size must be an integer >= 2, got 1"),
        (lambda: ClusterConfig(min_samples=0), r"min_samples must be an integer >= 1, got 0"),
        (lambda: ClusterConfig(knn_k=0), r"knn_k must be an integer >= 1, got 0"),
        (lambda: ClusterConfig(metric="cosine"), r"ClusterConfig\.metric must be one of"),
        (lambda: ShapingConfig(alpha=-0.1), r"ShapingConfig\.alpha must be a finite number >= 0.0, got -0.1"),
        (lambda: ShapingConfig(beta=float("inf")), r"ShapingConfig\.beta"),
        (lambda: ShapingConfig(penalty_target="all"), r"penalty_target must be one of"),
        (lambda: MEDSConfig(enable=1), r"MEDSConfig\.enable must be a bool"),
    ],
)
def test_invalid_values_name_field_value_and_range(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_from_dict_nested_and_round_trip():
    cfg = MEDSConfig.from_dict(
        {
            "enable": False,
            "features": {"layers": (3, 1), "diff": True},
            "memory": {"capacity": 8},
            "clustering": {"assignment": "knn", "knn_k": 5},
            "shaping": {"alpha": 0.05, "penalty_target": "both"},
        }
    )
    assert cfg.enable is False
    assert cfg.features.layers == [3, 1] and cfg.features.diff is True
    assert cfg.memory.capacity == 8 and cfg.memory.prompt_key == "index"
    assert cfg.clustering.assignment == "knn" and cfg.clustering.knn_k == 5
    assert cfg.shaping.alpha == 0.05 and cfg.shaping.beta == 0.2
    assert MEDSConfig.from_dict(cfg.to_dict()) == cfg
    assert MEDSConfig.from_dict(None) == MEDSConfig()
    assert MEDSConfig.from_dict({"shaping": None}) == MEDSConfig()


def test_from_dict_rejects_unknown_keys_at_every_level():
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['alpah'\] in MEDSConfig;.*'shaping'"):
        MEDSConfig.from_dict({"alpah": 0.1})
    with pytest.raises(ValueError, match=r"\['alpah'\] in MEDSConfig\.shaping; valid keys are \['alpha', 'beta'"):
        MEDSConfig.from_dict({"shaping": {"alpah": 0.1}})
    with pytest.raises(ValueError, match=r"MEDSConfig\.clustering"):
        MEDSConfig.from_dict({"clustering": {"min_size": 3}})
    with pytest.raises(ValueError, match=r"MEDSConfig\.features must be a mapping"):
        MEDSConfig.from_dict({"features": 3})


def test_fingerprint_tracks_feature_meaning_only():
    base = MEDSConfig().fingerprint()
    assert base == {"layers": "last_half", "last_n": None, "diff": False, "final_norm": True, "l2_normalize": True}
    # Fields that do not change what a stored vector means leave the fingerprint alone.
    assert MEDSConfig.from_dict({"shaping": {"alpha": 0.3}, "memory": {"capacity": 4}}).fingerprint() == base
    assert MEDSConfig.from_dict({"features": {"last_n": 3}}).fingerprint() == base
    for change in (
        {"features": {"layers": "all"}},
        {"features": {"diff": True}},
        {"features": {"final_norm": False}},
        {"clustering": {"l2_normalize": False}},
    ):
        assert MEDSConfig.from_dict(change).fingerprint() != base, change
    last_n = MEDSConfig.from_dict({"features": {"layers": "last_n", "last_n": 3}}).fingerprint()
    assert last_n["last_n"] == 3
    assert last_n != MEDSConfig.from_dict({"features": {"layers": "last_n", "last_n": 4}}).fingerprint()


@pytest.mark.parametrize(
    ("key", "value", "hint"), [("std_eps", 1e-4, "epsilon"), ("norm_adv_by_std", False, "norm_adv_by_std_in_grpo")]
)
def test_removed_shaping_keys_point_to_verls_option(key, value, hint):
    with pytest.raises(ValueError, match=rf"shaping\.{key} \(= {value!r}\) was removed: .*{hint}"):
        MEDSConfig.from_dict({"shaping": {key: value}})


def test_fork_parity_warns_about_each_value_it_overrides():
    import warnings

    with pytest.warns(UserWarning) as record:
        cfg = MEDSConfig.from_dict(
            {
                "fork_parity": True,
                "clustering": {"knn_k": 5, "min_cluster_size": 2},
                "shaping": {"penalty_target": "none"},
            }
        )
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2, messages
    assert (
        "ClusterConfig.knn_k=5 with 3" in messages[0]
        and "ShapingConfig.penalty_target='none' with 'both'" in messages[1]
    )
    assert cfg.clustering.knn_k == 3 and cfg.shaping.penalty_target == "both"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # defaults (or values equal to the forced ones) are replaced silently
        MEDSConfig.from_dict({"fork_parity": True, "clustering": {"knn_k": 3}})
