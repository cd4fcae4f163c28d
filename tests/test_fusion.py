"""Fusion: token context and masking at the video edges, reading by key, the gain over each branch."""
import json
import shutil

import numpy as np
import pytest
import torch

import train_fusion
from utils.models.fusion import ModalFusionModule, TokenDataset, context_offsets, context_rows
from utils.evaluation.preds import load_preds


def test_context_rows_mask_frames_past_the_video_edges():
    offsets = context_offsets(16, 4)
    np.testing.assert_array_equal(offsets, [-16, -12, -8, -4, 0, 4, 8, 12, 16])
    np.testing.assert_array_equal(context_offsets(0, 4), [0])
    txtid = np.array(["a"] * 10 + ["b"] * 30)
    frame = np.concatenate([np.arange(1, 11), np.arange(1, 31)])
    rows = context_rows(txtid, frame, offsets)
    assert rows.shape == (40, 9)
    # Frame 1 of "a": frames 1, 5, 9 exist; nothing before, and "a" ends at frame 10.
    np.testing.assert_array_equal(rows[0], [-1, -1, -1, -1, 0, 4, 8, -1, -1])
    # Frame 17 of "b" sees frames 1..33 at stride 4; 33 is past its end, and never a frame of "a".
    np.testing.assert_array_equal(rows[10 + 16], [10, 14, 18, 22, 26, 30, 34, 38, -1])


def test_masked_image_tokens_do_not_change_the_output():
    torch.manual_seed(0)
    model = ModalFusionModule(image_dim=12, audio_dim=10, num_classes=8, n_image_tokens=9, width=16,
                              heads=2).eval()
    image, audio = torch.randn(4, 9, 12), torch.randn(4, 3, 10)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[0, :4] = False      # the first frames of a video
    mask[1, 6:] = False      # the last frames
    out = model(image, mask, audio)
    assert out["fusion"].shape == out["image"].shape == out["audio"].shape == (4, 8)
    assert out["features"].shape == (4, 16)
    garbage = image.clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), 12)
    again = model(garbage, mask, audio)
    for head in ("fusion", "image", "audio", "features"):
        torch.testing.assert_close(again[head], out[head])
    # ...while an unmasked token does change it: the image context is really used.
    image[2, 0] += torch.randn(12)
    assert not torch.allclose(model(image, mask, audio)["fusion"][2], out["fusion"][2])


def test_token_dataset_gathers_the_context_of_each_row():
    image = np.arange(5, dtype=np.float16)[:, None].repeat(2, 1)     # feature = row number
    audio = np.zeros((5, 3, 2), np.float16)
    context = context_rows(np.array(["a"] * 5), np.arange(1, 6), context_offsets(2, 1))
    data = TokenDataset(image, audio, context, np.arange(5))
    tokens, mask, _, labels = data.__getitems__([0, 4])
    np.testing.assert_array_equal(mask.numpy(), [[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(tokens[0, 2:, 0].numpy(), [0, 1, 2])
    np.testing.assert_array_equal(tokens[1, :3, 0].numpy(), [2, 3, 4])
    np.testing.assert_array_equal(labels.numpy(), [0, 4])


def test_fusion_beats_both_branches_and_reports_table_2(fusion_run, image_run, audio_run):
    metrics = json.loads((fusion_run / "metrics.json").read_text())
    table = metrics["table_2"]
    assert set(table) == {"image-branch run", "audio-branch run", "image head", "audio head",
                          "fusion head (MFM)", "ensemble of the three"}
    # Each sense confuses two pairs of classes that the other tells apart (utils/synthetic/affwild2.py).
    assert metrics["val_macro_f1"] > max(table["image-branch run"], table["audio-branch run"]) + 0.03
    assert table["image-branch run"] == pytest.approx(json.loads((image_run / "metrics.json").read_text())["val_macro_f1"])
    assert table["audio-branch run"] == pytest.approx(json.loads((audio_run / "metrics.json").read_text())["val_macro_f1"])
    for split in ("train", "val", "test"):
        preds = load_preds(fusion_run / "preds" / f"{split}.npz")
        image = load_preds(image_run / "preds" / f"{split}.npz", keys=[])
        np.testing.assert_array_equal(preds["txtid"], image["txtid"])
        for head in ("logits_image", "logits_audio", "logits_fusion", "logits"):
            assert preds[head].shape == (len(image["txtid"]), 8) and np.isfinite(preds[head]).all()


def shuffled_copy(run, out, drop_first=False):
    """A copy of a run whose prediction files list their rows in a random order."""
    shutil.copytree(run, out)
    rng = np.random.default_rng(0)
    for path in (out / "preds").glob("*.npz"):
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        order = rng.permutation(len(arrays["txtid"]))[int(drop_first):]
        np.savez(path, **{k: v[order] for k, v in arrays.items()})
    return out


def test_fusion_reads_rows_by_key_not_by_position(fusion_run, image_run, audio_run, tmp_path):
    image = shuffled_copy(image_run, tmp_path / "image_shuffled")
    audio = shuffled_copy(audio_run, tmp_path / "audio_shuffled")
    runs = tmp_path / "runs"
    shutil.copytree(fusion_run, runs / "fusion" / fusion_run.name)
    again = train_fusion.main(["--preset", "demo", "--image", str(image), "--audio", str(audio),
                               "--runs", str(runs), "--predict-only"])
    for split in ("val", "test"):
        a, b = load_preds(fusion_run / "preds" / f"{split}.npz"), load_preds(again / "preds" / f"{split}.npz")
        for key in ("txtid", "frame", "logits", "logits_fusion", "features"):
            np.testing.assert_array_equal(a[key], b[key])


def test_runs_whose_frames_do_not_line_up_are_refused(image_run, audio_run, tmp_path):
    audio = shuffled_copy(audio_run, tmp_path / "audio_short", drop_first=True)
    with pytest.raises(SystemExit, match="do not cover the same frames|first extra frame"):
        train_fusion.main(["--preset", "demo", "--image", str(image_run), "--audio", str(audio),
                           "--runs", str(tmp_path / "runs"), "--epochs", "1"])
