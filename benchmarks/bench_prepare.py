"""Speed of prepare_data.py: audio decode per core, and indexing at the real dataset's scale.

Usage: python benchmarks/bench_prepare.py [--out bench_out] [--index-frames 1000000]

1. Generates the medium demo tree (once; reused after), runs prepare_data.py on it and checks
   that it reports exactly the counts the generator wrote.
2. Audio decode: every video of that tree read by utils.readers.media.read_video (timestamps, every
   channel kept and the full-band ones averaged) in this one process (one core), reported as
   seconds of audio per second of CPU time, next to libswresample's own mono downmix of the same
   files in the same run (the summing downmix the kit used before: the baseline of the ratio).
3. Indexing: a tree shaped like the real train/val set (label-line counts of the real videos
   from shared/fixtures/affwild2_stats, empty crop files for 95 % of frames, no videos) of
   about --index-frames frames, indexed by prepare_data.py; frames per second.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import make_demo_data  # noqa: E402
import prepare_data  # noqa: E402
from utils.classes import EXPR_HEADER  # noqa: E402
from utils.readers.media import probe_video, read_video  # noqa: E402

STATS = ROOT.parent / "shared" / "fixtures" / "affwild2_stats"


def real_scale_tree(root: Path, n_frames: int, stats: Path) -> int:
    """Label files and empty crops with the real videos' lengths, until n_frames are written."""
    if (root / "done").exists():
        return int((root / "done").read_text())
    videos = pd.read_csv(stats / "train_val_videos.csv")
    rng = np.random.default_rng(0)
    written = 0
    for row in videos.itertuples():
        if written >= n_frames:
            break
        split = row.source_dir
        n = int(row.total_frames_in_txt)
        labels = rng.integers(-1, 8, n)
        ann = root / "EXPR_Classification_Challenge" / split / f"{row.txtid}.txt"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(EXPR_HEADER + "\n" + "\n".join(map(str, labels)) + "\n")
        crops = root / "cropped_aligned" / row.txtid
        crops.mkdir(parents=True, exist_ok=True)
        for f in np.flatnonzero(rng.random(n) < 0.95) + 1:
            (crops / f"{f:05d}.jpg").touch()
        written += n
    (root / "done").write_text(str(written))
    return written


def swr_downmix(path: Path) -> None:
    """The baseline: PyAV's resampler straight to mono 16 kHz (a summing downmix), nothing else."""
    import av
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                out.to_ndarray()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench_out"))
    parser.add_argument("--index-frames", type=int, default=1_000_000)
    parser.add_argument("--stats", default=str(STATS))
    args = parser.parse_args(argv)
    out = Path(args.out)

    raw, prepared = out / "affwild2_medium", out / "affwild2_medium_prepared"
    start = time.perf_counter()
    make_demo_data.main(["--out", str(raw), "--scale", "medium"])
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    prepare_data.main(["--root", str(raw), "--out", str(prepared), "--force"])
    prepare_s = time.perf_counter() - start
    manifest = json.loads((raw / "demo_manifest.json").read_text())["splits"]
    counts = json.loads((prepared / "meta.json").read_text())["counts"]
    mismatches = [(s, k) for s in manifest for k in manifest[s] if manifest[s][k] != counts[s][k]]

    audio_s = decode_s = downmix_s = 0.0
    for path in sorted(raw.rglob("*.mp4")) + sorted(raw.rglob("*.avi")):
        if not probe_video(path).has_audio:
            continue
        start = time.process_time()   # CPU time: the figure holds on a loaded machine too
        samples = read_video(path, 16000).samples
        decode_s += time.process_time() - start
        start = time.process_time()
        swr_downmix(path)
        downmix_s += time.process_time() - start
        audio_s += len(samples) / 16000

    tree = out / "affwild2_index_scale"
    n_frames = real_scale_tree(tree, args.index_frames, Path(args.stats))
    start = time.perf_counter()
    prepare_data.main(["--root", str(tree), "--out", str(out / "affwild2_index_scale_prepared")])
    index_s = time.perf_counter() - start

    frames = sum(c["frames"] for c in counts.values())
    print()
    print(f"medium demo: {frames:,} frames generated in {generate_s:.1f}s (0 if reused), "
          f"prepared in {prepare_s:.1f}s with 2 jobs; counts match the generator: "
          f"{'yes' if not mismatches else 'NO ' + str(mismatches)}")
    print(f"audio decode, one core: {audio_s:.0f} s of audio in {decode_s:.2f} CPU s = "
          f"{audio_s / decode_s:.0f}x real time (libswresample's mono downmix alone: {audio_s / downmix_s:.0f}x; "
          f"read_video costs {decode_s / downmix_s:.2f}x its time)")
    print(f"indexing: {n_frames:,} frames (real video lengths, 95% with crops) in {index_s:.1f}s = "
          f"{n_frames / index_s:,.0f} frames/s")
    if mismatches:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
