"""verl_meds.verl.cpu.vllm_extension without vLLM: weights digest, receive bound, shared-memory cleanup."""

from __future__ import annotations

import sys
from multiprocessing import shared_memory

import pytest
import torch

from verl_meds.verl.cpu import vllm_extension as vllm_cpu


def test_module_imports_without_vllm_and_builds_the_extension_lazily():
    """Importing the module (done above) loads neither vLLM nor verl; the extension class is built on access."""
    if "vllm" not in sys.modules:
        assert "CPUReloadWorkerExtension" not in vllm_cpu._classes
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        vllm_cpu.Missing  # noqa: B018


def test_weights_digest_is_order_free_and_bit_exact():
    a = [("w", torch.arange(6, dtype=torch.float32).reshape(2, 3)), ("b", torch.ones(3))]
    assert vllm_cpu.weights_digest(a) == vllm_cpu.weights_digest(list(reversed(a)))
    nudged = [("w", a[0][1].clone()), a[1]]
    nudged[0][1][0, 0] = torch.nextafter(torch.tensor(0.0), torch.tensor(1.0))
    assert vllm_cpu.weights_digest(nudged) != vllm_cpu.weights_digest(a)
    assert vllm_cpu.weights_digest([("w", a[0][1].reshape(3, 2)), a[1]]) != vllm_cpu.weights_digest(a)
    assert vllm_cpu.weights_digest([("w", a[0][1].double()), a[1]]) != vllm_cpu.weights_digest(a)
    assert vllm_cpu.weights_digest([("w", a[0][1].t().contiguous().t()), a[1]]) == vllm_cpu.weights_digest(a)


def test_receive_timeout_from_environment(monkeypatch):
    monkeypatch.delenv(vllm_cpu.RECEIVE_TIMEOUT_ENV, raising=False)
    assert vllm_cpu.receive_timeout_s() == vllm_cpu.DEFAULT_RECEIVE_TIMEOUT_S
    monkeypatch.setenv(vllm_cpu.RECEIVE_TIMEOUT_ENV, "2.5")
    assert vllm_cpu.receive_timeout_s() == 2.5
    monkeypatch.setenv(vllm_cpu.RECEIVE_TIMEOUT_ENV, "0")
    with pytest.raises(ValueError, match="must be > 0"):
        vllm_cpu.receive_timeout_s()


def test_remove_stale_shm_keeps_old_and_used_segments():
    older = shared_memory.SharedMemory(create=True, size=4096)
    before = vllm_cpu.shm_segments()
    assert older.name.lstrip("/") in before
    in_use = shared_memory.SharedMemory(create=True, size=4096)
    left = shared_memory.SharedMemory(create=True, size=4096)
    left_name = left.name.lstrip("/")
    left.close()  # unmapped and closed: what a killed server leaves behind
    try:
        removed = vllm_cpu.remove_stale_shm(before)
        assert left_name in removed
        assert not (vllm_cpu.SHM_DIR / left_name).exists()
        assert (vllm_cpu.SHM_DIR / in_use.name.lstrip("/")).exists()
        assert (vllm_cpu.SHM_DIR / older.name.lstrip("/")).exists()
    finally:
        for segment in (older, in_use):
            segment.close()
            segment.unlink()
