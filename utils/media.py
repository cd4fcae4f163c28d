"""Video containers through PyAV: stream facts and the audio track decoded once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


@dataclass
class VideoInfo:
    fps: float
    n_frames: int          # frames the container says it holds (counted if it does not say)
    duration: float        # seconds, n_frames / fps
    has_audio: bool
    audio_offset: float    # audio start minus video start, seconds


def probe_video(path: Path) -> VideoInfo:
    """Container facts without decoding pictures. Raises av.FFmpegError on unreadable files."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise av.FFmpegError(0, f"{path}: no video stream")
        video = container.streams.video[0]
        rate = video.average_rate or video.guessed_rate or video.base_rate
        if not rate:
            raise av.FFmpegError(0, f"{path}: the video stream has no frame rate")
        fps = float(rate)
        n_frames = int(video.frames or 0)
        if n_frames <= 0:
            # Some muxers do not record a frame count: count packets, which needs no decode.
            n_frames = sum(1 for p in container.demux(video) if p.size > 0)
        has_audio = bool(container.streams.audio)
        offset = 0.0
        if has_audio:
            audio = container.streams.audio[0]
            if audio.start_time is not None and video.start_time is not None:
                offset = float(audio.start_time * audio.time_base
                               - video.start_time * video.time_base)
    return VideoInfo(fps=fps, n_frames=n_frames, duration=n_frames / fps,
                     has_audio=has_audio, audio_offset=offset)


def decode_audio(path: Path, sample_rate: int = 16000, offset: float = 0.0) -> tuple[np.ndarray, int]:
    """The first audio stream as mono float32 at `sample_rate`, aligned to the video's start.

    Returns (samples, corrupt_packets). libswresample does the format, channel and rate
    conversion while streaming, so the native-rate stereo track is never held in memory.
    A positive `offset` (audio starts after the video) is padded with silence, a negative
    one trimmed, so sample i is at time i / sample_rate on the video's clock.
    """
    chunks = []
    corrupt = 0
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                corrupt += 1
                continue
            for frame in frames:
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    shift = int(round(offset * sample_rate))
    if shift > 0:
        samples = np.concatenate([np.zeros(shift, np.float32), samples])
    elif shift < 0:
        samples = samples[-shift:]
    return samples, corrupt
