"""Import target of verl's `checkpoint_engine.custom_backend_module`: importing it bounds the weight syncs.

verl imports the module named there when it builds its `CheckpointEngineManager` (in the trainer's process, before
the first weight sync; the option exists so that checkpoint-engine backends can register themselves on import).
This module registers no backend: it calls `verl_meds.verl.watchdog.watch_weight_sync`, so every weight sync of
that process runs under the stage watchdog (`verl_meds/verl/watchdog.py`). verl's actor workers import it too,
where it has no effect (they never call the manager).
"""

from verl_meds.verl.watchdog import watch_weight_sync

watch_weight_sync()
