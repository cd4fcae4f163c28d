"""Speed of the audio branch: spectrogram cost, the window data path per worker, and --predict-stride.

Usage: python benchmarks/bench_audio.py [--quick] [--work /tmp/benchaudio] [--data DIR --run RUN]

1. utils.readers.audio.log_mel at the default settings on synthetic audio (noise + tones): seconds
   per hour of audio and x real time, on one thread and on torch's default thread count.
2. One DataLoader worker's work, in this process on one thread: WindowDataset.__getitems__
   (one gather from the cached float16 bank) next to the naive alternative, a log-mel per
   window from the raw 16 kHz samples, for the same windows of a bank of realistic size.
   Targets: cached >= 10x naive and > 1,000 windows/s. Also load_bank, and AudioPipe (resize
   to 224 + normalise + SpecAugment), which runs on the GPU in real use, timed on this CPU.
3. Val macro-F1 and val prediction time at --predict-stride 1, 2, 4, 8, 16 for a finished
   audio run (--data, --run); without them, the small demo is generated and trained in --work.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train_audio  # noqa: E402
from utils.evaluation.inference import predict_windows  # noqa: E402
from utils.readers.audio import (FLOOR_DB, AudioPipe, WindowDataset, ensure_spectrograms, frame_windows,  # noqa: E402
                         load_bank, log_mel, window_columns)
from utils.classes import EXPR_CLASSES  # noqa: E402
from utils.console import log, table  # noqa: E402
from utils.training.data import load_frames, load_videos  # noqa: E402
from utils.training.engine import pick_precision, score, setup_distributed  # noqa: E402
from utils.models.backbones import create_model, load_weights  # noqa: E402
from utils.runs import read_json, write_json  # noqa: E402

SR, N_FFT, HOP, N_MELS = 16000, 2048, 1024, 128
LENGTHS, BATCH = (32, 48, 64), 64


def synthetic_audio(seconds: float, rng) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    sweep = 300 + 200 * np.sin(0.5 * t)   # a moving tone, so the mel bands are not all noise
    return (0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 440 * t)
            + 0.2 * np.sin(2 * np.pi * sweep * t)).astype(np.float32)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def spectrogram_cost(signal: np.ndarray, default_threads: int) -> tuple[list[list], np.ndarray]:
    log_mel(signal[:SR], SR, N_FFT, HOP, N_MELS)   # warm-up: the first call loads kernels
    rows, seconds_of_audio = [], len(signal) / SR
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        seconds, spec = min((timed(log_mel, signal, SR, N_FFT, HOP, N_MELS) for _ in range(3)), key=lambda r: r[0])
        rows.append([f"log_mel, {threads} thread(s), {seconds_of_audio / 60:.0f} min of audio", seconds,
                     seconds * 3600 / seconds_of_audio, f"{seconds_of_audio / seconds:,.0f}x"])
    return rows, spec


def make_bank(folder: Path, spec: np.ndarray, n_videos: int, minutes: tuple, rng):
    """Cache files for videos of realistic length and frame rate, each the start of the one
    synthetic signal, so the naive path below can be checked against the cached one."""
    folder.mkdir(parents=True, exist_ok=True)
    fps = rng.choice([30.0, 25.0, 30000 / 1001], n_videos)
    samples = (rng.uniform(*minutes, n_videos) * 60 * SR).astype(np.int64)
    for i, n in enumerate(samples):
        np.save(folder / f"v{i}.npy", spec[:, :1 + n // HOP])   # log_mel's column count for n samples
    write_json(folder / "spec.json", dict(sample_rate=SR, n_fft=N_FFT, hop=HOP, n_mels=N_MELS, hop_seconds=HOP / SR))
    return [f"v{i}" for i in range(n_videos)], fps, samples


@torch.no_grad()
def naive_batch(audio, dataset: WindowDataset, indices, mel, to_db) -> torch.Tensor:
    """The alternative to the bank: a log-mel of each window's own samples, one window at a time
    as a per-sample __getitem__ would, with the transforms built once (log_mel builds them per call)."""
    out = []
    for i in indices:
        # Columns start..start+width-1, each centred on column * HOP as in the cached spectrogram.
        lo, width, samples = dataset.start[i] * HOP - N_FFT // 2, dataset.width[i], audio[dataset.video[i]]
        piece = np.zeros(N_FFT + (width - 1) * HOP, np.float32)
        a, b = max(lo, 0), min(lo + len(piece), len(samples))
        if b > a:
            piece[a - lo:b - lo] = samples[a:b]
        spec = to_db(mel(torch.from_numpy(piece))).clamp(min=FLOOR_DB)
        out.append(F.pad(spec, (0, dataset.max_width - width), value=FLOOR_DB).half())
    return torch.stack(out)


def data_path(args, signal: np.ndarray, spec: np.ndarray, default_threads: int, rng) -> list[list]:
    folder = Path(args.work) / "bank"
    ids, fps, samples = make_bank(folder, spec, args.videos, args.minutes, rng)
    load_s, (bank, offset, n_columns) = timed(load_bank, folder, ids, [True] * len(ids))
    n = args.batches * BATCH
    video = rng.integers(0, len(ids), n)
    frame = rng.integers(1, (samples[video] / SR * fps[video]).astype(np.int64) + 1)
    start, width = window_columns(frame, fps[video], rng.choice(LENGTHS, n), HOP / SR)
    dataset = WindowDataset(bank, offset, n_columns, video, start, width, np.zeros(n))
    # Views of one signal: the naive path's cost is the slice and the STFT, wherever the samples live.
    audio = [signal[:s] for s in samples]
    mel = torchaudio.transforms.MelSpectrogram(SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, center=False)
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)
    batches = np.array_split(rng.permutation(n), args.batches)   # shuffled, as the sampler draws
    torch.set_num_threads(1)   # what a DataLoader worker runs with
    dataset.__getitems__(batches[0]), naive_batch(audio, dataset, batches[0][:8], mel, to_db)   # warm-up
    # A cached pass is short (about 0.1 s): best of three against jitter; one naive pass is long enough.
    cached_s = min(timed(lambda: [dataset.__getitems__(b) for b in batches])[0] for _ in range(3))
    naive_s, _ = timed(lambda: [naive_batch(audio, dataset, b, mel, to_db) for b in batches])
    # Same numbers both ways, away from the ends of the audio (where padding differs by design).
    inner = [i for i in batches[0] if start[i] >= 1 and start[i] + width[i] < n_columns[video[i]] - 1]
    a, b = dataset.__getitems__(inner)[0].float(), naive_batch(audio, dataset, inner, mel, to_db).float()
    diff = max(float((a[k, :, :width[i]] - b[k, :, :width[i]]).abs().max()) for k, i in enumerate(inner))
    torch.set_num_threads(default_threads)
    x, widths, _ = dataset.__getitems__(batches[0])
    pipe = AudioPipe(224, -50.0, 20.0, torch.device("cpu"), freq_mask=0.15, time_mask=0.15)
    pipe(x, widths, train=True)
    pipe_s = min(timed(pipe, x, widths, True)[0] for _ in range(5))
    log(f"bank: {len(ids)} videos of {args.minutes[0]}-{args.minutes[1]} min at 25/29.97/30 fps, {bank.shape[0]:,} "
        f"columns; {n:,} windows of {LENGTHS} frames; max |cached - naive| {diff:.3f} dB over {len(inner)} windows")
    cached, slow = n / cached_s, n / naive_s
    met = "met" if cached >= 10 * slow and cached > 1000 else "MISSED"
    return [["load_bank (warm page cache)", f"{load_s:.2f} s for {bank.nbytes / 2**20:,.0f} MB", "", ""],
            ["cached: WindowDataset.__getitems__, 1 thread", f"{cached:,.0f} windows/s",
             f"{cached / slow:,.0f}x naive", f"{met} (>= 10x, > 1,000/s)"],
            ["naive: log-mel of each window's samples, 1 thread", f"{slow:,.0f} windows/s", "", ""],
            [f"AudioPipe(train) 224 px + SpecAugment, CPU, {default_threads} threads",
             f"{BATCH / pipe_s:,.0f} windows/s", f"{pipe_s * 1000:.0f} ms per batch of {BATCH}",
             "runs on the GPU in real use"]]


def demo_run(work: Path, quick: bool) -> tuple[Path, Path]:
    """The small demo, generated and trained once in `work` and reused after."""
    raw, data, runs = work / "raw", work / "data", work / "runs"
    run = runs / "audio" / "test_efficientnet_seed0"   # the demo preset's model, seed 0

    def call(script, *argv):
        subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], cwd=ROOT, check=True)

    if not (data / "frames.parquet").exists():
        call("make_demo_data.py", "--out", raw, *(["--videos", 6] if quick else []))
        call("prepare_data.py", "--root", raw, "--out", data)
    if not (run / "metrics.json").exists():
        call("train_audio.py", "--preset", "demo", "--data", data, "--runs", runs,
             *(["--epochs", 1, "--max-per-class", 100] if quick else []))
    return data, run


def stride_table(data: Path, run: Path, strides) -> list[list]:
    """Val macro-F1 and val prediction time per stride, the model loaded as train_audio.py loads it."""
    saved = read_json(run / "config.json")["config"]
    cfg = train_audio.AudioConfig(**{k: saved[k] for k in train_audio.AudioConfig.__dataclass_fields__ if k in saved})
    d = setup_distributed(cfg.device)
    precision = pick_precision(d.device, cfg.precision)
    frames = load_frames(data)
    videos = load_videos(data, frames)   # as train_audio.main builds the windows, then the model
    folder = ensure_spectrograms(data, cfg.n_fft, cfg.hop, cfg.n_mels, jobs=cfg.jobs)
    bank, offset, n_columns = load_bank(folder, videos["videoid"], videos["has_audio"])
    hop_seconds = read_json(folder / "spec.json")["hop_seconds"]
    video, start, width = frame_windows(frames, videos, cfg.window_frames, hop_seconds)
    model = create_model(cfg.model, len(EXPR_CLASSES), False, None, cfg.img_size, in_chans=1, drop_path=cfg.drop_path)
    load_weights(model, run / "best.pt")
    model.to(d.device)
    pipe = AudioPipe(cfg.img_size, saved["spec_mean_db"], saved["spec_std_db"], d.device)
    computed = []   # windows per batch, counted where they enter the model

    def counting_pipe(spec, widths, train=False):
        computed.append(len(spec))
        return pipe(spec, widths, train)

    mask = ((frames.split == "val") & (frames.label >= 0)).to_numpy()
    val = frames[mask].reset_index(drop=True)
    windows = bank, offset, n_columns, video[mask], start[mask], width[mask]
    log(f"{run}: {cfg.model} at {cfg.img_size} px, {len(val):,} labelled val frames, {precision} on {d.device}, "
        f"{torch.get_num_threads()} threads, {cfg.workers} loader workers")
    head = windows[:3] + tuple(w[:512] for w in windows[3:])   # warm-up: first batches through a model are slow
    args = dict(batch_size=cfg.batch_size * 2, workers=cfg.workers)
    predict_windows(model, val[:512], head, pipe, d, precision, stride=cfg.predict_stride, **args)
    rows = []
    for stride in strides:
        computed.clear()
        seconds, (logits, _) = timed(predict_windows, model, val, windows, counting_pipe, d, precision,
                                     stride=stride, **args)
        rows.append([stride, score(val["label"].to_numpy(), logits)["macro_f1"], seconds, sum(computed),
                     f"{sum(computed) / seconds:,.0f}"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: the whole run in about a minute")
    parser.add_argument("--work", default="/tmp/benchaudio", help="bank files and the generated demo run")
    parser.add_argument("--data", help="prepared dataset of --run (default: the demo, generated in --work)")
    parser.add_argument("--run", help="finished audio run folder with best.pt and config.json")
    args = parser.parse_args(argv)
    work = Path(args.work) / ("quick" if args.quick else "full")   # a quick run's 1-epoch model is never reused
    args.work = str(work)
    args.videos, args.minutes, args.batches = (6, (1, 2), 40) if args.quick else (40, (5, 10), 200)
    rng = np.random.default_rng(0)
    default_threads = torch.get_num_threads()
    # The sandbox is shared: other jobs on its 2 cores slow the multi-threaded figures most.
    log(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch {torch.__version__}")

    signal = synthetic_audio(args.minutes[1] * 60, rng)
    rows, spec = spectrogram_cost(signal, default_threads)
    table(f"1. Spectrogram cost ({SR} Hz, n_fft {N_FFT}, hop {HOP}, {N_MELS} mels)",
          ["", "seconds", "s per hour of audio", "x real time"], rows)
    table("2. Data path, one worker (this process)", ["", "figure", "", "target"],
          data_path(args, signal, spec, default_threads, rng))
    torch.set_num_threads(default_threads)
    data, run = (Path(args.data), Path(args.run)) if args.run else demo_run(work, args.quick)
    if args.run and not args.data:
        data = Path(read_json(run / "config.json")["config"]["data"])
    table("3. --predict-stride: every labelled val frame",
          ["stride", "val macro-F1", "predict seconds", "windows computed", "windows/s"],
          stride_table(data, run, (1, 2, 4, 8, 16)))
    log(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
