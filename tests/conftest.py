"""Shared fixtures: the small synthetic dataset, generated and prepared once per session."""
from __future__ import annotations

import sys
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
    return train_image.main(["--preset", "demo", "--data", str(demo_data), "--runs", str(runs)])


@pytest.fixture(scope="session")
def audio_run(demo_data, tmp_path_factory) -> Path:
    import train_audio
    runs = tmp_path_factory.mktemp("audio_runs")
    return train_audio.main(["--preset", "demo", "--data", str(demo_data), "--runs", str(runs)])


@pytest.fixture(scope="session")
def fusion_run(image_run, audio_run, demo_data, tmp_path_factory) -> Path:
    import train_fusion
    runs = tmp_path_factory.mktemp("fusion_runs")
    return train_fusion.main(["--preset", "demo", "--image", str(image_run), "--audio", str(audio_run),
                              "--data", str(demo_data), "--runs", str(runs)])


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
    from utils.synthetic import VIDEO_SIZE, write_video
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [np.zeros((VIDEO_SIZE, VIDEO_SIZE, 3), np.uint8)] * n_frames
    audio = None if audio_seconds is None else tone(audio_seconds, sample_rate, freq)
    write_video(path, frames, fps, audio, sample_rate)
    return path
