"""Tasks as code: the synthetic arithmetic task with planted error modes ([`synthetic`]), SmolLM2's single-digit
task ([`single_digit`]), their prompts ([`prompt`]) and math problems as verl rows ([`records`]).

`data_prep` writes them as verl parquet; nothing here writes files or imports `data_prep`.
"""
