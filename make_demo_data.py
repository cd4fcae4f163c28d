"""Write a synthetic dataset in the exact Aff-Wild2 EXPR layout (DESIGN.md section 3).

Usage: python make_demo_data.py --out demo/affwild2_raw [--seed 0] [--videos N] [--scale small|medium]
       python make_demo_data.py --dataset dfew --out demo/dfew_raw [--clips 80] [--openpose 0.9] [--hidden 0.5]   (utils/synthetic/dfew.py)

What it writes, and the quirks of the real data it reproduces:
  annotations/<challenge>/{Train_Set,Validation_Set}/<txtid>.txt   labels in 0.5-5 s segments,
      the real class mix, -1 segments, label lines 0, +1 or +2 more (or 1 fewer) than frames
  cropped_aligned*/<txtid>/<00001>.jpg   112x112 faces, runs of missing faces, two crop folders
  raw_videos/batch*/<videoid>.{mp4,avi}  real containers at 30, 25 and 29.97 fps with audio
      (AAC stereo 44.1 kHz or PCM mono 22.05 kHz); one video without an audio stream; one
      _left/_right pair sharing a video in train and one in test
  *_test_set_release.txt, CVPR_6th_ABAW_Expr_test_set_sample.txt   the test list and template
  demo_ground_truth/Test_Set/<txtid>.txt   the labels the organisers keep secret
  demo_manifest.json   what was written: the counts prepare_data.py must report
Faces and voices depend on the class so that fusion must win (see utils/synthetic/affwild2.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from PIL import Image

from utils.classes import EXPR_HEADER, EXPR_TEMPLATE_HEADER, NUM_EXPR_CLASSES
from utils.config import parse_config
from utils.console import cli, log, table
from utils.runs import write_json, write_text
from utils.synthetic.affwild2 import FaceRenderer, expression_track, voice_track, write_video
from utils.synthetic.dfew import best_uar, make_dfew

# Real Aff-Wild2 train+val class mix (shared/fixtures/affwild2_stats/README.md), in percent.
CLASS_MIX = np.array([30.0, 2.7, 1.9, 2.0, 14.8, 12.1, 4.9, 31.7])
CLASS_MIX = CLASS_MIX / CLASS_MIX.sum()   # the published shares are rounded
SCALES = {"small": dict(videos=16, seconds=(15, 30)), "medium": dict(videos=40, seconds=(30, 75))}
FPS_CYCLE = (30.0, 25.0, 29.97)
LABEL_EXTRA_CYCLE = (1, 0, 1, 2, 1, 0, -1)   # label lines minus decoded frames, as in the real data
MIN_SEGMENTS = {"train": 4, "val": 2, "test": 0}  # every class must occur, or macro-F1 means little
# The DFEW demo's ablation settings (utils.models.temporal) as streams of utils.synthetic.dfew.best_uar.
BOUNDS_SHOWN = (("frame_average",), ("image",), ("image", "keypoints"), ("image", "keypoints", "audio"))


@dataclass
class DemoDataConfig:
    out: str = field(default="demo/affwild2_raw", metadata={"help": "folder to write the dataset to"})
    seed: int = 0
    videos: int = field(default=0, metadata={"help": "number of raw videos (0: the scale's default)"})
    scale: str = field(default="small", metadata={"choices": sorted(SCALES)})
    challenge_folder: str = field(default="EXPR_Classification_Challenge",
                                  metadata={"help": "ABAW5 name; ABAW6+ uses EXPR_Recognition_Challenge"})
    jobs: int = field(default=2, metadata={"help": "parallel worker processes"})
    dataset: str = field(default="affwild2", metadata={"choices": ["affwild2", "dfew"]})
    clips: int = field(default=80, metadata={"help": "DFEW: number of clips"})
    openpose: float = field(default=0.9, metadata={"help": "DFEW: share of clips with OpenPose output (the clip model "
                                                           "must cope with a missing modality)"})
    hidden: float = field(default=0.4, metadata={"help": "DFEW: share of clips whose face is out of sight (turned away "
                                                         "or covered): only the voice and the body tell their class"})


def plan(cfg: DemoDataConfig, rng) -> list[dict]:
    """Decide every video and its label segments up front, so rendering can run in parallel."""
    n = cfg.videos or SCALES[cfg.scale]["videos"]
    if n < 3:
        raise SystemExit("error: --videos must be at least 3 (train, val and test)")
    n_test, n_val = max(1, round(0.2 * n)), max(1, round(0.25 * n))
    splits = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    videos, segments = [], []
    for i, split in enumerate(splits):
        fps = FPS_CYCLE[i % len(FPS_CYCLE)]
        videoid = f"{i + 1}-{int(fps)}-56x56"
        pair = i == 0 or (split == "test" and splits[i - 1] != "test")
        n_video = int(round(rng.uniform(*SCALES[cfg.scale]["seconds"]) * fps))
        extra = 1 if split == "test" else LABEL_EXTRA_CYCLE[i % len(LABEL_EXTRA_CYCLE)]
        video = dict(index=i, split=split, videoid=videoid, fps=fps, n_video=n_video,
                     n_labels=n_video + extra, ext=".avi" if i % 3 == 2 else ".mp4",
                     has_audio=i != 1, txtids=[])
        for txtid in ([videoid + "_left", videoid + "_right"] if pair else [videoid]):
            start = 0
            while start < max(n_video, n_video + extra):
                length = int(round(rng.uniform(0.5, 5.0) * fps))
                label = -1 if rng.random() < 0.07 else int(rng.choice(NUM_EXPR_CLASSES, p=CLASS_MIX))
                segments.append(dict(split=split, txtid=txtid, start=start, end=start + length,
                                     label=label, content=int(rng.integers(8)) if label < 0 else label))
                start += length
            video["txtids"].append(txtid)
        videos.append(video)
    for split, minimum in MIN_SEGMENTS.items():
        pool = [s for s in segments if s["split"] == split and s["label"] >= 0]
        for cls in range(NUM_EXPR_CLASSES):
            while sum(s["label"] == cls for s in pool) < minimum:
                # Take a segment from the largest class, so the real mix keeps its shape.
                sizes = np.bincount([s["label"] for s in pool], minlength=NUM_EXPR_CLASSES)
                if sizes.max() <= minimum:
                    break
                donors = [s for s in pool if s["label"] == int(sizes.argmax())]
                donor = donors[int(rng.integers(len(donors)))]
                donor["label"] = donor["content"] = cls
    for video in videos:
        video["segments"] = {t: [s for s in segments if s["txtid"] == t] for t in video["txtids"]}
    return videos


def missing_faces(rng, n_frames: int, labels: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Frames without a detected face: a run at the start, runs in the middle, some -1 segments."""
    missing = np.zeros(n_frames, bool)
    if rng.random() < 0.6:
        missing[: int(rng.integers(1, 25))] = True
    for _ in range(int(rng.integers(1, 3))):
        start = int(rng.integers(0, max(1, n_frames - 40)))
        missing[start:start + int(rng.integers(5, 40))] = True
    for seg in np.unique(segment_ids[labels < 0]):
        if rng.random() < 0.3:
            missing[segment_ids == seg] = True
    return missing


def render_video(video: dict, seed: np.random.SeedSequence, root: Path, cfg: DemoDataConfig) -> dict:
    rng = np.random.default_rng(seed)
    n_video, n_labels = video["n_video"], video["n_labels"]
    n_frames = max(n_video, n_labels)
    scene, voice_classes, result = None, None, {}
    for k, txtid in enumerate(video["txtids"]):
        labels = np.full(n_frames, -1, np.int64)
        content = np.zeros(n_frames, np.int64)
        segment_ids = np.zeros(n_frames, np.int64)
        for j, s in enumerate(video["segments"][txtid]):
            labels[s["start"]:s["end"]], content[s["start"]:s["end"]] = s["label"], s["content"]
            segment_ids[s["start"]:s["end"]] = j
        missing = missing_faces(rng, n_frames, labels, segment_ids)
        faces = expression_track(rng, content, segment_ids)
        renderer = FaceRenderer(rng, n_frames)
        crop_root = "cropped_aligned_new_50_vids" if video["index"] % 4 == 3 else "cropped_aligned"
        crop_dir = root / crop_root / txtid
        crop_dir.mkdir(parents=True, exist_ok=True)
        frames = []
        for t in range(n_video):  # crops exist only for decoded frames
            image = renderer.render(t, None if missing[t] else faces[t])
            if not missing[t]:
                Image.fromarray(image).save(crop_dir / f"{t + 1:05d}.jpg", quality=90)
            if k == 0:
                frames.append(np.ascontiguousarray(image[::2, ::2]))
        if k == 0:
            scene, voice_classes = frames, (content[:n_video], segment_ids[:n_video])
        split_folder = {"train": "Train_Set", "val": "Validation_Set", "test": None}[video["split"]]
        label_file = (root / "annotations" / cfg.challenge_folder / split_folder if split_folder
                      else root / "demo_ground_truth" / "Test_Set") / f"{txtid}.txt"
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text(EXPR_HEADER + "\n" + "\n".join(map(str, labels[:n_labels])) + "\n")
        has_crop = ~missing[:n_labels] & (np.arange(n_labels) < n_video)
        result[txtid] = dict(split=video["split"], videoid=video["videoid"], fps=video["fps"],
                             n_video_frames=n_video, n_label_lines=n_labels,
                             has_audio=video["has_audio"], crop_files=int((~missing[:n_video]).sum()),
                             crops_indexed=int(has_crop.sum()),
                             labels=np.bincount(labels[:n_labels] + 1, minlength=9).tolist())
    sample_rate = 44100 if video["ext"] == ".mp4" else 22050
    audio = voice_track(rng, *voice_classes, video["fps"], sample_rate) if video["has_audio"] else None
    path = root / "raw_videos" / ("batch1" if video["ext"] == ".mp4" else "batch2") / (video["videoid"] + video["ext"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, scene, video["fps"], audio, sample_rate)
    return result


def manifest_counts(per_txtid: dict) -> dict:
    """Per split, the counts prepare_data.py must report for this tree."""
    out = {}
    for split in ("train", "val", "test"):
        rows = [v for v in per_txtid.values() if v["split"] == split]
        labels = np.sum([v["labels"] for v in rows], axis=0) if rows else np.zeros(9, int)
        frames = sum(v["n_label_lines"] for v in rows)
        crops = sum(v["crops_indexed"] for v in rows)
        out[split] = dict(txtids=len(rows), videos=len({v["videoid"] for v in rows}), frames=frames,
                          labels=(labels[1:] if split != "test" else np.zeros(8, int)).tolist(),
                          ignored=int(labels[0]) if split != "test" else frames,
                          crops=crops, missing_crops=frames - crops,
                          videos_without_audio=len({v["videoid"] for v in rows if not v["has_audio"]}))
    return out


def main(argv=None):
    cfg = parse_config(DemoDataConfig, argv, description=__doc__.split("\n")[0])
    root = Path(cfg.out)
    if cfg.dataset == "dfew":   # the synthetic DFEW tree and its quirks: utils/synthetic/dfew.py
        for name in ("openpose", "hidden"):
            if not 0 <= getattr(cfg, name) <= 1:
                raise SystemExit(f"error: --{name} {getattr(cfg, name)}: a share of the clips, 0..1")
        if (root / "dfew_manifest.json").exists():
            log(f"{root}: already generated (delete it to regenerate)")
            return
        manifest = make_dfew(root, cfg.seed, cfg.clips, frames_16f=True, openpose=cfg.openpose, hidden=cfg.hidden,
                             jobs=cfg.jobs)
        log(f"wrote a synthetic DFEW tree of {cfg.clips} clips to {root}")
        table("Best UAR each set of streams can reach on these clips, by construction (utils/synthetic/dfew.py)",
              ["streams", "best UAR"], [[" + ".join(s), best_uar(manifest["clips"], s)] for s in BOUNDS_SHOWN])
        return
    if (root / "demo_manifest.json").exists():
        log(f"{root}: already generated (delete it to regenerate)")
        return
    seeds = np.random.SeedSequence(cfg.seed).spawn(2)
    videos = plan(cfg, np.random.default_rng(seeds[0]))
    per_video = Parallel(n_jobs=cfg.jobs)(
        delayed(render_video)(v, s, root, cfg) for v, s in zip(videos, seeds[1].spawn(len(videos))))
    per_txtid = {t: info for result in per_video for t, info in result.items()}
    test_ids = [t for v in videos if v["split"] == "test" for t in v["txtids"]]
    release = list(np.random.default_rng(cfg.seed).permutation(test_ids))  # not sorted, as the real one
    write_text(root / "Expression_Classification_Challenge_test_set_release.txt", "\n".join(release) + "\n")
    # Other challenges' lists sit beside it in the real release; the kit must pick the EXPR one.
    write_text(root / "Valence_Arousal_Estimation_Challenge_test_set_release.txt", "\n".join(release[:1]) + "\n")
    rows = [f"{t}/{f:05d}.jpg," for t in release for f in range(1, per_txtid[t]["n_label_lines"] + 1)]
    write_text(root / "CVPR_6th_ABAW_Expr_test_set_sample.txt", EXPR_TEMPLATE_HEADER + "\n" + "\n".join(rows) + "\n")
    counts = manifest_counts(per_txtid)
    write_json(root / "demo_manifest.json", dict(seed=cfg.seed, scale=cfg.scale, splits=counts,
                                                 crop_files=sum(v["crop_files"] for v in per_txtid.values()),
                                                 txtids=per_txtid))
    table(f"Synthetic Aff-Wild2 written to {root}", ["split", "txtids", "videos", "frames", "crops", "no audio"],
          [[s, c["txtids"], c["videos"], c["frames"], c["crops"], c["videos_without_audio"]] for s, c in counts.items()])


if __name__ == "__main__":
    cli(main)
