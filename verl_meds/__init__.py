r"""`verl_meds`: MEDS, Memory-Enhanced Dynamic reward Shaping.

Paper: [arXiv 2604.11297](https://huggingface.co/papers/2604.11297).

For each prompt, MEDS remembers feature vectors of past wrong responses (logit-lens scores of the final-answer token,
one float per selected layer), clusters them with HDBSCAN, and penalises a new wrong response by the size |C| of the
cluster it falls in: $p = \min(\alpha \ln(|C| + 1), \beta)$, $\tilde r = r - p$; then GRPO normalises the shaped
rewards within each group.

The core (`config`, `groups`, `answer`, `grading`, `clustering`, `memory`, `shaping`, `exploration`, `metrics`)
imports only numpy, scipy and torch, and lazily math-verify (grading, answer keys) and hdbscan (only the reference
computations `clustering.fit_labels_reference` and `authors`, extra `[analysis]`); importing `verl_meds` never
imports verl, ray or matplotlib. `exploration` holds the outcome-based exploration bonuses of Song, Kempe, Munos 2025
([arXiv 2509.06941](https://huggingface.co/papers/2509.06941)), computed from final answers only.

Shape glossary (used in every docstring and `# (..)` comment):

| Letter | Meaning |
|---|---|
| B | prompts in a batch |
| G | generations (responses) per prompt |
| N | rollouts, N = B * G |
| T | response tokens |
| L | transformer layers (Hugging Face `hidden_states` has L + 1 entries; index 0 is the embeddings) |
| D | hidden size |
| F | features per response: one per selected layer (one less with `diff`) |
| M | entries in one prompt's memory |
| K | clusters |
"""

import importlib

_EXPORTS = {
    "extract_boxed": "answer",
    "locate_answer_token": "answer",
    "locate_answer_tokens": "answer",
    "NOISE": "clustering",
    "ClusterConfig": "config",
    "FeatureConfig": "config",
    "MEDSConfig": "config",
    "MemoryConfig": "config",
    "ShapingConfig": "config",
    "ErrorMemory": "memory",
    "grpo_advantages": "shaping",
    "grpo_advantages_reference": "shaping",
    "penalty_from_cluster_sizes": "shaping",
    "shape_rewards": "shaping",
}


def __getattr__(name: str):
    # Submodules load on first use, so that a grading worker (`verl_meds.grading`) never imports torch.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'verl_meds' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__version__ = "0.1.0"

__all__ = [
    "NOISE",
    "ClusterConfig",
    "ErrorMemory",
    "FeatureConfig",
    "MEDSConfig",
    "MemoryConfig",
    "ShapingConfig",
    "extract_boxed",
    "grpo_advantages",
    "grpo_advantages_reference",
    "locate_answer_token",
    "locate_answer_tokens",
    "penalty_from_cluster_sizes",
    "shape_rewards",
]
