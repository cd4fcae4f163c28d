"""The one training loop every train script uses.

AdamW and a per-step cosine schedule with warmup (timm), optional EMA (timm ModelEmaV3),
gradient accumulation, the precision policy of DESIGN.md section 7, best checkpoint by val
macro-F1, an atomic last.pt every epoch with automatic resume, early stopping, a stop on a
non-finite loss, one log.jsonl line per epoch, and DDP under torchrun (only rank 0 writes).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data.random_erasing import RandomErasing
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from utils.console import Progress, duration_text, log, rate_text, warn
from utils.evaluation.metrics import macro_f1, per_class_f1
from utils.runs import append_jsonl, save_torch
from utils.training.curves import plot_curves
from utils.training.plan import Clock, Plan, log_plan

TORCH_FOR_PASCAL = "pip install torch torchvision torchaudio --index-url https://download.pytorch.org/whl/cu126"


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str = "auto") -> Dist:
    """Device and process group; under torchrun each process takes its LOCAL_RANK GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        check_cuda_build(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # A group left to the interpreter's teardown can abort a rank that finished early
        # ("terminate called without an active exception"); every rank closes it on exit.
        atexit.register(dist.destroy_process_group)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank=rank, world_size=world, device=device)


def check_cuda_build(device: torch.device) -> None:
    """A GPU the installed torch cannot drive is a clear error, not a crash deep in a kernel."""
    major, minor = torch.cuda.get_device_capability(device)
    archs = torch.cuda.get_arch_list()
    ptx = [int(a.split("_")[1]) for a in archs if a.startswith("compute_")]
    if f"sm_{major}{minor}" in archs or any(p <= major * 10 + minor for p in ptx):
        return
    name = torch.cuda.get_device_name(device)
    hint = TORCH_FOR_PASCAL if major < 7 else "a torch build whose CUDA version supports it"
    raise SystemExit(f"error: {name} (sm_{major}{minor}) is not supported by torch {torch.__version__} "
                     f"(CUDA {torch.version.cuda}, built for {' '.join(archs)}); install {hint}")


def pick_precision(device: torch.device, requested: str = "auto") -> str:
    """bf16 on Ampere+, fp16 with a grad scaler on Volta/Turing, fp32 on Pascal and CPU."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "fp32"
    major, _ = torch.cuda.get_device_capability(device)
    return "bf16" if major >= 8 else "fp16" if major == 7 else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class InputPipe:
    """uint8 NHWC batches to normalised float NCHW at the model's size, on the device;
    in training, timm's RandomErasing (coarse dropout) on the normalised batch."""

    def __init__(self, mean, std, size: int, device: torch.device, erase_prob: float = 0.0):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.size, self.device = size, device
        self.erase = RandomErasing(erase_prob, max_count=3, device=device) if erase_prob > 0 else None

    def __call__(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.size)
        x = (x - self.mean) / self.std
        return self.erase(x) if train and self.erase is not None else x


def gather(array: np.ndarray, d: Dist) -> np.ndarray:
    """Concatenate every rank's rows in rank order (each rank holds one contiguous shard)."""
    if d.world_size == 1:
        return array
    parts = [None] * d.world_size
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


class Rows:
    """Per-batch outputs written into arrays allocated once for all n rows (float32 unless
    `dtypes` says otherwise). Appending each batch's small arrays to lists fragments the heap:
    predicting 1.1 M fusion rows that way grew the process by 14 GB, because the holes left
    between the arrays that outlive each batch are never handed back.

    `progress` (a description, e.g. "predict val") shows the rows as they fill (utils.console.Progress:
    a bar on a terminal, done/total, rate and ETA lines in a log), in `unit`; None is silent (the DDP
    ranks other than 0). Every prediction loop fills a Rows, so every one of them reports."""

    def __init__(self, n: int, progress: str | None = None, unit: str = "rows", **dtypes):
        self.n, self.dtypes, self.arrays, self.filled = n, dtypes, {}, 0
        self.bar = Progress(n, progress, unit) if progress else None

    def add(self, **batch: torch.Tensor) -> None:
        size = 0
        for key, value in batch.items():
            value = value.detach().float().cpu().numpy()
            if key not in self.arrays:
                self.arrays[key] = np.empty((self.n, *value.shape[1:]), self.dtypes.get(key, np.float32))
            self.arrays[key][self.filled:self.filled + len(value)] = value
            size = len(value)
        self.filled += size
        if self.bar is not None:
            self.bar.advance(size)
            if self.filled >= self.n:
                self.bar.close()

    def get(self, key: str, *shape) -> np.ndarray:
        """The filled array; `shape` (per row) for an empty prediction, which saw no batch."""
        if self.bar is not None:
            self.bar.close()
        if self.filled != self.n:
            raise RuntimeError(f"{self.filled} of {self.n} rows predicted")
        return self.arrays.get(key, np.zeros((0, *shape), self.dtypes.get(key, np.float32)))


def shard(n: int, d: Dist) -> np.ndarray:
    return np.array_split(np.arange(n), d.world_size)[d.rank]


class Trainer:
    """Fits `model` with `cfg` (epochs, lr, weight_decay, warmup_epochs, accum_steps, ema,
    ema_decay, patience, label_smoothing, grad_checkpointing) and writes into `run`, curves.png
    included (redrawn after the first and the last epoch, and after any epoch that ends
    CURVES_EVERY seconds or more after the last drawing). A `plan` (utils.training.plan) is
    printed before the first step, and the whole run's ETA after the first minute and on every
    epoch line."""

    ETA_AFTER = 60.0   # seconds of training before the first whole-run ETA
    # A matplotlib redraw costs about 0.3 s: after every epoch it was 85 % of a DFEW clip
    # model's 80 short epochs (BENCHMARKS.md, "Faster tests"); a person looks less often.
    CURVES_EVERY = 30.0

    def __init__(self, model, cfg, run: Path, d: Dist, precision: str, step_fn, evaluate_fn,
                 class_weights: torch.Tensor | None = None, metric: str = "macro-F1", plan: Plan | None = None,
                 layer_decay: float | None = None):
        self.plan = plan
        # evaluate_fn's 'macro_f1' is the selection score; `metric` names it in the log (DFEW: UAR).
        self.cfg, self.run, self.d, self.precision, self.metric = cfg, Path(run), d, precision, metric
        self.model = model.to(d.device)
        if getattr(cfg, "grad_checkpointing", False) and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        # layer_decay: timm's layer-wise lr decay over model.group_matcher's groups (BEiT, Bao et al. 2022)
        self.optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             layer_decay=layer_decay)
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        self.scaler = torch.amp.GradScaler(enabled=precision == "fp16")
        self.net = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[d.device] if d.device.type == "cuda" else None)
                    if d.world_size > 1 else self.model)
        self.step_fn, self.evaluate_fn = step_fn, evaluate_fn
        self.loss_weights = None if class_weights is None else class_weights.to(d.device)
        self.start_epoch, self.updates, self.best, self.best_epoch, self.bad_epochs = 0, 0, -1.0, -1, 0
        self._drawn = -float("inf")   # when curves.png was last drawn (perf_counter seconds)

    @property
    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model

    def _scheduler(self, steps_per_epoch: int):
        updates_per_epoch = max(1, steps_per_epoch // self.cfg.accum_steps)
        total = max(1, self.cfg.epochs * updates_per_epoch)
        warmup = min(int(self.cfg.warmup_epochs * updates_per_epoch), total - 1)
        return CosineLRScheduler(self.optimizer, t_initial=total, lr_min=self.cfg.lr * 0.01,
                                 warmup_t=warmup, warmup_lr_init=self.cfg.lr * 0.01, t_in_epochs=False)

    def _state(self, epoch: int) -> dict:
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scaler=self.scaler.state_dict(), ema=self.ema.state_dict() if self.ema else None,
                    epoch=epoch, updates=self.updates, best=self.best, best_epoch=self.best_epoch,
                    bad_epochs=self.bad_epochs, torch_rng=torch.get_rng_state(),
                    python_rng=list(random.getstate()[1]))   # timm's RandomErasing draws from it

    def _resume(self) -> None:
        path = self.run / "last.pt"
        if not path.exists():
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate((3, tuple(state["python_rng"]), None))
        self.start_epoch = state["epoch"] + 1
        self.updates, self.best, self.best_epoch = state["updates"], state["best"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        if self.d.main:
            log(f"resumed from {path} after epoch {state['epoch']} (best val {self.metric} {self.best:.4f})")

    def loss(self, logits, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy; a list of logits (several heads) sums the heads' losses weighted by
        cfg.loss_weights, in the same order."""
        if isinstance(logits, (list, tuple)):
            return sum(w * self.loss(head, labels) for w, head in zip(self.cfg.loss_weights, logits))
        return F.cross_entropy(logits.float(), labels, weight=self.loss_weights,
                               label_smoothing=self.cfg.label_smoothing)

    def culprits(self, loader, sampler, step: int, logits, labels, shown: int = 3) -> str:
        """Which rows of the batch at `step` gave a non-finite loss, named by the dataset's
        describe(indices) (txtid/frame, clip ...): the sampler's draw for the epoch is fixed by
        (seed, epoch), so batch k holds draw[k * batch_size:(k + 1) * batch_size]."""
        heads = logits if isinstance(logits, (list, tuple)) else [logits]
        with torch.no_grad():
            per_row = torch.stack([F.cross_entropy(h.float(), labels, reduction="none") for h in heads]).sum(0)
        bad = np.flatnonzero(~torch.isfinite(per_row).cpu().numpy())
        if len(bad) == len(per_row) > 1:
            return (f"every row of the batch ({len(bad)}): the model itself diverged (lower --lr, or "
                    "--precision fp32)")
        describe = getattr(loader.dataset, "describe", None)
        if describe is None or not len(bad):
            return f"rows {bad[:shown].tolist()} of the batch"
        indices = np.asarray(list(sampler))[step * loader.batch_size:(step + 1) * loader.batch_size]
        names = describe(indices[bad[:shown]])
        more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
        return f"from {', '.join(names)}{more}"

    def fit(self, loader, sampler) -> dict:
        """Train until cfg.epochs or early stop; returns the best epoch's record."""
        cfg, d = self.cfg, self.d
        scheduler = self._scheduler(len(loader))
        self._resume()
        clock = Clock(self.plan) if self.plan is not None and d.main else None
        if clock is not None:
            log_plan(self.plan, self.start_epoch)
        fit_start, eta_shown = time.perf_counter(), clock is None
        for epoch in range(self.start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            loader.dataset.set_epoch(epoch)
            self.net.train()
            start, seen, total_loss, replaced = time.perf_counter(), 0, 0.0, 0
            self.optimizer.zero_grad(set_to_none=True)
            unit = self.plan.unit if self.plan else "img"
            bar = Progress(len(sampler) * d.world_size, f"epoch {epoch}", unit, show=d.main)
            for step, batch in enumerate(loader):
                last_micro = (step + 1) % cfg.accum_steps == 0 or step + 1 == len(loader)
                sync = contextlib.nullcontext() if last_micro or d.world_size == 1 else self.net.no_sync()
                with sync, autocast(d.device, self.precision):
                    logits, labels, n, bad = self.step_fn(self.net, batch)
                    loss = self.loss(logits, labels)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss ({loss.item()}) at epoch {epoch} step {step}, "
                                             f"{self.culprits(loader, sampler, step, logits, labels)}; "
                                             f"{self.run / 'last.pt'} holds the last finished epoch")
                self.scaler.scale(loss / cfg.accum_steps).backward()
                if last_micro:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.updates += 1
                    scheduler.step_update(self.updates)
                    if self.ema is not None:
                        self.ema.update(self.model, step=self.updates)
                seen += n
                bar.advance(n * d.world_size)
                replaced += bad
                total_loss += loss.item() * n
                if not eta_shown and time.perf_counter() - fit_start >= self.ETA_AFTER:
                    eta_shown = True
                    left, how = clock.eta(epoch, seen * d.world_size, False, seen * d.world_size,
                                          time.perf_counter() - start)
                    log(f"ETA of the whole run: {duration_text(left)} ({how})")
            bar.close()
            seconds = time.perf_counter() - start
            val_start = time.perf_counter()
            val = self.evaluate_fn(self.eval_model)
            if clock is not None:
                clock.trained(seen * d.world_size, seconds)
                clock.validated(time.perf_counter() - val_start)
            improved = val["macro_f1"] > self.best
            if improved:
                self.best, self.best_epoch, self.bad_epochs = val["macro_f1"], epoch, 0
            else:
                self.bad_epochs += 1
            record = dict(epoch=epoch, train_loss=total_loss / max(seen, 1), lr=max(g["lr"] for g in self.optimizer.param_groups),
                          images_per_s=seen * d.world_size / seconds, seconds=seconds, replaced_crops=replaced,
                          val_macro_f1=val["macro_f1"], selection_metric=self.metric, val_per_class_f1=val["per_class_f1"],
                          drawn_per_class=getattr(sampler, "draw_counts", np.array([])).tolist())
            if d.main:
                if improved:
                    save_torch(self.run / "best.pt", dict(model=self.eval_model.state_dict(), epoch=epoch,
                                                          val_macro_f1=val["macro_f1"]))
                save_torch(self.run / "last.pt", self._state(epoch))
                append_jsonl(self.run / "log.jsonl", record)
                stopping = epoch == cfg.epochs - 1 or bool(cfg.patience and self.bad_epochs >= cfg.patience)
                if stopping or time.perf_counter() - self._drawn >= self.CURVES_EVERY:
                    self._curves()
                eta = ""
                if clock is not None:
                    eta = f"  run ETA {duration_text(clock.eta(epoch + 1, 0, False)[0])}"
                log(f"epoch {epoch}: loss {record['train_loss']:.4f}  val {self.metric} {val['macro_f1']:.4f}"
                    f"{' (best)' if improved else ''}  {rate_text(record['images_per_s'])} {unit}/s  {seconds:.0f}s{eta}")
            if d.world_size > 1:
                dist.barrier()
            if cfg.patience and self.bad_epochs >= cfg.patience:
                if d.main:
                    log(f"early stop: no gain for {cfg.patience} epochs (best epoch {self.best_epoch})")
                break
        return dict(best_epoch=self.best_epoch, best_val_macro_f1=self.best)

    def _curves(self) -> None:
        self._drawn = time.perf_counter()
        try:
            plot_curves(self.run)
        except (OSError, ValueError, RuntimeError) as err:   # a missing plot must not stop a run
            warn(f"{self.run / 'curves.png'} not written: {err}")


def score(labels: np.ndarray, logits: np.ndarray) -> dict:
    preds = logits.argmax(1)
    return dict(macro_f1=macro_f1(labels, preds), per_class_f1=per_class_f1(labels, preds).tolist())
