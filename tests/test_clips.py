"""prepare_data.py --dataset clips: labels from RAVDESS / CREMA-D names or a CSV, speaker-disjoint folds."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import prepare_data
from utils.classes import DFEW_CLASSES, EXPR_CLASSES
from utils.console import WarningCounter
from utils.files import DataError
from utils.readers.clips import abaw_id, from_name, index_clips, read_label_csv, speaker_folds


def test_file_name_conventions():
    assert from_name(Path("01-01-02-01-01-01-12.mp4"), "ravdess") == ("ravdess-12", "calm")
    assert from_name(Path("02-01-08-02-02-02-24.mp4"), "ravdess") == ("ravdess-24", "surprised")
    assert "audio-only" in from_name(Path("03-01-05-01-01-01-05.wav"), "ravdess")
    assert from_name(Path("1091_IEO_SAD_HI.flv"), "cremad") == ("cremad-1091", "sad")
    assert "not a CREMA-D name" in from_name(Path("01-01-02-01-01-01-12.mp4"), "cremad")


def test_class_map_is_explicit():
    assert [EXPR_CLASSES[abaw_id(w)] for w in ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust",
                                               "surprised")] == \
        ["Neutral", "Other", "Happiness", "Sadness", "Anger", "Fear", "Disgust", "Surprise"]
    assert abaw_id("Happy") == abaw_id("happiness") == abaw_id("HAP") == abaw_id("4") == 4
    assert abaw_id("bored") is None and abaw_id("9") is None


def test_folds_never_split_a_speaker():
    clips = pd.DataFrame({"speaker": list("aaaabbbccd") + ["e"] * 5})
    folds = speaker_folds(clips, 3)
    assert set(folds) == {1, 2, 3}
    assert clips.assign(fold=folds).groupby("speaker").fold.nunique().eq(1).all()
    assert sorted(pd.Series(folds).value_counts().tolist()) == [5, 5, 5]


def test_label_csv(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / "clips" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "clips" / name).write_bytes(b"")
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label,speaker\nclips/a.mp4,Happiness,s1\nb.mp4,calm,s2\n")
    warnings = WarningCounter()
    clips = index_clips(tmp_path / "clips", str(csv), warnings)
    assert clips[["videoid", "label", "dfew_label", "speaker"]].values.tolist() == \
        [["a", 4, DFEW_CLASSES.index("Happy"), "s1"], ["b", 7, -1, "s2"]]
    assert warnings.counts == {"unlabelled": 1}
    csv.write_text("file,label\na.mp4,bored\n")
    with pytest.raises(DataError, match="label 'bored' of a.mp4"):
        index_clips(tmp_path / "clips", str(csv), WarningCounter())
    csv.write_text("name;label\n")
    with pytest.raises(DataError, match="line 1 must name a file column"):
        read_label_csv(csv)


def test_real_clips_become_frame_tables(real_clips, cropped_real, tmp_path, capsys):
    crops, summary = cropped_real
    prepare_data.main(["--dataset", "clips", "--root", str(real_clips), "--labels", "ravdess,cremad",
                       "--crops", str(crops), "--out", str(tmp_path), "--jobs", "1"])
    printed = capsys.readouterr().out
    assert "calm" not in printed and "surprised" in printed and "6 Surprise" in printed   # the class map
    frames = pd.read_parquet(tmp_path / "frames.parquet")
    clips = pd.read_parquet(tmp_path / "clips.parquet")
    assert len(clips) == 12 and set(clips.speaker) == {"ravdess-05", "cremad-1001"}
    assert clips.groupby("speaker").fold.nunique().eq(1).all() and clips.fold.nunique() == 2
    labels = dict(zip(clips.videoid, clips.label))
    assert labels["01-01-03-01-01-02-05"] == 4 and labels["1001_DFA_ANG_XX"] == 1
    assert (frames.label == frames.videoid.map(labels)).all()   # every frame carries its clip's label
    val = set(clips.videoid[clips.fold == 1])
    assert set(frames.videoid[frames.split == "val"]) == val and set(frames.videoid[frames.split == "train"]) == \
        set(clips.videoid) - val
    for row in summary.itertuples():   # the crops of crop_faces.py, frame for frame, and every frame indexed
        mine = frames[frames.videoid == row.videoid]
        assert len(mine) == row.frames and mine.has_crop.sum() == row.crops
    assert pd.read_parquet(tmp_path / "videos.parquet").has_audio.all()
    # The DFEW system's tables, by prepare_dfew itself: DFEW ids, each speaker's fold its test fold.
    dfew = pd.read_parquet(tmp_path / "dfew" / "clips.parquet").merge(clips, left_on="clip", right_on="dfew_clip")
    assert len(dfew) == 12 and (dfew.label_x == dfew.dfew_label).all() and dfew.has_audio.all()
    assert (dfew.n_frames == dfew.videoid.map(dict(zip(summary.videoid, summary.crops)))).all()
    folds = pd.read_parquet(tmp_path / "dfew" / "folds.parquet").merge(dfew, on="clip")
    assert ((folds.split == "test") == (folds.fold_x == folds.fold_y)).all()
