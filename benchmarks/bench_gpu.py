"""One call measures the whole GPU path: image, audio and fusion training and inference (issue 16).

Usage: python benchmarks/bench_gpu.py [--out bench_gpu.json] [--compile auto|on|off]
       python benchmarks/bench_gpu.py --quick          (a tiny model on CPU in about a minute: the test)

Made for a GPU lent for a few minutes: it finishes in under 8 minutes on one modern GPU, prints
one table and writes bench_gpu.json (every figure, the device and the versions).
  1. A data tree generated here (make_demo_data.py + prepare_data.py in subprocesses: real
     112 px JPEG crops, real log-mel spectrograms).
  2. Image branch, Swin-Tiny at 224 (train_image.py's defaults): training img/s through the kit's
     own path (CropDataset + augmentation in --workers processes, ClassBalancedSampler, InputPipe,
     utils.training.engine.Trainer; the second, warm epoch) and inference img/s (infer_crops over
     the val and test crops), at batch 32 and 64, in fp32 and bf16 (fp16 where bf16 is missing),
     peak memory; the same model, batch and precision on synthetic uint8 batches already on the
     device in a bare loop (the ceiling), so the kit's figure is a ratio to it. torch.compile on
     and off (batch 64, the low precision) where it is supported.
  3. Audio branch (train_audio.py's defaults, 1-channel Swin-Tiny on log-mel windows): training
     and inference windows/s through WindowDataset, AudioPipe, the Trainer and predict_windows.
  4. Fusion: one Trainer epoch of the Modal Fusion Module (train_fusion.py's defaults) at the real
     train scale (1,102,504 frames, the real class counts: shared/fixtures/affwild2_stats) on
     random features of the real shapes, and predict_tokens over the first 262,144 frames.
--quick: a 3-video tree (or --data), test_efficientnet at 64 px, batches 4 and 8, 64 held-out
crops and frames, 2,000 fusion frames, no compile, on whatever device there is.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train_audio import AudioConfig  # noqa: E402
from train_fusion import FusionConfig  # noqa: E402
from train_image import ImageConfig  # noqa: E402
from utils.classes import NUM_EXPR_CLASSES  # noqa: E402
from utils.console import log, rate_text, table  # noqa: E402
from utils.evaluation.inference import infer_crops, predict_tokens, predict_windows  # noqa: E402
from utils.models.backbones import create_model, normalisation  # noqa: E402
from utils.models.fusion import ModalFusionModule, TokenDataset, context_offsets, context_rows  # noqa: E402
from utils.readers.audio import (AudioPipe, WindowDataset, bank_stats, ensure_spectrograms, frame_windows,  # noqa: E402
                                 load_bank, spec_folder)
from utils.runs import environment_info, read_json, write_json  # noqa: E402
from utils.training.data import (ClassBalancedSampler, CropDataset, image_augmentation, keep_batch,  # noqa: E402
                                 load_frames, load_videos, seed_worker)
from utils.training.engine import InputPipe, Trainer, autocast, setup_distributed  # noqa: E402

# Aff-Wild2 EXPR Train_Set (shared/fixtures/affwild2_stats/train_val_videos.csv): frames per class,
# -1 frames and txtids, so the fusion epoch draws what a real one draws (median-class cap).
TRAIN_CLASS_FRAMES = (179434, 17153, 10978, 9110, 94344, 80671, 30639, 169887)
TRAIN_INVALID_FRAMES, TRAIN_TXTIDS = 510288, 247
NO_EVAL = dict(macro_f1=0.0, per_class_f1=[0.0] * NUM_EXPR_CLASSES)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def low_precision(device) -> str:
    """bf16 where the device has it, else fp16 (Volta/Turing); bf16 autocast on a CPU."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def make_tree(out: Path, videos: int, jobs: int) -> Path:
    """A generated Aff-Wild2 tree, prepared (crops, spectrograms), by the kit's own scripts."""
    raw, data = out / "raw", out / "data"
    for argv in (["make_demo_data.py", "--out", str(raw), "--videos", str(videos), "--jobs", str(jobs)],
                 ["prepare_data.py", "--root", str(raw), "--out", str(data), "--jobs", str(jobs)]):
        subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return data


def fit_rate(model, cfg, d, precision, step, loader, sampler) -> float:
    """Training items/s of the Trainer's last epoch (the first one warms the loader and kernels)."""
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as run:
        Trainer(model, cfg, Path(run), d, precision, step, lambda m: NO_EVAL).fit(loader, sampler)
        return json.loads((Path(run) / "log.jsonl").read_text().splitlines()[-1])["images_per_s"]


def timed(fn, items: int, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return items / (time.perf_counter() - start)


def compile_backbone(model):
    """torch.compile on the backbone's forward_features, the part that both training (forward) and
    the kit's inference (features_and_logits) run; the module itself stays as it is, so the Trainer
    checkpoints it unchanged."""
    model.forward_features = torch.compile(model.forward_features)
    return model


def bare_image(name, size, batch, precision, d, steps, compiled) -> dict:
    """The ceiling: the same model on uint8 batches already on the device, no loader, no Trainer."""
    model = create_model(name, NUM_EXPR_CLASSES, img_size=size).to(d.device)
    pipe = InputPipe(*normalisation(model), size, d.device)
    net = compile_backbone(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(enabled=precision == "fp16")
    images = torch.randint(0, 255, (batch, 112, 112, 3), dtype=torch.uint8, device=d.device)
    labels = torch.randint(0, NUM_EXPR_CLASSES, (batch,), device=d.device)

    def train(n):
        model.train()
        for _ in range(n):
            with autocast(d.device, precision):
                loss = torch.nn.functional.cross_entropy(net(pipe(images)).float(), labels)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(n):
        model.eval()
        for _ in range(n):
            with autocast(d.device, precision):
                net(pipe(images))

    reset_memory(d.device)
    train(3)   # warm-up (and compilation)
    out = dict(train=timed(lambda: train(steps), batch * steps, d.device))
    infer(3)
    out["infer"] = timed(lambda: infer(steps), batch * steps, d.device)
    return out | dict(peak_gib=peak_gib(d.device))


def kit_image(data, frames, cfg, batch, precision, d, compiled, limit: int | None = None) -> dict:
    """train_image.py's path: the same pieces main() puts together, then infer_crops."""
    cfg = replace(cfg, batch_size=batch, crop_size=112)
    model = create_model(cfg.model, NUM_EXPR_CLASSES, img_size=cfg.img_size, drop_path=cfg.drop_path)
    pipe = InputPipe(*normalisation(model), cfg.img_size, d.device, cfg.random_erase)
    net = compile_backbone(model) if compiled else model
    train = frames[(frames.split == "train") & frames.has_crop & (frames.label >= 0)].reset_index(drop=True)
    sampler = ClassBalancedSampler(train["label"].to_numpy(), cfg.max_per_class, 0)
    loader = DataLoader(CropDataset(train, image_augmentation(cfg.augment, 112), 0, 112), batch_size=batch,
                        sampler=sampler, num_workers=cfg.workers, pin_memory=d.device.type == "cuda",
                        worker_init_fn=seed_worker, persistent_workers=cfg.workers > 0)

    def step(m, b):
        images, labels, replaced = b
        return net(pipe(images, train=True)), labels.to(d.device), len(labels), int(replaced.sum())

    reset_memory(d.device)
    out = dict(train=fit_rate(model, cfg, d, precision, step, loader, sampler))
    held_out = frames[(frames.split != "train") & frames.has_crop].reset_index(drop=True).iloc[:limit]
    args = dict(crop_size=112, batch_size=batch, workers=cfg.workers, progress="kit inference")
    infer_crops(net, held_out.iloc[:batch * 2], pipe, d, precision, **args)   # warm-up (and compilation)
    out["infer"] = timed(lambda: infer_crops(net, held_out, pipe, d, precision, **args), len(held_out), d.device)
    return out | dict(peak_gib=peak_gib(d.device), train_images=len(sampler), infer_images=len(held_out))


def audio_branch(data, frames, cfg, d, precision, limit: int | None = None) -> dict:
    """train_audio.py's path: windows of every labelled train frame through the Trainer, predict_windows."""
    ensure_spectrograms(data, cfg.n_fft, cfg.hop, cfg.n_mels, jobs=2)
    folder = spec_folder(data, cfg.n_fft, cfg.hop, cfg.n_mels)
    videos = load_videos(data, frames)
    bank, offset, n_columns = load_bank(folder, videos["videoid"], videos["has_audio"])
    video, start, width = frame_windows(frames, videos, cfg.window_frames, read_json(folder / "spec.json")["hop_seconds"])
    mean, std = bank_stats(bank, offset, n_columns, np.unique(video))
    model = create_model(cfg.model, NUM_EXPR_CLASSES, img_size=cfg.img_size, in_chans=1, drop_path=cfg.drop_path)
    pipe = AudioPipe(cfg.img_size, mean, std, d.device, cfg.freq_mask, cfg.time_mask)
    rows = np.flatnonzero(((frames.split == "train") & (frames.label >= 0)).to_numpy())
    labels = frames["label"].to_numpy()[rows]
    dataset = WindowDataset(bank, offset, n_columns, video[rows], start[rows, 0], width[rows, 0], labels)
    sampler = ClassBalancedSampler(labels, cfg.max_per_class, 0)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        collate_fn=keep_batch, pin_memory=d.device.type == "cuda")

    def step(net, b):
        spec, widths, y = b
        return net(pipe(spec, widths, train=True)), y.to(d.device), len(y), 0

    reset_memory(d.device)
    out = dict(train=fit_rate(model, cfg, d, precision, step, loader, sampler))
    mask = (frames.split != "train").to_numpy().copy()
    mask[np.flatnonzero(mask)[limit:]] = False
    windows = (bank, offset, n_columns, video[mask], start[mask], width[mask])
    n = int(mask.sum()) * len(cfg.window_frames)   # stride 1: every frame's three windows
    args = dict(batch_size=cfg.batch_size, stride=1, workers=cfg.workers, progress="audio inference")
    out["infer"] = timed(lambda: predict_windows(model, frames[mask], windows, pipe, d, precision, **args), n, d.device)
    return out | dict(peak_gib=peak_gib(d.device), train_windows=len(sampler), infer_windows=n)


def fusion_split(frames: int, rng) -> dict:
    """Random float16 features of the real shapes (image 768, audio 3 x 768) over TRAIN_TXTIDS videos,
    labels in segments of 30-300 frames with the real class counts scaled to `frames`."""
    share = frames / (sum(TRAIN_CLASS_FRAMES) + TRAIN_INVALID_FRAMES)
    counts = [round(n * share) for n in (TRAIN_INVALID_FRAMES, *TRAIN_CLASS_FRAMES)]
    pieces = []
    for value, count in zip(range(-1, NUM_EXPR_CLASSES), counts):
        cuts = np.cumsum(rng.integers(30, 301, count // 30 + 1))
        pieces += [np.full(len(p), value, np.int64) for p in np.split(np.arange(count), cuts[cuts < count])]
    label = np.concatenate([pieces[i] for i in rng.permutation(len(pieces))])
    n = len(label)
    video = np.minimum(np.arange(n) * TRAIN_TXTIDS // n, TRAIN_TXTIDS - 1)
    txtid = np.array([f"v{v:03d}" for v in range(TRAIN_TXTIDS)])[video]
    frame = np.arange(n) - np.searchsorted(video, video) + 1
    # Values do not change the timing: a pool of 65,536 random rows repeated (seconds, not a
    # minute of drawing 3.4 G normal numbers), at the full size in memory.
    pool = min(n, 65_536)
    image = np.resize(rng.standard_normal((pool, 768), np.float32).astype(np.float16), (n, 768))
    audio = np.resize(rng.standard_normal((pool, 3, 768), np.float32).astype(np.float16), (n, 3, 768))
    return dict(txtid=txtid, frame=frame, label=label, image=image, audio=audio)


def fusion(cfg, frames: int, d, precision) -> dict:
    split = fusion_split(frames, np.random.default_rng(0))
    offsets = context_offsets(cfg.image_context, cfg.image_stride)
    context = context_rows(split["txtid"], split["frame"], offsets)
    rows = np.flatnonzero(split["label"] >= 0)
    sampler = ClassBalancedSampler(split["label"][rows], cfg.max_per_class, 0)
    loader = DataLoader(TokenDataset(split["image"], split["audio"], context, split["label"], rows),
                        batch_size=cfg.batch_size, sampler=sampler, collate_fn=keep_batch)
    model = ModalFusionModule(768, 768, NUM_EXPR_CLASSES, len(offsets), 3, cfg.width, cfg.heads, cfg.layers,
                              dropout=cfg.dropout)

    def step(net, b):
        image, mask, audio, labels = (t.to(d.device, non_blocking=True) for t in b)
        y = net(image, mask, audio)
        return [y[h] for h in ("fusion", "image", "audio")], labels, len(labels), 0

    reset_memory(d.device)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as run:
        start = time.perf_counter()
        Trainer(model, replace(cfg, epochs=1), Path(run), d, precision, step, lambda m: NO_EVAL).fit(loader, sampler)
        epoch_s = time.perf_counter() - start
    # The inference rate from the first 262,144 frames (a quarter of train; the rate is per frame).
    first = TokenDataset(split["image"], split["audio"], context, split["label"], np.arange(min(262_144, len(split["label"]))))
    infer = timed(lambda: predict_tokens(model, first, d, precision, batch_size=cfg.batch_size * 4,
                                         progress="fusion inference"), len(first), d.device)
    return dict(frames=len(split["label"]), drawn=len(sampler), epoch_s=epoch_s, train=len(sampler) / epoch_s,
                infer=infer, infer_frames=len(first), peak_gib=peak_gib(d.device))


def compile_supported(device) -> tuple[bool, str]:
    """torch.compile needs Triton on a GPU (or a C++ compiler on a CPU); on Windows it is not offered."""
    if sys.platform == "win32":
        return False, "not on Windows"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "no triton"
    return True, ""


def image_setting(results, data, frames, cfg, d, steps, limit, batch, precision, compiled) -> None:
    """One row pair of the table: the bare ceiling and the kit's path, in the same process."""
    entry = dict(batch=batch, precision=precision, compiled=compiled)
    for kind, fn in (("bare", lambda: bare_image(cfg.model, cfg.img_size, batch, precision, d, steps, compiled)),
                     ("kit", lambda: kit_image(data, frames, cfg, batch, precision, d, compiled, limit))):
        try:
            entry[kind] = fn()
        except Exception as err:   # noqa: BLE001 -- a compile that fails is a figure ("failed"), not the end
            if not compiled:
                raise
            entry[kind] = dict(error=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
    results["image"].append(entry)
    log(f"image batch {batch} {precision}{' compiled' if compiled else ''}: {json.dumps(entry)}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes on any device: a check, not a measurement")
    parser.add_argument("--out", default="bench_gpu.json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="auto: on a GPU where supported, off on a CPU and with --quick")
    parser.add_argument("--workers", type=int, default=ImageConfig.workers, help="data-loading processes (kit path)")
    parser.add_argument("--work-dir", default="", help="where the generated tree goes (default: a temporary folder)")
    parser.add_argument("--compile-before", type=float, default=330.0,
                        help="seconds: the compiled setting runs only if the rest took less (8-minute budget)")
    parser.add_argument("--data", default="", help="a tree prepared by prepare_data.py instead of a generated one")
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    d = setup_distributed(args.device)
    low = low_precision(d.device)
    supported, why = compile_supported(d.device)
    compile_on = supported and (args.compile == "on" or (args.compile == "auto" and d.device.type == "cuda"
                                                         and not args.quick))
    quick = args.quick
    image_cfg = replace(ImageConfig(), pretrained=False, epochs=2, workers=0 if quick else args.workers,
                        max_per_class=8 if quick else 300, warmup_epochs=0.0, patience=0,
                        **(dict(model="test_efficientnet", img_size=64) if quick else {}))
    audio_cfg = replace(AudioConfig(), pretrained=False, epochs=2, workers=0 if quick else 2, max_per_class=8 if quick else 200,
                        warmup_epochs=0.0, patience=0, **(dict(model="test_efficientnet", img_size=64, batch_size=8)
                                                            if quick else {}))
    batches, steps = ((4, 8), 3) if quick else ((32, 64), 30)
    limit = 64 if quick else None   # --quick: the first crops and frames of val and test
    device_name = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    log(f"bench_gpu: {device_name}, precisions fp32 and {low}, torch.compile "
        f"{'on' if compile_on else 'off'}{f' ({why})' if why else ''}{', --quick' if quick else ''}")
    results = dict(device=device_name, quick=quick, low_precision=low, compile=compile_on, image=[], environment=environment_info())
    with tempfile.TemporaryDirectory(prefix="bench_gpu_tree_") as tmp:
        work = Path(args.work_dir or tmp)
        start = time.perf_counter()
        data = Path(args.data) if args.data else make_tree(work, 3 if quick else 16, 2 if quick else min(16, os.cpu_count() or 1))
        results["tree_s"] = time.perf_counter() - start
        frames = load_frames(data)
        plain = [(b, p, False) for b in batches for p in ("fp32", low)]
        for setting in plain:
            image_setting(results, data, frames, image_cfg, d, steps, limit, *setting)
        results["audio"] = audio_branch(data, frames, audio_cfg, d, low if d.device.type == "cuda" else "fp32", limit)
        fusion_cfg = replace(FusionConfig(), **(dict(batch_size=64) if quick else {}))
        results["fusion"] = fusion(fusion_cfg, 2_000 if quick else sum(TRAIN_CLASS_FRAMES) + TRAIN_INVALID_FRAMES, d,
                                   low if d.device.type == "cuda" else "fp32")
        # Compilation last: it is the one part whose cost is unknown in advance (minutes on a
        # cold cache), so it is skipped, and said so, when the rest left too little time.
        if compile_on and time.perf_counter() - begin < args.compile_before:
            image_setting(results, data, frames, image_cfg, d, steps, limit, batches[-1], low, True)
        elif compile_on:
            results["compile_skipped"] = f"{time.perf_counter() - begin:.0f} s had passed (--compile-before {args.compile_before:.0f})"
    results["total_s"] = time.perf_counter() - begin
    report(results, image_cfg, audio_cfg)
    write_json(args.out, results)
    log(f"wrote {args.out} ({results['total_s']:.0f} s in all)")
    return results


def report(r: dict, image_cfg, audio_cfg) -> None:
    def fig(part, key):
        if "error" in part:
            return "failed"
        return rate_text(part[key])

    def memory(*parts):
        return " / ".join("" if p.get("peak_gib") is None else f"{p['peak_gib']:.2f}" for p in parts).strip(" /")

    rows = []
    for e in r["image"]:
        label = f"image {image_cfg.model} {image_cfg.img_size}px, batch {e['batch']}, {e['precision']}" + (
            ", compiled" if e["compiled"] else "")
        bare, kit = e["bare"], e["kit"]
        for mode in ("train", "infer"):
            ratio = "" if "error" in bare or "error" in kit else f"{kit[mode] / bare[mode]:.2f}"
            rows.append([f"{label}: {mode}", fig(kit, mode), fig(bare, mode), ratio,
                         memory(kit, bare) if mode == "train" else ""])
    a, f = r["audio"], r["fusion"]
    rows.append([f"audio {audio_cfg.model} 1-ch {audio_cfg.img_size}px, batch {audio_cfg.batch_size}: train windows/s",
                 rate_text(a["train"]), "", "", memory(a)])
    rows.append(["audio: inference windows/s (predict_windows)", rate_text(a["infer"]), "", "", ""])
    scale = "" if r["quick"] else " at train scale"
    rows.append([f"fusion MFM: one epoch{scale} ({f['frames']:,} frames, {f['drawn']:,} drawn), s",
                 f"{f['epoch_s']:.1f}", "", "", memory(f)])
    rows.append(["fusion: train / inference frames/s", f"{rate_text(f['train'])} / {rate_text(f['infer'])}", "", "", ""])
    if r.get("compile_skipped"):
        rows.append(["torch.compile", f"skipped: {r['compile_skipped']}", "", "", ""])
    table(f"bench_gpu on {r['device']} ({r['total_s']:.0f} s; kit = the kit's engine and data path, "
          "bare = synthetic batches on the device)", ["what (img/s unless said)", "kit", "bare", "kit/bare", "peak GiB (kit / bare)"], rows)


if __name__ == "__main__":
    main()
