"""The DFEW system after the data layer: feature generators, the clip model, 5-fold selection, the ablation."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import extract_features
import train_fusion
import train_image
from utils.models import temporal
from utils.readers.dfew import clip_score, fold_split, prepare_dfew
from utils.synthetic.dfew import make_dfew


@pytest.fixture(scope="module")
def dfew(tmp_path_factory):
    """A synthetic DFEW tree with OpenPose output for every clip and every face in sight (these
    tests are about time and the pipeline; tests/test_dfew_fusion.py about the streams), prepared."""
    root = tmp_path_factory.mktemp("dfew")
    make_dfew(root / "raw", seed=2, n_clips=150, size=32, openpose=1.0, hidden=0.0, jobs=2)
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


@pytest.fixture(scope="module")
def kit_image(dfew, image_run):
    """The kit's Aff-Wild2 image model as a frozen generator: its feature run of the eval frames."""
    return extract(dfew, "--modality", "image", "--checkpoint", str(image_run / "best.pt"), "--frames", "eval",
                   "--workers", "0")


def test_kit_image_model_and_audio_branch_as_frozen_generators(dfew, kit_image, audio_run):
    frames = pd.read_parquet(dfew / "data" / "frames.parquet")
    image = load(kit_image)
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


@pytest.mark.usefixtures("no_curves")
def test_temporal_beats_frame_average_and_never_selects_on_the_test_fold(dfew, keypoints):
    """Twin classes show the same faces in opposite order: an average of frames cannot tell them
    apart (best UAR about 4/7), a model over time can."""
    # 150 clips give 6 steps an epoch: twice the demo preset's 40 epochs (made for 480 clips).
    results = {m: train(dfew, m, "--model", m, "--features", str(keypoints), "--folds", "1,2", "--epochs", "80")
               for m in ("temporal", "frame_average")}
    assert [f["fold"] for f in results["temporal"]["folds"]] == [1, 2]
    # Measured on folds 1-2: 0.85 against 0.31.
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


@pytest.mark.usefixtures("no_curves")
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


def test_clip_score_averages_frame_logits_per_clip():
    # Clip a: frames vote 0, 0, 1 -> mean picks 0 (true 0). Clip b: one confident frame for 2
    # outweighs two weak frames for 1 -> 2 (true 1). Clip c: 1 (true 1).
    txtid = np.array(["a", "a", "a", "b", "b", "b", "c"])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    logits = np.zeros((7, 7), np.float32)
    logits[[0, 1, 2], [0, 0, 1]] = [2.0, 2.0, 1.0]
    logits[[3, 4, 5], [1, 1, 2]] = [1.0, 1.0, 5.0]
    logits[6, 1] = 1.0
    scored = clip_score(txtid, labels, logits)
    # Recall: class 0 1/1, class 1 1/2 -> UAR 0.75; 2 of 3 clips right -> WAR 2/3.
    assert scored["clips"] == 3 and scored["uar"] == pytest.approx(0.75) and scored["war"] == pytest.approx(2 / 3)
    assert scored["macro_f1"] == scored["uar"]   # what the Trainer selects on


@pytest.fixture(scope="module")
def fine_tuned(dfew, image_run):
    """Fold 1's image model, fine-tuned from the kit's Aff-Wild2 model, and its feature run."""
    image = train_image.main(["--dataset", "dfew", "--preset", "demo", "--data", str(dfew / "data"), "--runs",
                              str(dfew / "runs"), "--fold", "1", "--val-share", "0.2", "--img-size", "32",
                              "--epochs", "1", "--lr", "1e-3", "--pretrained-path", str(image_run / "best.pt")])
    return image, extract(dfew, "--checkpoint", str(image / "best.pt"), "--frames", "eval", "--workers", "0")


def test_image_model_fine_tuned_on_a_fold_learns_only_from_its_training_clips(dfew, fine_tuned):
    image, features = fine_tuned
    assert image.name == "dfew-test_efficientnet-fold1_seed0"
    clips = pd.read_parquet(dfew / "data" / "clips.parquet")
    folds = pd.read_parquet(dfew / "data" / "folds.parquet")
    part = folds[folds["fold"] == 1]
    split = json.loads((image / "split.json").read_text())
    assert set(split["test"]) == set(part.loc[part["split"] == "test", "clip"])
    assert set(split["train"]) | set(split["val"]) == set(part.loc[part["split"] == "train", "clip"])
    assert not set(split["val"]) & set(split["train"])
    # The clip model's validation clips for the same seed and share are the image model's.
    ours = fold_split(clips, folds, 1, 0.2, 0)
    assert set(split["val"]) == set(clips["clip"].to_numpy()[ours["val"]])
    with np.load(image / "preds" / "test.npz", allow_pickle=False) as preds:
        assert preds["logits"].shape[1] == 7 and len(preds["txtid"]) == 16 * len(split["test"])
        keys = set(zip(preds["txtid"], preds["frame"]))
    extracted = load(features)   # the 16 eval frames, 1-based positions: the same keys
    assert keys == {(t, f) for t, f in zip(extracted["txtid"], extracted["frame"]) if t in set(split["test"])}
    # Training drew from the frames of the training clips only: every frame of a class under
    # the demo cap (500), the cap of the others.
    frames = pd.read_parquet(dfew / "data" / "frames.parquet")
    labels = clips.set_index("clip")["label"]
    per_class = np.bincount(labels.loc[frames.loc[frames["clip"].isin(split["train"]), "clip"]], minlength=7)
    drawn = json.loads((image / "log.jsonl").read_text().splitlines()[0])["drawn_per_class"]
    assert drawn == np.minimum(per_class, 500).tolist()
    metrics = json.loads((image / "metrics.json").read_text())
    assert {"val_uar", "test_uar", "test_war"} <= set(metrics) and 0 <= metrics["test_uar"] <= 1
    assert json.loads((features / "generator_split.json").read_text()) == split
    assert load(features)["features"].shape[1] == 256   # test_efficientnet's pooled feature, not its head


@pytest.mark.usefixtures("no_curves")
def test_clip_model_takes_each_folds_own_generator_and_refuses_a_leaking_one(dfew, fine_tuned):
    _, features = fine_tuned
    template = str(features).replace("fold1", "fold{fold}")
    result = train(dfew, "ft", "--features", template, "--fold", "1", "--epochs", "2")
    assert result["streams"] == [Path(template).name] and result["folds"][0]["val_clips_seen_by_generators"] == 0
    # Fold 1's generator trained on most of fold 2's test clips: the test fold would leak.
    with pytest.raises(SystemExit, match=r"fold 2: .*fold1_seed0 comes from an image model that learnt from \d+ of"):
        train(dfew, "leak", "--features", str(features), "--fold", "2", "--epochs", "2")
    # A fold whose generator is missing, or leaks, stops the run before any fold trains.
    with pytest.raises(SystemExit, match=r"fold2_seed0: not a complete feature run"):
        train(dfew, "gap", "--features", template, "--folds", "1,2", "--epochs", "2")
    with pytest.raises(SystemExit, match=r"fold 2: .*fold1_seed0 comes from"):
        train(dfew, "late", "--features", str(features), "--folds", "1,2", "--epochs", "2")
    assert not (dfew / "runs" / "temporal" / "gap_seed0" / "fold1").exists()
    assert not (dfew / "runs" / "temporal" / "late_seed0" / "fold1").exists()
    # Another seed draws other validation clips, some of them the generator's training clips.
    other = train(dfew, "seed1", "--features", template, "--fold", "1", "--epochs", "2", "--seed", "1")
    assert other["folds"][0]["val_clips_seen_by_generators"] > 0


def test_torchrun_shards_extraction_and_rank_zero_writes_the_same_features(dfew, image_run, kit_image, tmp_path):
    import subprocess
    import sys
    argv = ["--data", str(dfew / "data"), "--checkpoint", str(image_run / "best.pt"), "--frames", "eval",
            "--workers", "0", "--name", "sharded"]
    single = load(kit_image)   # the same model and frames in one process
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run([str(torchrun), "--nproc_per_node=2", "extract_features.py", *argv, "--runs", str(tmp_path)],
                         cwd=Path(extract_features.__file__).parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "features" / "sharded"
    assert json.loads((run / "config.json").read_text())["config"]["world_size"] == 2
    sharded = load(run)
    np.testing.assert_array_equal(sharded["txtid"], single["txtid"])
    np.testing.assert_array_equal(sharded["mask"], single["mask"])
    # Other batch boundaries, the same numbers up to float16 rounding.
    np.testing.assert_allclose(sharded["features"].astype(np.float32), single["features"].astype(np.float32),
                               rtol=1e-2, atol=1e-2)


def test_fine_tuned_weights_cannot_leak_through_pretrained_path_or_a_changed_split(dfew, fine_tuned):
    image, _ = fine_tuned
    weights = str(image / "best.pt")
    # The same weights as plain initial weights still carry the clips they learnt from.
    run = extract(dfew, "--model", "test_efficientnet", "--img-size", "32", "--pretrained-path", weights,
                  "--frames", "eval", "--workers", "0", "--name", "via-pretrained-path")
    assert (run / "generator_split.json").is_file()
    with pytest.raises(SystemExit, match="fold 2: .*via-pretrained-path comes from"):
        train(dfew, "leak2", "--features", str(run), "--fold", "2", "--epochs", "2")
    # Fine-tuning fold 2 from fold 1's weights would start from its test clips.
    base = ["--dataset", "dfew", "--preset", "demo", "--data", str(dfew / "data"), "--runs", str(dfew / "runs"),
            "--img-size", "32", "--epochs", "1"]
    with pytest.raises(SystemExit, match=r"best.pt: learnt from \d+ of fold 2's test clips"):
        train_image.main([*base, "--fold", "2", "--pretrained-path", weights])
    # Re-predicting the run with another validation share would misstate what it trained on.
    with pytest.raises(SystemExit, match="split.json: this run was trained on another split"):
        train_image.main([*base, "--fold", "1", "--val-share", "0.3", "--predict-only"])
