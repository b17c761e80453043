"""Folder helpers shared by the model builders of `data_prep`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_folder(staging: Path, out_dir: Path) -> None:
    """Move the finished folder `staging` to `out_dir`, replacing any folder there, by renames only.

    A reader sees either the old folder or the new one, never a half-written one: an existing `out_dir` is first
    renamed aside (`.<name>.old_<pid>`), `staging` takes its place, then the old copy is deleted. Both must be
    on the same file system (build `staging` next to `out_dir`).

    Raises:
        OSError: from `os.replace` when a rename fails (`out_dir` is then unchanged or restored by the caller).
    """
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old_{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
