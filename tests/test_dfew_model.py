"""The DFEW system after the data layer: feature generators, the clip model, 5-fold selection, the ablation."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import extract_features
import train_fusion
from utils import temporal
from utils.dfew import prepare_dfew
from utils.synthetic_dfew import make_dfew


@pytest.fixture(scope="module")
def dfew(tmp_path_factory):
    """A synthetic DFEW tree with OpenPose output for every clip, prepared."""
    root = tmp_path_factory.mktemp("dfew")
    make_dfew(root / "raw", seed=2, n_clips=150, size=32, openpose=1.0, jobs=2)
    prepare_dfew(root / "raw", root / "data", jobs=2)
    return root


def extract(root, *argv):
    return extract_features.main(["--data", str(root / "data"), "--runs", str(root / "runs"), *argv])


@pytest.fixture(scope="module")
def keypoints(dfew):
    return extract(dfew, "--modality", "keypoints", "--openpose", str(dfew / "raw" / "openpose"))


def load(run):
    with np.load(run / "features.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_generators_write_every_frame_in_key_order_and_mask_what_is_missing(dfew, keypoints):
    frames = pd.read_parquet(dfew / "data" / "frames.parquet")
    clips = pd.read_parquet(dfew / "data" / "clips.parquet").set_index("clip")
    kp = load(keypoints)
    assert len(kp["txtid"]) == len(frames) and kp["features"].shape == (len(frames), 95 * 3)
    key = list(zip(kp["txtid"], kp["frame"]))
    assert key == sorted(key) and kp["frame"].min() == 1
    np.testing.assert_array_equal(kp["label"], clips.loc[kp["txtid"], "label"].to_numpy())
    assert kp["mask"].mean() > 0.8   # OpenPose output for every clip; a few frames with nobody
    audio = load(extract(dfew, "--modality", "audio"))
    assert audio["features"].shape == (len(frames), 64)
    np.testing.assert_array_equal(audio["mask"], clips.loc[audio["txtid"], "has_audio"].to_numpy())
    assert not audio["features"][~audio["mask"]].any()
    metrics = json.loads((dfew / "runs" / "features" / "logmel" / "metrics.json").read_text())
    assert metrics["masked_clips"] == int((~clips["has_audio"]).sum()) > 0


def test_extra_modality_slot_and_nearest_frame_lookup(dfew, tmp_path):
    """Per-clip .npy arrays: a missing clip is masked and counted, a wrong shape names the file;
    a run of the 16 eval frames serves every position from its nearest eval frame."""
    clips = pd.read_parquet(dfew / "data" / "clips.parquet")
    folder = tmp_path / "omnivec"
    folder.mkdir()
    for clip, n in zip(clips["clip"][1:], clips["n_frames"][1:]):   # the first clip has no file
        np.save(folder / f"{clip}.npy", np.arange(n, dtype=np.float32)[:, None].repeat(3, 1))
    run = extract(dfew, "--modality", "extra", "--extra-dir", str(folder), "--frames", "eval")
    extra = load(run)
    assert extra["features"].shape[1] == 3 and not extra["mask"][extra["txtid"] == clips["clip"][0]].any()
    assert json.loads((run / "metrics.json").read_text())["warnings"] == {"no extra file": 1}
    stream = temporal.Stream(run, clips)
    longest = int(clips["n_frames"].idxmax())
    offset = int(clips["n_frames"][:longest].sum())
    n = int(clips["n_frames"][longest])
    served = stream.bank[stream.lookup[offset:offset + n]][:, 0].float().numpy()
    evaluated = extra["frame"][extra["txtid"] == clips["clip"][longest]] - 1
    nearest = evaluated[np.abs(np.arange(n)[:, None] - evaluated[None]).argmin(1)]
    np.testing.assert_array_equal(served, nearest)   # each position holds its nearest eval frame's value
    np.save(folder / f"{clips['clip'][2]}.npy", np.zeros((3, 3), np.float32))
    with pytest.raises(SystemExit, match=f"{clips['clip'][2]}.npy: shape"):
        extract(dfew, "--modality", "extra", "--extra-dir", str(folder), "--name", "broken")


def test_kit_image_model_and_audio_branch_as_frozen_generators(dfew, image_run, audio_run):
    frames = pd.read_parquet(dfew / "data" / "frames.parquet")
    image = load(extract(dfew, "--modality", "image", "--checkpoint", str(image_run / "best.pt"), "--frames", "eval",
                         "--workers", "0"))
    assert len(image["txtid"]) == int(frames["eval_sample"].sum()) and image["mask"].all()
    assert image["features"].dtype == np.float16 and image["features"].astype(np.float32).std() > 0
    run = extract(dfew, "--modality", "audio", "--audio-run", str(audio_run), "--frames", "eval")
    audio = load(run)
    width = json.loads((run / "metrics.json").read_text())["feature_dim"]
    assert run.name == f"audio-{audio_run.name}" and width % 3 == 0 and audio["features"].shape[1] == width
    has_audio = pd.read_parquet(dfew / "data" / "clips.parquet").set_index("clip")["has_audio"]
    np.testing.assert_array_equal(audio["mask"], has_audio.loc[audio["txtid"]].to_numpy())


def test_temporal_model_reads_order_and_ignores_masked_frames():
    torch.manual_seed(0)
    model = temporal.TemporalModel([6, 4], n_frames=8, width=16, heads=2, layers=1).eval()
    for attention in (m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)):
        torch.nn.init.normal_(attention.out_proj.weight, std=0.3)   # as trained: they start at zero
    average = temporal.FrameAverage([6, 4]).eval()
    feats = [torch.randn(3, 8, 6), torch.randn(3, 8, 4)]
    masks = [torch.ones(3, 8, dtype=torch.bool), torch.ones(3, 8, dtype=torch.bool)]
    masks[0][0, 5:] = False        # a short clip's padding
    masks[1][1] = False            # a clip without the second modality at all
    out = model(feats, masks)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    garbage = [f.clone() for f in feats]
    for f, m in zip(garbage, masks):
        f[~m] = 1e3
    torch.testing.assert_close(model(garbage, masks), out)
    other = [feats[0], feats[1].clone()]
    other[1][0, 0] += torch.randn(4)   # an unmasked frame of the second stream is read
    assert not torch.allclose(model(other, masks)[0], out[0])
    torch.testing.assert_close(average(garbage, masks), average(feats, masks))
    reverse = [f.flip(1) for f in feats]
    full = [torch.ones(3, 8, dtype=torch.bool)] * 2
    assert not torch.allclose(model(reverse, full), model(feats, full), atol=1e-4)   # order matters to it
    torch.testing.assert_close(average(reverse, full), average(feats, full))         # and not to the average


def train(dfew, name, *argv):
    return train_fusion.main(["--dataset", "dfew", "--preset", "demo", "--data", str(dfew / "data"),
                              "--runs", str(dfew / "runs"), "--name", name, *argv])


def test_temporal_beats_frame_average_and_never_selects_on_the_test_fold(dfew, keypoints):
    """Twin classes show the same faces in opposite order: an average of frames cannot tell them
    apart (best UAR about 4/7), a model over time can."""
    results = {m: train(dfew, m, "--model", m, "--features", str(keypoints), "--folds", "1,2")
               for m in ("temporal", "frame_average")}
    assert [f["fold"] for f in results["temporal"]["folds"]] == [1, 2]
    # Measured on folds 1-3 (80 epochs): 0.78 against 0.28.
    assert results["temporal"]["mean_test_uar"] > results["frame_average"]["mean_test_uar"] + 0.2
    folds = pd.read_parquet(dfew / "data" / "folds.parquet")
    for fold in (1, 2):
        run = dfew / "runs" / "temporal" / "temporal_seed0" / f"fold{fold}"
        split = json.loads((run / "split.json").read_text())
        part = folds[folds["fold"] == fold]
        assert set(split["val"]) and not set(split["val"]) & set(split["test"])
        assert set(split["train"]) | set(split["val"]) == set(part.loc[part["split"] == "train", "clip"])
        assert set(split["test"]) == set(part.loc[part["split"] == "test", "clip"])
        with np.load(run / "preds" / "test.npz", allow_pickle=False) as preds:
            assert sorted(preds["txtid"]) == sorted(split["test"]) and preds["logits"].shape[1] == 7
    metrics = json.loads((dfew / "runs" / "temporal" / "temporal_seed0" / "metrics.json").read_text())
    assert metrics["mean_test_uar"] == pytest.approx(np.mean([f["test_uar"] for f in metrics["folds"]]))


def test_ablation_is_one_command_and_the_same_seed_gives_the_same_numbers(dfew, keypoints):
    audio = dfew / "runs" / "features" / "logmel"
    if not (audio / "metrics.json").exists():
        extract(dfew, "--modality", "audio")
    argv = ["--features", str(keypoints), str(audio), "--fold", "4", "--epochs", "3"]
    results = train(dfew, "abl", "--ablation", *argv)
    assert list(results) == ["frame average", "keypoints", "keypoints + audio"]
    assert all(len(r["folds"]) == 1 and 0 <= r["mean_test_uar"] <= 1 for r in results.values())
    again = train(dfew, "abl", "--ablation", "--overwrite", *argv)
    assert again == results


def test_dataset_flag_picks_the_dfew_options(dfew, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_fusion.main(["--dataset", "dfew", "-h"])
    assert exit_.value.code == 0 and "--folds" in capsys.readouterr().out
    config = tmp_path / "dfew.json"
    config.write_text(json.dumps({"dataset": "dfew", "data": str(dfew / "data")}))
    with pytest.raises(SystemExit, match="--features RUN"):   # the DFEW config, read from the file
        train_fusion.main(["--config", str(config)])


def test_no_validation_clips_is_an_error_not_a_silent_first_epoch(dfew, keypoints):
    with pytest.raises(SystemExit, match="fold 1: --val-share 0.0 leaves no validation clips"):
        train(dfew, "noval", "--features", str(keypoints), "--fold", "1", "--val-share", "0")
