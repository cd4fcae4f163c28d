"""The default configurations, not the tiny presets: the models a user trains on a GPU, run here
with random weights on a handful of samples (issue 16). Each branch takes one or two optimiser
steps with its real default model and predicts a few frames; the fusion is fed the image and
audio runs made so. Only the amount of data and the batch size differ from the defaults."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import extract_features
import train_audio
import train_fusion
import train_image
from utils.readers.dfew import prepare_dfew
from utils.synthetic.dfew import make_dfew

IMAGE_DEFAULT, AUDIO_DEFAULT = train_image.ImageConfig(), train_audio.AudioConfig()
FEW = ["--epochs", "1", "--batch-size", "4", "--accum-steps", "1", "--max-per-class", "1", "--workers", "0",
       "--no-pretrained"]


def few_frames(frames: pd.DataFrame, split: str, txtids: int, per_txtid: int = 4) -> pd.DataFrame:
    """Up to `per_txtid` crop frames of the first `txtids` txtids of `split`, one per label first
    (so a class-balanced draw finds several classes), in (txtid, frame) order."""
    part = frames[(frames.split == split) & frames.has_crop]
    chosen = []
    for txtid in part.txtid.unique()[:txtids]:
        rows = part[part.txtid == txtid]
        firsts = rows.drop_duplicates("label")
        chosen.append(pd.concat([firsts, rows]).drop_duplicates("frame").head(per_txtid).sort_values("frame"))
    return pd.concat(chosen)


@pytest.fixture(scope="module")
def tiny(demo_data, tmp_path_factory):
    """The demo tree cut to 16 frames (2 train txtids, 1 val, 1 test): the crops and the sound stay
    where the demo put them, only frames.parquet is cut."""
    out = tmp_path_factory.mktemp("defaults") / "data"
    shutil.copytree(demo_data, out, ignore=shutil.ignore_patterns("frames.parquet"))
    frames = pd.read_parquet(demo_data / "frames.parquet")
    frames["split"] = frames["split"].astype(str)
    labelled = frames[frames.label >= 0]
    cut = pd.concat([few_frames(labelled, "train", 2), few_frames(labelled, "val", 1), few_frames(frames, "test", 1)])
    cut.reset_index(drop=True).to_parquet(out / "frames.parquet", index=False)
    return out


@pytest.fixture(scope="module")
def image_default(tiny, tmp_path_factory):
    return train_image.main(["--data", str(tiny), "--runs", str(tmp_path_factory.mktemp("runs")), *FEW])


@pytest.fixture(scope="module")
def audio_default(tiny, tmp_path_factory):
    # The cut tree's frames are not consecutive, so no window could pass the label-purity test
    # (a property of the cut, not of the model): every window is kept.
    return train_audio.main(["--data", str(tiny), "--runs", str(tmp_path_factory.mktemp("runs")), *FEW,
                             "--purity", "0", "0", "0"])


def preds(run, split):
    with np.load(run / "preds" / f"{split}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_image_default_swin_tiny_at_224_trains_and_predicts(image_default, tiny):
    config = json.loads((image_default / "config.json").read_text())["config"]
    assert (config["model"], config["img_size"], config["crop_size"]) == ("swin_tiny_patch4_window7_224", 224, 112)
    assert IMAGE_DEFAULT.model == config["model"] and IMAGE_DEFAULT.img_size == 224 and config["tta"]
    log = [json.loads(line) for line in (image_default / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and np.isfinite(log[0]["train_loss"])
    frames = pd.read_parquet(tiny / "frames.parquet")
    for split in ("train", "val", "test"):
        p = preds(image_default, split)
        assert p["logits"].shape == ((frames.split == split).sum(), 8)
        assert p["features"].shape[1] == 768 and np.isfinite(p["logits"]).all()   # Swin-Tiny's pooled width
    assert (image_default / "curves.png").is_file()


def test_audio_default_one_channel_swin_tiny_trains_and_predicts(audio_default, tiny):
    config = json.loads((audio_default / "config.json").read_text())["config"]
    assert (config["model"], config["img_size"], config["n_mels"]) == (AUDIO_DEFAULT.model, 224, 128)
    assert config["model"] == "swin_tiny_patch4_window7_224" and config["window_frames"] == [32, 48, 64]
    frames = pd.read_parquet(tiny / "frames.parquet")
    for split in ("train", "val", "test"):
        p = preds(audio_default, split)
        assert p["features"].shape == ((frames.split == split).sum(), 3, 768)
        assert np.isfinite(p["logits"]).all()
    assert (audio_default / "curves.png").is_file()


def test_fusion_default_width_on_the_default_branches(image_default, audio_default, tmp_path):
    run = train_fusion.main(["--image", str(image_default), "--audio", str(audio_default), "--runs", str(tmp_path),
                             "--epochs", "1", "--batch-size", "4"])
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["width"] == train_fusion.FusionConfig().width == 256 and config["heads"] == 4
    p = preds(run, "val")
    assert p["logits_fusion"].shape == (len(preds(image_default, "val")["txtid"]), 8)
    assert p["features"].shape[1] == 256 and np.isfinite(p["logits"]).all()
    assert (run / "metrics.json").is_file() and (run / "curves.png").is_file()


def test_dfew_clip_model_default_width(tmp_path):
    make_dfew(tmp_path / "raw", seed=2, n_clips=35, size=32, openpose=1.0, hidden=0.0, jobs=1)
    prepare_dfew(tmp_path / "raw", tmp_path / "data", jobs=1)
    features = extract_features.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                                      "--modality", "keypoints", "--openpose", str(tmp_path / "raw" / "openpose")])
    metrics = train_fusion.main(["--dataset", "dfew", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                                 "--features", str(features), "--epochs", "2", "--batch-size", "8", "--val-share", "0.3"])
    fold = tmp_path / "runs" / "temporal" / "dfew_seed0" / "fold1"
    config = json.loads((fold / "config.json").read_text())["config"]
    assert config["width"] == 128 and (config["heads"], config["layers"]) == (4, 2)
    assert len(metrics["folds"]) == 1 and 0 <= metrics["mean_test_uar"] <= 1
    assert len((fold / "log.jsonl").read_text().splitlines()) == 2 and (fold / "curves.png").is_file()
