"""make_submission.py and utils/evaluation/submission.py: ABAW files, validation, val score from disk, zip."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ensemble
import make_submission
from utils.files import DataError
from utils.readers.affwild2 import read_template
from utils.classes import EXPR_HEADER, EXPR_TEMPLATE_HEADER, NUM_EXPR_CLASSES
from utils.evaluation.ensemble import Member, apply_spec, load_members
from utils.evaluation.preds import order_by_key, save_preds
from utils.runs import read_json, write_json
from utils.evaluation.submission import (PER_VIDEO_DIR, read_label_file, validate_per_video,
                              validate_template)

C = NUM_EXPR_CLASSES
VAL = {"a": 120, "b_left": 90, "b_right": 90, "c": 150, "d": 60}
TEST = {"t10": 40, "t2_left": 30, "t2_right": 30, "t1": 25}
# organisers' order: neither sorted by txtid nor, for t10, by frame
TEMPLATE_ORDER = [("t2_right", False), ("t10", True), ("t1", False), ("t2_left", False)]


def build(tmp_path: Path, template: bool = True, release_extra: tuple = ()) -> dict:
    """A prepared data dir (frames.parquet, meta.json, template, release list), three runs
    (two seeds of one model) with val and test predictions, and the ensemble over them."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    release = data / "EXPR_test_set_release.txt"
    release.write_text("\n".join(list(TEST) + list(release_extra)) + "\n")
    template_path = None
    if template:
        template_path = data / "EXPR_test_set_example.txt"
        lines = [EXPR_TEMPLATE_HEADER]
        for txtid, reverse in TEMPLATE_ORDER:
            frames = range(TEST[txtid], 0, -1) if reverse else range(1, TEST[txtid] + 1)
            lines += [f"{txtid}/{f:05d}.jpg," for f in frames]
        template_path.write_text("\n".join(lines) + "\n")
    parts = []
    for split, videos in (("val", VAL), ("test", TEST)):
        for txtid, n in videos.items():
            label = np.repeat(rng.integers(0, C, n // 15 + 1), 15)[:n] if split == "val" else np.full(n, -1)
            parts.append(pd.DataFrame({"split": split, "txtid": txtid, "videoid": txtid.split("_")[0],
                                       "frame": np.arange(1, n + 1, dtype=np.int32), "label": label.astype(np.int8),
                                       "has_crop": rng.random(n) > 0.2, "crop_path": "", "template_row": -1}))
    frames = pd.concat(parts, ignore_index=True)
    if template:
        rows = read_template(template_path)
        where = {(t, f): r for t, f, r in zip(rows.txtid, rows.frame, rows.template_row)}
        test = frames.split == "test"
        frames.loc[test, "template_row"] = [where[(t, f)] for t, f in zip(frames.txtid[test], frames.frame[test])]
    frames = frames.sort_values(["split", "txtid", "frame"]).reset_index(drop=True)
    frames.to_parquet(data / "frames.parquet", index=False)
    write_json(data / "meta.json", {"dataset": "affwild2", "root": str(tmp_path),
                                    "template": str(template_path) if template else None,
                                    "release_list": str(release)})
    for branch, name, seed, acc in (("image", "swin", 0, 0.5), ("image", "swin", 1, 0.45), ("audio", "ast", 0, 0.3)):
        run = tmp_path / "runs" / branch / f"{name}_seed{seed}"
        for split in ("val", "test"):
            f = frames[frames.split == split]
            f = f.iloc[order_by_key(f.txtid.to_numpy(), f.frame.to_numpy())]
            y = f.label.to_numpy()
            right = np.where(y >= 0, y, rng.integers(0, C, len(y)))
            guess = np.where(rng.random(len(y)) < acc, right, rng.integers(0, C, len(y)))
            logits = rng.normal(0, 1, (len(y), C))
            logits[np.arange(len(y)), guess] += 2.0
            save_preds(run / "preds" / f"{split}.npz", txtid=f.txtid, frame=f.frame, label=y,
                       has_crop=f.has_crop, logits=logits)
        write_json(run / "config.json", {"config": {"data": str(data), "seed": seed}, "environment": {}})
        write_json(run / "metrics.json", {})
    ens = ensemble.main(["--runs", str(tmp_path / "runs/*/*"), "--name", "ens", "--out-dir",
                         str(tmp_path / "ensembles"), "--smooth-windows", "5", "--bias-step", "0.5"])
    return {"data": data, "ensemble": ens, "zip": tmp_path / "submissions" / "ens.zip",
            "folder": tmp_path / "submissions" / "ens", "template": template_path}


def submit(paths: dict, *extra) -> Path:
    return make_submission.main(["--ensemble", str(paths["ensemble"]), "--out", str(paths["zip"]), *extra])


def expected_labels(paths: dict, split: str = "test") -> dict:
    """What the ensemble predicts in memory, keyed by (txtid, frame)."""
    spec = read_json(paths["ensemble"] / "ensemble.json")
    probs, ref = load_members([Member(m["name"], m["runs"], m["head"]) for m in spec["members"]], split)
    labels = apply_spec(probs, ref["txtid"], spec)
    return {(t, int(f)): int(y) for t, f, y in zip(ref["txtid"], ref["frame"], labels)}


# ---------------------------------------------------------------- the files

def test_written_files_parse_back_to_the_same_labels(tmp_path):
    paths = build(tmp_path)
    zip_path = submit(paths)
    assert zip_path == paths["zip"] and zip_path.is_file()
    want = expected_labels(paths)
    for txtid, n in TEST.items():
        got = read_label_file(paths["folder"] / PER_VIDEO_DIR / f"{txtid}.txt")
        assert got.tolist() == [want[(txtid, f)] for f in range(1, n + 1)]
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(zf.namelist())
        assert names == sorted([f"{PER_VIDEO_DIR}/{t}.txt" for t in TEST] + ["EXPR_test_set_example.txt"])
        for name in names:
            assert zf.read(name) == (paths["folder"] / name).read_bytes()
    assert len(set(want.values())) > 1          # a constant prediction would prove little


def test_template_order_is_kept_when_not_sorted(tmp_path):
    paths = build(tmp_path)
    submit(paths, "--format", "template")
    ours = (paths["folder"] / "EXPR_test_set_example.txt").read_text().splitlines()
    theirs = paths["template"].read_text().splitlines()
    assert len(ours) == len(theirs) == 1 + sum(TEST.values())
    assert [line.rsplit(",", 1)[0] for line in ours[1:]] == [line.rstrip(",") for line in theirs[1:]]
    assert ours[1].startswith("t2_right/00001.jpg,") and ours[31].startswith("t10/00040.jpg,")
    want = expected_labels(paths)
    for line in ours[1:]:
        loc, label = line.rsplit(",", 1)
        txtid, _, image = loc.rpartition("/")
        assert int(label) == want[(txtid, int(image[:5]))]
    assert not (paths["folder"] / PER_VIDEO_DIR).exists()      # template only


def test_header_is_never_quoted(tmp_path):
    paths = build(tmp_path)
    submit(paths)
    template = (paths["folder"] / "EXPR_test_set_example.txt").read_bytes()
    per_video = (paths["folder"] / PER_VIDEO_DIR / "t1.txt").read_bytes()
    assert template.split(b"\n", 1)[0] == EXPR_TEMPLATE_HEADER.encode()
    assert per_video.split(b"\n", 1)[0] == EXPR_HEADER.encode()
    assert b'"' not in template and b'"' not in per_video and b"\r" not in template
    # and a quoted header (what pandas.to_csv may write) is refused, naming file and line
    quoted = paths["folder"] / "quoted.txt"
    quoted.write_bytes(b'"' + EXPR_TEMPLATE_HEADER.encode() + b'"\n' + template.split(b"\n", 1)[1])
    with pytest.raises(DataError, match=r"quoted\.txt:1: header"):
        validate_template(quoted, [line.rsplit(",", 1)[0] for line in template.decode().splitlines()[1:]], set())


def test_a_missing_test_video_stops_the_zip(tmp_path):
    paths = build(tmp_path, release_extra=("t99",))        # listed for test, never predicted
    with pytest.raises(SystemExit, match=r"t99\.txt: missing"):
        submit(paths, "--format", "per-video")
    with pytest.raises(SystemExit, match=r"EXPR_test_set_example\.txt: test video t99 has no row"):
        submit(paths, "--format", "template")
    assert not paths["zip"].exists() and not list(paths["zip"].parent.glob("*.zip*"))


def test_validator_names_the_first_bad_file_and_line(tmp_path):
    paths = build(tmp_path)
    submit(paths, "--format", "per-video")
    frames = pd.read_parquet(paths["data"] / "frames.parquet")
    test = frames[frames.split == "test"]
    folder = paths["folder"] / PER_VIDEO_DIR
    validate_per_video(paths["folder"], test, set(TEST))              # as written: fine
    lines = (folder / "t10.txt").read_text().splitlines()
    (folder / "t10.txt").write_text("\n".join(lines[:6] + ["8"] + lines[7:]) + "\n")
    with pytest.raises(DataError, match=r"t10\.txt:7: label must be one integer 0\.\.7, got '8'"):
        validate_per_video(paths["folder"], test, set(TEST))
    (folder / "t10.txt").write_text("\n".join(lines + ["0"]) + "\n")    # one line too many
    with pytest.raises(DataError, match=r"t10\.txt:42: 41 label lines, the video has 40 frames"):
        validate_per_video(paths["folder"], test, set(TEST))
    (folder / "t10.txt").unlink()
    with pytest.raises(DataError, match=r"t10\.txt: missing"):
        validate_per_video(paths["folder"], test, set(TEST))


def test_val_files_score_from_disk_equal_to_ensemble_json(tmp_path):
    paths = build(tmp_path)
    folder = submit(paths, "--split", "val")
    assert folder == tmp_path / "submissions" / "ens_val"
    assert sorted(p.stem for p in (folder / PER_VIDEO_DIR).glob("*.txt")) == sorted(VAL)
    want = expected_labels(paths, "val")
    assert read_label_file(folder / PER_VIDEO_DIR / "c.txt").tolist() == [want[("c", f)] for f in range(1, 151)]
    assert not paths["zip"].exists()
    # the check is real: a score in ensemble.json that the files do not reach is an error
    spec_path = paths["ensemble"] / "ensemble.json"
    spec = read_json(spec_path)
    spec["val"]["macro_f1"] += 0.01
    write_json(spec_path, spec)
    with pytest.raises(SystemExit, match="read from disk"):
        submit(paths, "--split", "val")


def test_dataset_without_template_writes_per_video_files(tmp_path):
    paths = build(tmp_path, template=False)
    submit(paths)
    with zipfile.ZipFile(paths["zip"]) as zf:
        assert sorted(zf.namelist()) == sorted(f"{PER_VIDEO_DIR}/{t}.txt" for t in TEST)
    with pytest.raises(SystemExit, match="no template"):
        submit(paths, "--format", "template")


def test_predictions_not_covering_the_test_frames_are_refused(tmp_path):
    paths = build(tmp_path)
    frames = pd.read_parquet(paths["data"] / "frames.parquet")
    extra = frames[(frames.split == "test") & (frames.txtid == "t1") & (frames.frame == 25)].assign(frame=26)
    pd.concat([frames, extra]).sort_values(["split", "txtid", "frame"]).to_parquet(paths["data"] / "frames.parquet")
    with pytest.raises(SystemExit, match=r"t1/00026"):
        submit(paths)
    assert not paths["zip"].exists()


def test_on_the_prepared_demo_dataset(demo_data, tmp_path):
    """What prepare_data.py really writes: frames.parquet, meta.json, the organisers' template
    (listed in release order, not sorted) and their file name."""
    rng = np.random.default_rng(5)
    frames = pd.read_parquet(demo_data / "frames.parquet")
    meta = read_json(demo_data / "meta.json")
    for branch, name in (("image", "swin"), ("audio", "ast")):
        run = tmp_path / "runs" / branch / f"{name}_seed0"
        for split in ("val", "test"):
            f = frames[frames.split == split]
            f = f.iloc[order_by_key(f.txtid.to_numpy(), f.frame.to_numpy())]
            y = f.label.to_numpy()
            logits = rng.normal(0, 1, (len(y), C))
            logits[np.arange(len(y)), np.where(y >= 0, y, 0)] += 1.5
            save_preds(run / "preds" / f"{split}.npz", txtid=f.txtid.to_numpy(), frame=f.frame.to_numpy(),
                       label=y, has_crop=f.has_crop.to_numpy(), logits=logits)
        write_json(run / "config.json", {"config": {"data": str(demo_data), "seed": 0}, "environment": {}})
        write_json(run / "metrics.json", {})
    ens = ensemble.main(["--runs", str(tmp_path / "runs/*/*"), "--name", "demo", "--out-dir", str(tmp_path / "ens")])
    zip_path = make_submission.main(["--ensemble", str(ens), "--out", str(tmp_path / "sub" / "demo.zip")])
    template = Path(meta["template"])
    written = (tmp_path / "sub" / "demo" / template.name).read_text().splitlines()
    expected = template.read_text().splitlines()
    assert [line.rsplit(",", 1)[0] for line in written[1:]] == [line.rstrip(",") for line in expected[1:]]
    assert written[0] == EXPR_TEMPLATE_HEADER
    test_ids = set(frames.txtid[frames.split == "test"])
    with zipfile.ZipFile(zip_path) as zf:
        assert {n.split("/")[-1][:-4] for n in zf.namelist() if n.startswith(PER_VIDEO_DIR)} == test_ids
    make_submission.main(["--ensemble", str(ens), "--split", "val", "--out", str(tmp_path / "sub" / "demo.zip")])
