"""The synthetic Aff-Wild2 tree: deterministic, and carrying the quirks of the real data."""
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

import make_demo_data
from utils.readers import affwild2
from utils.readers.media import decode_audio
from utils.training.data import load_videos


def digest(root):
    """Hash of every label file, crop, list and template, plus the decoded audio."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".txt", ".jpg")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    for path in sorted(root.rglob("*.mp4")) + sorted(root.rglob("*.avi")):
        try:
            h.update(decode_audio(path)[0].tobytes())
        except ValueError:
            h.update(b"no audio")
    return h.hexdigest()


def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_demo_data.main(["--out", str(tmp_path / name), "--seed", str(seed), "--videos", "3",
                             "--jobs", "1" if name == "a" else "2"])
    a, b, c = (digest(tmp_path / n) for n in "abc")
    assert a == b
    assert a != c


def test_demo_tree_has_the_quirks_of_the_real_data(demo_raw):
    manifest = json.loads((demo_raw / "demo_manifest.json").read_text())
    txtids = manifest["txtids"]
    layout = affwild2.scan(demo_raw)
    assert {p.suffix for p in layout.videos.values()} == {".mp4", ".avi"}
    assert {25.0, 29.97, 30.0} <= {v["fps"] for v in txtids.values()}
    assert any(not v["has_audio"] for v in txtids.values())
    pairs = [t for t in txtids if t.endswith("_left")]
    assert any(txtids[t]["split"] == "train" for t in pairs) and any(txtids[t]["split"] == "test" for t in pairs)
    extra = [v["n_label_lines"] - v["n_video_frames"] for v in txtids.values() if v["split"] != "test"]
    assert 1 in extra and 0 in extra
    for split in ("train", "val"):
        counts = manifest["splits"][split]
        assert all(n > 0 for n in counts["labels"]), f"every class must occur in {split}"
        assert counts["ignored"] > 0 and counts["missing_crops"] > 0
        mix = np.array(counts["labels"]) / sum(counts["labels"])
        assert mix[[0, 7]].sum() > 0.35 and mix[[1, 2, 3]].max() < 0.12   # shaped like the real mix
    assert len(layout.crop_dirs) == len(txtids)
    assert {d[0].parent.name for d in layout.crop_dirs.values()} == {"cropped_aligned",
                                                                      "cropped_aligned_new_50_vids"}
    template = affwild2.read_template(layout.template)
    order = list(dict.fromkeys(template.txtid))
    assert order == affwild2.read_release_list(layout.release_list) and order != sorted(order)
    assert len(template) == manifest["splits"]["test"]["frames"]


def test_prepare_reports_exactly_what_the_generator_wrote(demo_raw, demo_data):
    manifest = json.loads((demo_raw / "demo_manifest.json").read_text())["splits"]
    counts = json.loads((demo_data / "meta.json").read_text())["counts"]
    for split in manifest:
        for key, value in manifest[split].items():
            assert counts[split][key] == value, (split, key)
        assert counts[split]["txtids_without_video"] == 0


def test_prepared_tables_follow_the_schema(demo_data):
    frames = pd.read_parquet(demo_data / "frames.parquet")
    assert list(frames.split.unique()) == ["train", "val", "test"]
    assert str(frames.frame.dtype) == "int32" and str(frames.label.dtype) == "int8"
    key = frames[["split", "txtid", "frame"]].astype({"split": str})
    for _, part in key.groupby("split"):
        assert (part.sort_values(["txtid", "frame"]).index == part.index).all()
    assert frames.crop_path[frames.has_crop].map(lambda p: p.endswith(".jpg")).all()
    videos = load_videos(demo_data)
    with_audio = videos[videos.has_audio]
    for row in with_audio.itertuples():
        samples = np.load(row.audio_path)
        assert abs(len(samples) - row.duration * 16000) <= 1024, row.videoid
    assert (videos.has_audio == False).sum() == 1  # noqa: E712
    pair = frames[frames.txtid.str.endswith(("_left", "_right")) & (frames.split == "train")]
    assert pair.videoid.nunique() == 1 and pair.txtid.nunique() == 2


def test_rerun_reuses_decoded_audio_and_force_redoes_it(demo_raw, demo_data):
    import prepare_data
    audio = sorted(demo_data.glob("audio/*.npy"))[0]
    before = audio.stat().st_mtime_ns
    prepare_data.main(["--root", str(demo_raw), "--out", str(demo_data)])
    assert audio.stat().st_mtime_ns == before
    prepare_data.main(["--root", str(demo_raw), "--out", str(demo_data), "--force"])
    assert audio.stat().st_mtime_ns != before


def test_dfew_demo_openpose_share_is_a_flag(tmp_path):
    make_demo_data.main(["--dataset", "dfew", "--out", str(tmp_path / "all"), "--clips", "10", "--openpose", "1"])
    assert len(list((tmp_path / "all" / "openpose").iterdir())) == 10
    with pytest.raises(SystemExit, match="--openpose 1.5: a share"):
        make_demo_data.main(["--dataset", "dfew", "--out", str(tmp_path / "bad"), "--clips", "10", "--openpose", "1.5"])
