"""crop_faces.py and utils/readers/faces.py: alignment maths, tracking, and the detector on real people.

The real-media tests crop every 8th frame of each clip once (a session fixture), so the whole
file takes seconds; the MTCNN weights come with facenet-pytorch's wheel (requirements-nodeps.lock).
"""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd

import crop_faces
from conftest import CROP_EVERY as EVERY, write_labels
from utils.readers.faces import TEMPLATE_112, Tracker, align, choose_tracks, detect, similarity, template


def test_similarity_recovers_a_known_transform():
    angle, scale, shift = np.deg2rad(17), 2.5, np.array([40.0, -12.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = TEMPLATE_112 * 1.3 + 7
    m = similarity(src, src @ rot.T + shift)
    assert np.allclose(m[:, :2], rot, atol=1e-9) and np.allclose(m[:, 2], shift, atol=1e-9)


def test_align_puts_the_landmarks_on_the_template():
    # A picture with a white dot at each landmark of a tilted, shifted, larger face.
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]) * 2.0
    points = TEMPLATE_112 @ rot.T + [150, 60]
    frame = np.zeros((400, 400, 3), np.uint8)
    for x, y in points:
        cv2.circle(frame, (round(x), round(y)), 3, (255, 255, 255), -1)
    for size in (112, 224):
        crop = align(frame, points, size)[..., 0].astype(float)
        for x, y in template(size):   # each dot's brightness centre is where the template puts it
            ys, xs = np.mgrid[int(y) - 6:int(y) + 7, int(x) - 6:int(x) + 7]
            w = crop[ys, xs]
            assert w.sum() > 0 and abs((w * xs).sum() / w.sum() - x) < 1 and abs((w * ys).sum() / w.sum() - y) < 1


def test_tracking_follows_one_person_not_the_largest_face():
    tracker, ids = Tracker(min_iou=0.3, max_gap=5), []
    person = np.array([100, 100, 200, 220], float)
    passer_by = np.array([300, 50, 520, 330], float)   # larger, but only in frames 10-14
    for t in range(1, 41):
        boxes = [person + [t, 0, t, 0]] + ([passer_by + [5 * t, 0, 5 * t, 0]] if 10 <= t < 15 else [])
        for track, box in zip(tracker.update(t, np.array(boxes)), boxes):
            ids.append((t, track, *box, 0.99))
    table = pd.DataFrame(ids, columns=["frame", "track", "x1", "y1", "x2", "y2", "score"])
    main = table[table.track == next(iter(choose_tracks(table, False)))]
    assert main.frame.tolist() == list(range(1, 41)) and (main.x1 < 150).all()
    two = choose_tracks(table, True)
    assert sorted(two.values()) == ["_left", "_right"]
    left = [t for t, s in two.items() if s == "_left"][0]
    assert table[table.track == left].x1.max() < 150


def test_a_face_that_leaves_for_longer_than_max_gap_starts_a_new_track():
    tracker = Tracker(min_iou=0.3, max_gap=3)
    box = np.array([[10, 10, 60, 60]], float)
    first = tracker.update(1, box)[0]
    assert tracker.update(3, box)[0] == first and tracker.update(10, box)[0] != first


def test_a_face_in_nearly_every_frame_of_every_real_clip(cropped_real, real_clips):
    root, summary = cropped_real
    assert len(summary) == 12 and (summary.error == "").all()
    assert (summary.face_share >= 0.95).all(), summary[["videoid", "face_share"]]
    for row in summary.itertuples():
        crops = sorted((root / "cropped_aligned" / row.videoid).glob("*.jpg"))
        assert len(crops) == row.crops >= 0.95 * row.frames_examined
        assert crops[0].name == "00001.jpg" and int(crops[-1].stem) <= row.frames
        assert cv2.imread(str(crops[0])).shape == (112, 112, 3)
        faces = pd.read_parquet(root / "faces" / f"{row.videoid}.parquet")
        assert ((faces.frame - 1) % EVERY == 0).all() and set(faces.txtid) <= {row.videoid, ""}


def test_landmarks_found_again_on_the_crops_sit_on_the_template(cropped_real):
    root, _ = cropped_real
    crops = sorted((root / "cropped_aligned").glob("*/*.jpg"))[::4]
    errors = []
    for path in crops:
        # A margin: MTCNN's smallest scale misses a face that fills the whole picture.
        image = cv2.copyMakeBorder(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), 28, 28, 28, 28,
                                   cv2.BORDER_CONSTANT)
        _, _, points = detect([image], detect_size=0)[0]
        assert len(points), f"{path}: no face found on the crop"
        errors.append(np.linalg.norm(points[0] - 28 - TEMPLATE_112, axis=1).mean())
    # MTCNN's own landmark noise is a few pixels at this size.
    assert np.median(errors) < 2.5 and np.max(errors) < 5, np.round(errors, 1)


def test_no_face_clip_gets_no_crop_and_a_warning(pyfeat_videos, tmp_path, capsys):
    summary = crop_faces.main(["--videos", str(pyfeat_videos / "no_face.mp4"), "--out", str(tmp_path),
                               "--every", str(EVERY)])
    assert summary.frames_with_face.tolist() == [0] and summary.crops.tolist() == [0]
    assert not (tmp_path / "cropped_aligned" / "no_face").exists()
    assert "no face in" in capsys.readouterr().err


def spliced(no_face: Path, face: Path, out: Path, lead: int, tail: int, fps: int = 30) -> Path:
    """`lead` frames of no_face, then the first `tail` frames of face, as one H.264 mp4 (640x360)."""
    with av.open(str(out), "w") as dst:
        stream = dst.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for path, limit in ((no_face, lead), (face, tail)):
            with av.open(str(path)) as src:
                for i, frame in enumerate(src.decode(video=0)):
                    if i == limit:
                        break
                    image = cv2.resize(frame.to_ndarray(format="rgb24"), (640, 360), interpolation=cv2.INTER_AREA)
                    dst.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        dst.mux(stream.encode())
    return out


def test_a_face_that_appears_mid_video_starts_at_its_frame(pyfeat_videos, tmp_path):
    video = spliced(pyfeat_videos / "no_face.mp4", pyfeat_videos / "single_face.mp4", tmp_path / "appears.mp4", 25, 40)
    summary = crop_faces.main(["--videos", str(video), "--out", str(tmp_path / "out"), "--batch", "8"])
    crops = sorted(int(p.stem) for p in (tmp_path / "out" / "cropped_aligned" / "appears").glob("*.jpg"))
    assert crops[0] == 26 and summary.frames.tolist() == [25 + 40]
    assert len(crops) >= 0.95 * 40


def test_unreadable_and_missing_files_are_named_and_the_rest_is_done(real_clips, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 100)
    good = real_clips / "1001_DFA_NEU_XX.flv"
    summary = crop_faces.main(["--videos", str(bad), str(good), str(tmp_path / "gone.mp4"), "--out",
                               str(tmp_path / "out"), "--every", str(EVERY)])
    errors = dict(zip(summary.videoid, summary.error))
    assert errors["broken"] and errors["gone"] and not errors["1001_DFA_NEU_XX"]
    assert "broken.mp4: unreadable" in capsys.readouterr().err
    # Resumable: a second run skips the done video and does not touch its crops.
    crop = next((tmp_path / "out" / "cropped_aligned" / "1001_DFA_NEU_XX").glob("*.jpg"))
    before = crop.stat().st_mtime_ns
    crop_faces.main(["--videos", str(good), "--out", str(tmp_path / "out"), "--every", str(EVERY)])
    assert crop.stat().st_mtime_ns == before and "done before, skipped" in capsys.readouterr().out


def test_the_layout_is_what_prepare_data_reads(cropped_real, real_clips, tmp_path):
    import prepare_data
    root, summary = cropped_real
    dataset = tmp_path / "raw"
    (dataset / "videos").mkdir(parents=True)
    (dataset / "cropped_aligned").symlink_to(root / "cropped_aligned")
    for i, row in enumerate(summary.itertuples()):
        video = next(real_clips.glob(row.videoid + ".*"))
        (dataset / "videos" / video.name).symlink_to(video)
        split = "Train_Set" if i % 2 else "Validation_Set"
        write_labels(dataset / "annotations" / "EXPR_Recognition_Challenge" / split / f"{row.videoid}.txt",
                     [i % 8] * row.frames)
    prepare_data.main(["--root", str(dataset), "--out", str(tmp_path / "data"), "--jobs", "1"])
    frames = pd.read_parquet(tmp_path / "data" / "frames.parquet")
    assert sorted(frames.txtid.unique()) == sorted(summary.videoid)
    for row in summary.itertuples():
        mine = frames[frames.txtid == row.videoid]
        written = {int(p.stem) for p in (root / "cropped_aligned" / row.videoid).glob("*.jpg")}
        assert len(mine) == row.frames and set(mine.frame[mine.has_crop]) == written
    videos = pd.read_parquet(tmp_path / "data" / "videos.parquet")
    assert videos.has_audio.all()


def test_two_people_side_by_side_become_left_and_right(real_clips, tmp_path):
    # Two real speakers in one picture: RAVDESS (shrunk to 640x360) left, CREMA-D (480x360) right.
    out = tmp_path / "pair.mp4"
    with av.open(str(real_clips / "01-01-03-01-01-02-05.mp4")) as a, \
            av.open(str(real_clips / "1001_DFA_HAP_XX.flv")) as b, av.open(str(out), "w") as dst:
        stream = dst.add_stream("libx264", rate=30, options={"crf": "18", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 1120, 360, "yuv420p"
        for i, (fa, fb) in enumerate(zip(a.decode(video=0), b.decode(video=0))):
            if i == 24:
                break
            left = cv2.resize(fa.to_ndarray(format="rgb24"), (640, 360), interpolation=cv2.INTER_AREA)
            image = np.concatenate([left, fb.to_ndarray(format="rgb24")], axis=1)
            dst.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        dst.mux(stream.encode())
    summary = crop_faces.main(["--videos", str(out), "--out", str(tmp_path / "out"), "--two-people", "--every", "3"])
    assert summary.tracks.tolist() == [2] and summary.crops.tolist() == [16]
    faces = pd.read_parquet(tmp_path / "out" / "faces" / "pair.parquet")
    centre = faces.groupby("txtid")[["x1", "x2"]].mean().sum(axis=1) / 2
    assert centre["pair_left"] < 640 < centre["pair_right"]
    for side in ("left", "right"):
        assert len(list((tmp_path / "out" / "cropped_aligned" / f"pair_{side}").glob("*.jpg"))) == 8
    assert not (tmp_path / "out" / "cropped_aligned" / "pair").exists()


def damaged(path: Path, n: int = 20, broken: int = 8, size: int = 64) -> tuple[Path, list[float]]:
    """An intra-only MPEG-4 video of n frames of growing grey (frame i: 10 * i) whose packet
    `broken` (0-based) is overwritten with random bytes, and the mean grey of each frame of the
    intact video (the truth for frame numbers 1..n)."""
    clean = path.with_name("clean.mp4")
    with av.open(str(clean), "w") as dst:
        stream = dst.add_stream("mpeg4", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt, stream.codec_context.gop_size = "yuv420p", 1
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts = i
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode())
    with av.open(str(clean)) as src:
        truth = [float(f.to_ndarray(format="rgb24").mean()) for f in src.decode(video=0)]
    with av.open(str(clean)) as src, av.open(str(path), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for k, packet in enumerate(p for p in src.demux(video=0) if p.size):
            if k == broken:
                noise = av.Packet(np.random.default_rng(0).integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                noise.pts, noise.dts, noise.time_base, noise.is_keyframe = packet.pts, packet.dts, packet.time_base, True
                packet = noise
            packet.stream = out
            dst.mux(packet)
    return path, truth


def whole_frame_face(frames, *args, **kwargs):
    """A stand-in detector: one face filling each frame, so every decoded frame gets a crop."""
    h, w = frames[0].shape[:2]
    points = (template(112) * np.array([w, h]) / 112).astype(np.float32)
    return [(np.array([[0, 0, w, h]], np.float32), np.ones(1, np.float32), points[None]) for _ in frames]


def test_crops_after_an_undecodable_packet_keep_the_frame_numbers_prepare_data_uses(tmp_path, monkeypatch):
    import utils.readers.faces as faces
    from utils.readers.media import read_video
    video, truth = damaged(tmp_path / "bad.mp4")
    monkeypatch.setattr(faces, "detect", whole_frame_face)
    summary = crop_faces.main(["--videos", str(video), "--out", str(tmp_path / "out"), "--batch", "4"])
    crops = {int(p.stem): cv2.imread(str(p)).mean() for p in (tmp_path / "out" / "cropped_aligned" / "bad").glob("*.jpg")}
    # prepare_data numbers this video's frames 1..20 (read_video); frame 9 cannot be decoded.
    assert read_video(video).info.n_frames == 20 == summary.frames.iloc[0]
    assert sorted(crops) == [t for t in range(1, 21) if t != 9]
    for t, grey in crops.items():
        assert abs(grey - truth[t - 1]) < 4, f"crop {t:05d}.jpg holds frame {1 + np.argmin(np.abs(np.array(truth) - grey))}"


def test_frames_that_cannot_be_numbered_give_no_crops_and_one_line(tmp_path, monkeypatch, capsys):
    import utils.readers.faces as faces
    video, _ = damaged(tmp_path / "bad.mp4")
    monkeypatch.setattr(faces, "detect", whole_frame_face)
    monkeypatch.setattr(faces, "frame_numbers", lambda times: None)   # as if the packets had no timestamps
    summary = crop_faces.main(["--videos", str(video), "--out", str(tmp_path / "out")])
    assert summary.error.iloc[0].startswith("UnnumberedFrames") and summary.crops.tolist() == [0]
    assert not (tmp_path / "out" / "cropped_aligned" / "bad").exists()
    assert "bad.mp4: unreadable (UnnumberedFrames: 19 frames decoded of 20 packets" in capsys.readouterr().err


def test_crops_of_the_old_numbering_are_kept_only_where_it_agreed(tmp_path, monkeypatch):
    """faces/<videoid>.json of format 1 (decode-order numbers): reused when no frame was lost, redone otherwise."""
    import json

    import utils.readers.faces as faces
    video, _ = damaged(tmp_path / "bad.mp4")
    clean = tmp_path / "clean.mp4"   # damaged() leaves the intact video here
    monkeypatch.setattr(faces, "detect", whole_frame_face)
    opt = faces.CropOptions(batch=4)
    for videoid, path, corrupt, frames, reused in (("bad", video, 1, 19, False), ("clean", clean, 0, 20, True),
                                                     ("clean", clean, 0, 19, False)):
        info = faces.crop_video(videoid, path, tmp_path / "out", opt)
        old = tmp_path / "out" / "faces" / f"{videoid}.json"
        old.write_text(json.dumps(info | {"format": 1, "corrupt_packets": corrupt, "frames": frames}))
        assert bool(faces.crop_video(videoid, path, tmp_path / "out", opt).get("skipped")) == reused, (videoid, frames)
