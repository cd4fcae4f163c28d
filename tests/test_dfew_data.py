"""The DFEW data layer: split files, label base, frame order, 16-frame sampling, OpenPose JSON,
and the synthetic tree through prepare_dfew."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utils.readers import dfew
from utils.synthetic import dfew as synthetic_dfew
from utils.files import DataError
from utils.console import WarningCounter
from utils.readers.openpose import read_keypoints
from utils.synthetic.dfew import make_dfew

LABELS = {1: 0, 2: 1, 3: 2, 4: 3, 5: 6}   # clip -> 0-based label; 6 (Fear) is written 7 1-based


def write_frames(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((4, 4, 3), 100, np.uint8)).save(folder / name)


def write_split(root, split, fold, lines, spelling="single-labeled", header="video_name,label"):
    path = root / "EmoLabel_DataSplit" / f"{split}({spelling})" / f"set_{fold}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(lines) + "\n")
    return path


def tiny_tree(root, base=1, spelling="single-labeled", labels=LABELS):
    """5 clips of 3 frames; fold k tests clip k. Train files say '1', test files '00001'."""
    for clip in labels:
        write_frames(root / "Clip" / "clip_224x224" / f"{clip:05d}", ["1.jpg", "2.jpg", "3.jpg"])
    for fold in range(1, 6):
        write_split(root, "train", fold, [f"{c},{labels[c] + base}" for c in labels if c != fold], spelling)
        write_split(root, "test", fold, [f"{fold:05d},{labels[fold] + base}"], spelling)
    return root


@pytest.mark.parametrize("spelling", ["single-labeled", "single_labeled"])
@pytest.mark.parametrize("base", [0, 1])
def test_split_files_in_both_bases_and_spellings(tmp_path, base, spelling):
    layout = dfew.scan(tiny_tree(tmp_path, base, spelling))
    assert layout.label_base == base
    assert len(layout.split_files) == 10
    clips, folds, _ = dfew.index(layout)
    assert dict(zip(clips["clip"], clips["label"])) == {f"{c:05d}": v for c, v in LABELS.items()}
    test = folds[folds["split"] == "test"]
    assert test["clip"].tolist() == ["00001", "00002", "00003", "00004", "00005"]
    assert test["fold"].tolist() == [1, 2, 3, 4, 5]
    assert test["label"].tolist() == [0, 1, 2, 3, 6]
    assert (folds["split"] == "train").sum() == 20
    assert [str(t) for t in folds.dtypes] == ["str", "int8", "str", "int8"]


def test_labels_are_shifted_exactly_once(tmp_path):
    metas, tables = [], []
    for base in (1, 0):
        root = tiny_tree(tmp_path / f"raw{base}", base)
        metas.append(dfew.prepare_dfew(root, tmp_path / f"out{base}", jobs=1))
        tables.append(pd.read_parquet(tmp_path / f"out{base}" / "folds.parquet"))
    assert [m["label_base"] for m in metas] == [1, 0]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert sorted(set(tables[0]["label"])) == [0, 1, 2, 3, 6]
    # Forcing the base the files already agree with changes nothing; the wrong one is refused.
    forced = dfew.scan(tmp_path / "raw1", label_base=1).splits
    pd.testing.assert_frame_equal(forced, dfew.scan(tmp_path / "raw1").splits)
    with pytest.raises(DataError, match=r"set_\d\.csv:\d+: label 0 is outside 1..7"):
        dfew.scan(tmp_path / "raw0", label_base=1)


def test_ambiguous_label_base_names_the_files(tmp_path):
    tiny_tree(tmp_path, base=1)
    zero = write_split(tmp_path, "train", 2, ["1,0", "3,3", "4,4", "5,7"])
    with pytest.raises(DataError) as err:
        dfew.scan(tmp_path)
    assert str(zero) in str(err.value) and "label 7" in str(err.value)
    neither = tiny_tree(tmp_path / "b", base=1, labels={1: 1, 2: 1, 3: 2, 4: 3, 5: 4})
    with pytest.raises(DataError, match="none of the 10 split files"):
        dfew.scan(neither)
    assert dfew.scan(neither, label_base=1).splits["label"].max() == 4


@pytest.mark.parametrize("line, problem", [("3;4", "expected"), ("abc,2", "expected"),
                                           ("3,9", "expected"), ("3,2,1", "expected")])
def test_malformed_split_line_names_file_and_line(tmp_path, line, problem):
    tiny_tree(tmp_path)
    path = write_split(tmp_path, "train", 2, ["1,1", line])
    with pytest.raises(DataError, match=rf"set_2\.csv:3: {problem}"):
        dfew.scan(tmp_path)
    write_split(tmp_path, "train", 2, ["1,1"], header="name,emotion")
    with pytest.raises(DataError, match=rf"{path.name}: line 1 must be the header"):
        dfew.scan(tmp_path)


def test_a_clip_with_two_labels_is_an_error(tmp_path):
    tiny_tree(tmp_path)
    write_split(tmp_path, "train", 1, ["2,2", "3,3", "4,4", "5,6"])   # clip 5 is 7 elsewhere
    with pytest.raises(DataError, match=r"set_\d\.csv:\d+: clip 00005 has label \d here but \d in"):
        dfew.scan(tmp_path)


def test_clip_in_a_split_file_without_frames_is_counted_and_dropped(tmp_path):
    tiny_tree(tmp_path)
    for path in (tmp_path / "Clip" / "clip_224x224" / "00003").iterdir():
        path.unlink()
    warnings = WarningCounter()
    clips, folds, frames = dfew.index(dfew.scan(tmp_path), warnings)
    assert warnings.counts == {"empty clip": 1, "no frames": 5}   # 4 train files + 1 test file
    assert "00003" not in set(clips["clip"]) | set(folds["clip"]) | set(frames["clip"])
    assert len(folds) == 25 - 5


def test_frames_are_ordered_by_number_not_text(tmp_path):
    names = [f"{n}.jpg" for n in (10, 2, 12, 1, 11, 3, 9, 4, 8, 5, 7, 6)]
    write_frames(tmp_path / "a", names)
    numbers, files = dfew.list_frames(tmp_path / "a")
    assert numbers.tolist() == list(range(1, 13))
    assert files == [f"{n}.jpg" for n in range(1, 13)]
    write_frames(tmp_path / "b", [f"{n:05d}.jpg" for n in (3, 1, 2)])
    (tmp_path / "b" / "Thumbs.db").write_bytes(b"")
    assert dfew.list_frames(tmp_path / "b")[1] == ["00001.jpg", "00002.jpg", "00003.jpg"]
    tiny_tree(tmp_path / "tree")
    write_frames(tmp_path / "tree" / "Clip" / "clip_224x224" / "00001", names)
    _, _, frames = dfew.index(dfew.scan(tmp_path / "tree"))
    one = frames[frames["clip"] == "00001"]
    assert one["number"].tolist() == list(range(1, 13))
    assert one["frame"].tolist() == list(range(12))
    assert one["path"].iloc[9].endswith("00001/10.jpg")
    assert int(one["eval_sample"].sum()) == 12   # 12 < 16 frames: every frame is sampled


def test_full_frames_are_preferred_and_16f_can_be_chosen(tmp_path):
    tiny_tree(tmp_path)
    for clip in LABELS:
        write_frames(tmp_path / "Clip" / "clip_224x224_16f" / f"{clip:05d}",
                     [f"{n}.jpg" for n in range(1, 17)])
    assert dfew.scan(tmp_path).frames_kind == "clip_224x224"
    layout = dfew.scan(tmp_path, frames="clip_224x224_16f")
    assert dfew.index(layout)[0]["n_frames"].tolist() == [16] * 5


def test_eval_sampling_is_fixed():
    np.testing.assert_array_equal(dfew.sample_indices(100, train=False),
                                  [3, 9, 15, 21, 28, 34, 40, 46, 53, 59, 65, 71, 78, 84, 90, 96])
    np.testing.assert_array_equal(dfew.sample_indices(5, train=False),
                                  [0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4])
    np.testing.assert_array_equal(dfew.sample_indices(16, train=False), np.arange(16))
    np.testing.assert_array_equal(dfew.sample_indices(1, train=False), np.zeros(16))
    with pytest.raises(ValueError):
        dfew.sample_indices(0)


def test_train_sampling_jitters_within_segments():
    rng = np.random.default_rng(0)
    draws = np.stack([dfew.sample_indices(100, train=True, rng=rng) for _ in range(200)])
    edges = np.floor(np.arange(17) * 100 / 16).astype(int)
    assert (draws >= edges[:-1]).all() and (draws < edges[1:]).all()
    assert (np.diff(draws, axis=1) > 0).all()
    assert all(len(set(draws[:, i])) > 1 for i in range(16))   # every slot moves
    again = dfew.sample_indices(100, train=True, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(again, draws[0])
    short = np.stack([dfew.sample_indices(5, train=True, rng=rng) for _ in range(100)])
    assert short.shape == (100, 16) and (np.diff(short, axis=1) >= 0).all()
    assert all(set(row) == set(range(5)) for row in short)
    assert len({int((row == 0).sum()) for row in short}) > 3   # the padding moves
    np.testing.assert_array_equal(dfew.sample_indices(16, train=True, rng=rng), np.arange(16))


def person(body=(), face=()):
    pose, points = np.zeros((25, 3)), np.zeros((70, 3))
    for i, xyc in body:
        pose[i] = xyc
    for i, xyc in face:
        points[i] = xyc
    return {"person_id": [-1], "pose_keypoints_2d": pose.ravel().tolist(),
            "face_keypoints_2d": points.ravel().tolist() if face else [], "hand_left_keypoints_2d": []}


def write_keypoints(folder, name, people):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"version": 1.3, "people": people}))


def test_openpose_reader_on_hand_written_json(tmp_path):
    face = [(0, (100, 200, 0.9)), (1, (140, 260, 0.8)), (2, (130, 245, 0.7))]
    a = person(body=[(0, (120, 290, 0.6)), (3, (50, 50, 0.0))], face=face)
    b = person(body=[(0, (10, 10, 1.0)), (1, (12, 12, 1.0))],
               face=[(0, (5, 5, 1.0)), (1, (15, 15, 1.0))])   # a smaller face, surer points
    write_keypoints(tmp_path, "clip_000000000001_keypoints.json", [a])
    write_keypoints(tmp_path, "clip_000000000002_keypoints.json", [])
    write_keypoints(tmp_path, "clip_000000000003_keypoints.json", [b, a])
    (tmp_path / "clip_000000000005_keypoints.json").write_text("{not json")
    write_keypoints(tmp_path, "clip_000000000010_keypoints.json",
                    [person(body=[(0, (10, 10, 0.5)), (8, (30, 50, 0.5))])])   # no face points
    warnings = WarningCounter()
    points, mask = read_keypoints(tmp_path, [1, 2, 3, 4, 5, 10], warnings)
    assert points.shape == (6, 95, 3) and points.dtype == np.float32
    assert mask.tolist() == [True, False, True, False, False, True]
    expected = np.zeros((95, 3), np.float32)   # face box x 100..140, y 200..260: centre (120, 230), side 60
    expected[0] = [0.0, 1.0, 0.6]
    expected[25:28] = [[-1 / 3, -0.5, 0.9], [1 / 3, 0.5, 0.8], [1 / 6, 0.25, 0.7]]
    np.testing.assert_allclose(points[0], expected, atol=1e-6)
    np.testing.assert_allclose(points[2], expected, atol=1e-6)   # the larger face wins
    assert not points[[1, 3, 4]].any()
    np.testing.assert_allclose(points[5, [0, 8]], [[-0.25, -0.5, 0.5], [0.25, 0.5, 0.5]])
    assert warnings.counts == {"openpose missing": 1, "openpose malformed": 1}


def test_openpose_other_body_models_map_to_body25_and_unknown_ones_are_errors(tmp_path):
    write_keypoints(tmp_path, "7_keypoints.json", [person(face=[(0, (1, 1, 1.0)), (1, (3, 5, 1.0))])])
    points, mask = read_keypoints(tmp_path, [7])
    np.testing.assert_allclose(points[0, 25:27, :2], [[-0.25, -0.5], [0.25, 0.5]])   # box 2 x 4
    coco = np.zeros((18, 3))
    coco[8] = [10, 20, 0.9]    # COCO's right hip is BODY_25's 9 (8 is the mid-hip COCO lacks)
    coco[17] = [12, 22, 0.8]   # COCO's left ear is BODY_25's 18
    write_keypoints(tmp_path, "8_keypoints.json", [{"pose_keypoints_2d": coco.ravel().tolist()}])
    points, mask = read_keypoints(tmp_path, [8])
    assert mask[0] and set(np.flatnonzero(points[0, :, 2])) == {9, 18}
    write_keypoints(tmp_path, "9_keypoints.json", [{"pose_keypoints_2d": [1.0] * 60}])
    with pytest.raises(DataError, match="9_keypoints.json: 'pose_keypoints_2d' has 60 values"):
        read_keypoints(tmp_path, [9])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("dfew") / "raw"
    manifest = make_dfew(root, seed=1, n_clips=40, size=32, frames_16f=True, openpose=1.0)
    return root, manifest


def test_synthetic_tree_prepares_end_to_end(synthetic, tmp_path):
    root, manifest = synthetic
    meta = dfew.prepare_dfew(root, tmp_path / "out", jobs=2)
    clips, = dfew.read_tables(tmp_path / "out", "clips")
    folds = pd.read_parquet(tmp_path / "out" / "folds.parquet")
    frames = pd.read_parquet(tmp_path / "out" / "frames.parquet")
    truth = {c["clip"]: c for c in manifest["clips"]}
    assert meta["label_base"] == 1 and meta["label_base_detected"] and meta["dataset"] == "dfew"
    assert clips["clip"].tolist() == sorted(truth)
    assert clips["label"].tolist() == [truth[c]["label"] for c in clips["clip"]]
    assert clips["n_frames"].tolist() == [truth[c]["n_frames"] for c in clips["clip"]]
    assert min(clips["n_frames"]) < 16 and len(frames) == clips["n_frames"].sum()
    assert (frames.groupby("clip")["eval_sample"].sum() == clips["n_frames"].clip(upper=16).to_numpy()).all()
    labelled = sorted(c for c, v in truth.items() if v["label"] >= 0)
    test = folds[folds["split"] == "test"]
    assert sorted(test["clip"]) == labelled   # every labelled clip in exactly one test fold
    assert dict(zip(test["clip"], test["fold"])) == {c: truth[c]["fold"] for c in labelled}
    for fold in range(1, 6):
        train = set(folds[(folds["fold"] == fold) & (folds["split"] == "train")]["clip"])
        assert train == set(labelled) - set(test[test["fold"] == fold]["clip"])
    assert meta["counts"]["unlabelled"] == len(truth) - len(labelled) > 0
    assert sum(meta["counts"]["folds"][str(f)]["test"]["clips"] for f in range(1, 6)) == len(labelled)
    sound = {c for c, v in truth.items() if v["audio"] == "sound"}
    assert set(clips.loc[clips["has_audio"], "clip"]) == sound
    assert meta["warnings"] == {"no audio": 1, "no video": sum(v["audio"] == "none" for v in truth.values())}
    row = clips[clips["has_audio"]].iloc[0]
    audio = np.load(row["audio_path"])
    assert audio.dtype == np.float32 and abs(len(audio) - row["n_frames"] / 25 * 16000) < 0.1 * 16000
    stamp = (tmp_path / "out" / "audio" / f"{row['clip']}.npy").stat().st_mtime_ns
    dfew.prepare_dfew(root, tmp_path / "out", jobs=1)   # a re-run reuses the decoded audio
    assert (tmp_path / "out" / "audio" / f"{row['clip']}.npy").stat().st_mtime_ns == stamp
    assert dfew.scan(root, frames="clip_224x224_16f").frame_dirs.keys() == truth.keys()


def test_synthetic_faces_encode_the_order_of_expressions(synthetic):
    """Happy goes sad -> happy and Sad the reverse: the mouth's curve (lip centre below its
    corners in the keypoints) rises after the onset for Happy and falls for Sad."""
    root, manifest = synthetic
    changes = {0: [], 1: []}
    for clip in manifest["clips"]:
        if clip["label"] in changes and clip["n_frames"] >= 20 and clip["face"] == "visible":
            points, mask = read_keypoints(root / "openpose" / clip["clip"],
                                          np.arange(1, clip["n_frames"] + 1))
            face = points[mask, 25:]
            curve = face[:, 51, 1] - (face[:, 48, 1] + face[:, 54, 1]) / 2
            before = mask[:clip["onset"]].sum()
            changes[clip["label"]].append(curve[before + 3:].mean() - curve[:before].mean())
    assert changes[0] and changes[1]
    assert min(changes[0]) > 0.03 and max(changes[1]) < -0.03


def test_synthetic_frames_are_named_as_the_official_release_names_them(synthetic):
    """clip_224x224/00001/00001_00003.jpg: a lexicographic sort is the frame order, and the kit
    reads the numbers; the 16-frame folder keeps 1.jpg..16.jpg; OpenPose names its output
    after the image."""
    root, manifest = synthetic
    clip = next(c for c in manifest["clips"] if c["n_frames"] >= 10)
    folder = root / "Clip" / "clip_224x224" / clip["clip"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{clip['clip']}_{n:05d}.jpg" for n in range(1, clip["n_frames"] + 1)]
    numbers, files = dfew.list_frames(folder)
    assert numbers.tolist() == list(range(1, clip["n_frames"] + 1)) and files == names
    assert sorted(p.name for p in (root / "Clip" / "clip_224x224_16f" / clip["clip"]).iterdir()) == \
        sorted(f"{n}.jpg" for n in range(1, 17))
    assert (root / "openpose" / clip["clip"] / f"{clip['clip']}_00010_keypoints.json").is_file()


def test_synthetic_senses_complement_each_other(synthetic):
    """A hidden face leaves no face keypoints, nose or eyes; the body leans in at the onset for
    Happy, Angry and Surprise and draws back for Sad, Disgust and Fear (the shoulders' span
    grows against the ears', or shrinks), in sight or not; and the documented best UARs hold."""
    root, manifest = synthetic
    hidden = [c for c in manifest["clips"] if c["face"] != "visible"]
    assert {c["face"] for c in hidden} == {"turned away", "covered"} and len(hidden) < len(manifest["clips"])
    for clip in manifest["clips"]:
        points, mask = read_keypoints(root / "openpose" / clip["clip"], np.arange(1, clip["n_frames"] + 1))
        seen = clip["face"] == "visible"
        assert (points[mask][:, 25:, 2] > 0).any(1).all() == seen and (points[mask][:, [0, 15, 16], 2] > 0).any() == seen
        direction = synthetic_dfew.TRAJECTORIES[clip["content"]][3]
        if direction and clip["n_frames"] >= 20:
            span = (points[:, 5, 0] - points[:, 2, 0]) / (points[:, 18, 0] - points[:, 17, 0] + 1e-6)
            before, after = mask & (np.arange(clip["n_frames"]) < clip["onset"]), mask & (
                np.arange(clip["n_frames"]) >= clip["onset"] + 3)
            assert np.sign(span[after].mean() - span[before].mean()) == direction, clip
    # The bounds of the module docstring, on many planned clips (h 0.4, k 0.9, s 0.75).
    clips = synthetic_dfew.plan(np.random.default_rng(0), 20000, openpose=0.9, hidden=0.4)
    documented = {("frame_average",): 0.400, ("image",): 0.657, ("image", "keypoints"): 0.760,
                  ("image", "keypoints", "audio"): 0.927, ("keypoints",): 0.709, ("audio",): 0.464}
    for streams, value in documented.items():
        assert synthetic_dfew.best_uar(clips, streams) == pytest.approx(value, abs=0.01), streams


def test_synthetic_zero_based_variant_and_determinism(tmp_path):
    a = make_dfew(tmp_path / "a", seed=3, n_clips=8, size=16, label_base=0, spelling="single_labeled",
                  openpose=0.0)
    b = make_dfew(tmp_path / "b", seed=3, n_clips=8, size=16, label_base=0, spelling="single_labeled",
                  openpose=0.0, jobs=2)
    assert a["clips"] == b["clips"]
    assert (tmp_path / "a" / "EmoLabel_DataSplit" / "test(single_labeled)" / "set_5.csv").is_file()
    layout = dfew.scan(tmp_path / "a")
    assert layout.label_base == 0
    _, folds, _ = dfew.index(layout)
    truth = {c["clip"]: c["label"] for c in a["clips"]}
    assert all(truth[c] == v for c, v in zip(folds["clip"], folds["label"]))
    assert not (tmp_path / "a" / "openpose").exists()


def test_the_summary_of_a_tree_with_a_fold_without_test_clips(capsys):
    """A small labelled corpus (12 clips) leaves a fold with no test clip: the summary says 0."""
    from types import SimpleNamespace
    layout = SimpleNamespace(frames_kind="clip_224x224", split_format="official", label_base=0, kinds_found={})
    counts = {"folds": {"1": {"train": {"clips": 10}, "test": {"clips": 2, "labels": [1, 1, 0, 0, 0, 0, 0]}},
                        "2": {"train": {"clips": 12}}},
              "clips": 12, "unlabelled": 0, "with_audio": 12, "vfr_clips": 0, "frames": 120}
    dfew.print_summary(layout, counts, {})
    assert "12 clips" in capsys.readouterr().out
