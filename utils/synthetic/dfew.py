"""A synthetic DFEW tree (DESIGN.md section 6) whose senses complement each other, with known bounds.

The signal. Each clip is one person (identity, pose, lighting drift and pixel noise from
utils.synthetic.affwild2.FaceRenderer). The face holds expression A, then, at an onset drawn uniformly
in 25-75 % of the clip, changes to expression B within a few frames (faces from FACE_PARAMS);
at the same onset the body leans in or draws back (approach and withdrawal, the motivational
axis of emotion), and the voice speaks throughout:

    class     face                  body at the onset   voice (VOICE_PARAMS)
    Happy     sadness  -> happiness  leans in            happiness
    Sad       happiness -> sadness   draws back          happiness
    Angry     neutral  -> anger      leans in            anger
    Disgust   anger    -> neutral    draws back          anger
    Surprise  neutral  -> surprise   leans in            sadness
    Fear      surprise -> neutral    draws back          sadness
    Neutral   neutral  -> neutral    still               neutral

What each sense can tell, as a partition of the 7 classes:
  - the face over time: the class (twins show the same two faces in opposite order);
  - the face averaged over frames: the twin pair only ({Happy, Sad}, {Angry, Disgust},
    {Surprise, Fear}, {Neutral}): the same faces for the same share of frames in distribution;
  - the voice: the twin pair, never the order;
  - the body pose (OpenPose BODY_25 points: the shoulders' span against the head's): approach,
    withdrawal or still, never the pair; the frames do not draw the body;
  - the face keypoints (OpenPose's 70 points): what the face tells, where the face is seen.
In a share `hidden` of the clips (0.4 in the demo) the person turns away from the camera or
covers the face: their pixels and face keypoints say nothing of the class, and only the voice
(the pair) and the body (the direction) together tell it. Independently of the class, a clip has OpenPose
output with probability `openpose` and sound with about 0.75.

Best UAR by construction. The conditions are drawn independently of the class, so the best
UAR a set of streams can reach is the expected number of groups its evidence splits the 7
classes into, divided by 7 (the classes of a group with the same evidence share a recall of 1).
With h hidden, k keypoints and s sound shares (the demo's h = 0.4, k = 0.9, s = 0.75):

    streams                      best UAR                                                  demo
    frame average of the image   (1-h) 4/7 + h/7                                          0.400
    image (over time)            (1-h) + h/7                                              0.657
    image + keypoints            (1-h) + h (3k + 1-k)/7                                   0.760
    image + keypoints + audio    (1-h) + h (ks + 3k(1-s)/7 + 4(1-k)s/7 + (1-k)(1-s)/7)    0.927
    keypoints alone              k(1-h) + kh 3/7 + (1-k)/7                                0.709
    audio alone                  4s/7 + (1-s)/7                                           0.464

best_uar() computes them on the clips written. Short clips and frames where OpenPose finds
nobody cost the learnt models a little more; they are bounds, not predictions, and only the
synthetic data has them: on the real DFEW nobody knows what each stream can tell.

Quirks of the real data it reproduces:
  - Clip/clip_224x224/<00001>/<00001>_<00001>.jpg..., named as the official release names
    them (5-digit frame numbers, so a lexicographic sort is also the frame order), N of 20..48
    frames and a few clips of 6..15; images `size` pixels (real: 224); frames_16f also
    writes Clip/clip_224x224_16f/<00001>/1.jpg..16.jpg (unpadded: numeric order matters);
  - Clip/original/<00001>.mp4 with AAC sound for about 3/4 of the clips, one video without an
    audio stream, no video for the rest;
  - EmoLabel_DataSplit/{train,test}(<spelling>)/set_1..5.csv, header video_name,label, rows
    shuffled, clip ids unpadded in train files and 5-digit in test files, labels 1..7
    (label_base=1) or 0..6; each labelled clip is in exactly one test fold (stratified);
  - about 1 in 10 clips in no split file (the real Clip folder holds 16,372 clips, the
    single-labelled split 11,697), and the real class mix with Disgust rare (about 1 %, but
    at least one clip per fold when there are enough clips);
  - openpose/<00001>/<00001>_<00001>_keypoints.json (OpenPose run on each clip's image folder
    names its output after the image) for a share of the clips: BODY_25 + 70 face points, some
    frames with nobody, some with a second, smaller face in the background; a hidden face has
    no face points, and its nose and eyes are not found. Not part of DFEW: a user runs OpenPose.
dfew_manifest.json lists what was written (label 0-based, fold, n_frames, audio, openpose,
face: visible | turned away | covered, onset).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from PIL import Image

from utils.classes import DFEW_CLASSES, NUM_DFEW_CLASSES
from utils.readers.dfew import HEADER, N_FOLDS, sample_indices
from utils.runs import write_json, write_text
from utils.synthetic.affwild2 import CROP_SIZE, FaceRenderer, expression_track, voice_track, write_video

# Rows of utils.synthetic.affwild2.FACE_PARAMS / VOICE_PARAMS (Aff-Wild2 ids).
NEUTRAL, ANGER, HAPPINESS, SADNESS, SURPRISE = 0, 1, 4, 5, 6
# DFEW class (0-based) -> (face A, face B, voice, body: +1 leans in at the onset, -1 draws back).
# Twins share faces and voice, not the order; the body tells the direction, not the pair.
TRAJECTORIES = {0: (SADNESS, HAPPINESS, HAPPINESS, 1), 1: (HAPPINESS, SADNESS, HAPPINESS, -1),
                2: (NEUTRAL, NEUTRAL, NEUTRAL, 0), 3: (NEUTRAL, ANGER, ANGER, 1),
                4: (NEUTRAL, SURPRISE, SADNESS, 1), 5: (ANGER, NEUTRAL, ANGER, -1),
                6: (SURPRISE, NEUTRAL, SADNESS, -1)}
# Roughly the real single-labelled mix: Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear.
CLASS_MIX = np.array([0.21, 0.17, 0.23, 0.19, 0.11, 0.012, 0.078])
FPS, SAMPLE_RATE = 25.0, 44100
HIDDEN_WAYS = ("turned away", "covered")
SOUND_SHARE = 0.75


def _classes_alike(key) -> dict[int, frozenset]:
    """Class -> the classes that share its value of TRAJECTORIES' `key` part."""
    return {c: frozenset(o for o in TRAJECTORIES if key(TRAJECTORIES[o]) == key(TRAJECTORIES[c]))
            for c in TRAJECTORIES}


PAIR = _classes_alike(lambda t: t[2])        # what the voice and the averaged face tell
DIRECTION = _classes_alike(lambda t: t[3])   # what the body tells
STREAMS = ("frame_average", "image", "keypoints", "audio")


def evidence(clip: dict, streams) -> frozenset:
    """The classes that `streams` (a subset of STREAMS) cannot tell from clip's class, clip
    being one manifest entry; frame_average is the order-blind use of the image stream."""
    c, out, seen = clip["label"], frozenset(TRAJECTORIES), clip["face"] == "visible"
    if "image" in streams and seen:
        out &= {c}
    if "frame_average" in streams and seen:
        out &= PAIR[c]
    if "keypoints" in streams and clip["openpose"]:
        out &= {c} if seen else DIRECTION[c]
    if "audio" in streams and clip["audio"] == "sound":
        out &= PAIR[c]
    return out


def best_uar(clips: list[dict], streams) -> float:
    """The best UAR (0..1) `streams` can reach on the labelled `clips` (manifest entries): per
    class, the mean over its clips of 1 / (classes the evidence leaves), averaged over classes."""
    recall: dict[int, list[float]] = {}
    for clip in clips:
        if clip["label"] >= 0:
            recall.setdefault(clip["label"], []).append(1.0 / len(evidence(clip, streams)))
    return float(np.mean([np.mean(r) for r in recall.values()])) if recall else 0.0


def plan(rng, n_clips: int, openpose: float, hidden: float) -> list[dict]:
    """Every clip's label, fold, length, sound, keypoints and face, decided before rendering;
    the conditions are drawn independently of the label (best_uar relies on it)."""
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
    sound = np.where(rng.random(n_clips) < SOUND_SHARE, "sound", "none").astype(object)
    sound[rng.integers(n_clips)] = "silent"
    content = np.where(labels >= 0, labels, rng.integers(NUM_DFEW_CLASSES, size=n_clips))
    keypoints = rng.random(n_clips) < openpose
    face = np.where(rng.random(n_clips) < hidden, rng.choice(HIDDEN_WAYS, n_clips), "visible")
    return [dict(clip=f"{i + 1:05d}", label=int(labels[i]), fold=int(folds[i]), content=int(content[i]),
                 n_frames=int(lengths[i]), audio=str(sound[i]), openpose=bool(keypoints[i]), face=str(face[i]))
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


class HiddenFaceRenderer(FaceRenderer):
    """The same person, the face out of sight: the back of the head (turned away), or the face
    behind a hand (covered). Nothing drawn depends on the expression."""

    def __init__(self, rng, n_frames: int, how: str):
        super().__init__(rng, n_frames)
        self.how = how
        self.hair = tuple(int(v) for v in rng.uniform([20, 15, 10], [110, 80, 60]))
        self.hand = tuple(int(min(255, v * 1.08)) for v in self.skin)

    def _draw_face(self, draw, t, params):
        r, angle = 30.0 * self.scale[t], self.rotation[t]
        c, s = np.cos(angle), np.sin(angle)
        centre = np.array([56.0, 60.0]) + self.shift[t]

        def place(points):   # as FaceRenderer._draw_face places the face
            return [tuple(v) for v in (np.asarray(points) * r @ np.array([[c, s], [-s, c]]) + centre)]

        theta = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        head = np.stack([self.face_w * np.cos(theta), 1.2 * np.sin(theta)], 1)
        if self.how == "turned away":
            draw.polygon(place(head * 1.04), fill=self.hair)
            return
        draw.polygon(place(head), fill=self.skin)
        draw.polygon(place(np.stack([0.95 * self.face_w * np.cos(theta), -0.05 + np.sin(theta)], 1)), fill=self.hand)


def posture_track(rng, n: int, onset: int, direction: int) -> np.ndarray:
    """Per-frame lean in -1..1 (+1 leaning in): -direction before the onset, +direction after,
    at a per-clip intensity, eased over a few frames like the face, with a little sway."""
    target = np.where(np.arange(n) >= onset, direction, -direction) * rng.uniform(0.6, 1.1)
    lean, state = np.empty(n), float(target[0]) if n else 0.0
    for i in range(n):
        state += 0.35 * (target[i] - state)
        lean[i] = state
    return lean + rng.normal(0.0, 0.08, n)


def person(rng, face: np.ndarray, size: int, lean: float = 0.0, face_seen: bool = True) -> dict:
    """One OpenPose person: BODY_25 nose, eyes and ears on the face, neck and shoulders on the
    frame's bottom edge, the shoulders wider apart as the person leans in towards the camera
    (lean > 0) and narrower as they draw back. The frames do not draw the body, so that the
    image stream knows nothing of it by construction. A face out of sight gives no face points,
    nose or eyes."""
    lo, hi = face.min(0), face.max(0)
    cx, w = (lo[0] + hi[0]) / 2, hi[0] - lo[0]
    body = np.zeros((25, 2))
    half, bottom = (0.6 + 0.2 * lean) * w, 0.97 * size
    body[[0, 1, 2, 5, 15, 16, 17, 18]] = [face[30], [cx, bottom], [cx - half, bottom], [cx + half, bottom],
                                          face[68], face[69], [lo[0], face[36, 1]], [hi[0], face[36, 1]]]
    detected = np.zeros(25, bool)
    detected[[0, 1, 2, 5, 15, 16, 17, 18] if face_seen else [1, 2, 5, 17, 18]] = True
    points = {}
    for key, xy, seen in (("pose_keypoints_2d", body, detected),
                          ("face_keypoints_2d", face, np.full(70, face_seen))):
        xy = xy + rng.normal(0, 0.4 * size / CROP_SIZE, xy.shape)
        seen = seen & (xy >= 0).all(1) & (xy < size).all(1)     # OpenPose finds nothing off the image
        conf = np.where(seen, rng.uniform(0.55, 0.95, len(xy)), 0.0)
        points[key] = np.round(np.c_[np.where(seen[:, None], xy, 0.0), conf], 3).ravel().tolist()
    return {"person_id": [-1], **points, "hand_left_keypoints_2d": [], "hand_right_keypoints_2d": []}


def write_openpose(rng, renderer: FaceRenderer, faces: np.ndarray, lean: np.ndarray, folder: Path, size: int,
                   clip: str, face_seen: bool) -> None:
    """What OpenPose writes for a clip's image folder: <clip>_<n>_keypoints.json for <clip>_<n>.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(len(faces)):
        face = face_landmarks(renderer, t, faces[t], size / CROP_SIZE)
        people = [] if rng.random() < 0.05 else [person(rng, face, size, lean[t], face_seen)]
        if people and face_seen and rng.random() < 0.1:   # someone smaller in the background
            people.insert(0, person(rng, face * 0.3 + 0.05 * size, size))
        (folder / f"{clip}_{t + 1:05d}_keypoints.json").write_text(json.dumps({"version": 1.3, "people": people}))


def render_clip(clip: dict, seed, root: Path, size: int, frames_16f: bool) -> dict:
    """Frames, video and keypoints of one clip. Runs in a worker process."""
    rng = np.random.default_rng(seed)
    n, (face_a, face_b, voice, direction) = clip["n_frames"], TRAJECTORIES[clip["content"]]
    onset = int(round(rng.uniform(0.25, 0.75) * n))
    after = (np.arange(n) >= onset).astype(np.int64)
    faces = expression_track(rng, np.where(after, face_b, face_a), after)
    lean = posture_track(rng, n, onset, direction)
    seen = clip["face"] == "visible"
    renderer = FaceRenderer(rng, n) if seen else HiddenFaceRenderer(rng, n, clip["face"])
    images = [renderer.render(t, faces[t]) for t in range(n)]
    small = [Image.fromarray(im).resize((size, size), Image.BILINEAR) if size != CROP_SIZE
             else Image.fromarray(im) for im in images]
    folder = root / "Clip" / "clip_224x224" / clip["clip"]
    folder.mkdir(parents=True, exist_ok=True)
    for t, im in enumerate(small):
        im.save(folder / f"{clip['clip']}_{t + 1:05d}.jpg", quality=90)
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
        write_openpose(rng, renderer, faces, lean, root / "openpose" / clip["clip"], size, clip["clip"], seen)
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
              openpose: float = 0.9, hidden: float = 0.4, jobs: int = 1) -> dict:
    """Write the synthetic tree under out; returns (and writes) its manifest.

    openpose: share of clips that get keypoint files. hidden: share of clips whose face is out
    of sight (see the module docstring). jobs: clips rendered in parallel.
    """
    if label_base not in (0, 1) or spelling not in ("single-labeled", "single_labeled"):
        raise ValueError("label_base must be 0 or 1, spelling 'single-labeled' or 'single_labeled'")
    out = Path(out)
    seeds = np.random.SeedSequence(seed).spawn(3)
    clips = plan(np.random.default_rng(seeds[0]), n_clips, openpose, hidden)
    clips = Parallel(n_jobs=jobs)(delayed(render_clip)(c, s, out, size, frames_16f)
                                  for c, s in zip(clips, seeds[1].spawn(len(clips))))
    write_splits(out, clips, label_base, spelling, np.random.default_rng(seeds[2]))
    manifest = dict(seed=seed, n_clips=n_clips, label_base=label_base, spelling=spelling, size=size,
                    frames_16f=frames_16f, openpose=openpose, hidden=hidden, classes=list(DFEW_CLASSES), clips=clips)
    write_json(out / "dfew_manifest.json", manifest)
    return manifest
