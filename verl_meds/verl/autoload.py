"""Import target of the `verl.plugins` entry point: importing this module registers verl_meds with verl.

verl imports every `verl.plugins` entry point when `verl` itself is imported (in the driver and in every Ray
worker), so the MEDS trainer, estimator and, in CPU mode, the CPU platform and `hf` rollout exist wherever verl
runs. verl swallows errors raised here (it logs them at debug level), which is why `verl_meds.verl.main`
calls `verl_meds.verl.plugin.register` again and checks the result before a run starts.
"""

from verl_meds.verl.plugin import register

register()
