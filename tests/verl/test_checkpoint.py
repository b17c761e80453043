"""Tests for `verl_meds.verl.checkpoint`: exact round trips, atomic replacement, and every refusal path."""

import hashlib
import os
import pickle

import numpy as np
import pytest

from verl_meds.config import MEDSConfig
from verl_meds.memory import ErrorMemory
from verl_meds.verl import checkpoint
from verl_meds.verl.checkpoint import load_memory, memory_path, read_memory_state, save_memory

pytestmark = pytest.mark.requires_verl

F = 4


def _filled_memory(config: MEDSConfig | None = None, steps: int = 3, seed: int = 0) -> ErrorMemory:
    """A memory after `steps` training steps of 4 prompts x 6 responses with random F=4 features."""
    rng = np.random.default_rng(seed)
    memory = ErrorMemory(config or MEDSConfig())
    prompts = [f"p{i}" for i in range(4) for _ in range(6)]  # (24,)
    for _ in range(steps):
        centres = rng.normal(size=(2, F)).astype(np.float32)  # two recurring error modes
        features = centres[rng.integers(0, 2, size=24)] + 0.01 * rng.normal(size=(24, F)).astype(np.float32)
        valid = rng.random(24) > 0.1
        correct = rng.random(24) > 0.6
        memory.step(prompts, features, valid, correct)
    assert memory.num_entries > 0
    return memory


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert a["fingerprint"] == b["fingerprint"] and a["num_features"] == b["num_features"]
    assert a["truncated_prompt_ids"] == b["truncated_prompt_ids"]
    assert len(a["buffers"]) == len(b["buffers"])
    for x, y in zip(a["buffers"], b["buffers"], strict=True):
        assert (x["prompt_id"], x["outcome"]) == (y["prompt_id"], y["outcome"])
        assert x["features"].dtype == y["features"].dtype == np.float32
        assert x["features"].tobytes() == y["features"].tobytes()  # bit for bit
        assert np.array_equal(x["labels"], y["labels"]) and y["labels"].dtype == np.int64


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_round_trip_is_exact(tmp_path):
    memory = _filled_memory()
    path = memory_path(str(tmp_path / "global_step_3"))
    assert path.endswith(os.path.join("global_step_3", "meds_memory.pkl"))
    size = save_memory(memory, path, global_step=3)  # creates the step folder
    assert size == os.path.getsize(path) > 0

    restored = ErrorMemory(MEDSConfig())
    digest = load_memory(restored, path)
    _assert_same_state(memory.state_dict(), restored.state_dict())
    with open(path, "rb") as f:
        assert digest == pickle.load(f)["sha256"] == checkpoint.state_digest(memory)
    assert restored.num_entries == memory.num_entries and restored.num_prompts == memory.num_prompts

    # Both memories now behave identically on the next step.
    rng = np.random.default_rng(9)
    features = rng.normal(size=(24, F)).astype(np.float32)
    args = ([f"p{i}" for i in range(4) for _ in range(6)], features, np.ones(24, bool), np.zeros(24, bool))
    sizes_a, metrics_a = memory.step(*args)
    sizes_b, metrics_b = restored.step(*args)
    assert np.array_equal(sizes_a, sizes_b) and metrics_a == metrics_b


def test_record_layout(tmp_path):
    memory = _filled_memory()
    path = str(tmp_path / "meds_memory.pkl")
    save_memory(memory, path, global_step=7)
    with open(path, "rb") as f:
        record = pickle.load(f)
    assert record["format"] == "verl_meds.memory" and record["format_version"] == 1
    assert record["global_step"] == 7
    assert record["sha256"] == hashlib.sha256(record["payload"]).hexdigest()
    _assert_same_state(pickle.loads(record["payload"]), memory.state_dict())


def test_empty_memory_round_trips(tmp_path):
    path = str(tmp_path / "meds_memory.pkl")
    save_memory(ErrorMemory(MEDSConfig()), path, global_step=0)
    restored = _filled_memory()
    load_memory(restored, path)
    assert restored.num_entries == 0 and restored.num_features is None


def test_second_save_replaces_the_file_atomically(tmp_path):
    path = str(tmp_path / "meds_memory.pkl")
    first, second = _filled_memory(steps=1, seed=1), _filled_memory(steps=3, seed=2)
    save_memory(first, path, global_step=1)
    inode_before = os.stat(path).st_ino
    save_memory(second, path, global_step=2)
    assert _files(tmp_path) == ["meds_memory.pkl"]  # no leftover temporary file
    assert os.stat(path).st_ino != inode_before  # a new file renamed over the old one, not rewritten in place
    _assert_same_state(read_memory_state(path), second.state_dict())


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "meds_memory.pkl")
    old = _filled_memory(steps=2, seed=3)
    save_memory(old, path, global_step=2)
    before = open(path, "rb").read()

    def dump_half_then_fail(obj, file, protocol=None):
        file.write(b"\x80\x05partial record")  # the start of a pickle, as a crash mid-write would leave it
        raise OSError("No space left on device")

    monkeypatch.setattr(pickle, "dump", dump_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_memory(_filled_memory(steps=3, seed=4), path, global_step=3)
    monkeypatch.undo()

    assert _files(tmp_path) == ["meds_memory.pkl"]
    assert open(path, "rb").read() == before
    restored = ErrorMemory(MEDSConfig())
    load_memory(restored, path)
    _assert_same_state(restored.state_dict(), old.state_dict())


def _rewrite_record(path: str, **changes) -> None:
    with open(path, "rb") as f:
        record = pickle.load(f)
    record.update(changes)
    with open(path, "wb") as f:
        pickle.dump(record, f)


def test_corrupted_payload_is_refused(tmp_path):
    path = str(tmp_path / "meds_memory.pkl")
    save_memory(_filled_memory(), path, global_step=1)
    with open(path, "rb") as f:
        payload = bytearray(pickle.load(f)["payload"])
    payload[len(payload) // 2] ^= 0x01  # one flipped bit inside a feature array
    _rewrite_record(path, payload=bytes(payload))
    memory = _filled_memory(seed=5)
    state_before = memory.state_dict()
    with pytest.raises(ValueError, match="corrupted"):
        load_memory(memory, path)
    _assert_same_state(memory.state_dict(), state_before)  # a refused load changes nothing


def test_wrong_format_version_names_both_versions(tmp_path):
    path = str(tmp_path / "meds_memory.pkl")
    save_memory(_filled_memory(), path, global_step=1)
    _rewrite_record(path, format_version=2)
    with pytest.raises(ValueError, match=r"version 2, this verl_meds reads 1"):
        read_memory_state(path)


@pytest.mark.parametrize(
    "content",
    [
        pickle.dumps([1, 2, 3]),  # a pickle, but not a dict
        pickle.dumps({"format": "something.else", "format_version": 1}),  # a dict of another format
        pickle.dumps({"state_dict": {}}),  # e.g. a model checkpoint
        b"global_step_3\n",  # verl's latest_checkpointed_iteration.txt
        b"",  # an empty file
    ],
    ids=["list", "other-format", "model-checkpoint", "text", "empty"],
)
def test_not_a_memory_file_is_refused(tmp_path, content):
    path = tmp_path / "meds_memory.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a verl_meds memory file"):
        read_memory_state(str(path))
    memory = _filled_memory()
    entries = memory.num_entries
    with pytest.raises(ValueError, match="not a verl_meds memory file"):
        load_memory(memory, str(path))
    assert memory.num_entries == entries


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "meds_memory.pkl"
    save_memory(_filled_memory(), str(path), global_step=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(path)):
        read_memory_state(str(path))


@pytest.mark.parametrize(
    ("saved", "current", "field", "saved_value", "current_value"),
    [
        ({"diff": True}, {"diff": False}, "diff", "True", "False"),
        ({"layers": "all"}, {"layers": "last_half"}, "layers", "'all'", "'last_half'"),
        ({"final_norm": False}, {"final_norm": True}, "final_norm", "False", "True"),
    ],
)
def test_memory_of_another_feature_config_is_refused(tmp_path, saved, current, field, saved_value, current_value):
    path = str(tmp_path / "meds_memory.pkl")
    save_memory(_filled_memory(MEDSConfig.from_dict({"features": saved})), path, global_step=4)
    target = ErrorMemory(MEDSConfig.from_dict({"features": current}))
    with pytest.raises(ValueError) as info:
        load_memory(target, path)
    message = str(info.value)
    assert f"'{field}': {saved_value}" in message and f"'{field}': {current_value}" in message
    assert target.num_entries == 0


def test_capacity_change_is_not_a_feature_mismatch(tmp_path):
    # capacity is not part of the fingerprint: resuming with a smaller buffer keeps the newest entries.
    path = str(tmp_path / "meds_memory.pkl")
    memory = _filled_memory(steps=3)
    save_memory(memory, path, global_step=3)
    small = ErrorMemory(MEDSConfig.from_dict({"memory": {"capacity": 2}}))
    load_memory(small, path)
    for buffer in memory.state_dict()["buffers"]:
        kept = small.entries(buffer["prompt_id"], buffer["outcome"])
        assert kept.tobytes() == buffer["features"][-2:].tobytes()


def test_module_constants_match_the_documented_layout():
    assert checkpoint.MEMORY_FILENAME == "meds_memory.pkl"
    assert checkpoint.FORMAT == "verl_meds.memory" and checkpoint.FORMAT_VERSION == 1
