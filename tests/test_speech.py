"""Speech encoders as audio features (utils/readers/speech.py, train_audio.py --backbone): tiny random
encoders from torchaudio's factory, nothing downloads. Random weights cannot show learning."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import train_audio
from utils.files import DataError
from utils.readers import speech
from utils.readers.audio import frame_windows

RATE = speech.SAMPLE_RATE


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(t)) * t) * (1 + np.sin(3 * t))
            + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    return speech.build_encoder("tiny_random", 2, seed=0)


def test_cache_has_one_row_per_20_ms(tiny):
    for n in (RATE, RATE + 1, RATE + 319, RATE + 320, 12345):
        states = speech.encode(tiny, signal(n / RATE + 0.001)[:n])
        assert states.shape == (n // 320 + 1, 32) and states.dtype == np.float16
        assert np.isfinite(states).all()
    assert speech.default_layer(12) == 8 and speech.default_layer(24) == 16


def test_chunked_equals_unchunked_away_from_the_ends_and_seams_do_not_show(tiny):
    x = signal(12.0)
    whole = speech.encode(tiny, x, chunk_seconds=100, context_seconds=0).astype(np.float32)
    chunked = speech.encode(tiny, x, chunk_seconds=2, context_seconds=1).astype(np.float32)
    bare = speech.encode(tiny, x, chunk_seconds=2, context_seconds=0).astype(np.float32)
    assert chunked.shape == whole.shape

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # Attention sees less context in a chunk, so rows are close, not equal; the context margin helps.
    assert cos(chunked, whole).min() > 0.97
    assert np.abs(chunked - whole).mean() < np.abs(bare - whole).mean()
    jumps = np.linalg.norm(np.diff(whole, axis=0), axis=1)
    seams = np.arange(100, len(whole), 100) - 1   # row 99 -> 100 crosses the first seam
    seam_jumps = np.linalg.norm(chunked[seams + 1] - chunked[seams], axis=1)
    assert (seam_jumps < np.percentile(jumps, 95)).all()


class FrontEnd(speech.Encoder):
    """The tiny encoder's convolutional front end only: local, so an impulse shows where it is."""

    @torch.no_grad()
    def forward(self, wave):
        return self.model.feature_extractor(wave, None)[0][0]


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001, 30.0])
def test_an_impulse_lands_in_the_windows_of_the_frames_that_cover_it(tiny, fps):
    front = FrontEnd(tiny.model, 1, False)
    front.dim = 16
    seconds, t0 = 6.0, 3.217
    x = np.zeros(int(seconds * RATE), np.float32)
    quiet = speech.encode(front, x)
    x[int(t0 * RATE)] = 1.0
    hit = np.flatnonzero(np.abs(speech.encode(front, x).astype(np.float32) - quiet).max(1) > 1e-3)
    assert len(hit) and np.abs(hit * speech.HOP_SECONDS - t0).max() <= 0.01 + 1e-9   # rows centred within 10 ms
    n_frames = int(seconds * fps)
    frames = pd.DataFrame(dict(videoid="v", frame=np.arange(1, n_frames + 1)))
    videos = pd.DataFrame(dict(videoid=["v"], fps=[fps]))
    video, start, width = frame_windows(frames, videos, [32, 48, 64], speech.HOP_SECONDS)
    covering = int(np.floor(t0 * fps)) + 1   # frame t covers [(t-1)/fps, t/fps)
    for j, length in enumerate([32, 48, 64]):
        inside = (start[:, j, None] <= hit) & (hit < start[:, j, None] + width[:, j, None])
        assert inside[covering - 1].any()
        # frames whose windows end well before the impulse (or start well after) do not see it
        far = np.abs(frames["frame"].to_numpy() - covering) > length // 2 + 2
        assert not inside[far].any()


def test_pretrained_path_loads_a_saved_state_dict(tmp_path):
    source = speech.build_encoder("tiny_random", 1, seed=5)
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    loaded = speech.build_encoder("tiny_random", 1, str(path), seed=0)
    other = speech.build_encoder("tiny_random", 1, seed=0)
    x = signal(2.0)
    assert np.array_equal(speech.encode(loaded, x), speech.encode(source, x))
    assert not np.array_equal(speech.encode(other, x), speech.encode(source, x))
    torch.save({"model": {"nope": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="bad.pt"):
        speech.build_encoder("tiny_random", 1, str(tmp_path / "bad.pt"))


SPEECH_RUN = ["--backbone", "tiny_random", "--head-width", "16", "--epochs", "1", "--max-per-class", "40",
              "--batch-size", "32", "--lr", "1e-3", "--workers", "0", "--patience", "0", "--predict-stride", "8"]


def test_speech_preds_feed_the_fusion(demo_data, image_run, tmp_path, monkeypatch):
    import train_fusion
    run = train_audio.main(["--data", str(demo_data), "--runs", str(tmp_path), *SPEECH_RUN])
    cache = json.loads((demo_data / "speech" / "tiny_random_layer1" / "speech.json").read_text())
    assert cache["hop_seconds"] == 0.02 and cache["dim"] == 32
    p = np.load(run / "preds" / "val.npz", allow_pickle=False)
    assert p["features"].shape[1:] == (3, 16) and np.isfinite(p["logits"]).all()
    fusion = train_fusion.main(["--preset", "demo", "--epochs", "1", "--image", str(image_run), "--audio", str(run),
                                "--data", str(demo_data), "--runs", str(tmp_path)])
    assert (fusion / "metrics.json").exists()

    def no_encoder(*args, **kwargs):
        raise AssertionError("the cache is complete: the encoder must not be built again")
    monkeypatch.setattr(speech, "build_encoder", no_encoder)   # another seed only trains the head
    again = train_audio.main(["--data", str(demo_data), "--runs", str(tmp_path), *SPEECH_RUN, "--seed", "1"])
    assert (again / "preds" / "val.npz").exists()


def tiny_three_layers(wavlm: bool) -> torch.nn.Module:
    import torchaudio
    torch.manual_seed(0)
    params = dict(speech.TINY, encoder_num_layers=3)
    if wavlm:
        return torchaudio.models.wavlm_model(**params, encoder_num_buckets=32, encoder_max_distance=64).eval()
    return torchaudio.models.wav2vec2_model(**params).eval()


@pytest.mark.parametrize("wavlm", [False, True], ids=["wav2vec2", "wavlm"])
def test_fine_tuned_layers_on_cached_states_are_the_encoders_own_upper_layers(wavlm):
    """--finetune-layers trains copies of layers k-N+1..k on cached layer k-N states: before any
    step they must give the encoder's own layer k (WavLM: with its shared relative position bias),
    and rows padded into a batch must not change the window's own rows."""
    from utils.models.speech import TopLayers
    model = tiny_three_layers(wavlm)
    states = torch.from_numpy(speech.encode(speech.Encoder(model, [1, 3], False), signal(3.0)).astype(np.float32))
    layer1, layer3 = states[:, :32], states[:, 32:]
    top = TopLayers(model, 1, 3).eval()
    with torch.no_grad():
        out = top(layer1[None], torch.zeros(1, len(layer1), dtype=torch.bool))[0]
        padded = torch.cat([layer1, 5 * torch.randn(17, 32)])[None]
        pad = torch.arange(padded.shape[1])[None] >= len(layer1)
        out_padded = top(padded, pad)[0, :len(layer1)]
    # float16 cache: the states in are rounded, so agreement is to float16 precision
    np.testing.assert_allclose(out.numpy(), layer3.numpy(), atol=0.02 * layer3.abs().max().item())
    np.testing.assert_allclose(out_padded.numpy(), out.numpy(), atol=1e-5)
    assert all(p.requires_grad for p in top.layers.parameters())
    assert top.bias is None or not any(p.requires_grad for p in top.bias.parameters())
    with pytest.raises(ValueError):
        TopLayers(model, 3, 3)


def test_several_layers_are_cached_once_each_and_the_head_learns_their_weights(demo_data, tmp_path):
    one = train_audio.main(["--data", str(demo_data), "--runs", str(tmp_path), "--name", "one", *SPEECH_RUN,
                            "--speech-layer", "1"])
    cached = (demo_data / "speech" / "tiny_random_layer1").glob("*.npy")
    layer1 = {f.name: (np.load(f), f.stat().st_mtime_ns) for f in cached}
    run = train_audio.main(["--data", str(demo_data), "--runs", str(tmp_path), "--name", "both", *SPEECH_RUN,
                            "--speech-layer", "2", "1"])
    for name, (states, written) in layer1.items():   # one file per layer: a layer already cached stays as it is
        assert (demo_data / "speech" / "tiny_random_layer1" / name).stat().st_mtime_ns == written
        assert np.load(demo_data / "speech" / "tiny_random_layer2" / name).shape == states.shape
    weights = json.loads((run / "metrics.json").read_text())["speech_layer_weights"]
    assert list(weights) == ["1", "2"] and abs(sum(weights.values()) - 1) < 1e-3
    assert weights["1"] != weights["2"]   # trained away from the uniform start
    p = np.load(run / "preds" / "val.npz", allow_pickle=False)
    assert p["features"].shape[1:] == (3, 16) and np.isfinite(p["logits"]).all()
    assert not np.array_equal(p["logits"], np.load(one / "preds" / "val.npz")["logits"])


def test_fine_tuning_the_top_layer_trains_it_from_the_layer_below(demo_data, tmp_path):
    with pytest.raises(SystemExit, match="--finetune-layers 2 needs one --speech-layer above it"):
        train_audio.main(["--data", str(demo_data), "--runs", str(tmp_path), *SPEECH_RUN, "--speech-layer", "2",
                          "--finetune-layers", "2"])
    run = train_audio.main(["--data", str(demo_data), "--runs", str(tmp_path), *SPEECH_RUN, "--speech-layer", "2",
                            "--finetune-layers", "1"])
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["cached_layers"] == [1] and config["speech_layers"] == [2]
    trained = torch.load(run / "best.pt", weights_only=True)["model"]
    pretrained = speech.build_encoder("tiny_random", 2, seed=0).model.encoder.transformer.layers[1].state_dict()
    moved = [k for k, v in pretrained.items() if not torch.equal(trained[f"top.layers.0.{k}"], v)]
    assert moved, "the fine-tuned layer did not move from the encoder's weights"
    p = np.load(run / "preds" / "val.npz", allow_pickle=False)
    assert p["features"].shape[1:] == (3, 16) and np.isfinite(p["logits"]).all()


def test_encoder_path_runs_end_to_end_on_real_speech(real_speech, tmp_path):
    """Two real actors (one train, one speaker-disjoint val) through prepare_data and the speech
    path. Random weights: this shows the path runs on real recordings, not that it learns."""
    import prepare_data
    root = tmp_path / "raw"
    for split, actor in (("Train_Set", "01"), ("Validation_Set", "13")):
        name = f"ravdess-actor{actor}"
        (root / "videos").mkdir(parents=True, exist_ok=True)
        (root / "videos" / f"{name}.mp4").symlink_to(real_speech / "videos" / f"{name}.mp4")
        labels = root / "annotations" / "EXPR_Recognition_Challenge" / split
        labels.mkdir(parents=True, exist_ok=True)
        shutil.copy(real_speech / "annotations" / "EXPR_Recognition_Challenge" / split / f"{name}.txt", labels)
    data = tmp_path / "data"
    prepare_data.main(["--dataset", "affwild2", "--root", str(root), "--out", str(data), "--jobs", "1"])
    run = train_audio.main(["--data", str(data), "--runs", str(tmp_path / "runs"), *SPEECH_RUN])
    frames = pd.read_parquet(data / "frames.parquet")
    p = np.load(run / "preds" / "val.npz", allow_pickle=False)
    assert len(p["frame"]) == (frames.split == "val").sum() and p["has_audio"].all()
    assert np.isfinite(p["logits"]).all() and p["features"].shape[1:] == (3, 16)
    videos = pd.read_parquet(data / "videos.parquet")
    for videoid, n in zip(videos["videoid"], videos["audio_samples"]):
        assert len(np.load(data / "speech" / "tiny_random_layer1" / f"{videoid}.npy")) == n // 320 + 1


def test_pretrained_path_loads_a_base_encoder_saved_from_its_bundle(tmp_path):
    """The offline route for a real encoder: a state dict saved from the bundle's model
    (torch.save(bundle.get_model().state_dict(), F)) loads into the same architecture."""
    model, normalize = speech.architecture("wav2vec2_base")
    assert not normalize
    with torch.no_grad():
        model.encoder.feature_projection.projection.bias.fill_(0.25)
    torch.save(model.state_dict(), tmp_path / "w2v.pt")
    enc = speech.build_encoder("wav2vec2_base", 0, str(tmp_path / "w2v.pt"))
    assert enc.dim == 768 and enc.layers == (8,)
    assert (enc.model.encoder.feature_projection.projection.bias == 0.25).all()


def test_dfew_per_frame_speech_features_and_reduction(tmp_path):
    import extract_features
    from utils.readers.dfew import prepare_dfew
    from utils.synthetic.dfew import make_dfew
    make_dfew(tmp_path / "raw", seed=3, n_clips=30, size=16, jobs=1)
    prepare_dfew(tmp_path / "raw", tmp_path / "data", jobs=1)
    frames = pd.read_parquet(tmp_path / "data" / "frames.parquet")
    clips = pd.read_parquet(tmp_path / "data" / "clips.parquet").set_index("clip")

    def extract(*argv):
        run = extract_features.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                                     "--modality", "audio", "--speech-encoder", "tiny_random", *argv])
        with np.load(run / "features.npz", allow_pickle=False) as f:
            return run, {k: f[k] for k in f.files}
    run, full = extract()
    assert run.name == "speech-tiny_random" and full["features"].shape == (len(frames), 32)
    np.testing.assert_array_equal(full["mask"], clips.loc[full["txtid"], "has_audio"].to_numpy())
    assert not full["features"][~full["mask"]].any()
    voiced = full["features"][full["mask"]].astype(np.float32)
    assert np.isfinite(voiced).all() and len(np.unique(voiced[:, 0])) > len(clips)   # varies within a clip
    run, small = extract("--reduce-dim", "8")
    assert run.name == "speech-tiny_random-pca8" and small["features"].shape == (len(frames), 8)
    assert not small["features"][~small["mask"]].any()


def test_norm_per_video_gives_every_video_the_train_centre():
    from utils.readers.audio import FLOOR_DB, centre_per_video, per_video_centre, stack_bank
    rng = np.random.default_rng(0)
    parts = [(rng.normal(-40 + 10 * k, 5, (50 + k, 4)) + np.arange(4) * k).astype(np.float16) for k in range(3)]
    bank, offset, n = stack_bank(parts + [np.zeros((0, 4), np.float16)], 4)
    centre = per_video_centre(bank, offset, n, [0, 1])   # train videos only
    np.testing.assert_allclose(centre, (parts[0].astype(np.float32).mean(0) + parts[1].astype(np.float32).mean(0)) / 2,
                               atol=1e-3)
    out = centre_per_video(bank, offset, n, centre)
    for k in range(3):
        np.testing.assert_allclose(out[offset[k]:offset[k] + n[k]].astype(np.float32).mean(0), centre, atol=0.05)
        # within a video nothing but the level moves
        np.testing.assert_allclose(np.diff(out[offset[k]:offset[k] + n[k]].astype(np.float32), axis=0),
                                   np.diff(parts[k].astype(np.float32), axis=0), atol=0.1)
    assert (out[-1] == FLOOR_DB).all()


def test_a_cache_of_other_weights_or_sound_at_another_rate_is_refused(tmp_path):
    """States of other weights are never reused silently; sound at another rate never encoded as 16 kHz."""
    data, folder = tmp_path / "data", tmp_path / "data" / "speech" / "wavlm_base_plus_layer8"
    folder.mkdir(parents=True)
    (data / "meta.json").write_text(json.dumps({"sample_rate": 16000}))
    speech.check_cache(folder, data, "hub")   # no cache yet: fine
    (folder / "speech.json").write_text(json.dumps({"weights": "hub"}))
    speech.check_cache(folder, data, "hub")
    with pytest.raises(DataError, match="cached with the weights 'hub', this run uses 'finetuned.pt'"):
        speech.check_cache(folder, data, "finetuned.pt")
    (data / "meta.json").write_text(json.dumps({"sample_rate": 22050}))
    with pytest.raises(DataError, match="decoded at 22050 Hz"):
        speech.check_cache(folder, data, "hub")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="junk.pt: not a readable torch state dict"):
        speech.build_encoder("tiny_random", pretrained_path=str(tmp_path / "junk.pt"))
