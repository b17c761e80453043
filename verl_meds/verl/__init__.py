"""verl glue for MEDS: the only part of `verl_meds` that imports verl and Ray.

Modules: `plugin` (registration), `main` (Hydra entry point), `trainer` (verl's trainer composed with the hooks),
`hooks` (one add-on per module: MEDS, exploration, entropy advantage, grading metrics), `step_data` (a step's rows in
TransferQueue), `worker` (feature capture during the log-prob recompute), `reward` (math-verify grading), `advantage`
(the `meds` estimator), `checkpoint`, `dump`, `summary`; `cpu` (subpackage: CPU platform, HF rollout; CPU only).
"""
