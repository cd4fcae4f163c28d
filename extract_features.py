"""DFEW feature generators: per-frame features of every clip from a frozen generator (DESIGN.md section 6).

Usage: python extract_features.py --data data/dfew --modality image --model resnet18 [--pretrained-path F]
       python extract_features.py --data data/dfew --checkpoint runs/image/dfew-resnet18-fold1_seed0/best.pt
       torchrun --nproc_per_node=4 extract_features.py --data data/dfew --model resnet18   (image, audio-branch: sharded)
       python extract_features.py --data data/dfew --modality keypoints --openpose openpose_out/
       python extract_features.py --data data/dfew --modality audio
       python extract_features.py --data data/dfew --modality audio --speech-encoder wav2vec2_large --reduce-dim 128
       python extract_features.py --data data/dfew --modality extra --extra-dir omnivec/ --name omnivec

Modalities (one run each, read by utils/models/temporal.py):
  image      a frozen timm backbone (ImageNet weights from the hub or --pretrained-path; the kit's
             own fine-tuned image model with --checkpoint runs/image/<run>/best.pt, whose model,
             input size and decode size come from the run's config.json, so frames go through
             the resize chain it was trained with): its pooled pre-logit feature of every frame
             file. A frame that fails to decode is masked. Weights fine-tuned on a DFEW fold
             (train_image.py --dataset dfew --fold k), by --checkpoint or --pretrained-path,
             bring the run's split.json along as generator_split.json: the clip model refuses
             them for any fold whose test clips they learnt from.
  keypoints  OpenPose JSON from --openpose DIR/<clip>/*_keypoints.json (utils/readers/openpose.py): the 25
             body and 70 face points as (x, y, c) in face-box coordinates, flattened to 285 values.
  audio      the mean log-mel (dB) of each frame's time span in data/audio/<clip>.npy; or, with
             --audio-run runs/audio/<run>, the kit's audio branch: that run's model on its three
             windows centred on each frame (the spectrogram settings of the run), the window
             features side by side (3 x D). prepare_dfew stores no frame rate, so a clip's frames
             are spread evenly over its sound: frame k of n covers [k, k + 1) * duration / n,
             which equals k / fps when the frames are the whole clip, as in DFEW's clip_224x224.
             The audio branch costs three backbone passes a frame: use --frames eval.
             With --speech-encoder (wav2vec2_base, hubert_base, wavlm_base_plus, wavlm_large, ...:
             utils/readers/speech.py; weights from the torchaudio hub or --pretrained-path), the mean
             of that frozen encoder's --speech-layer states (50 Hz) over each frame's time span;
             --reduce-dim K keeps the first K principal components (PCA fitted on every extracted
             frame, no labels used), as the DFEW seed paper reduces Wav2Vec2's 1024 to 128.
  extra      any external generator (e.g. OmniVec): --extra-dir DIR/<clip>.npy of shape
             (n_frames, D), one row per frame file in numeric order.
A clip without the modality (no sound, no OpenPose folder, no extra file) gets zeros with
mask False and is counted; the temporal model ignores masked frames.

Writes runs/features/<name>/: config.json, features.npz and metrics.json (written last: counts,
seconds, clips/s). features.npz is the prediction-file schema (utils/evaluation/preds.py) without
`logits`, since a frozen generator has no DFEW classifier, plus a mask, so it is deliberately
not a preds file. Rows are every frame file (or, with --frames eval, the 16 evaluation frames)
ordered by (txtid, frame); np.load(path, allow_pickle=False):
  txtid str (N,) clip id   frame int32 (N,) 1-based position in numeric file order
  number int32 (N,) the number in the file name   label int8 (N,) clip label, -1 if none
  mask bool (N,) the frame has this modality      features float16 (N, D)
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torchaudio
from torch.utils.data import DataLoader, Dataset, Subset


from utils.readers.audio import (AudioPipe, WindowDataset, centre_per_video, frame_start_seconds, load_frame_times,
                                 log_mel, stack_bank, window_columns, window_columns_timed)
from utils.classes import NUM_DFEW_CLASSES, NUM_EXPR_CLASSES
from utils.config import parse_config
from utils.readers import speech
from utils.console import WarningCounter, cli, log, table, track
from utils.training.data import keep_batch
from utils.readers.dfew import clip_id, read_tables, weights_split
from utils.training.engine import InputPipe, Rows, autocast, gather, pick_precision, setup_distributed, shard
from utils.files import DataError, listdir
from utils.models.backbones import create_model, features_and_logits, load_weights, normalisation
from utils.readers.openpose import KNOWN_KEYS, N_POINTS, KeypointStats, read_keypoints
from utils.evaluation.preds import order_by_key
from utils.runs import is_complete, read_json, save_config, save_npz, write_json

cv2.setNumThreads(1)
FLAT_KEYPOINTS = re.compile(r"^(\d+)_(\d+)_keypoints\.json$", re.IGNORECASE)


@dataclass
class FeatureConfig:
    data: str = field(default="data/dfew", metadata={"help": "output folder of prepare_data.py --dataset dfew"})
    modality: str = field(default="image", metadata={"choices": ["image", "keypoints", "audio", "extra"]})
    name: str = field(default="", metadata={"help": "run name (default: model name, openpose, logmel or the extra folder's name)"})
    runs: str = field(default="runs", metadata={"help": "root of the run folders"})
    frames: str = field(default="all", metadata={"choices": ["all", "eval"],
                                                 "help": "every frame file (train-time jitter needs them) or the 16 eval frames"})
    model: str = field(default="resnet18", metadata={"help": "image: any timm model name"})
    pretrained: bool = field(default=True, metadata={"help": "image: ImageNet weights from the timm hub"})
    pretrained_path: str | None = field(default=None, metadata={"help": "image or --speech-encoder: weights file, for offline use"})
    checkpoint: str | None = field(default=None, metadata={"help": "image: a train_image.py best.pt instead (its head is dropped)"})
    img_size: int = field(default=224, metadata={"help": "image: model input size"})
    crop_size: int = field(default=0, metadata={"help": "image: decode size, resized to img_size on the device "
                                                        "(0: img_size; with --checkpoint, the run's own)"})
    batch_size: int = 64
    workers: int = field(default=2, metadata={"help": "image: decoding processes"})
    precision: str = field(default="auto", metadata={"choices": ["auto", "fp32", "fp16", "bf16"]})
    device: str = "auto"
    openpose: str = field(default="", metadata={"help": "keypoints: folder of <clip>/*_keypoints.json"})
    n_fft: int = field(default=512, metadata={"help": "audio: STFT size"})
    hop: int = field(default=160, metadata={"help": "audio: hop in samples (10 ms at 16 kHz)"})
    n_mels: int = field(default=64, metadata={"help": "audio: mel bins = feature width"})
    speech_encoder: str = field(default="", metadata={"choices": ["", *speech.SPEECH_BACKBONES],
                                                      "help": "audio: a speech encoder's states instead of log-mel"})
    speech_layer: int = field(default=0, metadata={"help": "audio: the encoder's layer (0: two thirds up)"})
    reduce_dim: int = field(default=0, metadata={"help": "audio: PCA to this width (0: keep the encoder's)"})
    audio_run: str = field(default="", metadata={"help": "audio: a train_audio.py run folder, to use its model instead"})
    extra_dir: str = field(default="", metadata={"help": "extra: folder of <clip>.npy, (n_frames, D) each"})
    overwrite: bool = field(default=False, metadata={"help": "extract again even if the run is complete"})


class FrameImages(Dataset):
    """Frame files as uint8 (S, S, 3); an unreadable file is a black image flagged bad."""

    def __init__(self, paths, size: int):
        self.paths, self.size = list(paths), size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = cv2.imread(self.paths[i], cv2.IMREAD_COLOR)
        if image is None:
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), False
        if image.shape[:2] != (self.size, self.size):
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(np.ascontiguousarray(image[..., ::-1])), True


@torch.no_grad()
def image_features(cfg, frames: pd.DataFrame, warnings, d) -> tuple[np.ndarray, np.ndarray]:
    if cfg.checkpoint:   # the kit's own fine-tuned model (cfg holds its settings): its head is dropped below
        classes = NUM_DFEW_CLASSES if checkpoint_config(cfg).get("dataset") == "dfew" else NUM_EXPR_CLASSES
        model = create_model(cfg.model, classes, img_size=cfg.img_size)
        load_weights(model, cfg.checkpoint)
    else:
        model = create_model(cfg.model, 0, cfg.pretrained, cfg.pretrained_path, img_size=cfg.img_size)
    model.eval().to(d.device)
    pipe, precision = InputPipe(*normalisation(model), cfg.img_size, d.device), pick_precision(d.device, cfg.precision)
    part = frames["path"].to_numpy()[shard(len(frames), d)]   # under torchrun each rank takes a shard
    loader = DataLoader(FrameImages(part, cfg.crop_size or cfg.img_size), batch_size=cfg.batch_size,
                        num_workers=cfg.workers, pin_memory=d.device.type == "cuda")
    out = Rows(len(part), "image features" if d.main else None, "frames", features=np.float16, ok=bool)
    for images, good in loader:
        with autocast(d.device, precision):
            f, _ = features_and_logits(model, pipe(images))
        out.add(features=f, ok=good)
    ok = gather(out.get("ok"), d)
    for path in frames["path"].to_numpy()[~ok] if d.main else ():
        warnings("unreadable frame", f"{path}: not a readable image; frame masked")
    return gather(out.get("features", model.num_features), d), ok


def checkpoint_config(cfg) -> dict:
    """The config of the train_image.py run behind --checkpoint ({} if its config.json is gone)."""
    saved = Path(cfg.checkpoint).parent / "config.json"
    return read_json(saved)["config"] if saved.is_file() else {}


def with_checkpoint_settings(cfg):
    """The run behind --checkpoint knows its backbone, input and decode size better than the
    flags: frames then go through the chain it was trained with (decode at its crop size, resize
    on the device). Aff-Wild2 runs older than the crop_size setting decoded 112 px crops."""
    run = checkpoint_config(cfg) if cfg.modality == "image" and cfg.checkpoint else {}
    if not run:
        return cfg
    crop = run.get("crop_size") or (112 if run.get("dataset", "affwild2") == "affwild2" else run["img_size"])
    return replace(cfg, model=run["model"], img_size=run["img_size"], crop_size=crop)


def keypoint_files(root: Path) -> dict[str, dict[int, Path] | None]:
    """OpenPose output per clip: a folder per clip (<root>/<clip>/*_keypoints.json; None here, the
    reader lists it) and/or one flat folder of every clip's files named <clip>_<number>_keypoints.json
    (OpenPose run on Clip/original/*.mp4 into one --write_json folder)."""
    entries = listdir(root)
    found: dict[str, dict[int, Path] | None] = {clip_id(e.name): None for e in entries
                                                  if e.is_dir() and clip_id(e.name)}
    for entry in entries:
        m = FLAT_KEYPOINTS.match(entry.name)
        if m and found.get(clip_id(m.group(1)), {}) is not None:   # a clip's own folder wins
            found.setdefault(clip_id(m.group(1)), {})[int(m.group(2))] = Path(entry.path)
    return found


def keypoint_features(cfg, frames: pd.DataFrame, warnings) -> tuple[np.ndarray, np.ndarray]:
    root = Path(cfg.openpose)
    if not root.is_dir():
        raise DataError(f"{cfg.openpose or '--openpose'}: OpenPose output folder not found")
    per_clip, stats = keypoint_files(root), KeypointStats()
    feats = np.zeros((len(frames), N_POINTS * 3), np.float16)
    mask = np.zeros(len(frames), bool)
    for clip, rows in track(frames.groupby("clip", sort=False).indices.items(), description="keypoints", unit="clips"):
        if clip not in per_clip:   # OpenPose not run on this clip: one warning, not one per frame
            warnings("no openpose folder", f"{root / clip}: no OpenPose output; clip {clip} masked")
            continue
        points, mask[rows] = read_keypoints(root / clip, frames["number"].to_numpy()[rows], warnings,
                                            files=per_clip[clip], stats=stats)
        feats[rows] = points.reshape(len(rows), -1)
    if not stats.found:
        raise DataError(f"{root}: no *_keypoints.json file for any of the {frames['clip'].nunique()} clips "
                        "(expected <clip>/<name>_<number>_keypoints.json or <clip>_<number>_keypoints.json)")
    if not stats.files:
        raise DataError(f"{root}: none of the {stats.found} *_keypoints.json files is OpenPose JSON "
                        f"(first: {stats.first_error})")
    if not stats.points:
        raise DataError(f"{root}: {stats.files} OpenPose files read, but not one keypoint in them: the people "
                        f"hold the keys {sorted(stats.keys)[:8]}, the kit reads {list(KNOWN_KEYS)}")
    return feats, mask


def clip_sound(row, rate: int, warnings) -> np.ndarray | None:
    """A clip's decoded sound (utils.readers.media: finite mono float32), or None (counted) without one."""
    if not row["has_audio"]:
        warnings("no audio", f"clip {row.name} has no sound; masked")
        return None
    try:
        return np.load(row["audio_path"], allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{row['audio_path']}: cannot be read ({err}); run prepare_data.py --force") from None


def clip_clock(row, rate: int) -> tuple[np.ndarray | None, float]:
    """A clip's frame times (when its video has a variable rate and one frame per frame file) and
    its average fps. DFEW stores no frame rate: without frame times a clip's n frames are spread
    evenly over its sound, frame k covering [k, k + 1) * duration / n, which equals k / fps when
    the frames are the whole clip, as in DFEW's clip_224x224."""
    seconds = row["audio_samples"] / rate
    fps = row["n_frames"] / seconds if seconds > 0 else 25.0
    return (load_frame_times(row["frame_times"]) if row.get("frame_times") else None), fps


def start_seconds(position: np.ndarray, times: np.ndarray | None, fps: float) -> np.ndarray:
    """When the frames at `position` (0-based, in numeric file order) start, in seconds."""
    return frame_start_seconds(position + 1, times, fps) if times is not None else position / fps


def audio_features(cfg, frames: pd.DataFrame, clips: pd.DataFrame, warnings) -> tuple[np.ndarray, np.ndarray]:
    rate = int(read_json(Path(cfg.data) / "meta.json")["sample_rate"])
    encoder = (speech.build_encoder(cfg.speech_encoder, cfg.speech_layer, cfg.pretrained_path)
               if cfg.speech_encoder else None)
    width = encoder.dim if encoder else cfg.n_mels
    hop_seconds = speech.HOP_SECONDS if encoder else cfg.hop / rate
    feats = np.zeros((len(frames), width), np.float32)
    mask = np.zeros(len(frames), bool)
    info = clips.set_index("clip")
    for clip, rows in track(frames.groupby("clip", sort=False).indices.items(), description="audio features",
                            unit="clips"):
        row = info.loc[clip]
        samples = clip_sound(row, rate, warnings)
        if samples is None:
            continue
        if encoder is not None:   # (D, rows) like a spectrogram, row j centred at j * 0.02 s
            if rate != speech.SAMPLE_RATE:
                samples = torchaudio.functional.resample(torch.from_numpy(samples), rate, speech.SAMPLE_RATE).numpy()
            spec = speech.encode(encoder, samples).T.astype(np.float32)
        else:
            spec = log_mel(samples, rate, cfg.n_fft, cfg.hop, cfg.n_mels).astype(np.float32)
        # Column j is centred at j * hop_seconds; frame k takes the columns in its span.
        position = frames["frame"].to_numpy()[rows]
        times, fps = clip_clock(row, rate)
        begin, end = start_seconds(position, times, fps), start_seconds(position + 1, times, fps)
        lo = np.ceil(begin / hop_seconds - 1e-6).astype(int)
        hi = np.maximum(lo + 1, np.ceil(end / hop_seconds - 1e-6).astype(int))
        lo, hi = np.minimum(lo, spec.shape[1] - 1), np.minimum(hi, spec.shape[1])
        cumulative = np.concatenate([np.zeros((width, 1)), np.cumsum(spec, 1)], 1)
        feats[rows] = ((cumulative[:, hi] - cumulative[:, lo]) / np.maximum(hi - lo, 1)).T
        mask[rows] = True
    if cfg.reduce_dim and cfg.reduce_dim < width:
        if mask.sum() < cfg.reduce_dim:
            raise DataError(f"{cfg.data}: {mask.sum()} frames with sound, fewer than --reduce-dim {cfg.reduce_dim}")
        from sklearn.decomposition import PCA
        reduced = np.zeros((len(frames), cfg.reduce_dim), np.float32)
        reduced[mask] = PCA(cfg.reduce_dim, random_state=0).fit_transform(feats[mask])
        feats = reduced
    return feats.astype(np.float16), mask


@torch.no_grad()
def audio_branch_features(cfg, frames: pd.DataFrame, clips: pd.DataFrame, warnings, d) -> tuple[np.ndarray, np.ndarray]:
    run = Path(cfg.audio_run)
    if not (run / "best.pt").is_file() or not (run / "config.json").is_file():
        raise DataError(f"{run}: not an audio-branch run (needs best.pt and config.json from train_audio.py)")
    saved = read_json(run / "config.json")["config"]
    if saved.get("backbone", "logmel") != "logmel":
        raise DataError(f"{run}: a {saved['backbone']} run (speech-encoder head); --audio-run takes log-mel runs, "
                        f"use --speech-encoder {saved['backbone']} for that encoder's features")
    rate = int(read_json(Path(cfg.data) / "meta.json")["sample_rate"])
    info = clips.set_index("clip").loc[frames["clip"].unique()]
    lengths, hop_seconds = saved["window_frames"], saved["hop"] / rate
    parts = []   # one spectrogram per clip, in memory: DFEW's clips are seconds long
    starts = np.zeros((len(frames), len(lengths)), np.int64)
    widths = np.ones((len(frames), len(lengths)), np.int64)
    groups = frames.groupby("clip", sort=False).indices
    for clip, row in track(list(info.iterrows()), description="spectrograms", unit="clips"):
        samples = clip_sound(row, rate, warnings)
        parts.append(np.zeros((0, saved["n_mels"]), np.float16) if samples is None else
                     log_mel(samples, rate, saved["n_fft"], saved["hop"], saved["n_mels"]).T)
        rows = groups[clip]
        frame = frames["frame"].to_numpy()[rows] + 1
        times, fps = clip_clock(row, rate)
        for j, n in enumerate(lengths):
            starts[rows, j], widths[rows, j] = (window_columns_timed(frame, times, fps, n, hop_seconds)
                                                if times is not None else window_columns(frame, fps, n, hop_seconds))
    bank, offset, n_columns = stack_bank(parts, saved["n_mels"])
    if saved.get("video_centre_db") is not None:   # the run normalised each video's level (--norm-per-video)
        bank = centre_per_video(bank, offset, n_columns, saved["video_centre_db"])
    clip_of = pd.Series(np.arange(len(info)), index=info.index).reindex(frames["clip"]).to_numpy()
    windows = WindowDataset(bank, offset, n_columns, np.repeat(clip_of, len(lengths)), starts.reshape(-1),
                            widths.reshape(-1), np.zeros(len(frames) * len(lengths)))
    model = create_model(saved["model"], NUM_EXPR_CLASSES, img_size=saved["img_size"], in_chans=1)
    load_weights(model, run / "best.pt")
    model.eval().to(d.device)
    pipe = AudioPipe(saved["img_size"], saved["spec_mean_db"], saved["spec_std_db"], d.device)
    precision = pick_precision(d.device, cfg.precision)
    windows = Subset(windows, shard(len(windows), d))
    out = Rows(len(windows), "audio-branch windows" if d.main else None, "windows", features=np.float16)
    for spec, width, _ in DataLoader(windows, batch_size=cfg.batch_size, collate_fn=keep_batch):
        with autocast(d.device, precision):
            f, _ = features_and_logits(model, pipe(spec, width))
        out.add(features=f)
    feats = gather(out.get("features", model.num_features), d).reshape(len(frames), -1)   # a frame's windows side by side
    return feats, info["has_audio"].to_numpy(bool)[clip_of]


def extra_features(cfg, frames: pd.DataFrame, clips: pd.DataFrame, warnings) -> tuple[np.ndarray, np.ndarray]:
    """Rows of <clip>.npy (the 5-digit or the plain clip number) for each frame. A row with a NaN
    or infinite value masks its frame (counted, naming the file): external generators write NaN
    where they found no face. A file that is not a numeric (n_frames, D) array is a DataError."""
    folder = Path(cfg.extra_dir)
    if not folder.is_dir():
        raise DataError(f"{cfg.extra_dir or '--extra-dir'}: folder of <clip>.npy arrays not found")
    files = {clip_id(Path(e.name).stem): Path(e.path) for e in listdir(folder)
             if e.name.lower().endswith(".npy") and clip_id(Path(e.name).stem)}
    n_frames = dict(zip(clips["clip"], clips["n_frames"]))
    parts, width = {}, None
    for clip, rows in track(frames.groupby("clip", sort=False).indices.items(), description="extra features", unit="clips"):
        path = files.get(clip)
        if path is None:
            warnings("no extra file", f"{folder / clip}.npy: not found; clip {clip} masked")
            continue
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable .npy array ({err})") from None
        if array.ndim != 2 or len(array) != n_frames[clip] or array.dtype.kind not in "fiub":
            raise DataError(f"{path}: shape {array.shape} ({array.dtype}), expected a numeric "
                            f"({n_frames[clip]}, D): one row per frame file of clip {clip}, in numeric order")
        if width is not None and array.shape[1] != width:
            raise DataError(f"{path}: {array.shape[1]} columns, the other clips have {width}")
        values = array[frames["frame"].to_numpy()[rows]].astype(np.float32)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            warnings("extra non-finite", f"{path}: {int((~finite).sum())} of its frames hold NaN or infinite "
                     "values; those frames are masked", int((~finite).sum()))
        width, parts[clip] = array.shape[1], (rows, np.where(finite[:, None], values, 0.0), finite)
    if width is None:
        raise DataError(f"{folder}: no <clip>.npy for any of the {len(n_frames)} clips")
    feats, mask = np.zeros((len(frames), width), np.float16), np.zeros(len(frames), bool)
    for rows, values, finite in parts.values():
        feats[rows], mask[rows] = values, finite
    return feats, mask


def default_name(cfg) -> str:
    audio = (f"audio-{Path(cfg.audio_run.rstrip('/')).name}" if cfg.audio_run else
             f"speech-{cfg.speech_encoder}" + (f"-layer{cfg.speech_layer}" if cfg.speech_layer else "")
             + (f"-pca{cfg.reduce_dim}" if cfg.reduce_dim else "") if cfg.speech_encoder else "logmel")
    image = f"image-{Path(cfg.checkpoint).parent.name}" if cfg.checkpoint else cfg.model
    return cfg.name or {"image": image, "keypoints": "openpose", "audio": audio,
                        "extra": Path(cfg.extra_dir.rstrip("/")).name or "extra"}[cfg.modality]


def main(argv=None) -> Path:
    cfg = with_checkpoint_settings(parse_config(FeatureConfig, argv, description=__doc__.split("\n")[0]))
    if cfg.speech_encoder and not 0 <= cfg.speech_layer <= speech.num_layers(cfg.speech_encoder):
        raise SystemExit(f"error: --speech-layer {cfg.speech_layer}: {cfg.speech_encoder} has layers 1.."
                         f"{speech.num_layers(cfg.speech_encoder)}")
    run = Path(cfg.runs) / "features" / default_name(cfg)
    if is_complete(run) and not cfg.overwrite:
        log(f"{run} is complete (metrics.json); --overwrite extracts again")
        return run
    d = setup_distributed(cfg.device)   # under torchrun the image and audio-branch passes are sharded
    if d.main:
        (run / "metrics.json").unlink(missing_ok=True)
    try:
        frames, clips = read_tables(cfg.data, "frames", "clips")
        # weights fine-tuned on a DFEW fold bring the clips they learnt from: the clip model checks them
        weights = cfg.checkpoint or cfg.pretrained_path
        split = weights_split(weights) if cfg.modality == "image" and weights else None
    except DataError as err:
        raise SystemExit(f"error: {err}")
    frames = frames.iloc[order_by_key(frames["clip"].to_numpy(), frames["frame"].to_numpy())]
    if cfg.frames == "eval":
        frames = frames[frames["eval_sample"]]
    frames = frames.reset_index(drop=True)
    if d.main:
        save_config(run, asdict(cfg) | dict(name=default_name(cfg), world_size=d.world_size))
        (run / "generator_split.json").unlink(missing_ok=True)
        if split is not None:
            write_json(run / "generator_split.json", split)
    warnings, start = WarningCounter(), time.perf_counter()
    try:
        if cfg.modality == "image":
            feats, mask = image_features(cfg, frames, warnings, d)
        elif cfg.modality == "keypoints":
            feats, mask = keypoint_features(cfg, frames, warnings)
        elif cfg.modality == "audio" and cfg.audio_run:
            feats, mask = audio_branch_features(cfg, frames, clips, warnings, d)
        elif cfg.modality == "audio":
            feats, mask = audio_features(cfg, frames, clips, warnings)
        else:
            feats, mask = extra_features(cfg, frames, clips, warnings)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    seconds = time.perf_counter() - start
    if not d.main:   # every rank holds the gathered result; rank 0 writes it
        return run
    labels = frames["clip"].map(dict(zip(clips["clip"], clips["label"]))).fillna(-1)
    save_npz(run / "features.npz", txtid=frames["clip"].to_numpy().astype(str),
             frame=(frames["frame"].to_numpy() + 1).astype(np.int32), number=frames["number"].to_numpy().astype(np.int32),
             label=labels.to_numpy().astype(np.int8), mask=mask, features=feats.astype(np.float16))
    n_clips = frames["clip"].nunique()
    masked_clips = int((~pd.Series(mask).groupby(frames["clip"].to_numpy()).any()).sum())
    metrics = dict(modality=cfg.modality, name=default_name(cfg), frames=len(frames), clips=n_clips,
                   feature_dim=int(feats.shape[1]), masked_frames=int((~mask).sum()), masked_clips=masked_clips,
                   seconds=seconds, clips_per_s=n_clips / max(seconds, 1e-9), warnings=warnings.summary())
    table(f"features -> {run}", ["modality", "clips", "frames", "dim", "masked frames", "clips without it", "clips/s"],
          [[cfg.modality, n_clips, len(frames), metrics["feature_dim"], metrics["masked_frames"], masked_clips, metrics["clips_per_s"]]])
    write_json(run / "metrics.json", metrics)
    return run


if __name__ == "__main__":
    cli(main)
