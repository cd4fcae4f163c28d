"""Speed of the image branch: the data path per worker, and Swin-Tiny on a GPU when there is one.

Usage: python benchmarks/bench_image.py [--data demo/data/affwild2] [--frames 3000]

(a) One worker's work, in this process: decode + augment + collate of the crops, next to a
    bare JPEG decode (cv2.imread) of the same files in the same run. Targets: at least 0.6
    of bare decode, and at least 600 images/s per worker.
(b) On a GPU: training and inference images/s of Swin-Tiny at 224 px with the precision the
    kit picks for that GPU, and peak GPU memory, at batch 32 and 64.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.training.data import CropDataset, image_augmentation, load_frames  # noqa: E402
from utils.training.engine import InputPipe, autocast, pick_precision  # noqa: E402
from utils.models.backbones import create_model, normalisation  # noqa: E402


def ensure_data(data: Path) -> Path:
    if (data / "frames.parquet").exists():
        return data
    import make_demo_data
    import prepare_data
    raw = ROOT / "bench_out" / "affwild2_small"
    make_demo_data.main(["--out", str(raw)])
    prepare_data.main(["--root", str(raw), "--out", str(data)])
    return data


def data_path(frames, batch_size: int) -> tuple[float, float]:
    import cv2
    paths = frames.crop_path.tolist()
    start = time.perf_counter()
    for p in paths:
        cv2.cvtColor(cv2.imread(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    bare = len(paths) / (time.perf_counter() - start)
    loader = torch.utils.data.DataLoader(CropDataset(frames, image_augmentation(1.0)),
                                         batch_size=batch_size, num_workers=0)
    start = time.perf_counter()
    for _ in loader:
        pass
    full = len(paths) / (time.perf_counter() - start)
    return bare, full


def gpu(batch_sizes=(32, 64), steps: int = 20) -> list[str]:
    device = torch.device("cuda")
    precision = pick_precision(device)
    lines = [f"GPU: {torch.cuda.get_device_name(device)}, precision {precision}, torch {torch.__version__}"]
    model = create_model("swin_tiny_patch4_window7_224", 8).to(device)
    pipe = InputPipe(*normalisation(model), 224, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(enabled=precision == "fp16")
    for bs in batch_sizes:
        images = torch.randint(0, 255, (bs, 112, 112, 3), dtype=torch.uint8, device=device)
        labels = torch.randint(0, 8, (bs,), device=device)
        torch.cuda.reset_peak_memory_stats()
        for mode in ("train", "infer"):
            for i in range(steps + 5):
                if i == 5:
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                if mode == "train":
                    model.train()
                    with autocast(device, precision):
                        loss = torch.nn.functional.cross_entropy(model(pipe(images)).float(), labels)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad(set_to_none=True)
                else:
                    model.eval()
                    with torch.no_grad(), autocast(device, precision):
                        model(pipe(images))
            torch.cuda.synchronize()
            rate = bs * steps / (time.perf_counter() - start)
            lines.append(f"swin_tiny 224px batch {bs}: {mode} {rate:,.0f} img/s")
        lines.append(f"swin_tiny 224px batch {bs}: peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT / "demo" / "data" / "affwild2"))
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)   # one worker's share of the machine
    frames = load_frames(ensure_data(Path(args.data)), ["train"])
    frames = frames[frames.has_crop].iloc[: args.frames].reset_index(drop=True)
    data_path(frames.iloc[:200], args.batch_size)   # warm the page cache and the imports
    bare, full = data_path(frames, args.batch_size)
    print(f"data path, one worker, {len(frames)} crops of 112 px: bare decode {bare:,.0f} img/s, "
          f"decode+augment+collate {full:,.0f} img/s = {full / bare:.2f} of bare decode")
    if torch.cuda.is_available():
        for line in gpu():
            print(line)
    else:
        print("GPU: none on this machine; Swin-Tiny figures skipped")


if __name__ == "__main__":
    main()
