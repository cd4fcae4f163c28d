"""Video containers through PyAV: stream facts, frame times and the audio track, in one pass.

Frame times (DESIGN.md section 8). Frame t (1-based) of a video is the t-th frame the decoder
puts out, in presentation order; its time is that frame's container timestamp minus the video
stream's start, in seconds. A constant-rate video keeps the simple (t - 1) / fps; a video whose
timestamps stray from that by more than half a frame anywhere (phones and screen recorders
write variable-frame-rate video; a stream with dropped frames looks the same) is flagged `vfr`
and its timestamps are returned, so audio windows are placed where the frames are shown.
Timestamps come from the packets (no picture is decoded): sorted, they are the presentation
order of the frames.

Audio. The sound stream (the default one among several), decoded and resampled by libswresample to the kit's rate while
streaming, keeping its channels; the full-band channels are then averaged (not summed, as a mono
downmix would: the same tone must be as loud from a stereo or 5.1 recording as from a mono one).
The low-frequency effects channel carries no speech and is band-limited by the encoders, so it is
left out of the mean, as ITU-R BS.775 downmixes leave it out. Samples
are placed on the video's clock: a late audio start is padded with silence, an early one trimmed.
Non-finite samples (a float codec can carry them) become silence and are counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from utils.runs import read_json, save_npy, write_json

VFR_TOLERANCE = 0.5   # frames: a timestamp further than this from (t - 1) / fps makes the video VFR


@dataclass
class VideoInfo:
    fps: float             # the container's average rate (frames / second)
    n_frames: int          # frames the container says it holds (counted if it does not say)
    duration: float        # seconds, n_frames / fps
    has_audio: bool
    audio_offset: float    # audio start minus video start, seconds


@dataclass
class Decoded:
    """What read_video found. samples: (N,) float32 mono at sample_rate, sample i at time
    i / sample_rate on the video's clock (empty without audio). frame_times: (n,) float64 seconds
    of each decoded frame when the video is VFR, else None."""
    info: VideoInfo
    samples: np.ndarray
    corrupt_packets: int = 0
    nonfinite_samples: int = 0
    channels: int = 0
    source_rate: int = 0
    codec: str = ""
    vfr: bool = False
    frame_times: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def _streams(container):
    """The picture stream and the sound stream (None without one). A cover image or thumbnail
    (an 'attached picture', which yt-dlp --embed-thumbnail adds to mp4 files) is not the picture
    stream; among several sound tracks (dubs), the one marked default, else the first."""
    pictures = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not pictures:
        raise av.FFmpegError(0, "no video stream")
    sounds = list(container.streams.audio)
    default = [s for s in sounds if s.disposition & av.stream.Disposition.default]
    return pictures[0], (default or sounds or [None])[0]


def _rate(video) -> float:
    rate = video.average_rate or video.guessed_rate or video.base_rate
    if not rate:
        raise av.FFmpegError(0, "the video stream has no frame rate")
    return float(rate)


def probe_video(path: Path) -> VideoInfo:
    """Container facts without decoding pictures. Raises av.FFmpegError on unreadable files."""
    with av.open(str(path)) as container:
        video, audio = _streams(container)
        fps = _rate(video)
        n_frames = int(video.frames or 0)
        if n_frames <= 0:
            # Some muxers do not record a frame count: count packets, which needs no decode.
            n_frames = sum(1 for p in container.demux(video) if p.size > 0)
        has_audio = audio is not None
        offset = _audio_offset(video, audio) if has_audio else 0.0
    return VideoInfo(fps=fps, n_frames=n_frames, duration=n_frames / fps,
                     has_audio=has_audio, audio_offset=offset)


def _audio_offset(video, audio) -> float:
    if audio.start_time is None or video.start_time is None:
        return 0.0
    return float(audio.start_time * audio.time_base - video.start_time * video.time_base)


def frame_times_of(pts: list[int], time_base, start: int | None, fps: float) -> tuple[bool, np.ndarray]:
    """(vfr, seconds of each frame from the video's start) from the video packets' timestamps."""
    times = (np.sort(np.asarray(pts, dtype=np.float64)) - (start if start is not None else min(pts, default=0))) \
        * float(time_base)
    if len(times) < 2:
        return False, times
    expected = times[0] + np.arange(len(times)) / fps
    return bool(np.abs(times - expected).max() > VFR_TOLERANCE / fps), times


def packet_time(packet) -> int | None:
    """A video packet's timestamp (stream time base): its pts, else its dts, else None. Frame
    numbers and frame times are built from the video packets with a payload (size > 0)."""
    return packet.pts if packet.pts is not None else packet.dts


def frame_numbers(times: list[int | None]) -> dict[int, int] | None:
    """Frame number t (1-based) of each video packet timestamp (packet_time of the packets of
    size > 0, in any order): the rank of the timestamp among them, i.e. frame t is the t-th frame
    in presentation order, the numbering read_video's frame count and frame times use and the
    label files follow. A frame that cannot be decoded keeps its number, so the frames after it
    are not shifted. None when a packet has no timestamp or two share one (the order is unknown)."""
    if any(t is None for t in times) or len(set(times)) != len(times):
        return None
    return {int(t): i for i, t in enumerate(sorted(times), start=1)}


def read_video(path: Path, sample_rate: int = 16000) -> Decoded:
    """Probe a container, read its video timestamps and decode its first audio stream, in one pass
    over the file. Raises av.FFmpegError (or OSError) on a file PyAV cannot open."""
    with av.open(str(path)) as container:
        video, audio = _streams(container)
        fps = _rate(video)
        pts, corrupt, chunks, nonfinite, channels, full_band = [], 0, [], 0, 0, {}
        # Packed float: PyAV's planar to_ndarray crashes on 8-channel (7.1) frames.
        resampler = av.AudioResampler(format="flt", rate=sample_rate) if audio is not None else None
        streams = [video] + ([audio] if audio is not None else [])
        for packet in container.demux(*streams):
            if packet.stream.type == "video":
                if packet.size > 0:
                    pts.append(packet_time(packet))
                continue
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                corrupt += 1
                continue
            for frame in frames:
                for out in resampler.resample(frame):
                    channels, piece = _mono(out, chunks, full_band)
                    nonfinite += piece
        if resampler is not None:
            for out in resampler.resample(None):
                channels, piece = _mono(out, chunks, full_band)
                nonfinite += piece
        n_frames = int(video.frames or 0) or len(pts)
        known = [p for p in pts if p is not None]
        vfr, times = (frame_times_of(known, video.time_base, video.start_time, fps)
                      if len(known) == len(pts) else (False, np.zeros(0)))
        offset = _audio_offset(video, audio) if audio is not None else 0.0
        codec = audio.codec_context.name if audio is not None else ""
        source_rate = int(audio.codec_context.sample_rate or 0) if audio is not None else 0
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    shift = int(round(offset * sample_rate))
    if shift > 0:
        samples = np.concatenate([np.zeros(shift, np.float32), samples])
    elif shift < 0:
        samples = samples[-shift:]
    info = VideoInfo(fps=fps, n_frames=n_frames, duration=n_frames / fps, has_audio=audio is not None,
                     audio_offset=offset)
    return Decoded(info=info, samples=samples, corrupt_packets=corrupt, nonfinite_samples=nonfinite,
                   channels=channels, source_rate=source_rate, codec=codec, vfr=vfr,
                   frame_times=times if vfr else None)


def _mono(frame, chunks: list, full_band: dict) -> tuple[int, int]:
    """Append the frame's mean over its full-band channels to chunks; returns (channels, non-finite
    samples zeroed). `full_band` caches the channels to average per layout."""
    layout = frame.layout.name
    if layout not in full_band:
        names = [c.name for c in frame.layout.channels]
        keep = [i for i, name in enumerate(names) if not name.startswith("LFE")] or list(range(len(names)))
        full_band[layout] = (len(names), None if len(keep) == len(names) else keep)
    channels, keep = full_band[layout]
    planes = frame.to_ndarray().reshape(-1, channels)   # packed flt: samples interleaved by channel
    mono = planes.mean(axis=1, dtype=np.float32) if keep is None else planes[:, keep].mean(axis=1, dtype=np.float32)
    bad = ~np.isfinite(mono)
    if bad.any():
        mono = np.where(bad, np.float32(0.0), mono)
    chunks.append(mono)
    return channels, int(bad.sum())


def decode_audio(path: Path, sample_rate: int = 16000) -> tuple[np.ndarray, int]:
    """The first audio stream as mono float32 at `sample_rate` on the video's clock, and the count
    of corrupt packets skipped. ValueError if the file has no audio stream."""
    decoded = read_video(path, sample_rate)
    if not decoded.info.has_audio:
        raise ValueError(f"{path}: no audio stream")
    return decoded.samples, decoded.corrupt_packets


DECODER = 2   # an audio/<key>.json of another decoder version is decoded again (version 1 summed the channels)


# The columns of videos.parquet / clips.parquet that name files of the data folder itself. They are
# stored relative to it ('audio/<key>.npy'), and a folder prepared by an older kit holds the path
# prepare_data.py was given (relative to its working directory then, or absolute): either way the
# file is looked up by its folder and name inside the data folder, so the folder can move and be
# used from any working directory.
CACHED = ("audio_path", "frame_times")


def inside(data_dir, stored: str) -> Path:
    """The file a data table names, inside `data_dir` (see CACHED)."""
    stored = Path(stored)
    return Path(data_dir) / stored.parent.name / stored.name


def locate(table, data_dir):
    """`table` (a videos.parquet or clips.parquet DataFrame) with its CACHED columns made paths
    inside `data_dir`, as strings; empty entries (no audio, constant frame rate) stay empty."""
    table = table.copy()
    for column in CACHED:
        if column in table:
            table[column] = [str(inside(data_dir, s)) if isinstance(s, str) and s else "" for s in table[column]]
    return table


def prepare_media(key: str, path: Path, out: Path, sample_rate: int, force: bool) -> dict:
    """Read one container once (read_video) and cache under `out`: audio/<key>.npy (its sound,
    mono float32 at sample_rate) and, for a variable-rate video, times/<key>.npy (float64 seconds
    of each decoded frame); audio/<key>.json records what was found and is reused on a re-run.
    `key` is the Aff-Wild2 videoid or the DFEW clip. Runs in a worker process; never raises: an
    unreadable file comes back with `error` set and is not cached, so a fixed file is tried again."""
    info_path = out / "audio" / f"{key}.json"
    if info_path.exists() and not force:
        info = read_json(info_path)
        if (info.get("path") == str(path) and info.get("sample_rate") == sample_rate
                and info.get("decoder") == DECODER and (not info["has_audio"] or inside(out, info["audio_path"]).exists())):
            return info | {k: f"{Path(info[k]).parent.name}/{Path(info[k]).name}" for k in CACHED if info.get(k)}
    info = dict(key=key, path=str(path), sample_rate=sample_rate, decoder=DECODER, audio_path="",
                audio_samples=0, corrupt_packets=0, nonfinite_samples=0, channels=0, source_rate=0, codec="",
                vfr=False, frame_times="", error="")
    try:
        decoded = read_video(path, sample_rate)
        meta = decoded.info
        info.update(fps=meta.fps, n_frames=meta.n_frames, duration=meta.duration, has_audio=meta.has_audio,
                    audio_offset=meta.audio_offset, vfr=decoded.vfr, channels=decoded.channels,
                    source_rate=decoded.source_rate, codec=decoded.codec)
        if decoded.vfr:
            times_path = out / "times" / f"{key}.npy"
            save_npy(times_path, decoded.frame_times)
            info["frame_times"] = f"times/{key}.npy"
        if meta.has_audio:
            audio_path = out / "audio" / f"{key}.npy"
            save_npy(audio_path, decoded.samples)
            info.update(audio_path=f"audio/{key}.npy", audio_samples=len(decoded.samples),
                        corrupt_packets=decoded.corrupt_packets, nonfinite_samples=decoded.nonfinite_samples,
                        has_audio=len(decoded.samples) > 0, empty_audio=not len(decoded.samples))
    except (av.FFmpegError, OSError, ValueError) as err:
        info.update(fps=float("nan"), n_frames=0, duration=0.0, has_audio=False,
                    audio_offset=0.0, error=f"{type(err).__name__}: {err}")
        return info  # not cached: a fixed file is tried again on the next run
    write_json(info_path, info)
    return info


def report_media(info: dict, warnings) -> None:
    """The counted warnings (utils.console.WarningCounter) of one prepare_media result."""
    if info["error"]:
        warnings("video", f"{info['path']}: unreadable ({info['error']}); treated as silent")
    elif info.get("empty_audio"):
        warnings("empty audio", f"{info['path']}: its audio stream holds no samples; treated as silent")
    elif not info["has_audio"]:
        warnings("no audio", f"{info['path']}: no audio stream; treated as silent")
    if info.get("corrupt_packets"):
        warnings("corrupt audio", f"{info['path']}: {info['corrupt_packets']} corrupt audio packets skipped")
    if info.get("nonfinite_samples"):
        warnings("non-finite audio", f"{info['path']}: {info['nonfinite_samples']} NaN or infinite audio samples "
                 "replaced by silence", info["nonfinite_samples"])
    if info.get("vfr"):
        warnings("variable frame rate", f"{info['path']}: variable frame rate (average {info['fps']:.3f} fps); "
                 "frame times are taken from its timestamps")
