"""Atomic writes, seeding, provenance, and the prediction-file schema every stage shares."""
import json

import numpy as np
import pytest
import torch

from utils.files import DataError
from utils.evaluation.preds import check_same_frames, load_preds, save_preds
from utils.runs import atomic_path, is_complete, save_config, seed_everything, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"f1": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text('{"f1": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"f1": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_written_files_are_readable_by_the_group_as_open_would_make_them(tmp_path):
    """mkstemp's 0600 would hide a run's files from the rest of a lab on a shared cluster."""
    write_json(tmp_path / "m.json", {})
    open(tmp_path / "plain.txt", "w").close()
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_json_takes_numpy_values(tmp_path):
    write_json(tmp_path / "m.json", {"f1": np.float32(0.25), "per_class": np.arange(3)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"f1": 0.25, "per_class": [0, 1, 2]}


def test_seed_everything_repeats_numpy_and_torch():
    seed_everything(7)
    a = (np.random.rand(3), torch.rand(3))
    seed_everything(7)
    b = (np.random.rand(3), torch.rand(3))
    np.testing.assert_array_equal(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_config_records_provenance_and_completion_marker(tmp_path):
    save_config(tmp_path, {"lr": 0.1})
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["config"] == {"lr": 0.1}
    env = saved["environment"]
    assert torch.__version__.startswith(env["packages"]["torch"]) and "git_commit" in env
    assert not is_complete(tmp_path)
    write_json(tmp_path / "metrics.json", {})
    assert is_complete(tmp_path)


def preds(txtids, frames, n_feat=4):
    n = len(txtids)
    return dict(txtid=txtids, frame=frames, label=np.zeros(n), has_crop=np.ones(n, bool),
                logits=np.random.rand(n, 8), features=np.random.rand(n, 3, n_feat))


def test_prediction_file_round_trip_with_documented_dtypes(tmp_path):
    path = tmp_path / "preds" / "val.npz"
    save_preds(path, **preds(["a", "a", "b"], [1, 2, 1]), logits_fusion=np.ones((3, 8)))
    data = load_preds(path)
    assert data["txtid"].dtype.kind == "U" and data["frame"].dtype == np.int32
    assert data["label"].dtype == np.int8 and data["has_crop"].dtype == bool
    assert data["logits"].dtype == np.float32 and data["logits_fusion"].dtype == np.float32
    assert data["features"].dtype == np.float16 and data["features"].shape == (3, 3, 4)
    np.load(path, allow_pickle=False)   # nothing pickled


def test_rows_out_of_key_order_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ordered"):
        save_preds(tmp_path / "x.npz", **preds(["b", "a"], [1, 1]))
    with pytest.raises(ValueError, match="ordered"):
        save_preds(tmp_path / "x.npz", **preds(["a", "a"], [2, 1]))


def test_misaligned_runs_name_the_first_mismatch():
    a = preds(np.array(["a", "a", "b"]), np.array([1, 2, 1]))
    b = preds(np.array(["a", "a", "c"]), np.array([1, 2, 1]))
    with pytest.raises(DataError, match=r"row 2 is c/00001 .* has b/00001"):
        check_same_frames(a, b, "run_a", "run_b")
    c = preds(np.array(["a", "a"]), np.array([1, 2]))
    with pytest.raises(DataError, match="b/00001"):
        check_same_frames(a, c, "run_a", "run_c")
    check_same_frames(a, a, "run_a", "run_a")
