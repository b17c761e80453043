"""verl glue for MEDS: the only part of ``verl_meds`` that imports verl and Ray.

Modules: :mod:`plugin` (registration), :mod:`cpu` (CPU platform), :mod:`hf_rollout` (HF rollout for CPU),
:mod:`worker` (feature capture during the log-prob recompute), :mod:`reward` (math-verify grading),
:mod:`advantage` (the ``meds`` estimator), :mod:`trainer` (the step hook), :mod:`main` (Hydra entry point).
"""
