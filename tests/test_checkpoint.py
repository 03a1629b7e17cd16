import numpy as np
import pytest
import torch

from embodied import checkpoint


def test_round_trip_keeps_tensors_arrays_and_values(tmp_path):
    state = {
        "learner": {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "opt": {}},
        "replay": {"pixels": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), "size": 2},
        "name": "run",
    }
    checkpoint.save(tmp_path, 5, state)
    back = checkpoint.load(tmp_path)
    assert torch.equal(back["learner"]["w"], state["learner"]["w"])
    assert back["learner"]["step"] == 7 and back["learner"]["opt"] == {}
    np.testing.assert_array_equal(back["replay"]["pixels"], state["replay"]["pixels"])
    assert back["replay"]["pixels"].dtype == np.uint8
    assert back["name"] == "run"


def test_latest_points_to_newest_and_old_ones_are_pruned(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"step": step}, keep=2)
    assert checkpoint.load(tmp_path)["step"] == 3
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000000002", "step_0000000003"]


def test_interrupted_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, {"x": torch.ones(2)})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 2, {"x": torch.zeros(2)})
    assert torch.equal(checkpoint.load(tmp_path)["x"], torch.ones(2))


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="object array"):
        checkpoint.save(tmp_path, 1, {"bad": np.array([{"a": 1}], dtype=object)})


def test_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load(tmp_path)
