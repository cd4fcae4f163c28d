"""Cost of the speech-encoder features on this machine: seconds of encoder per hour of audio, and
training windows per second of the head alone and with the top layers fine-tuned.

Usage: python benchmarks/bench_speech.py [--encoders wav2vec2_base,wavlm_base_plus] [--seconds 60] [--threads 1]
                                         [--finetune-layers 2] [--batch 32]

Builds each encoder's architecture with random weights (torchaudio.models factories: the cost
does not depend on the weights, and nothing downloads), runs utils.readers.speech.encode over
--seconds of synthetic audio (30 s chunks with 5 s of context each side, as train_audio.py does)
and reports seconds per hour of audio, x real time, and the cache's bytes per hour (50 Hz x D x 2).
The log-mel spectrogram of the same audio is timed in the same run as the baseline.
Training: AdamW steps (forward, backward, update) of utils.models.speech.SpeechHead on --batch
windows of 64 frames at 30 fps (107 rows of 50 Hz states), the head alone (the frozen path) and
with --finetune-layers copies of the encoder's layers below the default one
(train_audio.py --finetune-layers), after one warm-up step; windows per second.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.classes import EXPR_CLASSES  # noqa: E402
from utils.console import log, table  # noqa: E402
from utils.models.speech import SpeechHead, TopLayers  # noqa: E402
from utils.readers import speech  # noqa: E402
from utils.readers.audio import log_mel  # noqa: E402
from utils.runs import write_json  # noqa: E402


def random_encoder(name: str) -> speech.Encoder:
    model, normalize = speech.architecture(name)
    return speech.Encoder(model, speech.default_layer(len(model.encoder.transformer.layers)), normalize)


def train_rate(head: SpeechHead, dim: int, batch: int, steps: int = 3) -> float:
    """Training windows per second of `head` on random (batch, dim, 107) windows."""
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-4)
    x, keep = torch.randn(batch, dim, 107), torch.ones(batch, 107)
    labels = torch.randint(0, len(EXPR_CLASSES), (batch,))
    for step in range(steps + 1):
        if step == 1:   # the first step is a warm-up
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(head((x, keep)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", default="wav2vec2_base,wavlm_base_plus")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--finetune-layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default="bench_speech.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    t = np.arange(int(args.seconds * speech.SAMPLE_RATE)) / speech.SAMPLE_RATE
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    start = time.perf_counter()
    log_mel(x, speech.SAMPLE_RATE, 2048, 1024, 128)
    base = time.perf_counter() - start
    rows = [["log-mel 128 (baseline)", 128, base * 3600 / args.seconds, args.seconds / base, 1.0, 0, "", ""]]
    results = {"logmel": dict(seconds=base)}
    for name in args.encoders.split(","):
        enc = random_encoder(name)
        speech.encode(enc, x[:speech.SAMPLE_RATE])   # warm-up
        start = time.perf_counter()
        states = speech.encode(enc, x)
        took = time.perf_counter() - start
        per_hour = took * 3600 / args.seconds
        cache_gb = 3600 * 50 * enc.dim * 2 / 1e9
        layer = enc.layers[-1]
        torch.manual_seed(0)
        head_rate = train_rate(SpeechHead(enc.dim, len(EXPR_CLASSES)), enc.dim, args.batch)
        n = args.finetune_layers
        top = SpeechHead(enc.dim, len(EXPR_CLASSES), top=TopLayers(enc.model, layer - n, layer)) if n else None
        top_rate = train_rate(top, enc.dim, args.batch) if n else None
        trained = sum(p.numel() for p in top.top.parameters() if p.requires_grad) if n else 0
        rows.append([f"{name} layer {layer}", enc.dim, per_hour, args.seconds / took, took / base, cache_gb,
                     head_rate, top_rate or ""])
        results[name] = dict(seconds=took, dim=enc.dim, layer=layer, rows=len(states), seconds_per_hour=per_hour,
                             cache_gb_per_hour=cache_gb, head_windows_per_s=head_rate, finetune_layers=n,
                             finetune_windows_per_s=top_rate, finetune_parameters=trained)
        log(f"{name}: {took:.1f} s for {args.seconds:.0f} s of audio; training {head_rate:.0f} windows/s (head), "
            f"{top_rate or 0:.1f} windows/s ({n} layers fine-tuned, {trained / 1e6:.1f} M parameters)")
    table(f"speech encoders, {args.seconds:.0f} s of audio, {args.threads} thread(s), random weights",
          ["features", "D", "s per hour of audio", "x real time", "x log-mel", "cache GB per hour",
           "train windows/s (head)", f"train windows/s ({args.finetune_layers} layers fine-tuned)"], rows)
    write_json(Path(args.out), dict(threads=args.threads, audio_seconds=args.seconds, batch=args.batch, torch=torch.__version__,
                                    torchaudio=torchaudio.__version__, results=results))


if __name__ == "__main__":
    main()
