"""Configuration of MEDS: one dataclass per component, gathered into [`MEDSConfig`].

Every field is documented once, in its class docstring, and validated in `__post_init__`. Defaults are the values of
the MEDS paper ([arXiv 2604.11297](https://huggingface.co/papers/2604.11297)) and of the authors' recipe.
[`MEDSConfig.from_dict`] builds a config from nested plain dicts and rejects unknown keys at every level.

Example:

```python
>>> from verl_meds.config import MEDSConfig
>>> cfg = MEDSConfig.from_dict({"shaping": {"alpha": 0.05}, "clustering": {"assignment": "knn"}})
>>> cfg.shaping.alpha, cfg.shaping.beta, cfg.clustering.assignment
(0.05, 0.2, 'knn')
>>> cfg.features.resolve_layers(28)[:3]
[15, 16, 17]

```
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

LAYER_PRESETS = ("last_half", "all", "last_n")
CLUSTER_METHODS = ("hdbscan", "single", "answer")
ASSIGNMENTS = ("joint", "knn")
# Metrics that `hdbscan.HDBSCAN` accepts with its default ("best") algorithm and that `knn_assign` implements.
CLUSTER_METRICS = ("euclidean", "manhattan", "chebyshev")
TIE_RULES = ("merge", "order")
PENALTY_TARGETS = ("wrong", "right", "both", "none")


def _check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be a bool (True or False), got {value!r}.")


def _check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an integer >= {minimum}, got {value!r}.")


def _check_float(owner: str, name: str, value: Any, minimum: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{owner}.{name} must be a finite number {bound}, got {value!r}.")


def _check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}.")


def _build(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    """Instantiate dataclass `cls` from `values`, raising `ValueError` on keys that are not fields of `cls`."""
    if values is None:
        return cls()
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise ValueError(
            f"{where} must be a mapping (dict) or {cls.__name__}, got {type(values).__name__} {values!r}."
        )
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in values if k not in valid)
    if unknown:
        raise ValueError(f"Unknown config key(s) {unknown} in {where}; valid keys are {valid}.")
    return cls(**dict(values))


@dataclass
class FeatureConfig:
    r"""
    Which transformer layers become the feature vector of one response.

    The feature of a response is, for each selected layer, the logit-lens score of its final-answer token at the
    answer position (see `verl_meds/features.py`), so a response is described by F floats (float32).

    Parameters:
        > Parameters that control which layers become features

        layers (`str` or `list[int]`, *optional*, defaults to `"last_half"`):
            Selected layers. One of `"last_half"` (the last `L // 2` layers, at least one; for `L = 28` layers this
            is 15..28, the paper's default), `"all"` (1..L), `"last_n"` (the last `last_n` layers) or an explicit
            list of 1-based layer numbers. Layer `l` means Hugging Face `hidden_states[l]`, the output of block `l`;
            `hidden_states[0]` (the embeddings) is never used, so valid numbers are 1..L.
        last_n (`int`, *optional*, defaults to `14`):
            Number of final layers used when `layers == "last_n"`; must be <= L (checked in `resolve_layers`).
        diff (`bool`, *optional*, defaults to `False`):
            Use the differences between consecutive selected layers instead of the values (the paper's "-diff"
            variants), which gives F - 1 values instead of F.

        > Parameters that control the logit lens

        final_norm (`bool`, *optional*, defaults to `True`):
            Apply the model's final norm to intermediate layers before projecting them with the LM head (the standard
            logit lens). `False` reproduces the authors' code, which projects raw intermediate states. The last
            layer is already normed in Hugging Face outputs and is never normed again.
    """

    layers: str | list[int] = "last_half"
    last_n: int = 14
    diff: bool = False
    final_norm: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            _check_choice("FeatureConfig", "layers", self.layers, LAYER_PRESETS)
        elif isinstance(self.layers, (list, tuple)):
            self.layers = list(self.layers)
            if not self.layers:
                raise ValueError(
                    f"FeatureConfig.layers must not be an empty list; give 1-based layer numbers >= 1, got "
                    f"{self.layers!r}."
                )
            for layer in self.layers:
                if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
                    raise ValueError(
                        f"FeatureConfig.layers entries must be 1-based layer numbers (integers >= 1), got {layer!r}."
                    )
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"FeatureConfig.layers must not repeat a layer, got {self.layers!r}.")
        else:
            raise ValueError(
                f"FeatureConfig.layers must be one of {list(LAYER_PRESETS)} or a list of 1-based layer numbers, "
                f"got {self.layers!r}."
            )
        _check_int("FeatureConfig", "last_n", self.last_n, 1)
        _check_bool("FeatureConfig", "diff", self.diff)
        _check_bool("FeatureConfig", "final_norm", self.final_norm)

    def resolve_layers(self, num_layers: int) -> list[int]:
        """
        Selected layers as sorted 1-based numbers for a model with `num_layers` transformer blocks.

        Args:
            num_layers (`int`):
                Number of transformer blocks L of the model (Hugging Face `hidden_states` has L + 1 entries).

        Returns:
            `list[int]`: sorted layer numbers in 1..L.

        Raises:
            ValueError: if `num_layers < 1`, if an explicit layer is outside 1..L, if `last_n > L`, or if `diff` is
                set and fewer than two layers are selected.
        """
        _check_int("FeatureConfig.resolve_layers", "num_layers", num_layers, 1)
        if self.layers == "all":
            selected = list(range(1, num_layers + 1))
        elif self.layers == "last_half":
            count = max(1, num_layers // 2)
            selected = list(range(num_layers - count + 1, num_layers + 1))
        elif self.layers == "last_n":
            if self.last_n > num_layers:
                raise ValueError(
                    f"FeatureConfig.last_n={self.last_n} exceeds the model's number of layers L={num_layers}; "
                    f"the valid range is 1..{num_layers}."
                )
            selected = list(range(num_layers - self.last_n + 1, num_layers + 1))
        else:
            for layer in self.layers:
                if layer > num_layers:
                    raise ValueError(
                        f"FeatureConfig.layers contains layer {layer}, outside the valid range 1..{num_layers} "
                        f"(1-based hidden_states indices of a {num_layers}-layer model)."
                    )
            selected = sorted(self.layers)
        if self.diff and len(selected) < 2:
            raise ValueError(f"FeatureConfig.diff=True needs at least 2 selected layers, got {selected}.")
        return selected

    def num_features(self, num_layers: int) -> int:
        """Number F of floats per response for a model with `num_layers` blocks (one less when `diff` is set)."""
        return len(self.resolve_layers(num_layers)) - (1 if self.diff else 0)


@dataclass
class MemoryConfig:
    r"""
    Per-prompt memory of past responses.

    Parameters:
        > Parameters that control the error memory

        capacity (`int`, *optional*, defaults to `256`):
            Maximum number of entries kept per prompt and outcome (wrong or right); when full, the oldest entries
            are dropped first (FIFO). The authors' recipe never drops entries.
        prompt_key (`str`, *optional*, defaults to `"index"`):
            Name of the dataset field holding a stable prompt id. Memory is keyed by it, never by verl's per-batch
            `uid`, which is a new uuid4 every step.
    """

    capacity: int = 256
    prompt_key: str = "index"

    def __post_init__(self) -> None:
        _check_int("MemoryConfig", "capacity", self.capacity, 1)
        if not isinstance(self.prompt_key, str) or not self.prompt_key:
            raise ValueError(f"MemoryConfig.prompt_key must be a non-empty string, got {self.prompt_key!r}.")


@dataclass
class ClusterConfig:
    r"""
    How one prompt's stored responses are clustered and how a new response gets its cluster size |C|.

    Parameters:
        > Parameters that control the clustering

        method (`Literal["hdbscan", "single", "answer"]`, *optional*, defaults to `"hdbscan"`):
            `"hdbscan"` clusters with HDBSCAN ([Campello et al. 2013](https://doi.org/10.1007/978-3-642-37456-2_14)).
            `"single"` treats every stored response of the prompt as one cluster (the "MEDS-single cluster" ablation,
            MEDS paper Table 2), so |C| counts all other stored and current responses of the same outcome.
            `"answer"` keys the memory on the normalised final answer instead of features
            (`verl_meds.answer.answer_key`: math-verify's parse, then a canonical sympy string): a cluster is the
            set of responses of the prompt with the same answer, so "1/2", "0.5" and "\frac{1}{2}" are one cluster.
            The feature, HDBSCAN and kNN fields are then unused, except `assignment` (see there).
        assignment (`Literal["joint", "knn"]`, *optional*, defaults to `"joint"`):
            `"joint"` clusters the stored history together with this step's new responses; |C| is the number of
            other members of the new response's cluster. `"knn"` follows the authors' order: a new response takes
            the majority label of its `knn_k` nearest stored responses (labels of the previous fit), |C| is the size
            of that cluster in the history, and the history is refitted with the new responses included. With
            `method="answer"`, `"joint"` counts the stored and the other new responses with the same answer, `"knn"`
            only the stored ones.
        min_cluster_size (`int`, *optional*, defaults to `2`):
            HDBSCAN `min_cluster_size`; must be >= 2. A prompt with fewer usable responses has no clusters.
        min_samples (`int`, *optional*, defaults to `1`):
            HDBSCAN `min_samples` in the scikit-learn-contrib `hdbscan` convention used here (the point itself is
            not counted). scikit-learn's `sklearn.cluster.HDBSCAN` counts the point itself, so its equivalent value
            is `min_samples + 1`.
        knn_k (`int`, *optional*, defaults to `3`):
            Number of neighbours voting in `assignment="knn"` (the recipe's hard-coded `k=3`).
        metric (`str`, *optional*, defaults to `"euclidean"`):
            Distance between feature vectors, one of `"euclidean"`, `"manhattan"`, `"chebyshev"`. On L2-normalised
            rows the euclidean distance is a monotone function of the cosine distance.
        l2_normalize (`bool`, *optional*, defaults to `True`):
            Scale each feature row to unit L2 norm before clustering (rows of zeros stay zero), as in the recipe.
        allow_single_cluster (`bool`, *optional*, defaults to `True`):
            HDBSCAN `allow_single_cluster`. With `False` (the `hdbscan` default the recipe kept) HDBSCAN never
            returns a single cluster, so a prompt whose stored responses are all alike gets only noise (|C| = 0).

        > Parameters that give the clustering an absolute scale (distances between rows as clustered: on the unit
        > sphere, 0 to 2, with `l2_normalize` and the euclidean metric; `docs/clustering.md` has the measurements
        > behind the defaults)

        merge_distance (`float`, *optional*, defaults to `0.001`):
            Rows closer than this are the same error. A cluster that HDBSCAN would select, but that splits off its
            parent below this distance, is replaced by its nearest ancestor that splits off at or above it (the
            `cluster_selection_epsilon` of [Malzer & Baum 2019](https://arxiv.org/abs/1911.02282)), so groups of
            near-identical rows stay whole. `0` turns it off.
        max_distance (`float` or `None`, *optional*, defaults to `0.02`):
            Rows farther than this from every other row are noise, and no cluster joins rows across a larger gap:
            the single-linkage tree is cut at this height and each remaining tree is clustered on its own (its
            root may be selected as one cluster, see `allow_single_cluster`). `None` turns it off (HDBSCAN is
            then scale-free: any two rows can form a cluster). Must be >= `merge_distance`. How far apart one
            model's repeats of an error lie depends on the model (90th percentile of the distance to the nearest
            same-answer response: 0.002 on the tiny model, 0.043 on SmolLM2-135M). 0.02 is the cut whose smaller
            gain over the authors' scale-free clustering, on the two measured models, is largest; a model measured
            with `verl_meds.analysis.cluster_scale` should use its own value (0.005 on the tiny model). Too small
            a value turns repeats into noise and silently stops the penalty; too large a one drifts back to the
            scale-free clustering.
        ties (`Literal["merge", "order"]`, *optional*, defaults to `"merge"`):
            Merges at equal distances. `"merge"` applies all merges of one height at once (the level sets of
            HDBSCAN's definition), so labels do not depend on the order of the rows. `"order"` takes them one
            at a time in the order scipy's single linkage emits them, as contrib `hdbscan` and the authors do;
            the result can then change when rows are reordered. It also selects the k-NN vote's tie rule (see
            `verl_meds.clustering.knn_assign`).
        fork_faults (`bool`, *optional*, defaults to `False`):
            Reproduce, in `assignment="knn"`, two assignment faults of the authors' code (for comparison studies
            only): a response whose vote is won by noise is charged the number of stored noise points, and a tied
            vote goes to noise. Set through `MEDSConfig.reproduce_fork_faults`.
    """

    method: Literal["hdbscan", "single", "answer"] = "hdbscan"
    assignment: Literal["joint", "knn"] = "joint"
    min_cluster_size: int = 2
    min_samples: int = 1
    knn_k: int = 3
    metric: str = "euclidean"
    l2_normalize: bool = True
    allow_single_cluster: bool = True
    merge_distance: float = 0.001
    max_distance: float | None = 0.02
    ties: Literal["merge", "order"] = "merge"
    fork_faults: bool = False

    def __post_init__(self) -> None:
        _check_choice("ClusterConfig", "method", self.method, CLUSTER_METHODS)
        _check_choice("ClusterConfig", "assignment", self.assignment, ASSIGNMENTS)
        _check_int("ClusterConfig", "min_cluster_size", self.min_cluster_size, 2)
        _check_int("ClusterConfig", "min_samples", self.min_samples, 1)
        _check_int("ClusterConfig", "knn_k", self.knn_k, 1)
        _check_choice("ClusterConfig", "metric", self.metric, CLUSTER_METRICS)
        _check_bool("ClusterConfig", "l2_normalize", self.l2_normalize)
        _check_bool("ClusterConfig", "allow_single_cluster", self.allow_single_cluster)
        _check_float("ClusterConfig", "merge_distance", self.merge_distance, 0.0)
        if self.max_distance is not None:
            _check_float("ClusterConfig", "max_distance", self.max_distance, 0.0, strict=True)
            if self.max_distance < self.merge_distance:
                raise ValueError(
                    f"ClusterConfig.max_distance ({self.max_distance!r}) must be >= merge_distance "
                    f"({self.merge_distance!r})."
                )
        _check_choice("ClusterConfig", "ties", self.ties, TIE_RULES)
        _check_bool("ClusterConfig", "fork_faults", self.fork_faults)
        if self.fork_faults and self.assignment != "knn":
            raise ValueError(
                f"ClusterConfig.fork_faults=True needs assignment='knn' (the authors' order), got {self.assignment!r}."
            )


@dataclass
class ShapingConfig:
    r"""
    Penalty from cluster size and how it changes the reward before GRPO normalisation.

    The penalty of a response in a cluster of size |C| is (MEDS paper, reward shaping equation)

    $$
    p = \min\bigl(\alpha \ln(|C| + 1),\ \beta\bigr), \qquad \tilde r = r - p \text{ for a wrong response.}
    $$

    The authors' recipe writes the cap as `coef * C` with `C = 2.0`, so `beta = alpha * C`.

    Parameters:
        > Parameters that control the penalty

        alpha (`float`, *optional*, defaults to `0.1`):
            Penalty scale, >= 0.
        beta (`float`, *optional*, defaults to `0.2`):
            Penalty cap, >= 0.
        penalty_target (`Literal["wrong", "right", "both", "none"]`, *optional*, defaults to `"wrong"`):
            Which responses are penalised and remembered. Wrong responses get `r - p`; right responses get
            `r / (1 + p)` (the recipe's sign-preserving form); `"none"` leaves rewards unchanged.

    The group-normalised advantage over the shaped rewards is verl's (`algorithm.norm_adv_by_std_in_grpo`,
    epsilon 1e-6); MEDS has no option of its own for it (`REMOVED_SHAPING_KEYS`).
    """

    alpha: float = 0.1
    beta: float = 0.2
    penalty_target: Literal["wrong", "right", "both", "none"] = "wrong"

    def __post_init__(self) -> None:
        _check_float("ShapingConfig", "alpha", self.alpha, 0.0)
        _check_float("ShapingConfig", "beta", self.beta, 0.0)
        _check_choice("ShapingConfig", "penalty_target", self.penalty_target, PENALTY_TARGETS)


FORK_LOG_CAP = 2.0
"""The authors' cap on ln(|C| + 1) (their `C = 2.0`): with `fork_parity`, `shaping.beta = FORK_LOG_CAP * alpha`."""

FORK_PARITY_PRESET: dict[str, dict[str, Any]] = {
    "clustering": {
        "method": "hdbscan",
        "assignment": "knn",
        "knn_k": 3,
        "min_cluster_size": 2,
        "min_samples": 1,
        "metric": "euclidean",
        "l2_normalize": True,
        "allow_single_cluster": True,
        "merge_distance": 0.0,
        "max_distance": None,
        "ties": "order",
        "fork_faults": False,
    },
    "features": {"final_norm": False},
    "shaping": {"penalty_target": "both"},
}
"""The authors' settings, by component and field: what `MEDSConfig.fork_parity` sets (with `shaping.beta` from
[`FORK_LOG_CAP`], see [`fork_parity_preset`]). The one definition of their procedure's settings; the reference
re-statement of their procedure (`verl_meds.authors`) reads it too."""

FORK_FAULTS_PRESET: dict[str, dict[str, Any]] = {"clustering": {"allow_single_cluster": False, "fork_faults": True}}
"""What `MEDSConfig.reproduce_fork_faults` changes on top of [`FORK_PARITY_PRESET`]: the authors' three clustering
faults (identical repeats come back as noise; a noise vote is charged the number of noise points; a tied vote goes to
noise)."""


def fork_parity_preset(alpha: float, faults: bool = False) -> dict[str, dict[str, Any]]:
    """
    The authors' settings for a penalty scale `alpha`: [`FORK_PARITY_PRESET`], [`FORK_FAULTS_PRESET`] when `faults`,
    and the cap `shaping.beta = FORK_LOG_CAP * alpha` (the authors write the penalty `alpha * min(ln(|C| + 1), 2)`).

    Args:
        alpha (`float`):
            The penalty scale `shaping.alpha`.
        faults (`bool`, *optional*, defaults to `False`):
            Also keep the authors' clustering faults.

    Returns:
        `dict[str, dict[str, Any]]`: component name (`clustering`, `features`, `shaping`) -> field -> value (a copy).
    """
    preset = {part: dict(values) for part, values in FORK_PARITY_PRESET.items()}
    for part, values in (FORK_FAULTS_PRESET if faults else {}).items():
        preset[part].update(values)
    preset["shaping"]["beta"] = FORK_LOG_CAP * alpha
    return preset


def _apply_preset(config: MEDSConfig, preset: Mapping[str, Mapping[str, Any]], flag: str) -> None:
    """Replace the fields of `preset` in the components of `config`, warning once per field whose value was set away
    from its default (the user's choice) and differs from the preset's."""
    import warnings

    for part, values in preset.items():
        old = getattr(config, part)
        new = dataclasses.replace(old, **values)
        default = type(old)()
        for name in values:
            mine, forced = getattr(old, name), getattr(new, name)
            if mine != forced and mine != getattr(default, name):
                warnings.warn(
                    f"MEDSConfig.{flag}=True overrides {type(old).__name__}.{name}={mine!r} with {forced!r}.",
                    UserWarning,
                    stacklevel=4,
                )
        setattr(config, part, new)


REMOVED_SHAPING_KEYS: dict[str, str] = {
    "std_eps": "verl's GRPO epsilon (1e-6) is used",
    "norm_adv_by_std": "set algorithm.norm_adv_by_std_in_grpo (false = Dr. GRPO) instead",
}
"""`shaping` keys that are refused because verl's estimator owns what they would set, each with the option to use
instead (the error message gives it)."""


@dataclass
class MEDSConfig:
    r"""
    Full MEDS configuration (MEDS paper, [arXiv 2604.11297](https://huggingface.co/papers/2604.11297)).

    Parameters:
        > Parameters that control MEDS as a whole

        enable (`bool`, *optional*, defaults to `True`):
            Whether the integration shapes rewards at all; with `False` training is plain GRPO.
        features (`FeatureConfig` or `dict`, *optional*):
            Layer selection and logit-lens options, see [`FeatureConfig`].
        memory (`MemoryConfig` or `dict`, *optional*):
            Per-prompt memory options, see [`MemoryConfig`].
        clustering (`ClusterConfig` or `dict`, *optional*):
            Clustering and assignment options, see [`ClusterConfig`].
        shaping (`ShapingConfig` or `dict`, *optional*):
            Penalty and advantage options, see [`ShapingConfig`].

        > Parameters that reproduce the authors' code (comparison studies)

        fork_parity (`bool`, *optional*, defaults to `False`):
            Run the authors' algorithm order and formulas: kNN vote (k = 3) over the previous fit, then a refit
            (`clustering.assignment="knn"`, `min_cluster_size=2`, `min_samples=1`, L2-normalised euclidean, no
            absolute scale: `merge_distance=0`, `max_distance=None`, ties taken in storage order); the
            penalty cap written as `alpha * min(ln(|C| + 1), 2)` (`shaping.beta = 2 * alpha`); right answers divided
            by `1 + penalty` (`shaping.penalty_target="both"`, right and wrong answers kept apart); no final norm on
            intermediate layers (`features.final_norm=False`). These fields are overwritten when it is set; the values
            are [`FORK_PARITY_PRESET`] (one place, applied by [`fork_parity_preset`]).
        reproduce_fork_faults (`bool`, *optional*, defaults to `False`):
            With `fork_parity`, also keep the authors' three clustering faults: identical repeated responses come
            back as noise (`allow_single_cluster=False`), a noise vote is charged the number of noise points, and a
            tied vote goes to noise (`clustering.fork_faults=True`; [`FORK_FAULTS_PRESET`]).
    """

    enable: bool = True
    features: FeatureConfig = field(default_factory=FeatureConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    clustering: ClusterConfig = field(default_factory=ClusterConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    fork_parity: bool = False
    reproduce_fork_faults: bool = False

    def __post_init__(self) -> None:
        _check_bool("MEDSConfig", "enable", self.enable)
        _check_bool("MEDSConfig", "fork_parity", self.fork_parity)
        _check_bool("MEDSConfig", "reproduce_fork_faults", self.reproduce_fork_faults)
        if self.reproduce_fork_faults and not self.fork_parity:
            raise ValueError("MEDSConfig.reproduce_fork_faults=True needs fork_parity=True.")
        self.features = _build(FeatureConfig, self.features, "MEDSConfig.features")
        self.memory = _build(MemoryConfig, self.memory, "MEDSConfig.memory")
        self.clustering = _build(ClusterConfig, self.clustering, "MEDSConfig.clustering")
        self.shaping = _build(ShapingConfig, self.shaping, "MEDSConfig.shaping")
        if self.fork_parity:
            _apply_preset(self, fork_parity_preset(self.shaping.alpha, self.reproduce_fork_faults), "fork_parity")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MEDSConfig:
        """
        Build a config from nested plain dicts (convert an OmegaConf `DictConfig` with `OmegaConf.to_container`).

        Args:
            d (`Mapping` or `None`):
                Keys `enable`, `features`, `memory`, `clustering`, `shaping`; each component is a dict of its fields.
                Missing keys keep their defaults; `None` gives the default config.

        Returns:
            `MEDSConfig`: the validated config.

        Raises:
            ValueError: on an unknown key at any level (the message lists the valid keys) or an invalid value.
        """
        shaping = d.get("shaping") if isinstance(d, Mapping) else None
        if isinstance(shaping, Mapping):
            for key, hint in REMOVED_SHAPING_KEYS.items():
                if key in shaping:
                    raise ValueError(f"MEDSConfig.shaping.{key} (= {shaping[key]!r}) was removed: {hint}.")
        return _build(cls, d, "MEDSConfig")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-dict form; `MEDSConfig.from_dict(cfg.to_dict()) == cfg`."""
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """
        Fields that change what a stored feature vector means.

        A memory saved under one fingerprint must not be resumed under another. `last_n` is reported as `None`
        unless `layers == "last_n"`, since it has no effect otherwise.

        Returns:
            `dict`: keys `layers`, `last_n`, `diff`, `final_norm`, `l2_normalize`; with `clustering.method="answer"`
            (the memory holds answer keys, not features) the single key `memory_keys` with value `"answer"`.
        """
        if self.clustering.method == "answer":
            return {"memory_keys": "answer"}
        features = self.features
        layers = list(features.layers) if isinstance(features.layers, list) else features.layers
        return {
            "layers": layers,
            "last_n": features.last_n if features.layers == "last_n" else None,
            "diff": features.diff,
            "final_norm": features.final_norm,
            "l2_normalize": self.clustering.l2_normalize,
        }


EXPLORATION_METHODS = ("historical", "batch")
EXPLORATION_BASELINES = ("none", "mean", "constant")


@dataclass
class ExplorationConfig:
    r"""
    Outcome-based exploration (Song, Kempe, Munos 2025, [arXiv 2509.06941](https://huggingface.co/papers/2509.06941)):
    an exploration bonus computed from the final answers only, added to the GRPO advantage of each response.

    With answer key a_i of response i (`verl_meds.answer.answer_key`; a response without a final answer has the
    outcome `verl_meds.exploration.NO_ANSWER`), N(x, a) the number of times answer a was sampled for prompt x in
    earlier steps and G the group size (paper: n), the advantage of response i becomes
    $\hat A_i + c\,\tilde b_i$ (paper, historical-exploration objective), with

    - historical, `baseline="none"` (paper: UCB):
      $\tilde b_i = b_{\mathrm{ucb}}(x, a_i) = \min\{1, \sqrt{1/N(x, a_i)}\}$;
    - historical, `baseline="constant"` (paper: UCB-Con, its best historical variant):
      $\tilde b_i = b_{\mathrm{ucb}}(x, a_i) - b_0$;
    - historical, `baseline="mean"` (paper: UCB-Mean): $\tilde b_i = b_{\mathrm{ucb}}(x, a_i) - \frac{1}{G-1}
      \sum_{j \ne i} b_{\mathrm{ucb}}(x, a_j)$ over the same group;
    - batch (paper: Batch): $\tilde b_i = -\frac{1}{G} \sum_{j \ne i} \mathbf{1}\{a_i = a_j\}$.

    `docs/paper_map.md` lists the sources of each formula and the choices the paper leaves open.

    Parameters:
        > Parameters that control the exploration bonus

        enable (`bool`, *optional*, defaults to `False`):
            Add the bonus to the advantages (after verl's estimator, before the policy loss).
        method (`Literal["historical", "batch"]`, *optional*, defaults to `"historical"`):
            `"historical"`: count-based bonus over all earlier steps (per prompt, checkpointed). `"batch"`: penalty
            for answers repeated within the current group (no state).
        bonus_coef (`float`, *optional*, defaults to `0.2`):
            The coefficient c multiplying the bonus, >= 0 (the paper's value).
        baseline (`Literal["none", "mean", "constant"]`, *optional*, defaults to `"constant"`):
            Baseline subtracted from the historical bonus: `"none"` (UCB), `"mean"` (UCB-Mean, leave-one-out group
            mean) or `"constant"` (UCB-Con, `baseline_value`). Unused by `method="batch"`.
        baseline_value (`float`, *optional*, defaults to `0.5`):
            The constant b_0 of UCB-Con, >= 0. The paper uses 0.5 on its medium dataset (an answer seen more than 4
            times then gets a negative bonus) and 1.0 on its easy one (every repeated answer is penalised).

        > Parameters that control which tokens and rows get the bonus

        count_current_step (`bool`, *optional*, defaults to `False`):
            Count this step's answers in N(x, a) before computing the bonus. With `False`, N counts earlier steps only
            and an answer never seen before has N = 0, capped to a bonus of 1 by the min.
        skip_all_correct (`bool`, *optional*, defaults to `True`):
            Give no bonus to a group whose responses are all correct (its task advantage is 0 everywhere).
        mask_answer_tokens (`bool`, *optional*, defaults to `True`):
            Add the bonus only to the tokens before the final answer (from the first token of the last `\boxed{`
            content on, tokens keep their task advantage), so the policy cannot earn it by changing the final answer
            alone. Responses without a located answer get the bonus on every token.
        prompt_key (`str`, *optional*, defaults to `"index"`):
            Dataset field (`extra_info`) holding a stable prompt id for the historical counts; prompts without it are
            keyed by a hash of their token ids.
    """

    enable: bool = False
    method: Literal["historical", "batch"] = "historical"
    bonus_coef: float = 0.2
    baseline: Literal["none", "mean", "constant"] = "constant"
    baseline_value: float = 0.5
    count_current_step: bool = False
    skip_all_correct: bool = True
    mask_answer_tokens: bool = True
    prompt_key: str = "index"

    def __post_init__(self) -> None:
        _check_bool("ExplorationConfig", "enable", self.enable)
        _check_choice("ExplorationConfig", "method", self.method, EXPLORATION_METHODS)
        _check_float("ExplorationConfig", "bonus_coef", self.bonus_coef, 0.0)
        _check_choice("ExplorationConfig", "baseline", self.baseline, EXPLORATION_BASELINES)
        _check_float("ExplorationConfig", "baseline_value", self.baseline_value, 0.0)
        _check_bool("ExplorationConfig", "count_current_step", self.count_current_step)
        _check_bool("ExplorationConfig", "skip_all_correct", self.skip_all_correct)
        _check_bool("ExplorationConfig", "mask_answer_tokens", self.mask_answer_tokens)
        if not isinstance(self.prompt_key, str) or not self.prompt_key:
            raise ValueError(f"ExplorationConfig.prompt_key must be a non-empty string, got {self.prompt_key!r}.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ExplorationConfig:
        """
        Build a config from a plain dict (a trainer config's top-level `exploration` block).

        Raises:
            ValueError: on an unknown key (the message lists the valid keys) or an invalid value.
        """
        return _build(cls, d, "ExplorationConfig")
