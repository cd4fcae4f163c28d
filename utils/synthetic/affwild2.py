"""Procedural faces and voices for the synthetic datasets (make_demo_data.py).

The signal is built so that a fused model must beat each branch:
  - Neutral/Other and Anger/Disgust LOOK alike (same face geometry) but SOUND different;
  - Happiness/Surprise and Sadness/Fear SOUND alike (same voice pattern) but LOOK different.
Everything else differs in both senses. Identity, pose, lighting, intensity and noise vary,
so neither branch can read the class off a single pixel or a single spectrogram bin.
"""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from PIL import Image, ImageDraw

CROP_SIZE = 112
VIDEO_SIZE = 56   # raw videos hold a small copy of the scene; the kit reads only their audio

#                 mouth_curve mouth_open brow_tilt brow_raise eye_open
FACE_NEUTRAL = np.array([0.0, 0.05, 0.0, 0.0, 0.5])
FACE_PARAMS = np.array([
    [0.0, 0.05, 0.0, 0.0, 0.5],     # 0 Neutral
    [-0.25, 0.05, -0.9, -0.4, 0.25],  # 1 Anger    (looks like Disgust)
    [-0.25, 0.05, -0.9, -0.4, 0.25],  # 2 Disgust  (looks like Anger)
    [-0.15, 0.45, 0.8, 0.7, 0.95],  # 3 Fear
    [0.9, 0.3, 0.0, 0.1, 0.3],      # 4 Happiness
    [-0.9, 0.0, 0.8, 0.1, 0.3],     # 5 Sadness
    [0.0, 0.95, 0.0, 1.0, 1.0],     # 6 Surprise
    [0.0, 0.05, 0.0, 0.0, 0.5],     # 7 Other    (looks like Neutral)
])
#                  pitch Hz, syllables/s, loudness dBFS
VOICE_PARAMS = np.array([
    [220.0, 2.5, -20.0],   # 0 Neutral
    [220.0, 6.0, -10.0],   # 1 Anger
    [140.0, 4.0, -16.0],   # 2 Disgust
    [105.0, 1.5, -26.0],   # 3 Fear      (sounds like Sadness)
    [330.0, 4.0, -12.0],   # 4 Happiness (sounds like Surprise)
    [105.0, 1.5, -26.0],   # 5 Sadness   (sounds like Fear)
    [330.0, 4.0, -12.0],   # 6 Surprise  (sounds like Happiness)
    [480.0, 2.5, -18.0],   # 7 Other
])


def smooth_walk(rng, n: int, sigma: float, keep: float = 0.97) -> np.ndarray:
    """AR(1) noise: slow drifts of pose and lighting instead of per-frame flicker."""
    steps = rng.normal(0.0, sigma, n)
    out = np.empty(n)
    value = 0.0
    for i in range(n):
        value = keep * value + steps[i]
        out[i] = value
    return out


def expression_track(rng, content_classes: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Per-frame face parameters: class targets at a per-segment intensity, eased in and jittered."""
    n_segments = int(segment_ids.max()) + 1 if len(segment_ids) else 0
    intensity = rng.uniform(0.6, 1.1, n_segments)[segment_ids]
    target = FACE_NEUTRAL + intensity[:, None] * (FACE_PARAMS[content_classes] - FACE_NEUTRAL)
    eased = np.empty_like(target)
    state = target[0] if len(target) else FACE_NEUTRAL
    for i in range(len(target)):   # a few frames to change expression, as faces do
        state = state + 0.35 * (target[i] - state)
        eased[i] = state
    return eased + rng.normal(0.0, 0.06, eased.shape)


class FaceRenderer:
    """Draws one person's face crops: identity fixed, pose and lighting drifting."""

    def __init__(self, rng, n_frames: int):
        self.rng = rng
        self.skin = tuple(int(v) for v in rng.uniform([150, 110, 90], [235, 190, 160]))
        self.face_w = rng.uniform(0.82, 1.0)
        self.eye_dx = rng.uniform(0.33, 0.42)
        bg = rng.uniform(30, 200, 3)
        ramp = np.linspace(0.75, 1.15, CROP_SIZE)[:, None, None]
        self.background = Image.fromarray(np.clip(bg * ramp * np.ones((1, CROP_SIZE, 3)), 0, 255)
                                          .astype(np.uint8))
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE] / CROP_SIZE - 0.5
        self.light = (1.0 + rng.uniform(0.1, 0.4) * (np.cos(angle) * xx + np.sin(angle) * yy))[..., None]
        self.rotation = np.clip(smooth_walk(rng, n_frames, 0.02), -0.3, 0.3)
        self.shift = np.clip(np.stack([smooth_walk(rng, n_frames, 0.5),
                                       smooth_walk(rng, n_frames, 0.5)], 1), -8, 8)
        self.scale = np.clip(1.0 + smooth_walk(rng, n_frames, 0.005), 0.88, 1.12)
        self.gain = np.clip(1.0 + smooth_walk(rng, n_frames, 0.01), 0.75, 1.25)

    def render(self, t: int, params: np.ndarray | None) -> np.ndarray:
        """Frame t as uint8 HxWx3; params None draws the scene without a face."""
        img = self.background.copy()
        if params is not None:
            self._draw_face(ImageDraw.Draw(img), t, params)
        pixels = np.asarray(img, dtype=np.float32) * self.light * self.gain[t]
        pixels += self.rng.normal(0.0, 6.0, pixels.shape).astype(np.float32)
        return np.clip(pixels, 0, 255).astype(np.uint8)

    def _draw_face(self, draw, t, params):
        curve, mouth_open, brow_tilt, brow_raise, eye_open = params
        r = 30.0 * self.scale[t]
        c, s = np.cos(self.rotation[t]), np.sin(self.rotation[t])
        centre = np.array([56.0, 60.0]) + self.shift[t]

        def place(points):  # face coordinates (units of r) -> pixels
            p = np.asarray(points, dtype=np.float64) * r
            return [tuple(v) for v in (p @ np.array([[c, s], [-s, c]]) + centre)]

        theta = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        draw.polygon(place(np.stack([self.face_w * np.cos(theta), 1.2 * np.sin(theta)], 1)),
                     fill=self.skin)
        eye_h = 0.04 + 0.16 * max(eye_open, 0.0)
        for side in (-1, 1):
            ex = side * self.eye_dx
            draw.polygon(place(np.stack([ex + 0.13 * np.cos(theta), -0.25 + eye_h * np.sin(theta)], 1)),
                         fill=(245, 245, 245))
            draw.polygon(place(np.stack([ex + 0.05 * np.cos(theta), -0.25 + min(eye_h, 0.06) * np.sin(theta)], 1)),
                         fill=(30, 25, 20))
            base = -0.52 - 0.2 * brow_raise
            inner, outer = ex - side * 0.17, ex + side * 0.2
            draw.line(place([[inner, base - 0.16 * brow_tilt], [outer, base + 0.06 * brow_tilt]]),
                      fill=(60, 40, 30), width=max(2, int(r / 10)))
        x = np.linspace(-1, 1, 15)
        half = 0.3 + 0.05 * max(curve, 0.0)
        upper = 0.5 - 0.16 * curve * x ** 2 + 0.08 * curve
        lower = upper + 0.03 + 0.38 * max(mouth_open, 0.0) * (1 - x ** 2)
        lips = np.concatenate([np.stack([half * x, upper], 1), np.stack([half * x[::-1], lower[::-1]], 1)])
        draw.polygon(place(lips), fill=(120, 30, 40))


def voice_track(rng, content_classes: np.ndarray, segment_ids: np.ndarray, fps: float,
                sample_rate: int) -> np.ndarray:
    """Mono float32 voice whose pitch, syllable rate and loudness follow the frame classes."""
    n_frames = len(content_classes)
    n = int(round(n_frames / fps * sample_rate))
    n_segments = int(segment_ids.max()) + 1 if n_frames else 0
    speaker = rng.uniform(0.9, 1.1)
    jitter = rng.uniform(0.95, 1.05, n_segments)[segment_ids]
    per_frame = VOICE_PARAMS[content_classes]
    t_frames = (np.arange(n_frames) + 0.5) / fps
    t = np.arange(n) / sample_rate
    pitch = np.interp(t, t_frames, per_frame[:, 0] * speaker * jitter)
    rate = np.interp(t, t_frames, per_frame[:, 1])
    loud = 10 ** (np.interp(t, t_frames, per_frame[:, 2]) / 20)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    syllable = 2 * np.pi * np.cumsum(rate) / sample_rate + rng.uniform(0, 2 * np.pi)
    envelope = np.clip(np.sin(syllable), 0, None) ** 2
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 6))
    floor = 10 ** (rng.uniform(-50, -38) / 20)
    voice = loud * envelope * harmonics / 1.5 + rng.normal(0.0, floor, n)
    return np.clip(voice, -1, 1).astype(np.float32)


def frame_rate(fps: float) -> Fraction:
    return Fraction(30000, 1001) if abs(fps - 29.97) < 0.01 else Fraction(fps).limit_denominator(1001)


def write_video(path, frames: list[np.ndarray], fps: float, audio: np.ndarray | None,
                sample_rate: int) -> None:
    """A real container: mpeg4 pictures, and AAC stereo (.mp4) or PCM mono (.avi) sound."""
    mp4 = str(path).endswith(".mp4")
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=frame_rate(fps))
        video.width = video.height = VIDEO_SIZE
        video.pix_fmt = "yuv420p"
        sound = None
        if audio is not None:
            if mp4:
                sound = container.add_stream("aac", rate=sample_rate, layout="stereo")
            else:
                sound = container.add_stream("pcm_s16le", rate=sample_rate, layout="mono")
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is None:
            return
        chunk = 1024
        for start in range(0, len(audio), chunk):
            piece = audio[start:start + chunk]
            if mp4:
                frame = av.AudioFrame.from_ndarray(np.stack([piece, piece * 0.9]), format="fltp",
                                                   layout="stereo")
            else:
                frame = av.AudioFrame.from_ndarray((piece * 32767).astype(np.int16)[None],
                                                   format="s16", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in sound.encode(frame):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
