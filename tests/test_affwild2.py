"""The Aff-Wild2 layout: annotation files, crop folders, test lists, on hand-made trees."""
import numpy as np
import pandas as pd
import pytest

import prepare_data
from conftest import write_crops, write_labels, write_test_video
from utils.readers import affwild2
from utils.files import DataError
from utils.classes import EXPR_TEMPLATE_HEADER


def test_videoid_of_left_right():
    assert affwild2.videoid_of("10-60-1280x720_left") == "10-60-1280x720"
    assert affwild2.videoid_of("10-60-1280x720_right") == "10-60-1280x720"
    assert affwild2.videoid_of("video_leftover") == "video_leftover"
    assert affwild2.videoid_of("118-30-640x480") == "118-30-640x480"


def test_read_labels_header_and_minus_one(tmp_path):
    path = write_labels(tmp_path / "a.txt", [0, -1, 7, 4])
    np.testing.assert_array_equal(affwild2.read_labels(path), [0, -1, 7, 4])


def test_bad_label_lines_become_ignored_and_are_reported(tmp_path):
    path = write_labels(tmp_path / "a.txt", [0, 8, "x", 3])
    bad = []
    labels = affwild2.read_labels(path, lambda p, line, text: bad.append((line, text)))
    np.testing.assert_array_equal(labels, [0, -1, -1, 3])
    assert bad == [(3, "8"), (4, "x")]


def test_wrong_header_names_the_file(tmp_path):
    path = write_labels(tmp_path / "b.txt", [0, 1], header="Neutral,Happiness,Anger")
    with pytest.raises(DataError, match="b.txt"):
        affwild2.read_labels(path)


@pytest.mark.parametrize("folder", ["EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"])
def test_scan_finds_both_challenge_folder_names_and_nested_crops(tmp_path, folder):
    write_labels(tmp_path / "deep" / "Annotations" / folder / "Train_Set" / "v1.txt", [0, 1])
    write_labels(tmp_path / "deep" / "Annotations" / folder / "Validation_Set" / "v2_left.txt", [2])
    # Other challenges' folders share the split names and must be ignored.
    write_labels(tmp_path / "Annotations" / "VA_Estimation_Challenge" / "Train_Set" / "v9.txt", [0])
    write_crops(tmp_path / "cropped_aligned" / "cropped_aligned" / "v1", [1, 2])
    write_crops(tmp_path / "x" / "cropped_aligned_new_50_vids" / "v2_left", [1])
    layout = affwild2.scan(tmp_path)
    assert set(layout.annotations["train"]) == {"v1"}
    assert set(layout.annotations["val"]) == {"v2_left"}
    assert set(layout.crop_dirs) == {"v1", "v2_left"}


def test_crops_split_over_two_folders_are_merged(tmp_path):
    write_crops(tmp_path / "cropped_aligned" / "v1", [1, 3])
    write_crops(tmp_path / "cropped_aligned_new_50_vids" / "v1", [2])
    write_labels(tmp_path / "EXPR_Classification_Challenge" / "Train_Set" / "v1.txt", [0, 0, 0])
    frames, paths = affwild2.list_crops(affwild2.scan(tmp_path).crop_dirs["v1"])
    np.testing.assert_array_equal(frames, [1, 2, 3])
    assert paths[1].endswith("cropped_aligned_new_50_vids/v1/00002.jpg")


def test_missing_annotation_folder_is_an_error(tmp_path):
    write_crops(tmp_path / "cropped_aligned" / "v1", [1])
    with pytest.raises(DataError, match=str(tmp_path)):
        affwild2.scan(tmp_path)


def test_template_keeps_file_order_and_rejects_bad_rows(tmp_path):
    path = tmp_path / "CVPR_6th_ABAW_Expr_test_set_sample.txt"
    path.write_text(EXPR_TEMPLATE_HEADER + "\nzz/00001.jpg,\nzz/00002.jpg,\naa_left/00001.jpg,\n")
    rows = affwild2.read_template(path)
    assert list(rows.txtid) == ["zz", "zz", "aa_left"]
    assert list(rows.frame) == [1, 2, 1]
    assert list(rows.template_row) == [0, 1, 2]
    path.write_text(EXPR_TEMPLATE_HEADER + "\nzz/frame1.jpg,\n")
    with pytest.raises(DataError, match=r"sample.txt:2"):
        affwild2.read_template(path)
    path.write_text("image_location,Neutral\nzz/00001.jpg,\n")
    with pytest.raises(DataError, match="line 1"):
        affwild2.read_template(path)


def test_the_expression_release_list_is_picked_among_others(tmp_path):
    write_labels(tmp_path / "EXPR_Classification_Challenge" / "Train_Set" / "v1.txt", [0])
    (tmp_path / "Valence_Arousal_Estimation_Challenge_test_set_release.txt").write_text("a\n")
    (tmp_path / "Expression_Classification_Challenge_test_set_release.txt").write_text("b\n")
    assert affwild2.scan(tmp_path).release_list.name.startswith("Expression")


def make_tree(root, with_template: bool):
    """Two train txtids (one pair sharing a video), one test txtid, tiny crops and videos."""
    ann = root / "EXPR_Recognition_Challenge"
    write_labels(ann / "Train_Set" / "p_left.txt", [0, 1, 1, -1, 2])        # 5 label lines
    write_labels(ann / "Train_Set" / "p_right.txt", [3, 3, 3, 3, 3, 3])     # 6 label lines
    write_crops(root / "cropped_aligned" / "p_left", [2, 3, 4])
    write_crops(root / "cropped_aligned" / "p_right", [1, 2, 3, 4])
    write_test_video(root / "videos" / "p.mp4", n_frames=4, fps=25, audio_seconds=4 / 25)
    write_crops(root / "cropped_aligned" / "t1", [1, 2])
    write_test_video(root / "videos" / "t1.avi", n_frames=6, fps=30, audio_seconds=None)
    (root / "EXPR_test_set_release.txt").write_text("t1\n")
    if with_template:
        (root / "ABAW_EXPR_test_set_example.txt").write_text(
            EXPR_TEMPLATE_HEADER + "\nt1/00003.jpg,\nt1/00001.jpg,\nt1/00002.jpg,\n")


@pytest.mark.parametrize("with_template", [True, False])
def test_prepare_indexes_by_label_file_and_template(tmp_path, with_template):
    make_tree(tmp_path / "raw", with_template)
    prepare_data.main(["--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out")])
    frames = pd.read_parquet(tmp_path / "out" / "frames.parquet")
    left = frames[frames.txtid == "p_left"]
    # Indexed by the label file (5 lines), not by the 4 decoded frames.
    assert list(left.frame) == [1, 2, 3, 4, 5]
    assert list(left.label) == [0, 1, 1, -1, 2]
    assert list(left.has_crop) == [False, True, True, True, False]
    assert left.crop_path.iloc[1].endswith("p_left/00002.jpg") and left.crop_path.iloc[0] == ""
    assert len(frames[frames.txtid == "p_right"]) == 6
    assert set(frames.videoid[frames.txtid.str.startswith("p_")]) == {"p"}
    test = frames[frames.split == "test"]
    if with_template:
        assert list(test.frame) == [1, 2, 3]
        assert list(test.template_row) == [1, 2, 0]
    else:
        assert list(test.frame) == list(range(1, 8))     # 6 container frames + 1
        assert (test.template_row == -1).all()
    assert (test.label == -1).all()
    videos = pd.read_parquet(tmp_path / "out" / "videos.parquet").set_index("videoid")
    assert videos.loc["p", "has_audio"] and not videos.loc["t1", "has_audio"]
    assert videos.loc["t1", "fps"] == 30 and videos.loc["p", "n_frames"] == 4


def test_test_txtid_without_crops_or_video_stops_prepare(tmp_path, capsys):
    root = tmp_path / "raw"
    make_tree(root, with_template=True)
    (root / "ABAW_EXPR_test_set_example.txt").write_text(EXPR_TEMPLATE_HEADER + "\nghost/00001.jpg,\n")
    with pytest.raises(SystemExit) as err:
        prepare_data.main(["--root", str(root), "--out", str(tmp_path / "out")])
    assert "ghost" in str(err.value) and "example.txt" in str(err.value)
    assert not (tmp_path / "out" / "frames.parquet").exists()


def test_train_txtid_without_video_is_kept_and_counted(tmp_path):
    root = tmp_path / "raw"
    make_tree(root, with_template=True)
    write_labels(root / "EXPR_Recognition_Challenge" / "Validation_Set" / "novideo.txt", [4, 4])
    write_crops(root / "cropped_aligned" / "novideo", [1, 2])
    write_labels(root / "EXPR_Recognition_Challenge" / "Validation_Set" / "nothing.txt", [4])
    prepare_data.main(["--root", str(root), "--out", str(tmp_path / "out")])
    meta = pd.read_json(tmp_path / "out" / "meta.json", typ="series")
    assert meta["counts"]["val"]["txtids_without_video"] == 1
    assert meta["warnings"] == {"no audio": 1, "unusable": 1, "no video": 1}
    frames = pd.read_parquet(tmp_path / "out" / "frames.parquet")
    assert "nothing" not in set(frames.txtid) and "novideo" in set(frames.txtid)
