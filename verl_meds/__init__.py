r"""`verl_meds`: MEDS, Memory-Enhanced Dynamic reward Shaping.

Paper: [arXiv 2604.11297](https://huggingface.co/papers/2604.11297).

For each prompt, MEDS remembers feature vectors of past wrong responses (logit-lens scores of the final-answer token,
one float per selected layer), clusters them with HDBSCAN, and penalises a new wrong response by the size |C| of the
cluster it falls in: $p = \min(\alpha \ln(|C| + 1), \beta)$, $\tilde r = r - p$; then GRPO normalises the shaped
rewards within each group.

The core (`config`, `answer`, `clustering`, `memory`, `shaping`, `exploration`, `metrics`) imports only numpy, torch,
hdbscan and scikit-learn (and math-verify, lazily, for answer keys); importing `verl_meds` never imports verl, ray or
matplotlib. `exploration` holds the outcome-based exploration bonuses of Song, Kempe, Munos 2025
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

from .answer import extract_boxed, locate_answer_token, locate_answer_tokens
from .clustering import NOISE
from .config import ClusterConfig, FeatureConfig, MEDSConfig, MemoryConfig, ShapingConfig
from .memory import ErrorMemory
from .shaping import grpo_advantages, grpo_advantages_reference, penalty_from_cluster_sizes, shape_rewards

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
