"""Audio decoded once per video with PyAV: length, pitch, rate conversion, videos without sound."""
from fractions import Fraction

import numpy as np
import pytest

from conftest import make_av, tone, write_test_video
from utils.readers.media import decode_audio, probe_video, read_video

HOP = 1024  # the spectrogram hop: decoded length must match the duration within one hop


def peak_hz(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()]


@pytest.mark.parametrize("name,fps,native_rate", [("a.mp4", 25.0, 44100), ("b.avi", 29.97, 22050),
                                                  ("c.mp4", 30.0, 48000)])
def test_decode_matches_duration_and_pitch(tmp_path, name, fps, native_rate):
    n_frames = int(round(2.0 * fps))
    path = write_test_video(tmp_path / name, n_frames, fps, audio_seconds=n_frames / fps,
                            sample_rate=native_rate, freq=440.0)
    info = probe_video(path)
    assert info.n_frames == n_frames and info.has_audio
    assert info.fps == pytest.approx(float(Fraction(30000, 1001)) if fps == 29.97 else fps)
    samples, corrupt = decode_audio(path, 16000)
    assert samples.dtype == np.float32 and samples.ndim == 1 and corrupt == 0
    assert abs(len(samples) - info.duration * 16000) <= HOP
    assert peak_hz(samples, 16000) == pytest.approx(440, abs=4)


def test_video_without_audio(tmp_path):
    path = write_test_video(tmp_path / "silent.mp4", 10, 25.0, audio_seconds=None)
    info = probe_video(path)
    assert not info.has_audio and info.n_frames == 10
    with pytest.raises(ValueError, match="silent.mp4"):
        decode_audio(path)


def test_offset_aligns_audio_to_the_video_clock(tmp_path):
    sound = tone(1.0, 16000)
    plain = read_video(make_av(tmp_path / "plain.mkv", audio=sound, codec="flac")).samples
    late = read_video(make_av(tmp_path / "late.mkv", audio=sound, codec="flac", audio_start=0.5))
    early = read_video(make_av(tmp_path / "early.mkv", audio=sound, codec="flac",   # the video starts 0.25 s late
                               frame_seconds=0.25 + np.arange(25) / 25))
    assert late.info.audio_offset == pytest.approx(0.5) and early.info.audio_offset == pytest.approx(-0.25)
    assert len(late.samples) == len(plain) + 8000 and not late.samples[:8000].any()
    np.testing.assert_array_equal(late.samples[8000:], plain)
    np.testing.assert_array_equal(early.samples, plain[4000:])
