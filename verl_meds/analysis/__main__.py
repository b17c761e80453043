"""`python -m verl_meds.analysis`: see `verl_meds.analysis.cli`."""

from .cli import main

main()
