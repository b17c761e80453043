"""`python -m verl_meds.eval`: the `verl-meds-eval` command line (see `verl_meds.eval.run`)."""

from .run import main

main()
