"""Trained Aff-Wild2 runs (image, audio, fusion) applied to new videos, as predict_video.py needs.

A new video is first made into the tables every stage reads (frames.parquet, videos.parquet,
meta.json, audio/, DESIGN.md section 4), as a test split with label -1, by video_tables(); then
each run is rebuilt from its config.json and best.pt and predicted with the functions the train
scripts use (utils.evaluation.inference), so a member sees a new video exactly as it saw test.
A fusion run needs its image and audio runs' features: they are predicted once and shared.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from utils.classes import NUM_EXPR_CLASSES
from utils.console import warn
from utils.evaluation.inference import predict_crops, predict_tokens, predict_windows
from utils.files import DataError
from utils.models.backbones import create_model, load_weights, normalisation
from utils.models.fusion import HEADS, ModalFusionModule, TokenDataset, context_rows
from utils.readers.affwild2 import list_crops, txtid_frames
from utils.readers.audio import (AudioPipe, centre_per_video, ensure_spectrograms, frame_windows, load_bank,
                                 spec_folder)
from utils.readers.media import locate, prepare_media
from utils.runs import read_json, save_parquet, write_json
from utils.training.engine import InputPipe

VIDEO_COLUMNS = ["videoid", "path", "fps", "n_frames", "duration", "has_audio", "audio_path", "audio_samples",
                 "audio_offset", "sample_rate", "channels", "source_rate", "codec", "vfr", "frame_times",
                 "corrupt_packets", "nonfinite_samples", "error"]


def video_tables(videos: list[tuple[str, Path, int]], crops: Path, out: Path, sample_rate: int,
                 warnings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """frames.parquet and videos.parquet of new videos in `out`: every decoded frame 1..n of each
    (videoid, path, n decoded frames) as split test, label -1, with its crop from
    crops/cropped_aligned/<videoid>/ where the face was found; the sound decoded into out/audio."""
    parts, infos = [], []
    for videoid, path, n_frames in videos:
        info = prepare_media(videoid, path, out, sample_rate, force=False)
        if info["error"]:
            warnings("no sound", f"{path}: its sound cannot be read ({info['error']}); treated as silent")
        elif not info["has_audio"]:
            warnings("no sound", f"{path}: no sound track; the audio members hear silence")
        infos.append({"videoid": videoid} | info)
        crop_frames, crop_paths = list_crops([crops / "cropped_aligned" / videoid]
                                             if (crops / "cropped_aligned" / videoid).is_dir() else [])
        frame = np.arange(1, n_frames + 1)
        columns = txtid_frames(videoid, frame, np.full(n_frames, -1), crop_frames, crop_paths)
        # one video per file: its name is the videoid even when it ends in _left/_right
        parts.append(pd.DataFrame(columns | {"videoid": videoid, "split": "test", "template_row": -1}))
    frames = pd.concat(parts, ignore_index=True)
    table = pd.DataFrame(infos).reindex(columns=VIDEO_COLUMNS)
    for column in ("has_audio", "vfr"):
        table[column] = table[column].fillna(False).astype(bool)
    save_parquet(out / "frames.parquet", frames)
    save_parquet(out / "videos.parquet", table)
    write_json(out / "meta.json", dict(dataset="videos", sample_rate=sample_rate, template=None, release_list=None))
    return frames, locate(table, out)   # the paths of the files it names, wherever the caller runs


def run_kind(config: dict) -> str:
    """'image', 'audio' or 'fusion' from a run's config.json; DataError for a DFEW run."""
    if config.get("dataset", "affwild2") != "affwild2":
        raise DataError(f"a {config['dataset']} run predicts clips, not the frames of a video")
    if "image_offsets" in config:
        return "fusion"
    if config.get("backbone", "logmel") != "logmel":
        raise DataError(f"a --backbone {config['backbone']} audio run: predict_video.py runs log-mel audio runs only "
                        "(the speech-encoder path is not wired into it yet)")
    return "audio" if "spec_mean_db" in config else "image"


class Settings(dict):
    """A run's settings (config.json's "config"). A missing one is one line naming the file (a run
    of another kit version), raised by the lookup itself: a KeyError from anywhere else (a bug, a
    broken cache file) is not mistaken for it."""

    def __init__(self, values: dict, path: Path):
        super().__init__(values)
        self.path = path

    def __missing__(self, key):
        raise DataError(f"{self.path}: no '{key}' setting; a run of another kit version?")


def run_settings(run) -> Settings:
    """The settings of a trained run folder (config.json and best.pt); DataError if it is not one."""
    path = Path(run) / "config.json"
    if not path.is_file() or not (Path(run) / "best.pt").is_file():
        raise DataError(f"{run}: not a trained run (config.json and best.pt expected)")
    return Settings(read_json(path).get("config", {}), path)


def trained_rate(cfg: Settings) -> tuple[Path | None, int | None]:
    """(meta.json, sample rate in Hz) of the data folder a run was trained on (its 'data' setting),
    the rate its log-mel grid assumes; (that path or None, None) when the folder is not here. A
    meta.json that is there but holds no positive integer sample_rate is a DataError naming it."""
    if not cfg.get("data"):
        return None, None
    meta = Path(cfg["data"]) / "meta.json"
    if not meta.is_file():
        return meta, None
    try:
        rate = read_json(meta)["sample_rate"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{meta}: no readable sample_rate ({type(err).__name__}: {err}); the data folder "
                        f"{cfg.path.parent} was trained on") from None
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise DataError(f"{meta}: sample_rate {rate!r} is not a rate in Hz; the data folder {cfg.path.parent} "
                        "was trained on")
    return meta, rate


def audio_runs(runs) -> list[tuple[Path, Settings]]:
    """The log-mel audio runs among `runs` and inside the fusion runs among them: (run, settings)."""
    found = []
    for run in runs:
        cfg = run_settings(run)
        kind = run_kind(cfg)
        if kind == "audio":
            found.append((Path(run), cfg))
        elif kind == "fusion":
            found += audio_runs([cfg["audio"]])
    return found


def sample_rate_of(runs, given: int = 0, warnings=None, default: int = 16000) -> int:
    """The rate (Hz) to decode new videos' sound at for `runs`: the one their audio runs were
    trained at (trained_rate), `given` (> 0: an explicit --sample-rate) if it agrees, `default`
    when no audio run's data folder is here to tell. DataError, one line: `given` differs from a
    trained rate, or two audio runs were trained at different rates."""
    known, unknown = {}, []
    for run, cfg in audio_runs(runs):
        meta, rate = trained_rate(cfg)
        if rate is None:
            unknown.append((run, meta))
        else:
            known.setdefault(rate, run)
    if len(known) > 1:
        raise DataError("audio runs trained on sound at different rates ("
                        + ", ".join(f"{run}: {rate} Hz" for rate, run in sorted(known.items()))
                        + "); one video folder holds one rate: predict with them separately")
    if known:
        (rate, run), = known.items()
        if given and given != rate:
            raise DataError(f"{run}: trained on sound at {rate} Hz, --sample-rate {given} given; "
                            f"pass --sample-rate {rate} (or leave it out)")
        return rate
    rate = given or default
    if unknown and warnings is not None:
        for run, meta in unknown:
            where = f"{meta} is not here" if meta else "its config names no data folder"
            warnings("sample rate", f"{run}: {where} to tell the rate it was trained at; the sound is decoded at "
                     f"{rate} Hz" + ("" if given else " (pass --sample-rate if it was another)"))
    return rate


class Runner:
    """Predicts the frames of `data` (video_tables' folder) with any number of runs, each once."""

    def __init__(self, data: Path, frames: pd.DataFrame, videos: pd.DataFrame, d, precision: str,
                 batch_size: int = 64):
        self.data, self.frames, self.videos, self.d, self.precision = data, frames, videos, d, precision
        self.batch_size, self.done = batch_size, {}

    def __call__(self, run) -> dict:
        """The run's outputs on every frame: logits (N x 8) and features (plus logits_<head>
        for a fusion run), float32/float16 numpy arrays in the frames' order."""
        key = str(Path(run).resolve())
        if key not in self.done:
            config = run_settings(run)
            self.done[key] = getattr(self, run_kind(config))(Path(run), config)
        return self.done[key]

    def _load(self, model, run: Path):
        load_weights(model, run / "best.pt")
        return model.to(self.d.device).eval()

    def image(self, run: Path, cfg: dict) -> dict:
        model = self._load(create_model(cfg["model"], NUM_EXPR_CLASSES, img_size=cfg["img_size"]), run)
        has_crop = self.frames["has_crop"].to_numpy()
        if not has_crop.any():   # nothing to look at: uniform probabilities, zero features
            warn(f"{run}: no face crop in the video(s); the image model gives uniform probabilities")
            return dict(logits=np.zeros((len(has_crop), NUM_EXPR_CLASSES), np.float32),
                        features=np.zeros((len(has_crop), model.num_features), np.float16))
        pipe = InputPipe(*normalisation(model), cfg["img_size"], self.d.device)
        out = predict_crops(model, self.frames, pipe, self.d, self.precision, crop_size=cfg.get("crop_size") or 112,
                            batch_size=self.batch_size, tta=cfg.get("tta", False))
        return dict(logits=out["logits"], features=out["features"])

    def audio(self, run: Path, cfg: dict) -> dict:
        rate = read_json(self.data / "meta.json")["sample_rate"]
        trained = trained_rate(cfg)[1]   # from the run's data folder, where it still is
        if trained is not None and trained != rate:
            raise DataError(f"{run}: trained on sound at {trained} Hz, the videos are decoded at {rate} Hz; "
                            f"pass --sample-rate {trained}")
        ensure_spectrograms(self.data, cfg["n_fft"], cfg["hop"], cfg["n_mels"])
        folder = spec_folder(self.data, cfg["n_fft"], cfg["hop"], cfg["n_mels"])
        hop_seconds = read_json(folder / "spec.json")["hop_seconds"]
        bank, offset, n_columns = load_bank(folder, self.videos["videoid"], self.videos["has_audio"])
        if cfg.get("video_centre_db") is not None:   # the run normalised each video's level (--norm-per-video)
            bank = centre_per_video(bank, offset, n_columns, cfg["video_centre_db"])
        video, start, width = frame_windows(self.frames, self.videos, cfg["window_frames"], hop_seconds)
        model = self._load(create_model(cfg["model"], NUM_EXPR_CLASSES, img_size=cfg["img_size"], in_chans=1), run)
        pipe = AudioPipe(cfg["img_size"], cfg["spec_mean_db"], cfg["spec_std_db"], self.d.device)
        logits, features = predict_windows(model, self.frames, (bank, offset, n_columns, video, start, width), pipe,
                                           self.d, self.precision, batch_size=self.batch_size,
                                           stride=cfg.get("predict_stride", 1))
        return dict(logits=logits, features=features)

    def fusion(self, run: Path, cfg: dict) -> dict:
        image, audio = self(cfg["image"])["features"], self(cfg["audio"])["features"]
        offsets = np.asarray(cfg["image_offsets"], dtype=np.int64)
        model = self._load(ModalFusionModule(image.shape[1], audio.shape[2], NUM_EXPR_CLASSES, len(offsets),
                                             audio.shape[1], cfg["width"], cfg["heads"], cfg["layers"],
                                             dropout=cfg["dropout"]), run)
        txtid, frame = self.frames["txtid"].to_numpy(), self.frames["frame"].to_numpy()
        data = TokenDataset(image, audio, context_rows(txtid, frame, offsets), np.full(len(txtid), -1), None,
                            (txtid, frame))
        out = predict_tokens(model, data, self.d, self.precision, batch_size=self.batch_size * 4)
        return dict(logits=out["ensemble"], features=out["features"], **{f"logits_{h}": out[h] for h in HEADS})


def member_probs(runner: Runner, members, softmax) -> list[np.ndarray]:
    """Per member: the softmax of its head, averaged over its runs (seeds), as
    utils.evaluation.ensemble.load_members computes it from preds files."""
    probs = []
    for member in members:
        total = None
        for run in member.runs:
            out = runner(run)
            if member.head not in out:
                raise DataError(f"{run}: no '{member.head}' output (it has {sorted(k for k in out if k.startswith('logits'))})")
            p = softmax(out[member.head])
            total = p if total is None else total + p
        probs.append(total / np.float32(len(member.runs)))
    return probs


def pick_device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
