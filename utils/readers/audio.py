"""Audio branch data: log-mel spectrograms cached once per video, and label-pure windows cut from them.

Time axis. Spectrogram column j is centred at j * hop / sample_rate seconds on the video's
clock (torchaudio's centred STFT; the decoded audio already starts at the video's start).
Frame t (1-based) covers [(t-1)/fps, t/fps). The window of `length` frames centred on t spans
frames t-length/2 .. t+length/2-1 and takes the columns whose centres fall in that span, the
same number of columns for every window of one video and length. Columns before the start
or past the end of the audio are silence: the dB floor (-100 dB, power 1e-10). A video
without audio is all floor and still gets predictions.

Data path. All spectrograms of a run live in one float16 bank in memory (about 350 MB for
the whole of Aff-Wild2 at the default settings). A batch of windows is one fancy-index gather
from it in the DataLoader worker; the resize to the model's input (grid_sample, one call for
the batch, each window stretched by its own width), normalisation and SpecAugment masking run
on the device in AudioPipe, as the image branch's InputPipe does for crops.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchaudio
from joblib import Parallel, delayed
from torch.utils.data import Dataset

from utils.console import WarningCounter, track
from utils.files import DataError
from utils.readers.media import locate
from utils.runs import read_json, save_npy, write_json

FLOOR_DB = -100.0   # 10 * log10(1e-10): what digital silence maps to


def log_mel(samples: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """(n_mels, 1 + len // hop) power mel spectrogram in dB, float16, for a track of any length.

    A track shorter than half an FFT window (down to zero samples: a 40 ms sound track at n_fft
    2048) is padded with silence for the STFT, so its columns are valid and sit at the floor
    where there is no sound. ValueError if a sample is not finite (media.read_video zeroes them)."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise ValueError(f"{int((~np.isfinite(samples)).sum())} samples are NaN or infinite")
    columns = 1 + len(samples) // hop
    if len(samples) <= n_fft // 2:   # the centred STFT's reflection padding needs more than half a window
        samples = np.pad(samples, (0, n_fft // 2 + 1 - len(samples)))
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop,
                                               n_mels=n_mels, power=2.0, center=True)
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)
    with torch.no_grad():
        spec = to_db(mel(torch.from_numpy(samples)))
    return spec.clamp(min=FLOOR_DB)[:, :columns].numpy().astype(np.float16)


def spec_folder(data_dir, n_fft: int, hop: int, n_mels: int) -> Path:
    """One cache folder per setting, so changing a setting never reads a stale spectrogram."""
    return Path(data_dir) / "spec" / f"nfft{n_fft}_hop{hop}_mels{n_mels}"


def _spectrogram_job(videoid: str, audio_path: str, out: Path, sample_rate: int, n_fft: int,
                     hop: int, n_mels: int) -> tuple[str, int, str]:
    """Returns (videoid, samples, error); never raises, so one bad file cannot stop the others."""
    try:
        samples = np.load(audio_path, allow_pickle=False)   # whole file: the STFT reads it all anyway
        save_npy(out / f"{videoid}.npy", log_mel(samples, sample_rate, n_fft, hop, n_mels))
    except (OSError, ValueError) as err:
        return videoid, 0, f"{audio_path}: {err}"
    return videoid, len(samples), ""


def _stale(spec: Path, audio: Path) -> bool:
    """A spectrogram is computed again when it is missing or older than its audio (decoded again by
    prepare_data.py --force, or by a kit version that decodes differently)."""
    if not audio.is_file():
        raise DataError(f"{audio}: the decoded sound of {spec.stem} is missing from the data folder (copied "
                        f"without its audio/?); run prepare_data.py --force to decode it again")
    return not spec.exists() or spec.stat().st_mtime_ns < audio.stat().st_mtime_ns


def ensure_spectrograms(data_dir, n_fft: int = 2048, hop: int = 1024, n_mels: int = 128,
                        jobs: int = 1, force: bool = False, warnings=None) -> Path:
    """Compute the spectrogram of every video with audio that is not cached yet; return the folder.

    Called by prepare_data.py with the default settings and by train_audio.py with its own,
    so a run with other settings computes them once, and a run with the defaults none; a
    spectrogram older than its audio file is computed again. A track
    shorter than one FFT window is padded with silence and counted through `warnings` (kind
    'short audio', naming the video); a cached track that cannot be read or holds non-finite
    samples is a DataError naming it (prepare_data.py --force decodes it again).
    """
    warnings = warnings if warnings is not None else WarningCounter()
    data_dir = Path(data_dir)
    videos = locate(pd.read_parquet(data_dir / "videos.parquet"), data_dir)
    sample_rate = int(read_json(data_dir / "meta.json")["sample_rate"])
    out = spec_folder(data_dir, n_fft, hop, n_mels)
    todo = [(v.videoid, v.audio_path) for v in videos.itertuples()
            if v.has_audio and (force or _stale(out / f"{v.videoid}.npy", Path(v.audio_path)))]
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(_spectrogram_job)(v, p, out, sample_rate, n_fft, hop, n_mels) for v, p in todo)
        for videoid, n_samples, error in track(results, total=len(todo), description="log-mel spectrograms",
                                               unit="videos"):
            if error:
                raise DataError(f"{error}; run prepare_data.py --force to decode it again")
            if n_samples < n_fft:
                warnings("short audio", f"video {videoid}: its sound lasts {n_samples / sample_rate * 1000:.0f} ms, "
                         f"less than one {n_fft}-sample FFT window; padded with silence")
    write_json(out / "spec.json", dict(sample_rate=sample_rate, n_fft=n_fft, hop=hop, n_mels=n_mels,
                                       hop_seconds=hop / sample_rate, floor_db=FLOOR_DB,
                                       time_axis="column j is centred at j * hop_seconds on the video clock"))
    return out


def load_bank(folder: Path, videoids, has_audio) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every video's spectrogram in one (columns, n_mels) float16 array, one floor column last.

    Returns (bank, offset, n_columns) with video i's column j at bank[offset[i] + j]. A cached
    spectrogram that is missing, unreadable, of another mel count or not finite is a DataError
    naming the file."""
    n_mels = int(read_json(folder / "spec.json")["n_mels"])
    return load_rows(folder, videoids, has_audio, n_mels, stored_transposed=True, filler=FLOOR_DB,
                     again="delete it and run train_audio.py again")


def load_rows(folder: Path, videoids, has_audio, width: int, *, stored_transposed: bool, filler: float,
              again: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-video caches <folder>/<videoid>.npy (rows x width float16, or width x rows when
    `stored_transposed`, as spectrograms are) of the videos with audio, stacked as by stack_bank
    with one `filler` row last; a video without audio has no rows. A file that is missing,
    unreadable, of another width or not finite is a DataError naming it, ending with `again`."""
    parts = []
    for videoid, audio in zip(videoids, has_audio):
        if not audio:
            parts.append(np.zeros((0, width), np.float16))
            continue
        path = folder / f"{videoid}.npy"
        try:
            rows = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot be read ({err}); {again}") from None
        rows = rows.T if stored_transposed and rows.ndim == 2 else rows
        if rows.ndim != 2 or rows.shape[1] != width or not np.isfinite(rows).all():
            shape = f"({width}, columns)" if stored_transposed else f"(rows, {width})"
            raise DataError(f"{path}: not a finite {shape} array (shape {rows.T.shape if stored_transposed else rows.shape}); "
                            f"{again}")
        parts.append(rows)
    return stack_bank(parts, width, filler)


def stack_bank(parts, width: int, filler: float = FLOOR_DB) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, width) arrays, one per video or clip, as (bank, offset, n_rows): one float16 array
    with part i's row j at bank[offset[i] + j], and one `filler` row last (what windows past a
    video's ends read: the silence floor for log-mel)."""
    n_rows = np.array([len(p) for p in parts], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(n_rows)[:-1]]).astype(np.int64)
    return np.concatenate(list(parts) + [np.full((1, width), filler, np.float16)]), offset, n_rows


def bank_stats(bank: np.ndarray, offset, n_columns, videos_used) -> tuple[float, float]:
    """Mean and std of the dB values over the given videos, for input normalisation."""
    total, total_sq, count = 0.0, 0.0, 0
    for i in videos_used:
        part = bank[offset[i]:offset[i] + n_columns[i]].astype(np.float64)
        total, total_sq, count = total + part.sum(), total_sq + (part ** 2).sum(), count + part.size
    if not count:
        return FLOOR_DB, 1.0
    mean = total / count
    return float(mean), float(max(math.sqrt(max(total_sq / count - mean ** 2, 0.0)), 1e-3))


def per_video_centre(bank: np.ndarray, offset, n_columns, videos_used) -> np.ndarray:
    """The mean over `videos_used` (train) of each video's per-mel mean dB: (n_mels,) float32, the
    level centre_per_video moves every video to."""
    means = [bank[offset[i]:offset[i] + n_columns[i]].astype(np.float32).mean(0) for i in videos_used if n_columns[i]]
    return np.mean(means, 0).astype(np.float32) if means else np.zeros(bank.shape[1], np.float32)


def centre_per_video(bank: np.ndarray, offset, n_columns, centre) -> np.ndarray:
    """A new bank where each video's spectrogram has its own per-mel mean (dB) replaced by `centre`
    (per_video_centre): a speaker's or a microphone's constant spectral colour is removed, as
    cepstral mean normalisation does; the floor row (silence past the ends) is left as it is."""
    out = bank.copy()
    centre = np.asarray(centre, np.float32)
    for o, n in zip(offset, n_columns):
        if n:
            part = bank[o:o + n].astype(np.float32)
            out[o:o + n] = (part - part.mean(0) + centre).astype(np.float16)
    return out


def window_columns(frame: np.ndarray, fps: np.ndarray, length: int, hop_seconds: float):
    """First column and column count of the window of `length` frames centred on each frame of a
    constant-rate video: frame t covers [(t-1)/fps, t/fps)."""
    first_frame = np.asarray(frame, dtype=np.float64) - 1 - length // 2   # 0-based
    start = np.ceil(first_frame / fps / hop_seconds - 1e-6).astype(np.int64)
    width = np.maximum(1, np.round(length / np.asarray(fps, dtype=np.float64) / hop_seconds)).astype(np.int64)
    return start, width


def frame_start_seconds(frame: np.ndarray, times: np.ndarray, fps: float) -> np.ndarray:
    """When frame `frame` (1-based, any integer) of a variable-rate video starts: times[frame - 1],
    the decoded frame's timestamp, and beyond either end one average frame (1 / fps) a step."""
    frame = np.asarray(frame, dtype=np.int64)
    inside = np.clip(frame, 1, len(times))
    return times[inside - 1] + (frame - inside) / fps


def window_columns_timed(frame: np.ndarray, times: np.ndarray, fps: float, length: int, hop_seconds: float):
    """window_columns for a variable-rate video (DESIGN.md section 8): the window of frames
    t-length/2 .. t+length/2-1 spans [start of its first frame, start of the frame after its
    last) on the frames' own timestamps, and takes the columns whose centres fall in that span,
    so its width (at least one column) follows how long those frames were shown."""
    frame = np.asarray(frame, dtype=np.int64)
    begin = frame_start_seconds(frame - length // 2, times, fps)
    end = frame_start_seconds(frame - length // 2 + length, times, fps)
    start = np.ceil(begin / hop_seconds - 1e-6).astype(np.int64)
    stop = np.ceil(end / hop_seconds - 1e-6).astype(np.int64)
    return start, np.maximum(1, stop - start)


def window_purity(labels: np.ndarray, length: int) -> np.ndarray:
    """Share of the window's `length` frames whose label equals the centre frame's.

    Frames labelled -1 and frames past either end of the video count as different, and a
    centre labelled -1 has purity 0. `labels` is one txtid's labels in frame order."""
    labels = np.asarray(labels)
    n = len(labels)
    known = labels >= 0
    onehot = np.zeros((n, int(labels.max()) + 1 if known.any() else 1), np.int32)
    onehot[np.flatnonzero(known), labels[known]] = 1
    cumulative = np.concatenate([np.zeros((1, onehot.shape[1]), np.int32), np.cumsum(onehot, 0)])
    centre = np.arange(n)
    lo = np.clip(centre - length // 2, 0, n)
    hi = np.clip(centre - length // 2 + length, 0, n)
    cls = np.where(known, labels, 0)
    same = cumulative[hi, cls] - cumulative[lo, cls]
    return np.where(known, same / length, 0.0)


class WindowDataset(Dataset):
    """Spectrogram windows: sample k is (video[k], first column start[k], width[k]).

    __getitems__ gathers a whole batch at once and returns (spec (B, n_mels, W) float16,
    widths (B,), labels (B,)); W is the widest window of the dataset plus one column, so the
    resize on the device can blend the last column with the real audio that follows it.
    """

    def __init__(self, bank: np.ndarray, offset: np.ndarray, n_columns: np.ndarray,
                 video: np.ndarray, start: np.ndarray, width: np.ndarray, labels: np.ndarray,
                 keys: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        # keys: (txtid, frame, window length) of every sample, for error messages only
        self.bank, self.offset, self.n_columns, self.keys = bank, offset, n_columns, keys
        self.video, self.start, self.width = video, start, width
        self.labels = np.asarray(labels, dtype=np.int64)
        self.max_width = int(width.max()) + 1 if len(width) else 1
        self.floor_row = len(bank) - 1

    def set_epoch(self, epoch: int) -> None:   # the Trainer's hook; windows need no per-epoch state
        pass

    def describe(self, indices) -> list[str]:
        """'txtid/frame (length-frame window)' of the given samples, for error messages."""
        if self.keys is None:
            return [f"window {i}" for i in indices]
        return [f"{self.keys[0][i]}/{int(self.keys[1][i]):05d} ({int(self.keys[2][i])}-frame window)" for i in indices]

    def __len__(self):
        return len(self.video)

    def __getitems__(self, indices):
        indices = np.asarray(indices)
        video = self.video[indices]
        column = self.start[indices, None] + np.arange(self.max_width)
        inside = (column >= 0) & (column < self.n_columns[video, None])
        rows = np.where(inside, self.offset[video, None] + column, self.floor_row)
        spec = torch.from_numpy(self.bank[rows].transpose(0, 2, 1).copy())   # B, n_mels, W
        return spec, torch.from_numpy(self.width[indices]), torch.from_numpy(self.labels[indices])

    def __getitem__(self, i):
        spec, width, label = self.__getitems__([i])
        return spec[0], width[0], label[0]


class AudioPipe:
    """Gathered windows to normalised 1-channel model input on the device: each window stretched
    from its own width to size x size in one grid_sample call, then SpecAugment in training.
    Masks draw from the global torch RNG, which last.pt saves, so a resumed run masks alike."""

    def __init__(self, size: int, mean: float, std: float, device: torch.device,
                 freq_mask: float = 0.0, time_mask: float = 0.0):
        self.size, self.mean, self.std, self.device = size, mean, std, device
        # Mask widths are shares of the input's axes; iid_masks gives each window its own mask.
        self.freq_mask = (torchaudio.transforms.FrequencyMasking(int(freq_mask * size), iid_masks=True)
                          if freq_mask > 0 else None)
        self.time_mask = (torchaudio.transforms.TimeMasking(int(time_mask * size), iid_masks=True)
                          if time_mask > 0 else None)

    def __call__(self, spec: torch.Tensor, widths: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = spec.to(self.device, non_blocking=True).float().unsqueeze(1)   # B, 1, n_mels, W
        scale = widths.to(self.device).float() / x.shape[-1]
        theta = torch.zeros(len(x), 2, 3, device=self.device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1] = scale, scale - 1, 1.0
        grid = F.affine_grid(theta, [len(x), 1, self.size, self.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = (x - self.mean) / self.std
        if train:
            for mask in (self.freq_mask, self.time_mask):
                if mask is not None:
                    x = mask(x)
        return x



def frame_windows(frames: pd.DataFrame, videos: pd.DataFrame, lengths, hop_seconds: float):
    """For every row of `frames`: its video's index in `videos` and, per window length, the
    first column and the width. Returns (video (N,), start (N, L), width (N, L)).
    A video with a `frame_times` file (prepare_data.py writes one for each variable-rate video)
    places its windows on those timestamps; the others on (t-1)/fps."""
    position = pd.Series(np.arange(len(videos)), index=videos["videoid"].to_numpy())
    video = position.reindex(frames["videoid"].to_numpy()).to_numpy()
    if np.isnan(video).any():
        missing = frames["videoid"][np.isnan(video)].iloc[0]
        raise ValueError(f"video {missing} is in frames.parquet but not in videos.parquet")
    video = video.astype(np.int64)
    # A video that could not be read has no fps; its windows are silence whatever the rate.
    video_fps = videos["fps"].to_numpy(dtype=np.float64)
    video_fps = np.where(np.isfinite(video_fps) & (video_fps > 0), video_fps, 30.0)
    frame = frames["frame"].to_numpy()
    starts, widths = zip(*(window_columns(frame, video_fps[video], length, hop_seconds) for length in lengths))
    start, width = np.stack(starts, 1), np.stack(widths, 1)
    timed = videos["frame_times"].fillna("").to_numpy() if "frame_times" in videos else np.full(len(videos), "")
    for v in np.flatnonzero(timed != ""):
        rows = np.flatnonzero(video == v)
        if not len(rows):
            continue
        times = load_frame_times(timed[v])
        for j, length in enumerate(lengths):
            start[rows, j], width[rows, j] = window_columns_timed(frame[rows], times, video_fps[v], length, hop_seconds)
    return video, start, width


def load_frame_times(path) -> np.ndarray:
    """A video's frame timestamps (float64 seconds, one per decoded frame, increasing) as
    prepare_data.py stores them; DataError naming the file if it is unreadable or not increasing."""
    try:
        times = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: frame times cannot be read ({err}); run prepare_data.py --force") from None
    if times.ndim != 1 or not len(times) or not np.isfinite(times).all() or (np.diff(times) < 0).any():
        raise DataError(f"{path}: frame times must be increasing finite seconds; run prepare_data.py --force")
    return times.astype(np.float64)


def pure_windows(frames: pd.DataFrame, lengths, thresholds) -> np.ndarray:
    """(N, L) bool: the window of each length around each row passes its purity threshold.
    `frames` must be sorted by (txtid, frame) with consecutive frame numbers per txtid."""
    keep = np.zeros((len(frames), len(lengths)), bool)
    labels = frames["label"].to_numpy()
    for rows in frames.groupby("txtid", sort=False, observed=True).indices.values():
        for j, (length, threshold) in enumerate(zip(lengths, thresholds)):
            keep[rows, j] = window_purity(labels[rows], length) >= threshold - 1e-9
    return keep
