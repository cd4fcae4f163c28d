"""Datasets and the class-balanced resampler shared by the training scripts.

Images leave the worker processes as 112x112 uint8 (decode + augmentation only); resizing to
the model's input and normalisation happen on the device (utils.training.engine.to_model_input), so
a weak CPU feeding a GPU does no float work per image.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from utils.classes import NUM_EXPR_CLASSES
from utils.files import DataError
from utils.readers.media import locate

cv2.setNumThreads(1)  # one decode thread per worker; the workers are the parallelism


def need(present, source, problem: str) -> None:
    """A split or set a step cannot do without: a DataError naming the table, not a crash deep
    inside (an empty array reaching scikit-learn or a reshape)."""
    if not present:
        raise DataError(f"{source}: {problem}")


def load_frames(data_dir, splits=("train", "val", "test")) -> pd.DataFrame:
    """frames.parquet of prepare_data.py, the given splits; DataError naming it if it is missing."""
    path = Path(data_dir) / "frames.parquet"
    if not path.is_file():
        raise DataError(f"{path}: not found; run prepare_data.py first")
    frames = pd.read_parquet(path)
    frames["split"] = frames["split"].astype(str)
    return frames[frames.split.isin(splits)].reset_index(drop=True)


def load_videos(data_dir, frames: pd.DataFrame | None = None) -> pd.DataFrame:
    """videos.parquet, plus a silent row (has_audio False, fps NaN) for every videoid of
    `frames` that prepare_data.py found no container for: those frames still get predictions."""
    videos = locate(pd.read_parquet(f"{data_dir}/videos.parquet"), data_dir)
    if frames is not None:
        missing = sorted(set(frames["videoid"].unique()) - set(videos["videoid"]))
        if missing:
            extra = pd.DataFrame({"videoid": missing, "fps": np.nan, "has_audio": False, "path": ""})
            videos = pd.concat([videos, extra], ignore_index=True)
    return videos


def image_augmentation(strength: float = 1.0, size: int = 112) -> A.Compose | None:
    """Flip, scale/shift jitter, brightness/contrast at the crops' own 112 px, in the workers.

    Chosen for cost as much as effect (benchmarks/bench_image.py): one worker must keep up
    with a GPU. Affine and ColorJitter (~250 us each) cost more than the JPEG decode itself;
    RandomResizedCrop and RandomBrightnessContrast do the job in ~30 us, and the crops are
    already aligned, so rotation adds little. Coarse dropout (~130 us here, most of it
    choosing the holes in Python) runs on the device instead, on the whole batch: timm's
    RandomErasing in utils.training.engine.InputPipe.
    """
    if strength <= 0:
        return None
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.RandomResizedCrop(size=(size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1), p=0.7 * strength),
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.8 * strength),
    ])


def keep_batch(batch):
    """collate_fn for datasets whose __getitems__ assembles the whole batch itself."""
    return batch


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed the worker's augmentation from (seed, epoch, worker)."""
    torch.utils.data.get_worker_info().dataset.reseed(worker_id)


def nearest_index(valid: np.ndarray) -> np.ndarray:
    """For each position, the index of the nearest True position (ties go to the earlier one)."""
    idx = np.flatnonzero(valid)
    if not len(idx):
        return np.full(len(valid), -1)
    pos = np.arange(len(valid))
    right = np.clip(np.searchsorted(idx, pos), 0, len(idx) - 1)
    left = np.clip(right - 1, 0, len(idx) - 1)
    take_left = np.abs(pos - idx[left]) <= np.abs(idx[right] - pos)
    return np.where(take_left, idx[left], idx[right])


class CropDataset(Dataset):
    """Face crops as uint8 HxWx3 tensors with their labels.

    Augmentation is seeded from (seed, epoch, worker) (see seed_worker), and a DataLoader hands
    batches to its workers in a fixed order, so a resumed run sees exactly the same images as
    an uninterrupted one with the same --workers. (Seeding every sample instead costs 150 us,
    most of a decode.) A crop that fails to decode is replaced by the nearest decodable crop
    of the same txtid and counted in the batch.
    """

    def __init__(self, frames: pd.DataFrame, augment: A.Compose | None = None, seed: int = 0,
                 crop_size: int = 112):
        self.paths = frames["crop_path"].to_numpy()
        self.labels = torch.as_tensor(frames["label"].to_numpy().astype(np.int64))
        self.txtid = frames["txtid"].to_numpy()
        self.frame = frames["frame"].to_numpy() if "frame" in frames else np.zeros(len(frames), np.int64)
        self.txtid_codes = pd.factorize(frames["txtid"])[0]
        self.augment, self.seed, self.epoch, self.crop_size = augment, seed, 0, crop_size

    def describe(self, indices) -> list[str]:
        """'txtid/frame (crop file)' of the given samples, for error messages."""
        return [f"{self.txtid[i]}/{int(self.frame[i]):05d} ({self.paths[i]})" for i in indices]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.reseed(0)   # the main process's draw when there are no workers

    def reseed(self, worker: int) -> None:
        if self.augment is not None:
            self.augment.set_random_seed(zlib.crc32(f"{self.seed}/{self.epoch}/{worker}".encode()))

    def __len__(self):
        return len(self.paths)

    def _decode(self, i: int):
        image = cv2.imread(self.paths[i], cv2.IMREAD_COLOR)
        if image is None:
            return None
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if image.shape[0] != self.crop_size or image.shape[1] != self.crop_size:
            image = cv2.resize(image, (self.crop_size, self.crop_size), interpolation=cv2.INTER_AREA)
        return image

    def __getitem__(self, i: int):
        image, replaced = self._decode(i), 0
        if image is None:
            same = np.flatnonzero(self.txtid_codes == self.txtid_codes[i])
            for j in same[np.argsort(np.abs(same - i), kind="stable")][1:]:
                image = self._decode(j)
                if image is not None:
                    replaced = 1
                    break
            if image is None:
                raise OSError(f"{self.paths[i]}: unreadable, and no readable crop of the same video")
        if self.augment is not None:
            image = self.augment(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), self.labels[i], replaced


class ClassBalancedSampler(Sampler):
    """Each epoch a fresh draw: every frame of the classes under the cap, `cap` of the others.

    The draw depends on (seed, epoch) only; under DDP every rank makes the same draw and
    takes its own interleaved shard, padded so all ranks run the same number of steps.
    """

    def __init__(self, labels: np.ndarray, max_per_class: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_classes: int = NUM_EXPR_CLASSES):
        self.labels = np.asarray(labels)
        counts = np.bincount(self.labels, minlength=num_classes)
        self.max_per_class = int(max_per_class) or default_cap(counts)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(len(counts))]
        self.draw_counts = np.array([min(len(ix), self.max_per_class) for ix in self.by_class])
        total = int(self.draw_counts.sum())
        self.per_rank = -(-total // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        chosen = [rng.choice(ix, n, replace=False) if n < len(ix) else ix
                  for ix, n in zip(self.by_class, self.draw_counts)]
        order = rng.permutation(np.concatenate(chosen))
        padded = np.resize(order, self.per_rank * self.world_size)
        return padded[self.rank::self.world_size]

    def __iter__(self):
        return iter(self.draw().tolist())

    def __len__(self):
        return self.per_rank


def default_cap(counts: np.ndarray) -> int:
    """Median of the non-empty class sizes: the rare half is kept whole, the common half capped."""
    present = counts[counts > 0]
    return int(np.median(present)) if len(present) else 0
