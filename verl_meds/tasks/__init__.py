"""Tasks the analysis and the tests need as code: the synthetic arithmetic task with planted error modes
([`synthetic`]) and SmolLM2's single-digit task ([`single_digit`]), with their prompts ([`prompt`]).

`data_prep` writes them as verl parquet; nothing here writes files or imports `data_prep`.
"""
