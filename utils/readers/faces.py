"""Faces from raw video: detection, tracking and 5-point alignment into the Aff-Wild2 crop layout.

Detector: MTCNN (Zhang et al. 2016, IEEE SPL 23(10)) as packaged by facenet-pytorch (MIT licence;
its P/R/O-net weights ship inside the wheel, nothing downloads). It returns a box, a score and
5 landmarks (eye centres, nose tip, mouth corners, left to right in the image) per face. Frames
are shrunk so their long side is at most `detect_size` before detection (a 720p frame takes ~6x
longer at full size and finds the same faces when they fill a tenth of the frame); boxes and
landmarks are scaled back, and the crop is cut from the full-resolution frame.

Alignment: the similarity transform (rotation, uniform scale, shift; least squares, Umeyama 1991,
IEEE TPAMI 13(4)) that maps the 5 landmarks onto the ArcFace template of insightface for 112x112
crops (the standard template of face-recognition crops), scaled for other sizes.

Tracking: detections are linked frame to frame by box overlap (IoU >= min_iou with the track's
last box, greedy in order of overlap), a track surviving up to `max_gap` frames without a face.
The main person is the longest track (most frames), not the largest face of each frame, so a
passer-by who is briefly larger does not take over; with two_people, the two longest tracks,
named _left and _right by the mean horizontal position of their boxes.

Frame numbers follow utils.readers.media: frame t (1-based) is the t-th frame of the video in
presentation order, counted over its packets as prepare_data.py counts them; a decoded frame is
numbered by its timestamp, so an undecodable packet does not shift the frames after it. Frames
without a face of the chosen track get no crop (Aff-Wild2's cropped_aligned leaves them out too);
the per-video table keeps every detection.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd

from utils.console import track
from utils.files import DataError
from utils.readers.media import frame_numbers, packet_time
from utils.runs import read_json, save_parquet, write_json

# insightface's arcface_torch template (src: insightface/python-package/insightface/utils/face_align.py),
# for 112x112 crops: left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right).
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
LANDMARK_COLUMNS = [f"{axis}{i}" for i in range(5) for axis in ("lx", "ly")]
FORMAT = 2   # faces/<videoid>.json of another format is redone (but see numbered_alike)


def template(size: int = 112) -> np.ndarray:
    """The 5-point template (5 x 2, float64 pixels) for size x size crops."""
    return TEMPLATE_112 * (size / 112.0)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity transform (no reflection) mapping points src (N x 2) onto dst (N x 2)
    in least squares (Umeyama 1991, eq. 40-42)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sigma * sign).sum() / s.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align(frame: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The size x size crop (uint8, like frame) whose 5 landmarks sit on template(size); frame is
    H x W x 3, landmarks 5 x 2 pixels (x, y). Outside the frame is black."""
    m = similarity(landmarks, template(size))
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of boxes a (N x 4) and b (M x 4), x1 y1 x2 y2 -> N x M."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


class Tracker:
    """Online linking of detections into tracks by box overlap (see the module docstring)."""

    def __init__(self, min_iou: float = 0.3, max_gap: int = 60):
        self.min_iou, self.max_gap = min_iou, max_gap
        self.last: list[tuple[int, np.ndarray]] = []   # per track: (last frame, last box)

    def update(self, frame: int, boxes: np.ndarray) -> np.ndarray:
        """Track ids (K,) of the boxes (K x 4) found in `frame` (frames in increasing order)."""
        ids = np.full(len(boxes), -1)
        live = [t for t, (f, _) in enumerate(self.last) if frame - f <= self.max_gap]
        if live and len(boxes):
            overlap = iou(boxes, np.stack([self.last[t][1] for t in live]))
            for flat in np.argsort(-overlap, axis=None):
                i, j = divmod(int(flat), len(live))
                if overlap[i, j] < self.min_iou:
                    break
                if ids[i] < 0 and live[j] not in ids:
                    ids[i] = live[j]
        for i in range(len(boxes)):
            if ids[i] < 0:
                ids[i] = len(self.last)
                self.last.append((frame, boxes[i]))
            else:
                self.last[ids[i]] = (frame, boxes[i])
        return ids


_DETECTORS: dict = {}


def detector(device: str = "cpu", min_face: int = 20):
    """facenet-pytorch's MTCNN on `device`, built once per process."""
    key = (device, min_face)
    if key not in _DETECTORS:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:
            raise DataError("facenet-pytorch is not installed: pip install --no-deps -r requirements-nodeps.txt "
                               f"(its own pins are years old; see the README) ({err})") from None
        _DETECTORS[key] = MTCNN(keep_all=True, device=device, min_face_size=min_face, post_process=False)
    return _DETECTORS[key]


def detect(frames: list[np.ndarray], device: str = "cpu", detect_size: int = 640, min_score: float = 0.9,
           min_face: int = 20) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Faces of a batch of equally sized RGB frames (H x W x 3 uint8): per frame (boxes K x 4,
    scores K, landmarks K x 5 x 2), float32 pixels of the full frame, scores >= min_score."""
    h, w = frames[0].shape[:2]
    scale = min(1.0, detect_size / max(h, w)) if detect_size else 1.0
    small = frames if scale == 1.0 else [cv2.resize(f, (round(w * scale), round(h * scale)),
                                                    interpolation=cv2.INTER_AREA) for f in frames]
    boxes, scores, points = detector(device, min_face).detect(np.stack(small), landmarks=True)
    out = []
    for b, s, p in zip(boxes, scores, points):
        if b is None:
            out.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)))
            continue
        keep = np.asarray(s, np.float64) >= min_score
        out.append((np.asarray(b, np.float32)[keep] / scale, np.asarray(s, np.float32)[keep],
                    np.asarray(p, np.float32)[keep] / scale))
    return out


@dataclass
class CropOptions:
    size: int = 112
    device: str = "cpu"
    detect_size: int = 640
    min_score: float = 0.9
    min_face: int = 20
    min_iou: float = 0.3
    max_gap_seconds: float = 2.0
    batch: int = 16
    every: int = 1            # detect on every k-th frame only (a quick look; the others get no crop)
    two_people: bool = False
    quality: int = 95         # JPEG quality of the crops
    force: bool = False
    progress: bool = False    # a progress bar over the video's frames (one video at a time only)


def _picture(container):
    """The video stream that is not a cover image; av.FFmpegError without one."""
    pictures = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not pictures:
        raise av.FFmpegError(0, "no video stream")
    return pictures[0]


class UnnumberedFrames(ValueError):
    """The decoded frames cannot be put on the video's frame numbers (see frames_of)."""


def frames_of(path: Path, every: int = 1, counted: dict | None = None):
    """The container's fps and an iterator of (frame number 1-based, RGB H x W x 3 uint8) of the
    decoded frames whose number is 1 modulo `every`, in order.

    Frame t is the t-th frame of the video in presentation order, counted over the video packets
    as utils.readers.media.read_video (hence prepare_data.py and the label files) counts them
    (media.frame_numbers): a decoded frame is numbered by its timestamp, so a corrupt packet costs
    its own frame and the frames after it keep their numbers. Without usable timestamps frames are
    numbered in decode order, which is only the same numbering when every packet gave one frame.
    `counted` gets "frames" (the video's frames: its packets), "corrupt" (corrupt packets skipped)
    and "examined" (frames yielded).
    Raises av.FFmpegError or OSError on an unreadable file; UnnumberedFrames (a ValueError) at the
    end when frames without timestamps were lost, or at once for a frame whose timestamp is no
    packet's: the crops could not be put on the right frames."""
    counted = {} if counted is None else counted
    counted.update(frames=0, corrupt=0, examined=0)
    with av.open(str(path)) as container:
        # A first pass over the packets only (nothing decoded) gives every frame its number.
        times = [packet_time(p) for p in container.demux(_picture(container)) if p.size > 0]
    numbers = frame_numbers(times)
    counted["frames"] = len(times)
    container = av.open(str(path))
    stream = _picture(container)
    stream.thread_type = "AUTO"
    fps = float(stream.average_rate or stream.guessed_rate or 30.0)

    def decoded():
        # Packet by packet, so a corrupt packet costs its frames, not the rest of the video.
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.error.InvalidDataError:
                counted["corrupt"] += 1

    def gen():
        n_decoded, untimed = 0, False
        with container:
            for frame in decoded():
                n_decoded += 1
                if numbers is None or frame.pts is None:
                    t, untimed = n_decoded, True
                else:
                    t = numbers.get(int(frame.pts))
                    if t is None:
                        raise UnnumberedFrames(f"a decoded frame's timestamp ({frame.pts}) is no packet's; "
                                               "its frame number is unknown")
                if (t - 1) % every == 0:
                    counted["examined"] += 1
                    yield t, frame.to_ndarray(format="rgb24")
        if untimed and (counted["corrupt"] or n_decoded != len(times)):
            raise UnnumberedFrames(f"{n_decoded} frames decoded of {len(times)} packets ({counted['corrupt']} corrupt) "
                                   "and the frames carry no timestamps: crops cannot be put on their frame numbers")
    return fps, gen()


def _batches(frames, size: int):
    batch = []
    for item in frames:
        if batch and item[1].shape != batch[0][1].shape:   # a size change mid-stream: flush
            yield batch
            batch = []
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def crop_video(videoid: str, path: Path, root: Path, opt: CropOptions) -> dict:
    """Detect, track and align the faces of one video into root/cropped_aligned/<txtid>/<00001>.jpg
    and root/faces/<videoid>.parquet (frame, x1 y1 x2 y2, score, lx0 ly0 .. lx4 ly4, track, txtid:
    the crop folder a detection was written to, '' if none). Returns the summary (also
    root/faces/<videoid>.json, written last: a video with it is done and skipped unless force).
    Never raises for a bad video: an unreadable file comes back with `error` set."""
    info_path = root / "faces" / f"{videoid}.json"
    if info_path.is_file() and not opt.force:
        info = read_json(info_path)
        if numbered_alike(info, path) and info.get("path") == str(path) and info.get("every") == opt.every \
                and info.get("two_people") == opt.two_people and info.get("size") == opt.size:
            return info | {"skipped": True}
    info = dict(format=FORMAT, videoid=videoid, path=str(path), every=opt.every, two_people=opt.two_people,
                size=opt.size, frames=0, frames_with_face=0, tracks=0, crops=0, txtids=[], error="")
    staging = root / "cropped_aligned" / f".staging-{videoid}"   # hidden: never read as data
    shutil.rmtree(staging, ignore_errors=True)
    rows, counted, shape = [], {}, None
    try:
        fps, frames = frames_of(path, opt.every, counted)
        tracker = Tracker(opt.min_iou, max(1, round(opt.max_gap_seconds * fps)))
        batches = _batches(frames, opt.batch)
        if opt.progress:
            total = -(-counted["frames"] // (opt.batch * opt.every)) or None
            batches = track(batches, total=total, description=videoid, unit="frames", scale=opt.batch * opt.every)
        for batch in batches:
            found = detect([f for _, f in batch], opt.device, opt.detect_size, opt.min_score, opt.min_face)
            for (t, image), (boxes, scores, points) in zip(batch, found):
                shape = image.shape
                for box, score, lm, track_id in zip(boxes, scores, points, tracker.update(t, boxes)):
                    folder = staging / str(track_id)
                    folder.mkdir(parents=True, exist_ok=True)
                    crop = align(image, lm, opt.size)
                    cv2.imwrite(str(folder / f"{t:05d}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, opt.quality])
                    rows.append((t, *box, score, *lm.reshape(-1), track_id))
    except (av.FFmpegError, OSError, ValueError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        return info | {"error": f"{type(err).__name__}: {err}"}
    table = pd.DataFrame(rows, columns=["frame", "x1", "y1", "x2", "y2", "score", *LANDMARK_COLUMNS, "track"])
    table = table.astype({c: np.float32 for c in table.columns if c not in ("frame", "track")})
    table["frame"] = table["frame"].astype(np.int32)
    table["track"] = table["track"].astype(np.int32)
    chosen = choose_tracks(table, opt.two_people)
    table["txtid"] = table["track"].map({t: videoid + suffix for t, suffix in chosen.items()}).fillna("")
    for folder in (root / "cropped_aligned").glob(f"{glob_escape(videoid)}*"):
        if folder.name in (videoid, f"{videoid}_left", f"{videoid}_right"):
            shutil.rmtree(folder)   # a previous, different run of this video
    for track_id, suffix in chosen.items():
        os.replace(staging / str(track_id), root / "cropped_aligned" / f"{videoid}{suffix}")
    shutil.rmtree(staging, ignore_errors=True)
    save_parquet(root / "faces" / f"{videoid}.parquet", table)
    info.update(frames=counted["frames"], corrupt_packets=counted["corrupt"], frames_examined=counted["examined"],
                frames_with_face=int(table["frame"].nunique()), tracks=int(table["track"].nunique()),
                crops=int((table["txtid"] != "").sum()), txtids=sorted(set(table["txtid"]) - {""}),
                width=int(shape[1]) if shape else 0, height=int(shape[0]) if shape else 0)
    write_json(info_path, info)
    return info


def numbered_alike(info: dict, path: Path) -> bool:
    """Whether a faces/<videoid>.json was written with today's frame numbers. Format 1 numbered
    frames in decode order, which is the same numbering when no frame was lost (no corrupt packet
    and one decoded frame per packet): such a video is not cropped again."""
    if info.get("format") == FORMAT:
        return True
    if info.get("format") != 1 or info.get("corrupt_packets"):
        return False
    try:
        with av.open(str(path)) as container:
            return info.get("frames") == sum(1 for p in container.demux(_picture(container)) if p.size > 0)
    except (av.FFmpegError, OSError):
        return False


def choose_tracks(table: pd.DataFrame, two_people: bool) -> dict[int, str]:
    """Track id -> crop folder suffix: the longest track -> '' or, with two_people, the two
    longest -> '_left' / '_right' by the mean x of their box centres (ties: higher mean score)."""
    if table.empty:
        return {}
    stats = table.groupby("track").agg(n=("frame", "size"), score=("score", "mean"),
                                       x=("x1", "mean"), x2=("x2", "mean"))
    order = stats.sort_values(["n", "score"], ascending=False).index.tolist()
    if not two_people:
        return {order[0]: ""}
    pair = order[:2]
    centre = {t: (stats.x[t] + stats.x2[t]) / 2 for t in pair}
    pair.sort(key=centre.get)
    return dict(zip(pair, ["_left", "_right"][: len(pair)]))


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
