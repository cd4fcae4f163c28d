"""The DFEW clip model gains from a stream that carries what another lacks, and loses nothing by
a stream a clip does not have (utils/models/temporal.py: absent streams, modality dropout)."""
import numpy as np
import pandas as pd
import pytest
import torch

import train_fusion
from utils.models import temporal
from utils.runs import save_config, save_parquet, write_json


def feature_run(root, name: str, kind: str, clips: pd.DataFrame, signal: np.ndarray, informative: np.ndarray,
                present: np.ndarray, rng):
    """A feature run (extract_features.py's files) whose frames show their clip's class through
    `signal` (class -> vector) where `informative`, noise elsewhere, and nothing where not `present`."""
    n = clips["n_frames"].to_numpy()
    txtid, frame = np.repeat(clips["clip"], n), np.concatenate([np.arange(1, k + 1) for k in n])
    rows = np.repeat(np.arange(len(clips)), n)
    feats = rng.normal(0, 1.0, (len(rows), signal.shape[1]))
    shown = informative[rows]
    feats[shown] += signal[clips["label"].to_numpy()[rows[shown]]]
    mask = present[rows]
    feats[~mask] = 0
    run = root / "features" / name
    run.mkdir(parents=True)
    np.savez(run / "features.npz", txtid=txtid.to_numpy().astype(str), frame=frame, number=frame,
             label=clips["label"].to_numpy()[rows], mask=mask, features=feats.astype(np.float16))
    save_config(run, {"modality": kind})
    write_json(run / "metrics.json", {"clips": len(clips)})
    return run


@pytest.fixture(scope="module")
def complementary(tmp_path_factory):
    """280 clips, 40 a class. The image stream shows the class in half of the clips (the others:
    a face out of sight, pure noise); the audio stream shows it in the clips with sound (70 %),
    drawn independently. Best UAR by construction: image 0.5 + 0.5/7 = 0.57, audio 0.7 + 0.3/7
    = 0.74, both 1 - 0.5 x 0.3 x 6/7 = 0.87."""
    root = tmp_path_factory.mktemp("fusion")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 40)
    clips = pd.DataFrame({"clip": [f"{i + 1:05d}" for i in range(len(labels))], "n_frames": np.int32(16),
                          "label": rng.permutation(labels).astype(np.int8)})
    folds = pd.DataFrame({"clip": clips["clip"], "fold": np.int8(1),
                          "split": np.where(np.arange(len(clips)) % 4 == 0, "test", "train"), "label": clips["label"]})
    save_parquet(root / "data" / "clips.parquet", clips)
    save_parquet(root / "data" / "folds.parquet", folds)
    everywhere = np.ones(len(clips), bool)
    image = feature_run(root, "image", "image", clips, rng.normal(0, 1.5, (7, 12)), rng.random(len(clips)) < 0.5,
                        everywhere, rng)
    sound = rng.random(len(clips)) < 0.7
    audio = feature_run(root, "audio", "audio", clips, rng.normal(0, 1.5, (7, 8)), sound, sound, rng)
    return root, image, audio


@pytest.mark.usefixtures("no_curves")
def test_fused_model_beats_each_single_stream_model(complementary):
    root, image, audio = complementary

    def uar(*runs):
        result = train_fusion.main(["--dataset", "dfew", "--preset", "demo", "--data", str(root / "data"),
                                    "--runs", str(root / "runs"), "--name", "+".join(r.name for r in runs),
                                    "--features", *map(str, runs), "--fold", "1", "--epochs", "10"])
        return result["mean_test_uar"]

    alone = {"image": uar(image), "audio": uar(audio)}
    both = uar(image, audio)
    # 10 epochs (about 10 steps each): the fixture drawn with seeds 0, 1, 2 gave margins of 0.074,
    # 0.090, 0.105 (25 epochs: 0.079, 0.090, 0.145); the single streams score the same either way.
    assert both > max(alone.values()) + 0.05, (both, alone)


def test_an_absent_stream_leaves_the_clip_as_scored_without_it():
    """A clip without stream 2 (all frames masked) gets exactly the logits of the same model
    with stream 2 cut out, and its features do not matter; training drops streams whole."""
    torch.manual_seed(0)
    model = temporal.TemporalModel([6, 4, 5], n_frames=8, width=16, heads=2, layers=1).eval()
    for attention in (m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)):
        torch.nn.init.normal_(attention.out_proj.weight, std=0.3)   # as trained: they start at zero
    pair = {"proj.2.", "to_other.1.", "from_other.1.", "stream_heads.2."}
    cut = temporal.TemporalModel([6, 4], n_frames=8, width=16, heads=2, layers=1).eval()
    cut.load_state_dict({k: (v[:2] if k in ("modality", "missing") else v) for k, v in model.state_dict().items()
                         if not any(k.startswith(p) for p in pair)})
    feats = [torch.randn(3, 8, 6), torch.randn(3, 8, 4), torch.randn(3, 8, 5)]
    masks = [torch.ones(3, 8, dtype=torch.bool) for _ in feats]
    masks[1][1, 6:] = False
    masks[2][:] = False
    torch.testing.assert_close(model(feats, masks), cut(feats[:2], masks[:2]))
    feats[2] = torch.randn(3, 8, 5) * 100
    torch.testing.assert_close(model(feats, masks), cut(feats[:2], masks[:2]))
    # Without the primary stream the others still score the clip, finitely.
    masks[0][0] = False
    assert torch.isfinite(model(feats, masks)).all()
    # Modality dropout: whole streams, never every stream a clip has, only in training.
    dropping = temporal.TemporalModel([6, 4], n_frames=8, modality_dropout=0.5)
    full = [torch.ones(256, 8, dtype=torch.bool), torch.ones(256, 8, dtype=torch.bool)]
    full[1][:128] = False   # half the clips have no second stream: they keep the first
    kept = torch.stack([m.any(1) for m in dropping.drop_modalities(full)], 1)
    assert kept[:128, 0].all() and not kept[:128, 1].any()
    assert kept[128:].any(1).all() and 0.2 < (~kept[128:]).float().mean() < 0.5
    for m in dropping.drop_modalities(full):
        assert (m.all(1) | ~m.any(1)).all()   # a stream is dropped whole or not at all
    x, scored = [torch.randn(64, 8, 6), torch.randn(64, 8, 4)], [full[0][128:192], full[1][128:192]]
    torch.testing.assert_close(dropping.eval()(x, scored), dropping(x, scored))   # scoring drops nothing
