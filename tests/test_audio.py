"""Audio branch: window bounds and label purity, time alignment, spectrogram caching, learning."""
import json

import numpy as np
import pandas as pd
import pytest

import train_audio
from utils.readers import audio
from utils.classes import EXPR_CLASSES
from utils.evaluation.preds import load_preds

TINY = ["--preset", "demo", "--img-size", "32", "--epochs", "1", "--max-per-class", "30",
        "--predict-stride", "8", "--jobs", "1"]


def test_window_purity_by_hand_with_edges_and_unknown_frames():
    labels = np.array([0, 0, 0, 1, 1, -1, 1, 1])
    # Windows of 4 frames around frame i span i-2 .. i+1; frames past the ends and -1 frames
    # count as different, and a -1 centre is never pure.
    expected = [2 / 4,   # [-2, 1]: only frames 0, 1 exist, both 0
                3 / 4,   # [-1, 2]: 0 0 0
                3 / 4,   # [0, 3]: 0 0 0 1
                2 / 4,   # [1, 4]: 0 0 1 1
                2 / 4,   # [2, 5]: 0 1 1 -1
                0.0,     # centre is -1
                3 / 4,   # [4, 7]: 1 -1 1 1
                2 / 4]   # [5, 8]: -1 1 1 and one frame past the end
    np.testing.assert_allclose(audio.window_purity(labels, 4), expected)
    np.testing.assert_allclose(audio.window_purity(labels, 2), [1 / 2, 1, 1, 1 / 2, 1, 0, 1 / 2, 1])
    frames = pd.DataFrame({"txtid": ["a"] * 8, "label": labels})
    keep = audio.pure_windows(frames, [2, 4], [0.8, 0.5])
    np.testing.assert_array_equal(keep[:, 0], [0, 1, 1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(keep[:, 1], [1, 1, 1, 1, 1, 0, 1, 1])


def test_window_columns_follow_the_frame_times():
    hop_seconds = 0.064   # 1024 samples at 16 kHz
    start, width = audio.window_columns(np.array([1, 17, 100]), np.full(3, 25.0), 32, hop_seconds)
    # Frame 17 at 25 fps: the window covers frames 1..32, i.e. [0, 1.28) s = 20 columns from column 0.
    np.testing.assert_array_equal(width, [20, 20, 20])
    np.testing.assert_array_equal(start, [np.ceil(-16 / 25 / hop_seconds), 0, np.ceil(83 / 25 / hop_seconds)])


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001, 30.0])
def test_a_tone_lands_in_the_windows_of_the_frames_it_sounds_in(fps):
    rate, hop, onset = 16000, 160, 4.0     # 10 ms columns for a sharp edge
    t = np.arange(10 * rate) / rate
    samples = np.where(t >= onset, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
    spec = audio.log_mel(samples, rate, n_fft=400, hop=hop, n_mels=40)
    bank = np.concatenate([spec.T, np.full((1, 40), audio.FLOOR_DB, np.float16)])
    frame = np.arange(60, 160)                       # frames around the onset (frame ~100-120)
    start, width = audio.window_columns(frame, np.full(len(frame), fps), 32, hop / rate)
    data = audio.WindowDataset(bank, np.array([0]), np.array([spec.shape[1]]), np.zeros(len(frame), int),
                               start, width, np.zeros(len(frame)))
    windows, widths, _ = data.__getitems__(np.arange(len(frame)))
    loud = np.array([(w[:, :n].float().numpy().max(0) > -20).mean() for w, n in zip(windows, widths.numpy())])
    # Frame t covers [(t-1)/fps, t/fps); its window spans frames t-16 .. t+15.
    span_start, span_end = (frame - 17) / fps, (frame + 15) / fps
    expected = np.clip((span_end - onset) / (span_end - span_start), 0, 1)
    assert np.abs(loud - expected).max() <= 3 / widths.min().item()   # within the STFT's smear
    smear = 200 / rate                                # half the STFT window
    assert loud[span_end < onset - smear].max() == 0 and loud[span_start > onset + smear].min() == 1
    first_loud = frame[np.argmax(loud > 0)]
    assert abs(first_loud - (onset * fps - 14)) <= 1.5


def test_spectrogram_computed_once_per_video_and_same_seed_same_predictions(demo_data, tmp_path, monkeypatch):
    calls = []
    original = audio.log_mel
    monkeypatch.setattr(audio, "log_mel", lambda *a, **k: calls.append(1) or original(*a, **k))
    setting = ["--n-fft", "512", "--hop", "256", "--n-mels", "32"]   # a setting prepare did not cache
    videos = pd.read_parquet(demo_data / "videos.parquet")
    first = train_audio.main(TINY + setting + ["--data", str(demo_data), "--runs", str(tmp_path / "a")])
    assert len(calls) == videos.has_audio.sum()          # thousands of windows, one STFT per video
    second = train_audio.main(TINY + setting + ["--data", str(demo_data), "--runs", str(tmp_path / "b")])
    assert len(calls) == videos.has_audio.sum()          # cached: none the second time
    for split in ("val", "test"):
        a, b = load_preds(first / "preds" / f"{split}.npz"), load_preds(second / "preds" / f"{split}.npz")
        np.testing.assert_array_equal(a["logits"], b["logits"])
        np.testing.assert_array_equal(a["features"], b["features"])


def test_audio_branch_separates_the_classes_only_the_voice_tells_apart(audio_run):
    metrics = json.loads((audio_run / "metrics.json").read_text())
    f1 = metrics["val_per_class_f1"]
    # Neutral/Other and Anger/Disgust share a face but not a voice: chance F1 is about 0.12.
    # Mean F1 of the four with seeds 0, 1, 2: 0.89, 0.72, 0.88.
    assert np.mean([f1["Neutral"], f1["Other"], f1["Anger"], f1["Disgust"]]) > 0.55
    kept = metrics["windows_kept"]
    assert list(kept) == ["32 frames", "48 frames", "64 frames"]
    assert all(0 < k["kept"] <= k["of"] for k in kept.values())
    log = (audio_run / "log.jsonl").read_text().splitlines()
    assert len(log) == 5


def test_predictions_cover_every_frame_with_three_window_features(audio_run, demo_data):
    frames = pd.read_parquet(demo_data / "frames.parquet")
    videos = pd.read_parquet(demo_data / "videos.parquet").set_index("videoid")
    for split in ("train", "val", "test"):
        part = frames[frames.split == split]
        preds = load_preds(audio_run / "preds" / f"{split}.npz")
        np.testing.assert_array_equal(preds["txtid"], part.txtid.to_numpy().astype(str))
        np.testing.assert_array_equal(preds["frame"], part.frame.to_numpy())
        assert preds["features"].dtype == np.float16 and preds["features"].shape[:2] == (len(part), 3)
        assert preds["logits"].shape == (len(part), len(EXPR_CLASSES)) and np.isfinite(preds["logits"]).all()
        np.testing.assert_array_equal(preds["has_audio"], videos.loc[part.videoid, "has_audio"].to_numpy())


def test_silent_video_pairs_and_predict_stride(audio_run, demo_data):
    frames = pd.read_parquet(demo_data / "frames.parquet")
    preds = {s: load_preds(audio_run / "preds" / f"{s}.npz") for s in ("train", "val", "test")}
    silent = [s for s in preds if not preds[s]["has_audio"].all()]
    assert silent, "the demo data has a video without an audio stream"
    for split in silent:
        rows = ~preds[split]["has_audio"]
        assert np.isfinite(preds[split]["logits"][rows]).all()
        # All-silent windows: every frame of that video gets the same prediction.
        assert np.ptp(preds[split]["logits"][rows], axis=0).max() < 1e-4
    # _left/_right txtids hear the same video: identical window features at the same frame.
    test = frames[frames.split == "test"]
    pair = test[test.txtid.str.endswith("_left")].txtid.iloc[0]
    other = pair.replace("_left", "_right")
    p = preds["test"]
    a, b = p["txtid"] == pair, p["txtid"] == other
    common = np.intersect1d(p["frame"][a], p["frame"][b])[:100]
    np.testing.assert_array_equal(p["features"][a][np.isin(p["frame"][a], common)],
                                  p["features"][b][np.isin(p["frame"][b], common)])
    # --predict-stride 4: frames 2 and 3 take frame 1's windows (the nearest computed, earlier on a tie).
    v = p["features"][a]
    np.testing.assert_array_equal(v[1], v[0])
    np.testing.assert_array_equal(v[2], v[0])
    assert not np.array_equal(v[4], v[0])


def test_mismatched_window_settings_are_refused(demo_data, tmp_path):
    with pytest.raises(SystemExit, match="one value per window length"):
        train_audio.main(TINY + ["--data", str(demo_data), "--runs", str(tmp_path), "--purity", "0.8"])
