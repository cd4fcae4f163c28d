"""A synthetic DFEW tree (DESIGN.md section 6) whose classes only a temporal model can separate.

The signal. Each clip is one face (identity, pose, lighting drift and pixel noise from
utils.synthetic.FaceRenderer) that holds expression A, then, at an onset drawn uniformly in
25-75 % of the clip, changes to expression B within a few frames (faces from FACE_PARAMS):

    Happy     sadness   -> happiness      Sad       happiness -> sadness
    Angry     neutral   -> anger          Disgust   anger     -> neutral
    Surprise  neutral   -> surprise       Fear      surprise  -> neutral
    Neutral   neutral   -> neutral

The classes in one row are twins: the same two faces, for the same share of frames in
distribution (the onset is symmetric about the middle), in the opposite order. A single
frame, or any average of per-frame features, cannot tell twins apart: its best UAR is about
4/7 (Neutral plus a coin flip within each pair). The order of the 16 sampled frames separates
them, so a model over time with position embeddings can approach 100 %.
The voice (clips with sound) names the twin pair, never the order: it helps on faint faces
and clips without a clear face but cannot replace temporal modelling. OpenPose keypoints
follow the drawn face geometry, so they carry the same temporal signal in 95 x 3 numbers.

Quirks of the real data it reproduces:
  - Clip/clip_224x224/<00001>/1.jpg..N.jpg, unpadded names (numeric order matters), N of
    20..48 frames and a few clips of 6..15; images `size` pixels (real: 224);
    frames_16f also writes Clip/clip_224x224_16f/ (the real release ships both);
  - Clip/original/<00001>.mp4 with AAC sound for about 3/4 of the clips, one video without an
    audio stream, no video for the rest;
  - EmoLabel_DataSplit/{train,test}(<spelling>)/set_1..5.csv, header video_name,label, rows
    shuffled, clip ids unpadded in train files and 5-digit in test files, labels 1..7
    (label_base=1) or 0..6; each labelled clip is in exactly one test fold (stratified);
  - about 1 in 10 clips in no split file (the real Clip folder holds 16,372 clips, the
    single-labelled split 11,697), and the real class mix with Disgust rare (about 1 %, but
    at least one clip per fold when there are enough clips);
  - openpose/<00001>/<n>_keypoints.json (OpenPose run on each clip's image folder) for a share
    of the clips: BODY_25 + 70 face points, some frames with nobody, some with a second, smaller
    face in the background. Not part of DFEW: a user runs OpenPose.
dfew_manifest.json lists what was written (label 0-based, fold, n_frames, audio, onset).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from PIL import Image

from utils.classes import DFEW_CLASSES, NUM_DFEW_CLASSES
from utils.dfew import HEADER, N_FOLDS, sample_indices
from utils.runs import write_json, write_text
from utils.synthetic import CROP_SIZE, FaceRenderer, expression_track, voice_track, write_video

# Rows of utils.synthetic.FACE_PARAMS / VOICE_PARAMS (Aff-Wild2 ids).
NEUTRAL, ANGER, HAPPINESS, SADNESS, SURPRISE = 0, 1, 4, 5, 6
# DFEW class (0-based) -> (face A, face B, voice). Twins share faces and voice, not the order.
TRAJECTORIES = {0: (SADNESS, HAPPINESS, HAPPINESS), 1: (HAPPINESS, SADNESS, HAPPINESS),
                2: (NEUTRAL, NEUTRAL, NEUTRAL), 3: (NEUTRAL, ANGER, ANGER),
                4: (NEUTRAL, SURPRISE, SADNESS), 5: (ANGER, NEUTRAL, ANGER),
                6: (SURPRISE, NEUTRAL, SADNESS)}
# Roughly the real single-labelled mix: Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear.
CLASS_MIX = np.array([0.21, 0.17, 0.23, 0.19, 0.11, 0.012, 0.078])
FPS, SAMPLE_RATE = 25.0, 44100


def plan(rng, n_clips: int, openpose: float) -> list[dict]:
    """Every clip's label, fold, length, sound and keypoints, decided before rendering."""
    if n_clips < NUM_DFEW_CLASSES + 1:
        raise ValueError(f"n_clips must be at least {NUM_DFEW_CLASSES + 1}")
    n_labelled = n_clips - max(1, n_clips // 10)
    floor = min(N_FOLDS, n_labelled // NUM_DFEW_CLASSES)
    counts = np.maximum(floor, np.round(CLASS_MIX / CLASS_MIX.sum() * n_labelled)).astype(int)
    while counts.sum() != n_labelled:   # rounding: the largest class gives or takes, one by one
        counts[np.argmax(counts)] += np.sign(n_labelled - counts.sum())
    labels = np.concatenate([np.repeat(np.arange(NUM_DFEW_CLASSES), counts),
                             np.full(n_clips - n_labelled, -1)])
    labels = rng.permutation(labels)
    folds = np.zeros(n_clips, int)
    for cls in range(NUM_DFEW_CLASSES):   # stratified: deal each class round the folds
        members = np.flatnonzero(labels == cls)
        folds[members] = (np.arange(len(members)) + rng.integers(N_FOLDS)) % N_FOLDS + 1
    lengths = rng.integers(20, 49, n_clips)
    short = rng.choice(n_clips, max(2, n_clips // 20), replace=False)
    lengths[short] = rng.integers(6, 16, len(short))
    sound = np.where(rng.random(n_clips) < 0.75, "sound", "none").astype(object)
    sound[rng.integers(n_clips)] = "silent"
    return [dict(clip=f"{i + 1:05d}", label=int(labels[i]), fold=int(folds[i]),
                 content=int(labels[i]) if labels[i] >= 0 else int(rng.integers(NUM_DFEW_CLASSES)),
                 n_frames=int(lengths[i]), audio=str(sound[i]), openpose=bool(rng.random() < openpose))
            for i in range(n_clips)]


def face_landmarks(renderer: FaceRenderer, t: int, params: np.ndarray, scale: float) -> np.ndarray:
    """(70, 2) pixel positions of the drawn face, placed as FaceRenderer._draw_face places it."""
    curve, mouth_open, brow_tilt, brow_raise, eye_open = params
    jaw = np.linspace(0, np.pi, 17)
    points = [np.stack([renderer.face_w * np.cos(jaw), 1.2 * np.sin(jaw)], 1)]
    eye_h = 0.04 + 0.16 * max(eye_open, 0.0)
    for side in (-1, 1):
        ex, base = side * renderer.eye_dx, -0.52 - 0.2 * brow_raise
        inner, outer = ex - side * 0.17, ex + side * 0.2
        points.append(np.stack([np.linspace(inner, outer, 5),
                                np.linspace(base - 0.16 * brow_tilt, base + 0.06 * brow_tilt, 5)], 1))
    points.append(np.stack([np.r_[np.zeros(4), np.linspace(-0.12, 0.12, 5)],
                            np.r_[np.linspace(-0.2, 0.1, 4), np.full(5, 0.2)]], 1))
    phi = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    for side in (-1, 1):
        points.append(np.stack([side * renderer.eye_dx + 0.13 * np.cos(phi), -0.25 + eye_h * np.sin(phi)], 1))
    half = 0.3 + 0.05 * max(curve, 0.0)

    def lip(v, depth):   # depth 0: the upper lip line, 1: the lower one (as drawn)
        upper = 0.5 - 0.16 * curve * v ** 2 + 0.08 * curve
        return np.stack([half * v, upper + depth * (0.03 + 0.38 * max(mouth_open, 0.0) * (1 - v ** 2))], 1)

    x, inner = np.linspace(-1, 1, 7), np.linspace(-0.6, 0.6, 4)
    points += [lip(x, 0), lip(x[-2:0:-1], 1), lip(inner, 0.25), lip(inner[::-1], 0.75),
               np.array([[-renderer.eye_dx, -0.25], [renderer.eye_dx, -0.25]])]   # pupils
    r, angle = 30.0 * renderer.scale[t], renderer.rotation[t]
    c, s = np.cos(angle), np.sin(angle)
    centre = np.array([56.0, 60.0]) + renderer.shift[t]
    return (np.concatenate(points) * r @ np.array([[c, s], [-s, c]]) + centre) * scale


def person(rng, face: np.ndarray, size: int) -> dict:
    """One OpenPose person: BODY_25 (nose, neck, shoulders, eyes, ears) below the face."""
    lo, hi = face.min(0), face.max(0)
    cx, w = (lo[0] + hi[0]) / 2, hi[0] - lo[0]
    body = np.zeros((25, 2))
    body[[0, 1, 2, 5, 15, 16, 17, 18]] = [face[30], [cx, hi[1] + 0.5 * w], [cx - w, hi[1] + 0.7 * w],
                                          [cx + w, hi[1] + 0.7 * w], face[68], face[69],
                                          [lo[0], face[36, 1]], [hi[0], face[36, 1]]]
    detected = np.zeros(25, bool)
    detected[[0, 1, 2, 5, 15, 16, 17, 18]] = True
    points = {}
    for key, xy, seen in (("pose_keypoints_2d", body, detected),
                          ("face_keypoints_2d", face, np.ones(70, bool))):
        xy = xy + rng.normal(0, 0.4, xy.shape)
        seen = seen & (xy >= 0).all(1) & (xy < size).all(1)     # OpenPose finds nothing off the image
        conf = np.where(seen, rng.uniform(0.55, 0.95, len(xy)), 0.0)
        points[key] = np.round(np.c_[np.where(seen[:, None], xy, 0.0), conf], 3).ravel().tolist()
    return {"person_id": [-1], **points, "hand_left_keypoints_2d": [], "hand_right_keypoints_2d": []}


def write_openpose(rng, renderer: FaceRenderer, faces: np.ndarray, folder: Path, size: int) -> None:
    """What OpenPose writes for a clip's image folder: <n>_keypoints.json for n.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(len(faces)):
        face = face_landmarks(renderer, t, faces[t], size / CROP_SIZE)
        people = [] if rng.random() < 0.05 else [person(rng, face, size)]
        if people and rng.random() < 0.1:   # someone smaller in the background
            people.insert(0, person(rng, face * 0.3 + 0.05 * size, size))
        (folder / f"{t + 1}_keypoints.json").write_text(json.dumps({"version": 1.3, "people": people}))


def render_clip(clip: dict, seed, root: Path, size: int, frames_16f: bool) -> dict:
    """Frames, video and keypoints of one clip. Runs in a worker process."""
    rng = np.random.default_rng(seed)
    n, (face_a, face_b, voice) = clip["n_frames"], TRAJECTORIES[clip["content"]]
    onset = int(round(rng.uniform(0.25, 0.75) * n))
    after = (np.arange(n) >= onset).astype(np.int64)
    faces = expression_track(rng, np.where(after, face_b, face_a), after)
    renderer = FaceRenderer(rng, n)
    images = [renderer.render(t, faces[t]) for t in range(n)]
    small = [Image.fromarray(im).resize((size, size), Image.BILINEAR) if size != CROP_SIZE
             else Image.fromarray(im) for im in images]
    folder = root / "Clip" / "clip_224x224" / clip["clip"]
    folder.mkdir(parents=True, exist_ok=True)
    for t, im in enumerate(small):
        im.save(folder / f"{t + 1}.jpg", quality=90)
    if frames_16f:
        folder = root / "Clip" / "clip_224x224_16f" / clip["clip"]
        folder.mkdir(parents=True, exist_ok=True)
        for slot, t in enumerate(sample_indices(n, 16, train=False), start=1):
            small[t].save(folder / f"{slot}.jpg", quality=90)
    if clip["audio"] != "none":
        sound = voice_track(rng, np.full(n, voice), np.zeros(n, np.int64), FPS, SAMPLE_RATE)
        path = root / "Clip" / "original" / f"{clip['clip']}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, [np.ascontiguousarray(im[::2, ::2]) for im in images], FPS,
                    sound if clip["audio"] == "sound" else None, SAMPLE_RATE)
    if clip["openpose"]:
        write_openpose(rng, renderer, faces, root / "openpose" / clip["clip"], size)
    return dict(clip, onset=onset)


def write_splits(root: Path, clips: list[dict], label_base: int, spelling: str, rng) -> None:
    labelled = [c for c in clips if c["label"] >= 0]
    for fold in range(1, N_FOLDS + 1):
        for split in ("train", "test"):
            rows = [c for c in labelled if (c["fold"] == fold) == (split == "test")]
            ids = [c["clip"] if split == "test" else str(int(c["clip"])) for c in rows]
            lines = [f"{i},{c['label'] + label_base}" for i, c in zip(ids, rows)]
            write_text(root / "EmoLabel_DataSplit" / f"{split}({spelling})" / f"set_{fold}.csv",
                       HEADER + "\n" + "\n".join(rng.permutation(lines)) + "\n")


def make_dfew(out: Path, seed: int = 0, n_clips: int = 60, frames_16f: bool = False,
              label_base: int = 1, spelling: str = "single-labeled", size: int = 112,
              openpose: float = 0.5, jobs: int = 1) -> dict:
    """Write the synthetic tree under out; returns (and writes) its manifest.

    openpose: share of clips that get keypoint files. jobs: clips rendered in parallel.
    """
    if label_base not in (0, 1) or spelling not in ("single-labeled", "single_labeled"):
        raise ValueError("label_base must be 0 or 1, spelling 'single-labeled' or 'single_labeled'")
    out = Path(out)
    seeds = np.random.SeedSequence(seed).spawn(3)
    clips = plan(np.random.default_rng(seeds[0]), n_clips, openpose)
    clips = Parallel(n_jobs=jobs)(delayed(render_clip)(c, s, out, size, frames_16f)
                                  for c, s in zip(clips, seeds[1].spawn(len(clips))))
    write_splits(out, clips, label_base, spelling, np.random.default_rng(seeds[2]))
    manifest = dict(seed=seed, n_clips=n_clips, label_base=label_base, spelling=spelling, size=size,
                    frames_16f=frames_16f, classes=list(DFEW_CLASSES), clips=clips)
    write_json(out / "dfew_manifest.json", manifest)
    return manifest
