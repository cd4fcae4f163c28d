"""Audio branch: a timm backbone (Swin-Tiny) on log-mel windows of three lengths around each frame.

Usage: python train_audio.py --data data/affwild2 --seed 0 [--model swin_tiny_patch4_window7_224]
       python train_audio.py --data data/affwild2 --seed 0 --backbone wavlm_base_plus [--pretrained-path F]
                             [--speech-layer 4 6 8 10 12 | --speech-layer 8 --finetune-layers 2]
       torchrun --nproc_per_node=4 train_audio.py --data data/affwild2 --seed 0

Each frame has three windows centred on it (32, 48 and 64 frames by default). Training keeps a
window only if enough of its frames share the centre frame's label (0.8 / 0.65 / 0.5) and
draws a class-balanced subset of the kept windows each epoch. Writes runs/audio/<name>_seed<k>/
like train_image.py; preds/<split>.npz holds `features` (N, 3, D), one per window, `logits` =
the mean of the three windows' logits, and `has_audio` (False: the video has no sound).

Audio features (--backbone): `logmel` (default) trains the timm --model on log-mel windows;
a speech encoder (wav2vec2_base, hubert_base, wavlm_base_plus, wavlm_large, ... see
utils/readers/speech.py) runs frozen once per video, its --speech-layer is cached float16 at 50 Hz
in data/speech/, and a small head (utils/models/speech.py) learns from the mean and std of each
window's cached rows; several layers: from their learnt weighted sum; --finetune-layers N: the
cache holds layer k-N and the top N layers train with the head. Weights download from the
torchaudio hub, or --pretrained-path FILE offline.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from utils.readers.audio import (AudioPipe, WindowDataset, bank_stats, centre_per_video, ensure_spectrograms,
                                 frame_windows, load_bank, per_video_centre, pure_windows, spec_folder)
from utils.classes import EXPR_CLASSES
from utils.config import parse_config
from utils.console import cli, log, table
from utils.training.data import ClassBalancedSampler, keep_batch, load_frames, load_videos, need
from utils.training.engine import Trainer, pick_precision, score, setup_distributed
from utils.training.plan import Plan
from utils.models.backbones import create_model, load_weights
from utils.models.speech import SpeechHead, TopLayers
from utils.readers import speech
from utils.evaluation.inference import predict_windows, windows_to_predict
from utils.evaluation.preds import save_preds, skip_split
from utils.runs import is_complete, read_json, run_dir, save_config, seed_everything, write_json


@dataclass
class AudioConfig:
    data: str = field(default="data/affwild2", metadata={"help": "output folder of prepare_data.py"})
    runs: str = field(default="runs", metadata={"help": "root of the run folders"})
    name: str = field(default="", metadata={"help": "run name (default: the model name)"})
    seed: int = 0
    backbone: str = field(default="logmel", metadata={"choices": ["logmel", *speech.SPEECH_BACKBONES],
                                                      "help": "audio features: log-mel windows, or a speech encoder"})
    speech_layer: list[int] = field(default_factory=lambda: [0],
                                    metadata={"help": "speech encoder: transformer layer(s) cached (0: 2/3 up); several: "
                                                      "the head learns their weighted sum"})
    finetune_layers: int = field(default=0, metadata={"help": "speech encoder: train the top N layers up to "
                                                              "--speech-layer with the head (a GPU option; 0: frozen)"})
    layer_decay: float = field(default=0.5, metadata={"help": "--finetune-layers: lr scale per layer down from the "
                                                              "head (timm layer-wise decay)"})
    speech_chunk: float = field(default=30.0, metadata={"help": "speech encoder: seconds per pass (+5 s context each side)"})
    head_width: int = field(default=256, metadata={"help": "speech encoder: the head's feature width"})
    row_drop: float = field(default=0.1, metadata={"help": "speech encoder: share of a window's rows dropped in training"})
    model: str = field(default="swin_tiny_patch4_window7_224", metadata={"help": "logmel: any timm model name"})
    pretrained: bool = field(default=True, metadata={"help": "ImageNet weights from the timm hub (1-channel stem)"})
    pretrained_path: str | None = field(default=None, metadata={"help": "weights file, for offline use"})
    img_size: int = field(default=224, metadata={"help": "each window is stretched to img_size x img_size"})
    n_fft: int = 2048
    hop: int = field(default=1024, metadata={"help": "spectrogram hop in samples (64 ms at 16 kHz)"})
    n_mels: int = 128
    norm_per_video: bool = field(default=False, metadata={"help": "logmel: give every video the same per-mel mean "
                                                                  "(speaker / microphone colour removed)"})
    window_frames: list[int] = field(default_factory=lambda: [32, 48, 64],
                                     metadata={"help": "window lengths in video frames, centred on the frame"})
    purity: list[float] = field(default_factory=lambda: [0.8, 0.65, 0.5],
                                metadata={"help": "per length: share of frames with the centre's label to train on it"})
    predict_stride: int = field(default=4, metadata={"help": "run the windows of every S-th frame; the others take "
                                                              "the nearest (BENCHMARKS.md: what it costs)"})
    freq_mask: float = field(default=0.15, metadata={"help": "SpecAugment: widest frequency mask, share of the axis"})
    time_mask: float = field(default=0.15, metadata={"help": "SpecAugment: widest time mask, share of the axis"})
    epochs: int = 8
    batch_size: int = 64
    accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    max_per_class: int = field(default=0, metadata={"help": "resampler cap per class and epoch (0: median class size)"})
    ema: bool = False
    ema_decay: float = 0.9998
    grad_checkpointing: bool = False
    precision: str = field(default="auto", metadata={"choices": ["auto", "fp32", "fp16", "bf16"]})
    device: str = "auto"
    workers: int = 2
    patience: int = field(default=3, metadata={"help": "early stop after this many epochs without gain (0: never)"})
    jobs: int = field(default=2, metadata={"help": "processes computing missing spectrograms"})
    overwrite: bool = field(default=False, metadata={"help": "train again even if the run is complete"})
    predict_only: bool = field(default=False, metadata={"help": "rewrite the predictions from best.pt"})


# A tiny CPU configuration for make demo and the tests (about a minute on 2 cores).
PRESETS = {"demo": dict(model="test_efficientnet", pretrained=False, img_size=64, epochs=5, batch_size=64,
                        lr=5e-3, weight_decay=0.01, drop_path=0.0, warmup_epochs=0.2, max_per_class=500,
                        workers=0, patience=0)}


def loader_for(dataset, cfg, sampler=None, batch_size=None):
    return DataLoader(dataset, batch_size=batch_size or cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      collate_fn=keep_batch, pin_memory=torch.cuda.is_available())


def speech_inputs(cfg, d, frames, videos):
    """The speech-encoder path's (bank, offset, n_rows, video, start, width, head, pipe, config
    extras): the cache is filled once (rank 0) and normalised with train-only per-dimension
    statistics; with --finetune-layers N it holds layer k - N, the input of the layers trained."""
    try:
        layers = speech.resolve_layers(cfg.backbone, cfg.speech_layer)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    n_top = cfg.finetune_layers
    if n_top and (len(layers) > 1 or not 0 < n_top < layers[0]):
        raise SystemExit(f"error: --finetune-layers {n_top} needs one --speech-layer above it (got {layers})")
    cached = [layers[0] - n_top] if n_top else layers
    folders = [speech.cache_folder(cfg.data, cfg.backbone, k) for k in cached]
    source = cfg.pretrained_path or ("random" if cfg.backbone == "tiny_random" else "hub")
    for folder in folders:
        speech.check_cache(folder, cfg.data, source)
    encoder = None
    # a complete cache needs no encoder (nor its weights): another seed only trains the head
    if n_top or (d.main and any(speech.missing_cache(f, videos) or not (f / "speech.json").exists() for f in folders)):
        with torch.random.fork_rng():   # building the encoder must not move the head's seeded draws
            encoder = speech.build_encoder(cfg.backbone, cached, cfg.pretrained_path, cfg.seed)
    if d.main and encoder is not None:
        speech.ensure_speech_cache(cfg.data, videos, encoder, cfg.backbone, cfg.speech_chunk, device=d.device,
                                   source=source)
    top = TopLayers(encoder.model, cached[0], layers[0]) if n_top else None
    del encoder
    if d.world_size > 1:
        torch.distributed.barrier()
    bank, offset, n_rows = speech.load_speech_bank(folders, videos["videoid"], videos["has_audio"])
    video, start, width = frame_windows(frames, videos, cfg.window_frames, speech.HOP_SECONDS)
    train_videos = np.unique(video[(frames.split == "train").to_numpy()])
    mean, std = speech.speech_stats(bank, offset, n_rows, train_videos)   # train audio only
    # Rows past a video's ends read the bank's last row: the train average, which normalises to 0
    # (a zero state would normalise to -mean/std, a loud fake input at every video's start and end).
    bank[-1] = mean.astype(np.float16)
    if n_top:   # the trained layers take the encoder's own states, not standardised ones
        mean, std = np.zeros_like(mean), np.ones_like(std)
    head = SpeechHead(bank.shape[1] // len(cached), len(EXPR_CLASSES), cfg.head_width, n_layers=len(cached), top=top)
    pipe = speech.SpeechPipe(mean, std, d.device, cfg.row_drop)
    return bank, offset, n_rows, video, start, width, head, pipe, dict(speech_cache=[str(f) for f in folders],
                                                                         speech_layers=layers, cached_layers=cached)


def main(argv=None):
    cfg = parse_config(AudioConfig, argv, description=__doc__.split("\n")[0], presets=PRESETS)
    if len(cfg.window_frames) != len(cfg.purity):
        raise SystemExit("error: --window-frames and --purity need one value per window length")
    d = setup_distributed(cfg.device)
    run = run_dir(cfg.runs, "audio", cfg.name or (cfg.model if cfg.backbone == "logmel" else cfg.backbone), cfg.seed)
    if is_complete(run) and not (cfg.overwrite or cfg.predict_only):
        log(f"{run} is complete (metrics.json); --overwrite trains again, --predict-only re-predicts")
        return run
    if cfg.overwrite and d.main:
        for stale in ("last.pt", "best.pt", "log.jsonl", "metrics.json"):
            (run / stale).unlink(missing_ok=True)
    seed_everything(cfg.seed)
    precision = pick_precision(d.device, cfg.precision)
    frames = load_frames(cfg.data)
    videos = load_videos(cfg.data, frames)
    source = f"{cfg.data}/frames.parquet"
    if not cfg.predict_only:   # training needs labelled train frames with sound and labelled val frames
        labelled = (frames.split == "train") & (frames.label >= 0)
        need(labelled.any(), source, "no labelled train frame")
        need((labelled & frames["videoid"].isin(videos.loc[videos["has_audio"], "videoid"])).any(), source,
             "no labelled train frame has sound; the audio branch has nothing to learn from")
    need(((frames.split == "val") & (frames.label >= 0)).any(), source,
         "no labelled val frame; the val split selects best.pt and scores the run")
    if cfg.backbone != "logmel":
        bank, offset, n_columns, video, start, width, model, pipe, inputs = speech_inputs(cfg, d, frames, videos)
    else:
        if d.main:   # the other ranks wait rather than compute the same files
            ensure_spectrograms(cfg.data, cfg.n_fft, cfg.hop, cfg.n_mels, jobs=cfg.jobs)
        if d.world_size > 1:
            torch.distributed.barrier()
        folder = spec_folder(cfg.data, cfg.n_fft, cfg.hop, cfg.n_mels)
        hop_seconds = read_json(folder / "spec.json")["hop_seconds"]
        bank, offset, n_columns = load_bank(folder, videos["videoid"], videos["has_audio"])
        video, start, width = frame_windows(frames, videos, cfg.window_frames, hop_seconds)
        train_videos = np.unique(video[(frames.split == "train").to_numpy()])
        centre = per_video_centre(bank, offset, n_columns, train_videos) if cfg.norm_per_video else None
        if centre is not None:
            bank = centre_per_video(bank, offset, n_columns, centre)
        mean, std = bank_stats(bank, offset, n_columns, train_videos)   # train audio only: no peeking at val/test
        model = create_model(cfg.model, len(EXPR_CLASSES), cfg.pretrained and not cfg.predict_only,
                             cfg.pretrained_path, cfg.img_size, in_chans=1, drop_path=cfg.drop_path)
        pipe = AudioPipe(cfg.img_size, mean, std, d.device, cfg.freq_mask, cfg.time_mask)
        inputs = dict(spec_mean_db=mean, spec_std_db=std, spectrograms=str(folder),
                      video_centre_db=None if centre is None else centre.tolist())
    predict_args = dict(batch_size=cfg.batch_size * 2, stride=cfg.predict_stride, workers=cfg.workers)
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(run, asdict(cfg) | dict(precision=precision, world_size=d.world_size) | inputs)
        what = (f"{cfg.model} at {cfg.img_size}px on {cfg.n_mels}-mel windows" if cfg.backbone == "logmel" else
                f"a {cfg.head_width}-wide head on {cfg.backbone} " + (
                    f"layers {inputs['cached_layers'][0] + 1}..{inputs['speech_layers'][0]} fine-tuned" if cfg.finetune_layers
                    else "layer " + "+".join(map(str, inputs["speech_layers"]))) + " states, windows")
        log(f"{run}: {what} of {cfg.window_frames} frames, {precision}, {d.world_size} x {d.device}")

    def windows_of(mask):
        return bank, offset, n_columns, video[mask], start[mask], width[mask]

    val_mask = ((frames.split == "val") & (frames.label >= 0)).to_numpy()
    val = frames[val_mask].reset_index(drop=True)

    def evaluate(model):
        logits, _ = predict_windows(model, val, windows_of(val_mask), pipe, d, precision, **predict_args,
                                    progress="validation")
        return score(val["label"].to_numpy(), logits)

    def step(net, batch):
        spec, widths, labels = batch
        return net(pipe(spec, widths, train=True)), labels.to(d.device), len(labels), 0

    kept = {}
    if not cfg.predict_only:
        train_mask = ((frames.split == "train") & (frames.label >= 0)).to_numpy()
        pure = pure_windows(frames[frames.split == "train"], cfg.window_frames, cfg.purity)
        pure = pure[train_mask[(frames.split == "train").to_numpy()]]
        rows, length = np.nonzero(pure)
        labels = frames["label"].to_numpy()[train_mask][rows]
        need(len(rows), source, f"no training window passes the purity thresholds {cfg.purity} "
             f"(windows of {cfg.window_frames} frames); lower --purity")
        keys = (frames["txtid"].to_numpy()[train_mask][rows], frames["frame"].to_numpy()[train_mask][rows],
                np.asarray(cfg.window_frames)[length])
        dataset = WindowDataset(bank, offset, n_columns, video[train_mask][rows],
                                start[train_mask][rows, length], width[train_mask][rows, length], labels, keys)
        kept = {f"{n} frames": dict(kept=int(pure[:, j].sum()), of=len(pure)) for j, n in enumerate(cfg.window_frames)}
        sampler = ClassBalancedSampler(labels, cfg.max_per_class, cfg.seed, d.rank, d.world_size)
        if d.main:
            log("windows kept for training (label purity): " + ", ".join(
                f"{name} {k['kept']:,}/{k['of']:,} ({k['kept'] / max(k['of'], 1):.0%})" for name, k in kept.items()))
            log(f"drawn per epoch (cap {sampler.max_per_class:,}): "
                + ", ".join(f"{n} {c}" for n, c in zip(sampler.draw_counts, EXPR_CLASSES)))
        n_windows = len(cfg.window_frames)
        plan = Plan("windows", len(sampler) * d.world_size, cfg.batch_size * d.world_size, cfg.epochs,
                    windows_to_predict(frames[val_mask], video[val_mask], cfg.predict_stride, n_windows),
                    {s: windows_to_predict(frames[m], video[m], cfg.predict_stride, n_windows)
                     for s in ("train", "val", "test") if (m := (frames.split == s).to_numpy()).any()},
                    note=f"predict stride {cfg.predict_stride}")
        trainer = Trainer(model, cfg, run, d, precision, step, evaluate, plan=plan,
                          layer_decay=cfg.layer_decay if cfg.finetune_layers else None)
        trainer.fit(loader_for(dataset, cfg, sampler), sampler)
    if not (run / "best.pt").exists():
        raise SystemExit(f"error: {run / 'best.pt'} not found: nothing to predict with")
    best = load_weights(model, run / "best.pt")
    model.to(d.device)
    has_audio = videos["has_audio"].to_numpy(bool)[video]
    scored = None
    for split in ("train", "val", "test"):
        mask = (frames.split == split).to_numpy()
        part = frames[mask]
        if not mask.any():
            if d.main:
                skip_split(run, split, source)
            continue
        logits, feats = predict_windows(model, part, windows_of(mask), pipe, d, precision, **predict_args,
                                        progress=f"predict {split}")
        if d.main:
            save_preds(run / "preds" / f"{split}.npz", txtid=part["txtid"].to_numpy(), frame=part["frame"].to_numpy(),
                       label=part["label"].to_numpy(), has_crop=part["has_crop"].to_numpy(), logits=logits,
                       features=feats, has_audio=has_audio[mask])
        if split == "val":
            scored = score(part["label"].to_numpy(), logits)
    if d.main:
        metrics = dict(val_macro_f1=scored["macro_f1"], val_per_class_f1=dict(zip(EXPR_CLASSES, scored["per_class_f1"])),
                       best_epoch=best.get("epoch"), windows_kept=kept, predict_stride=cfg.predict_stride)
        if getattr(model, "layer_weights", None) is not None:   # which layers the head leaned on
            weights = model.layer_weights.detach().softmax(0).cpu().numpy().round(4).tolist()
            metrics["speech_layer_weights"] = dict(zip(map(str, inputs["cached_layers"]), weights))
            log("learnt layer weights: " + ", ".join(f"{k} {w:.3f}" for k, w in metrics["speech_layer_weights"].items()))
        table(f"{run.name}: val F1, every frame", ["", *EXPR_CLASSES, "macro"],
              [["F1", *scored["per_class_f1"], scored["macro_f1"]]])
        write_json(run / "metrics.json", metrics)
        log(f"audio branch val macro-F1 {scored['macro_f1']:.4f} -> {run}")
    return run


if __name__ == "__main__":
    cli(main)
