"""Real files in: what other tools, other systems and peers' layouts produce, one test per kind
and its neighbours (issue 'Real files in'). Inputs are made here, small."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import extract_features
import prepare_data
import train_audio
import train_fusion
import train_image
from conftest import make_av, tone, write_crops, write_labels
from test_dfew_data import person, tiny_tree, write_frames, write_keypoints
from utils.readers import affwild2, audio, dfew
from utils.classes import EXPR_HEADER
from utils.console import WarningCounter
from utils.files import DataError, read_lines
from utils.readers.media import read_video
from utils.readers.openpose import read_keypoints

RATE = 16000


def db(samples):
    return 20 * np.log10(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def peak_hz(samples, rate=RATE):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()]


def one_video_tree(root, video_name="v.mp4", n_labels=25, **av_kwargs):
    """An Aff-Wild2 tree of one train txtid 'v' (and one val txtid 'w' sharing nothing) with crops."""
    ann = root / "EXPR_Recognition_Challenge"
    write_labels(ann / "Train_Set" / "v.txt", [0] * n_labels)
    write_labels(ann / "Validation_Set" / "w.txt", [1] * 5)
    write_crops(root / "cropped_aligned" / "v", range(1, n_labels + 1))
    write_crops(root / "cropped_aligned" / "w", range(1, 6))
    make_av(root / "videos" / video_name, **av_kwargs)
    return root


def prepare(root, out):
    prepare_data.main(["--root", str(root), "--out", str(out), "--jobs", "1"])
    return json.loads((out / "meta.json").read_text())


# ---------------------------------------------------------------- 1. sound tracks of any shape

def test_a_sound_track_shorter_than_one_fft_window_prepares_with_a_counted_warning(tmp_path):
    meta = prepare(one_video_tree(tmp_path / "raw", audio=tone(0.040, RATE), codec="pcm_s16le",
                                  video_name="v.mkv"), tmp_path / "out")
    assert meta["warnings"]["short audio"] == 1
    spec = np.load(tmp_path / "out" / "spec" / "nfft2048_hop1024_mels128" / "v.npy")
    assert spec.shape == (128, 1) and np.isfinite(spec.astype(np.float32)).all()
    empty = audio.log_mel(np.zeros(0, np.float32), RATE, 2048, 1024, 128)
    assert empty.shape == (128, 1) and (empty == audio.FLOOR_DB).all()   # zero samples: one column of silence


@pytest.mark.parametrize("video_name", ["v.MTS", "v.m2ts", "v.3gp", "v.MP4"])
def test_camcorder_and_phone_containers_and_upper_case_names_are_videos(tmp_path, video_name):
    """AVCHD camcorders write .MTS/.m2ts (MPEG transport stream), phones .3gp; Windows tools upper-case."""
    out = tmp_path / "out"
    prepare(one_video_tree(tmp_path / "raw", audio=tone(1.0, RATE), video_name=video_name), out)
    sound = np.load(out / "audio" / "v.npy")
    assert abs(len(sound) / RATE - 1.0) < 0.1 and np.abs(sound).max() > 0.1


def test_audio_decoded_again_never_leaves_a_stale_spectrogram(tmp_path):
    """A data folder prepared by a kit that summed the channels: prepare_data.py decodes the audio
    again (its cache records the decoder), and the spectrogram follows the newer audio."""
    out = tmp_path / "out"
    prepare(one_video_tree(tmp_path / "raw", audio=tone(1.0, RATE), codec="pcm_s16le", video_name="v.mkv"), out)
    info = json.loads((out / "audio" / "v.json").read_text())
    (out / "audio" / "v.json").write_text(json.dumps(info | {"decoder": 1}))
    np.save(out / "audio" / "v.npy", np.zeros(RATE, np.float32))   # what an old decoder left
    spec = out / "spec" / "nfft2048_hop1024_mels128" / "v.npy"
    audio.ensure_spectrograms(out)
    assert (np.load(spec) == audio.FLOOR_DB).all()                 # follows the silent audio
    prepare(tmp_path / "raw", out)
    assert np.load(spec).max() > -20                               # decoded again, spectrogram again


@pytest.mark.parametrize("layout,codec,ext", [("stereo", "aac", "mp4"), ("5.1", "aac", "mp4"),
                                              ("5.1(side)", "pcm_f32le", "mkv"), ("7.1", "flac", "mkv")])
def test_the_channel_count_does_not_change_the_loudness(tmp_path, layout, codec, ext):
    sound = tone(1.0, 48000)
    mono = read_video(make_av(tmp_path / f"mono.{ext}", audio=sound, rate=48000, codec=codec)).samples
    many = read_video(make_av(tmp_path / f"many.{ext}", audio=sound, rate=48000, layout=layout, codec=codec))
    assert many.channels == {"stereo": 2, "5.1": 6, "5.1(side)": 6, "7.1": 8}[layout]
    assert abs(db(many.samples[2000:14000]) - db(mono[2000:14000])) < 0.2   # a sum was +3 dB (stereo), +10.7 dB (5.1)
    assert np.abs(many.samples).max() <= 1.0


@pytest.mark.parametrize("codec,ext,rate", [("aac", "mp4", 8000), ("pcm_s16le", "avi", 8000), ("flac", "mkv", 48000),
                                            ("libopus", "mkv", 48000), ("libmp3lame", "mp4", 44100),
                                            ("pcm_s16le", "mov", 22050)])
def test_any_rate_and_codec_decodes_to_finite_mono_at_the_kit_rate(tmp_path, codec, ext, rate):
    decoded = read_video(make_av(tmp_path / f"a.{ext}", n_frames=50, audio=tone(2.0, rate), rate=rate, codec=codec))
    samples = decoded.samples
    assert samples.dtype == np.float32 and samples.ndim == 1 and np.isfinite(samples).all()
    assert abs(len(samples) - 2.0 * RATE) <= 1024 + 0.03 * RATE   # codec priming and padding at most
    assert peak_hz(samples) == pytest.approx(440, abs=4) and decoded.source_rate == rate


def test_an_audio_stream_without_samples_and_nan_samples_are_counted(tmp_path):
    sound = tone(1.0, RATE)
    sound[100:200] = np.nan
    root = one_video_tree(tmp_path / "raw", video_name="v.mkv", audio=sound, codec="pcm_f32le")
    make_av(root / "videos" / "w.mkv", audio=np.zeros(0), codec="pcm_s16le")   # a stream that holds nothing
    meta = prepare(root, tmp_path / "out")
    assert meta["warnings"]["non-finite audio"] == 100 and meta["warnings"]["empty audio"] == 1
    videos = pd.read_parquet(tmp_path / "out" / "videos.parquet").set_index("videoid")
    assert videos.loc["v", "has_audio"] and not videos.loc["w", "has_audio"]
    samples = np.load(videos.loc["v", "audio_path"])
    assert np.isfinite(samples).all() and not samples[100:200].any()


# ---------------------------------------------------------------- 2. time

def vfr_seconds():
    """150 frames at 30 fps, then 150 at 10 fps: frame 297 is shown at 19.6 s; the average
    rate (15 fps) would put it at 19.73 s, and frame 160 at 10.6 s instead of 5.9 s."""
    return np.concatenate([np.arange(150) / 30, 5.0 + np.arange(150) / 10])


def test_a_variable_frame_rate_video_places_its_frames_at_their_timestamps(tmp_path):
    seconds = vfr_seconds()
    decoded = read_video(make_av(tmp_path / "vfr.mp4", n_frames=300, fps=30, frame_seconds=seconds,
                                 audio=tone(20.0, RATE)))
    assert decoded.vfr and len(decoded.frame_times) == 300
    np.testing.assert_allclose(decoded.frame_times, seconds, atol=1e-3)
    cfr = read_video(make_av(tmp_path / "cfr.mp4", n_frames=30, fps=29.97, audio=tone(1.0, RATE)))
    assert not cfr.vfr and cfr.frame_times is None   # constant-rate videos keep (t-1)/fps
    root = one_video_tree(tmp_path / "raw", n_labels=300, n_frames=300, fps=30, frame_seconds=seconds,
                          audio=tone(20.0, RATE))
    meta = prepare(root, tmp_path / "out")
    assert meta["counts"]["train"]["vfr_videos"] == 1
    videos = pd.read_parquet(tmp_path / "out" / "videos.parquet")
    frames = pd.read_parquet(tmp_path / "out" / "frames.parquet")
    v = frames[frames.txtid == "v"]
    hop = 1024 / RATE
    _, start, width = audio.frame_windows(v, videos, [32], hop)
    # The window of frame 200 (shown at 10 s) spans frames 184..215: 8.3 s to 11.5 s.
    assert start[199, 0] == np.ceil(seconds[183] / hop - 1e-6)
    assert start[199, 0] + width[199, 0] == np.ceil(seconds[215] / hop - 1e-6)
    # Frame 20 lies in the 30 fps part: its window keeps (t-1)/fps's span, about one second.
    assert width[19, 0] == pytest.approx(32 / 30 / hop, abs=1)


def test_dfew_clip_audio_follows_the_frame_times_of_a_variable_rate_clip(tmp_path):
    """The sound of a VFR clip video starts at 10 s: the frames shown from 10 s on hear it."""
    root = tiny_tree(tmp_path / "raw")
    seconds = vfr_seconds()
    sound = np.where(np.arange(int(20 * RATE)) / RATE >= 10.0, tone(20.0, RATE), 0).astype(np.float32)
    write_frames(root / "Clip" / "clip_224x224" / "00001", [f"{n}.jpg" for n in range(1, 301)])
    make_av(root / "Clip" / "original" / "00001.mp4", n_frames=300, fps=30, frame_seconds=seconds, audio=sound)
    dfew.prepare_dfew(root, tmp_path / "data", jobs=1)
    clips = pd.read_parquet(tmp_path / "data" / "clips.parquet").set_index("clip")
    assert clips.loc["00001", "frame_times"]
    run = extract_features.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                                 "--modality", "audio"])
    with np.load(run / "features.npz") as f:
        loud = f["features"][f["txtid"] == "00001"].astype(np.float32).max(1) > -40
    # Frames shown from 10 s on (201..300) hear the tone, those shown before 9.85 s do not; spread
    # evenly over the 20 s of sound, frames 151..200 (shown at 5..10 s) would sit at 10..13.3 s.
    assert loud[seconds >= 10.05].all() and not loud[seconds < 9.85].any()


# ---------------------------------------------------------------- 3. non-finite numbers

def test_nan_in_openpose_json_is_not_a_keypoint_and_is_counted(tmp_path):
    face = [(0, (100, 200, 0.9)), (1, (140, 260, 0.8))]
    a = person(body=[(0, (120, 290, 0.6))], face=face)
    a["pose_keypoints_2d"][0] = float("nan")
    (tmp_path / "1_keypoints.json").write_text(json.dumps({"version": 1.3, "people": [a]}))   # writes NaN
    b = person(body=[(0, (120, 290, 0.6))], face=face)
    b["face_keypoints_2d"][3:6] = [None, None, None]
    write_keypoints(tmp_path, "2_keypoints.json", [b])
    warnings = WarningCounter()
    points, mask = read_keypoints(tmp_path, [1, 2], warnings)
    assert np.isfinite(points).all() and mask.all()
    assert points[0, 0].tolist() == [0, 0, 0] and points[1, 26].tolist() == [0, 0, 0]
    assert warnings.counts == {"openpose non-finite": 2}


def test_nan_in_an_extra_feature_masks_its_frames_and_a_nan_spectrogram_names_the_file(tmp_path):
    root = tiny_tree(tmp_path / "raw")
    dfew.prepare_dfew(root, tmp_path / "data", jobs=1)
    folder = tmp_path / "extra"
    folder.mkdir()
    for clip in range(1, 6):
        values = np.ones((3, 4), np.float32)
        if clip == 2:
            values[1, 2] = np.nan
        np.save(folder / f"{clip}.npy", values)   # unpadded names, as other tools write them
    run = extract_features.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                                 "--modality", "extra", "--extra-dir", str(folder)])
    with np.load(run / "features.npz") as f:
        assert f["mask"].sum() == 14 and not f["mask"][(f["txtid"] == "00002") & (f["frame"] == 2)].any()
    assert json.loads((run / "metrics.json").read_text())["warnings"] == {"extra non-finite": 1}
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    (spec_dir / "spec.json").write_text(json.dumps({"n_mels": 4}))
    np.save(spec_dir / "a.npy", np.full((4, 3), np.nan, np.float16))
    with pytest.raises(DataError, match="a.npy: not a finite"):
        audio.load_bank(spec_dir, ["a"], [True])


def test_a_non_finite_loss_names_the_rows_that_produced_it(tmp_path):
    from utils.training.data import ClassBalancedSampler, keep_batch
    from utils.training.engine import Dist, Trainer

    class Rows(torch.utils.data.Dataset):
        def __init__(self):
            self.x = torch.ones(16, 2)
            self.x[11] = float("inf")
            self.y = torch.arange(16) % 2

        def set_epoch(self, epoch):
            pass

        def __len__(self):
            return 16

        def __getitems__(self, indices):
            return self.x[indices], self.y[indices]

        def describe(self, indices):
            return [f"clip {i:05d}" for i in indices]

    class Cfg:
        lr, weight_decay, ema, ema_decay, epochs, warmup_epochs, accum_steps = 1e-3, 0.0, False, 0.9, 1, 0, 1
        patience, label_smoothing, loss_weights = 0, 0.0, [1.0]

    data = Rows()
    sampler = ClassBalancedSampler(data.y.numpy(), seed=0, num_classes=2)
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler, collate_fn=keep_batch)
    trainer = Trainer(torch.nn.Linear(2, 2), Cfg, tmp_path, Dist(), "fp32",
                      lambda net, b: (net(b[0]), b[1], len(b[1]), 0), lambda m: {"macro_f1": 0.0, "per_class_f1": []})
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* from clip 00011;"):
        trainer.fit(loader, sampler)


# ---------------------------------------------------------------- 4. every OpenPose output variant

def test_openpose_1_0_keys_video_numbering_and_flat_folders_read_alike(tmp_path):
    face = [(0, (100, 200, 0.9)), (1, (140, 260, 0.8))]
    new = person(body=[(1, (120, 290, 0.6))], face=face)
    old = {"pose_keypoints": new["pose_keypoints_2d"], "face_keypoints": new["face_keypoints_2d"],
           "hand_left_keypoints": [], "hand_right_keypoints": []}   # OpenPose 1.0 (2017)
    write_keypoints(tmp_path / "new", "1_keypoints.json", [new])
    write_keypoints(tmp_path / "old", "1_keypoints.json", [old])
    write_keypoints(tmp_path / "video", "00001_000000000000_keypoints.json", [old])   # --video: from 0
    reference, mask = read_keypoints(tmp_path / "new", [1])
    assert mask.all() and reference[0, :, 2].sum() > 0
    for folder in ("old", "video"):
        points, mask = read_keypoints(tmp_path / folder, [1])
        np.testing.assert_array_equal(points, reference)
    root = tiny_tree(tmp_path / "raw")
    dfew.prepare_dfew(root, tmp_path / "data", jobs=1)
    flat = tmp_path / "openpose_flat"   # OpenPose run on Clip/original/*.mp4 into one folder
    for clip in range(1, 6):
        for n in range(3):
            write_keypoints(flat, f"{clip:05d}_{n:012d}_keypoints.json", [old])
    write_keypoints(flat, "._00001_000000000000_keypoints.json", [])   # AppleDouble debris
    run = extract_features.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                                 "--modality", "keypoints", "--openpose", str(flat)])
    with np.load(run / "features.npz") as f:
        assert f["mask"].all() and len(f["mask"]) == 15


def test_keypoint_files_without_a_keypoint_stop_the_run(tmp_path):
    root = tiny_tree(tmp_path / "raw")
    dfew.prepare_dfew(root, tmp_path / "data", jobs=1)
    for name, people in (("nobody", []), ("unknown", [{"keypoints": [1.0] * 75}])):
        for clip in range(1, 6):
            for n in range(1, 4):
                write_keypoints(tmp_path / name / f"{clip:05d}", f"{n}_keypoints.json", people)
        with pytest.raises(SystemExit, match=f"{name}"):
            extract_features.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                                   "--modality", "keypoints", "--openpose", str(tmp_path / name), "--name", name])


# ---------------------------------------------------------------- 5. operating-system and archive debris

def debris(folder):
    """What a Mac, Windows, a zip and a Synology NAS leave beside every file."""
    for path in list(folder.rglob("*")):
        if path.is_file():
            (path.parent / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble \xff")
            if path.suffix == ".jpg":   # the NAS's thumbnails of an image, in a folder named after it
                thumbs = path.parent / "@eaDir" / path.name
                thumbs.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, thumbs / "SYNOFILE_THUMB_M.jpg")
                shutil.copy(path, thumbs / "00001.jpg")
    for parent in {p.parent for p in folder.rglob("*") if p.is_file()}:
        (parent / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (parent / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    shutil.copytree(folder, folder / "__MACOSX" / folder.name)


def test_mac_windows_and_zip_debris_is_never_data(tmp_path):
    clean = one_video_tree(tmp_path / "clean", audio=tone(1.0, RATE))
    messy = one_video_tree(tmp_path / "messy", audio=tone(1.0, RATE))
    debris(messy)
    a, b = prepare(clean, tmp_path / "a"), prepare(messy, tmp_path / "b")
    assert a["counts"] == b["counts"] and b["counts"]["train"]["crops"] == 25 and a["warnings"] == b["warnings"]
    root = tiny_tree(tmp_path / "dfew")
    debris(root)
    clips, folds, frames = dfew.index(dfew.scan(root))
    assert len(clips) == 5 and len(frames) == 15 and not frames["path"].str.contains("/._").any()


def test_text_files_of_other_systems(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes((EXPR_HEADER + "\r\n0\r\n4.0\r\n-1\r\n").encode("utf-16"))   # Notepad's "Unicode", CRLF
    np.testing.assert_array_equal(affwild2.read_labels(path), [0, 4, -1])
    path.write_bytes((EXPR_HEADER + "\n0\n").encode("utf-8") + b"\xe9\n")
    with pytest.raises(DataError, match=r"v.txt: not utf-8 text \(undecodable byte 0xe9"):
        affwild2.read_labels(path)
    split = tmp_path / "set_1.csv"
    split.write_text('"video_name";"label"\n"00001";"3"\n2;5\n')   # a spreadsheet in a ';' locale
    assert dfew.read_split(split) == [("00001", 3, 2), ("00002", 5, 3)]
    assert read_lines(split)[0] == '"video_name";"label"'


def test_label_numbers_written_as_floats_by_other_tools_read_alike_in_both_datasets(tmp_path):
    """pandas writes an integer column that held a NaN as floats ('3.0'); a fraction is never a label."""
    split = tmp_path / "set_1.csv"
    split.write_text("video_name,label\n1,3.0\n2, +5 \n")
    assert dfew.read_split(split) == [("00001", 3, 2), ("00002", 5, 3)]
    peer = tmp_path / "set_1_train.txt"
    peer.write_text("/data/DFEW/clip_224x224/00001 16.0 3.0\n")
    assert dfew.read_peer_list(peer) == [("00001", 3, 1)]
    split.write_text("video_name,label\n1,3.5\n")
    with pytest.raises(DataError, match=r"set_1.csv:2"):
        dfew.read_split(split)
    labels = tmp_path / "v.txt"
    labels.write_text(EXPR_HEADER + "\n3.0\n4.5\nnan\ninf\n")
    np.testing.assert_array_equal(affwild2.read_labels(labels), [3, -1, -1, -1])


# ---------------------------------------------------------------- 6. crops in other formats and folders

@pytest.mark.parametrize("layout", ["png", "JPG", "abaw10"])
def test_crops_are_found_by_what_the_folders_hold(tmp_path, layout):
    root = tmp_path / "raw"
    write_labels(root / "EXPR_Recognition_Challenge" / "Train_Set" / "v.txt", [0, 1, 2])
    write_labels(root / "EXPR_Recognition_Challenge" / "Validation_Set" / "w.txt", [0, 1])
    for txtid, n in (("v", 3), ("w", 2)):
        folder = (root / "images" / "batch1" / txtid) if layout == "abaw10" else (root / "cropped_aligned" / txtid)
        write_crops(folder, range(1, n + 1))
        if layout != "abaw10":
            for jpg in folder.glob("*.jpg"):
                jpg.rename(jpg.with_suffix("." + layout))
    meta = prepare(root, tmp_path / "out")
    frames = pd.read_parquet(tmp_path / "out" / "frames.parquet")
    assert frames["has_crop"].all() and meta["counts"]["train"]["crops"] == 3


def test_a_tree_without_crops_warns_loudly_and_the_image_branch_refuses_it(tmp_path, capsys):
    root = one_video_tree(tmp_path / "raw", audio=tone(1.0, RATE))
    shutil.rmtree(root / "cropped_aligned")
    meta = prepare(root, tmp_path / "out")
    assert meta["warnings"]["no crops"] == 1
    assert "NO FACE CROP FOUND" in capsys.readouterr().err
    with pytest.raises(DataError, match="frames.parquet: no labelled val frame with a face crop"):
        train_image.main(["--preset", "demo", "--data", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")])


# ---------------------------------------------------------------- 7. DFEW as peers lay it out

def test_mae_dfer_frame_folders_and_the_peers_annotation_lists(tmp_path):
    root = tiny_tree(tmp_path / "official")
    shutil.move(root / "Clip" / "clip_224x224", root / "Clip" / "jpg_256")   # MAE-DFER's frames
    layout = dfew.scan(root)
    assert layout.frames_kind == "jpg_256" and len(layout.frame_dirs) == 5
    meta = dfew.prepare_dfew(root, tmp_path / "data", jobs=1, export=str(tmp_path / "lists"))
    official = pd.read_parquet(tmp_path / "data" / "folds.parquet")
    line = (tmp_path / "lists" / "dfer-clip" / "DFEW_set_1_test.txt").read_text().split()
    assert line[0].endswith("jpg_256/00001") and line[1:] == ["3", "0"]   # folder, frames, label 0..6
    assert (tmp_path / "lists" / "mae-dfer" / "split01" / "test.csv").read_text().split()[1:] == ["0"]
    for peer in ("dfer-clip", "mae-dfer"):
        copy = tmp_path / peer
        shutil.copytree(root / "Clip", copy / "Clip")
        shutil.copytree(tmp_path / "lists" / peer, copy / "annotation")   # no official split files
        layout = dfew.scan(copy)
        assert layout.split_format == peer and layout.label_base == 0
        _, folds, _ = dfew.index(layout)
        pd.testing.assert_frame_equal(folds, official)
    assert meta["split_format"] == "official"


# ---------------------------------------------------------------- 8. datasets with a split missing

def test_a_dataset_without_a_test_split_trains_every_branch(demo_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data, ignore=shutil.ignore_patterns("audio"))   # the tables point at its audio
    frames = pd.read_parquet(data / "frames.parquet")
    keep = [t for split, n in (("train", 3), ("val", 2)) for t in sorted(frames.txtid[frames.split == split].unique())[:n]]
    frames[frames["txtid"].isin(keep)].to_parquet(data / "frames.parquet")   # a few videos, and no test split
    runs = str(tmp_path / "runs")
    tiny = ["--preset", "demo", "--data", str(data), "--runs", runs, "--epochs", "1", "--max-per-class", "20"]
    image = train_image.main(tiny + ["--img-size", "32", "--workers", "0"])
    sound = train_audio.main(tiny + ["--img-size", "32", "--predict-stride", "8", "--jobs", "1"])
    fusion = train_fusion.main(["--preset", "demo", "--runs", runs, "--epochs", "1", "--image", str(image),
                                "--audio", str(sound)])
    for run in (image, sound, fusion):
        assert (run / "metrics.json").is_file() and (run / "preds" / "val.npz").is_file()
        assert not (run / "preds" / "test.npz").exists()


def test_the_real_speech_tree_prepares_and_trains_the_audio_branch(tmp_path, real_speech):
    root = tmp_path / "speech"
    for split, actor in (("Train_Set", 2), ("Validation_Set", 13)):
        name = f"ravdess-actor{actor:02d}"
        (root / "annotations" / "EXPR_Recognition_Challenge" / split).mkdir(parents=True, exist_ok=True)
        shutil.copy(real_speech / "annotations" / "EXPR_Recognition_Challenge" / split / f"{name}.txt",
                    root / "annotations" / "EXPR_Recognition_Challenge" / split)
        (root / "videos").mkdir(exist_ok=True)
        (root / "videos" / f"{name}.mp4").symlink_to(real_speech / "videos" / f"{name}.mp4")
    meta = prepare(root, tmp_path / "out")
    assert meta["counts"]["test"]["frames"] == 0 and meta["warnings"]["no crops"] == 1
    run = train_audio.main(["--preset", "demo", "--data", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"),
                            "--epochs", "1", "--img-size", "32", "--max-per-class", "50", "--predict-stride", "8"])
    assert (run / "preds" / "val.npz").is_file() and not (run / "preds" / "test.npz").exists()


# ---------------------------------------------------------------- 9. first run without the hub

def test_pretrained_weights_that_cannot_be_fetched_are_one_line(monkeypatch):
    import huggingface_hub.constants
    from utils.models.backbones import create_model
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)   # as on a machine without internet
    with pytest.raises(DataError, match=r"could not be fetched .* --pretrained-path FILE .* --no-pretrained"):
        create_model("resnet18", 8, pretrained=True)
