"""Self-supervised speech encoders (wav2vec 2.0, HuBERT, WavLM from torchaudio.pipelines) as audio
features: a frozen encoder runs once per video over its 16 kHz track and the hidden states of the
layers asked for are cached float16 at 50 Hz (one row per 20 ms, one folder per layer), so that
training a head on them never runs the encoder again.

Time axis: the track is padded with 200 samples of silence at each end (half the 400-sample
receptive field of the convolutional front end, stride 320), so row j is centred at j * 0.02 s on
the video clock, as column j of a log-mel cache is centred at j * hop_seconds; the same
utils.readers.audio.frame_windows therefore maps frames to rows with hop_seconds = 0.02.
A track of n samples has n // 320 + 1 rows.

Long tracks run in chunks of `chunk_seconds` with `context_seconds` of audio on each side that
the encoder sees but whose rows are dropped; chunk edges fall on the 320-sample grid, so the
convolutional features are the same as in one pass and only the attention's far context differs
(tests/test_speech.py bounds the difference away from the track's ends).
"""
from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from utils.console import track
from utils.files import DataError
from utils.readers.audio import load_rows
from utils.runs import read_json, write_json

SAMPLE_RATE = 16000
STRIDE = 320                 # samples per row: 20 ms at 16 kHz
RECEPTIVE = 400              # samples one row sees
HOP_SECONDS = STRIDE / SAMPLE_RATE

# --backbone name -> torchaudio.pipelines bundle (weights from the hub at run time, or --pretrained-path)
ENCODERS = {"wav2vec2_base": "WAV2VEC2_BASE", "wav2vec2_large": "WAV2VEC2_LARGE_LV60K",
            "hubert_base": "HUBERT_BASE", "hubert_large": "HUBERT_LARGE",
            "wavlm_base": "WAVLM_BASE", "wavlm_base_plus": "WAVLM_BASE_PLUS", "wavlm_large": "WAVLM_LARGE",
            "wav2vec2_xlsr_300m": "WAV2VEC2_XLSR_300M"}
# A random encoder of the same front end (so the same 50 Hz rows) and two 32-wide layers: for the
# tests and a demo of the path; it cannot hear emotion.
TINY = dict(extractor_mode="group_norm", extractor_conv_layer_config=[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2,
            extractor_conv_bias=False, encoder_embed_dim=32, encoder_projection_dropout=0.0,
            encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=2,
            encoder_attention_dropout=0.0, encoder_ff_interm_features=64, encoder_ff_interm_dropout=0.0,
            encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None)
SPEECH_BACKBONES = [*ENCODERS, "tiny_random"]


def is_speech(backbone: str) -> bool:
    return backbone in SPEECH_BACKBONES


class Encoder(torch.nn.Module):
    """A frozen torchaudio Wav2Vec2Model and how its input is normalised. forward(wave (1, n)
    float32 at 16 kHz) -> (rows, len(layers) * D) float32: the hidden states of each of `layers`
    (1-based transformer layers, ascending; an int is one layer), side by side."""

    def __init__(self, model: torch.nn.Module, layers: int | Sequence[int], normalize: bool):
        super().__init__()
        self.model, self.normalize = model.eval().requires_grad_(False), normalize
        self.num_layers = len(model.encoder.transformer.layers)
        self.layers = tuple(sorted({layers} if isinstance(layers, int) else set(layers)))
        if not self.layers or not all(1 <= k <= self.num_layers for k in self.layers):
            raise ValueError(f"layers {list(self.layers)} outside 1..{self.num_layers}")
        self.dim = model.encoder.feature_projection.projection.out_features

    @property
    def width(self) -> int:
        return self.dim * len(self.layers)

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if self.normalize:   # the large LV-60k / XLSR / WavLM-large models were trained on unit-variance input
            wave = F.layer_norm(wave, wave.shape[-1:])
        states, _ = self.model.extract_features(wave, num_layers=self.layers[-1])
        return torch.cat([states[k - 1][0] for k in self.layers], -1)


def default_layer(num_layers: int) -> int:
    """Two thirds of the way up: the upper-middle layers carry the most paralinguistic information
    in layer-wise probes of wav2vec 2.0 / WavLM (e.g. Pasad et al. 2021; SUPERB ER weights)."""
    return max(1, round(num_layers * 2 / 3))


def architecture(backbone: str) -> tuple[torch.nn.Module, bool]:
    """A bundle's model with random weights (its factory and parameters; nothing downloads) and
    whether its input is layer-normalised."""
    bundle = getattr(torchaudio.pipelines, ENCODERS[backbone])
    factory = torchaudio.models.wavlm_model if bundle._model_type == "WavLM" else torchaudio.models.wav2vec2_model
    return factory(**bundle._params), bool(bundle._normalize_waveform)


def build_encoder(backbone: str, layer: int | Sequence[int] = 0, pretrained_path: str | None = None,
                  seed: int = 0) -> Encoder:
    """The frozen encoder for a --backbone name, giving the states of `layer` (an int, or several
    layers; 0 picks default_layer). Weights: `pretrained_path` (a state dict saved from the bundle's
    model, bare or under 'model'), else the torchaudio hub download; 'tiny_random' is seeded random.
    DataError if the file does not fit the architecture."""
    if backbone == "tiny_random":
        torch.manual_seed(seed)
        model, normalize = torchaudio.models.wav2vec2_model(**TINY), False
    elif backbone in ENCODERS:
        if pretrained_path:
            model, normalize = architecture(backbone)
        else:   # downloads (torch.hub cache) on first use
            bundle = getattr(torchaudio.pipelines, ENCODERS[backbone])
            model, normalize = bundle.get_model(), bool(bundle._normalize_waveform)
            model = getattr(model, "model", model)   # the large ones come wrapped with their input norm
    else:
        raise ValueError(f"unknown speech encoder {backbone!r}; one of {SPEECH_BACKBONES}")
    if pretrained_path:
        try:
            state = torch.load(pretrained_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as err:
            raise DataError(f"{pretrained_path}: not a readable torch state dict ({str(err).splitlines()[0]})") from None
        state = state.get("model", state)
        state = {k.removeprefix("model."): v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise DataError(f"{pretrained_path}: not a {backbone} state dict ({str(err).splitlines()[0]})") from None
    n_layers = len(model.encoder.transformer.layers)
    layers = [layer] if isinstance(layer, int) else list(layer)
    return Encoder(model, [k or default_layer(n_layers) for k in layers], normalize)


def num_layers(backbone: str) -> int:
    """How many transformer layers the --backbone has, without building it."""
    if backbone == "tiny_random":
        return TINY["encoder_num_layers"]
    if backbone in ENCODERS:
        return getattr(torchaudio.pipelines, ENCODERS[backbone])._params["encoder_num_layers"]
    raise ValueError(f"unknown speech encoder {backbone!r}; one of {SPEECH_BACKBONES}")


def resolve_layers(backbone: str, layers: Sequence[int] = (0,)) -> list[int]:
    """The layers (ascending, distinct) a --backbone / --speech-layer pair names (0: default_layer),
    without building the encoder; ValueError outside 1..num_layers or for none."""
    n = num_layers(backbone)
    bad = [k for k in layers if not 0 <= k <= n]
    if bad or not len(layers):
        raise ValueError(f"--speech-layer {' '.join(map(str, bad or layers)) or '(none)'}: {backbone} has layers 1..{n}")
    return sorted({k or default_layer(n) for k in layers})


def n_rows(n_samples: int) -> int:
    return n_samples // STRIDE + 1


@torch.no_grad()
def encode(encoder: Encoder, samples: np.ndarray, chunk_seconds: float = 30.0, context_seconds: float = 5.0,
           device: torch.device | str = "cpu") -> np.ndarray:
    """Hidden states (n_rows(len(samples)), encoder.width) float16 of a mono 16 kHz track (one
    layer: width D), row j centred at j * 0.02 s. Chunks of chunk_seconds see context_seconds more
    audio each side (dropped rows)."""
    samples = np.asarray(samples, dtype=np.float32)
    total = n_rows(len(samples))
    padded = np.pad(samples, (RECEPTIVE // 2, RECEPTIVE // 2))
    chunk = max(1, int(round(chunk_seconds / HOP_SECONDS)))
    context = max(0, int(round(context_seconds / HOP_SECONDS)))
    out = np.zeros((total, encoder.width), np.float16)
    for a in range(0, total, chunk):
        b = min(a + chunk, total)
        s, e = max(a - context, 0), min(b + context, total)
        wave = torch.from_numpy(padded[s * STRIDE:(e - 1) * STRIDE + RECEPTIVE]).to(device)[None]
        states = encoder(wave)
        out[a:b] = states[a - s:b - s].float().cpu().numpy()
    return out


def cache_folder(data_dir, backbone: str, layer: int) -> Path:
    return Path(data_dir) / "speech" / f"{backbone}_layer{layer}"


def missing_cache(folder: Path, videos) -> list[tuple[str, str, Path]]:
    """(videoid, audio path, cache file) of every video with sound whose cache file is missing or
    older than its decoded audio (each file is written whole: an interrupted run resumes).
    DataError naming a decoded track that is missing from the data folder."""
    todo = []
    for videoid, audio, path in zip(videos["videoid"], videos["has_audio"], videos["audio_path"]):
        target = folder / f"{videoid}.npy"
        if audio and not Path(path).is_file():
            raise DataError(f"{path}: the decoded sound of {videoid} is missing; run prepare_data.py --force")
        if audio and (not target.exists() or target.stat().st_mtime < Path(path).stat().st_mtime):
            todo.append((videoid, path, target))
    return todo


def check_cache(folder: Path, data_dir, source: str) -> None:
    """DataError unless the data folder's sound is at the encoders' 16 kHz and the cache in `folder`
    (if any) was made with the same weights (`source`: a --pretrained-path, 'hub' or 'random'),
    so states of other weights are never reused silently."""
    rate = int(read_json(Path(data_dir) / "meta.json")["sample_rate"])
    if rate != SAMPLE_RATE:
        raise DataError(f"{data_dir}: its sound is decoded at {rate} Hz; speech encoders take {SAMPLE_RATE} Hz: "
                        f"prepare the data with --sample-rate {SAMPLE_RATE} (into another folder)")
    info = folder / "speech.json"
    if info.exists() and (made := read_json(info).get("weights")) != source:
        raise DataError(f"{folder}: cached with the weights '{made}', this run uses '{source}'; delete the folder "
                        f"to encode again")


def ensure_speech_cache(data_dir, videos, encoder: Encoder, backbone: str, chunk_seconds: float = 30.0,
                        context_seconds: float = 5.0, device="cpu", source: str = "") -> list[Path]:
    """Encode every video with sound that lacks an up-to-date cache file in any of the encoder's
    layers' folders, in one pass per video: data/speech/<backbone>_layer<k>/<videoid>.npy (rows, D)
    float16 and speech.json (hop_seconds 0.02, dim, layer, weights' source), written last.
    `videos` is videos.parquet's table (videoid, has_audio, audio_path). Returns the folders, in
    the encoder's layer order. DataError on an unreadable track."""
    folders = [cache_folder(data_dir, backbone, k) for k in encoder.layers]
    for out in folders:
        check_cache(out, data_dir, source)
        out.mkdir(parents=True, exist_ok=True)
    todo: dict[str, tuple[str, list[int]]] = {}   # videoid -> (audio path, which layers it lacks)
    for j, out in enumerate(folders):
        for videoid, path, _ in missing_cache(out, videos):
            todo.setdefault(videoid, (path, []))[1].append(j)
    encoder.to(device)
    layers = "+".join(map(str, encoder.layers))
    for videoid, (path, lacking) in track(list(todo.items()), total=len(todo), description=f"{backbone} layer {layers}",
                                          unit="videos"):
        try:
            samples = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot be read ({err}); run prepare_data.py --force") from None
        states = encode(encoder, samples, chunk_seconds, context_seconds, device)
        for j in lacking:   # a layer cached by an earlier run stays as it is
            target = folders[j] / f"{videoid}.npy"
            tmp = target.with_suffix(".tmp.npy")
            np.save(tmp, np.ascontiguousarray(states[:, j * encoder.dim:(j + 1) * encoder.dim]))
            tmp.replace(target)
    for layer, out in zip(encoder.layers, folders):
        write_json(out / "speech.json", dict(backbone=backbone, layer=layer, dim=encoder.dim,
                                             hop_seconds=HOP_SECONDS, sample_rate=SAMPLE_RATE, weights=source,
                                             time_axis="row j is centred at j * hop_seconds on the video clock"))
    return folders


def load_speech_bank(folders: Sequence[Path], videoids, has_audio) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every video's cached states of the given layers' folders side by side in one
    (rows, len(folders) * D) float16 array with one zero row last (the filler of windows past a
    video's ends, as utils.readers.audio.load_bank's floor column; the caller sets it to its
    normalisation mean, so that it normalises to zero): (bank, offset, n_rows) with video i's row j
    at bank[offset[i] + j]. DataError naming a cache file that is missing, unreadable, of another
    width, of another length than the first layer's, or not finite."""
    banks = []
    for folder in folders:
        dim = int(read_json(folder / "speech.json")["dim"])
        banks.append(load_rows(folder, videoids, has_audio, dim, stored_transposed=False, filler=0.0,
                               again="delete it and run again"))
    bank, offset, n = banks[0]
    for folder, (other, _, other_n) in zip(folders[1:], banks[1:]):
        if not np.array_equal(other_n, n):
            i = int(np.flatnonzero(other_n != n)[0])
            raise DataError(f"{folder / (str(list(videoids)[i]) + '.npy')}: {other_n[i]} rows, the other layers have "
                            f"{n[i]}; delete it and run again")
    if len(banks) > 1:
        bank = np.concatenate([b for b, _, _ in banks], axis=1)
    return bank, offset, n


def speech_stats(bank, offset, n, videos_used) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (float32 (D,)) over the given videos' rows (train only)."""
    rows = [bank[offset[i]:offset[i] + n[i]].astype(np.float64) for i in videos_used]
    rows = np.concatenate(rows) if rows else np.zeros((1, bank.shape[1]))
    return rows.mean(0).astype(np.float32), np.maximum(rows.std(0), 1e-3).astype(np.float32)


class SpeechPipe:
    """Gathered windows (B, L * D, W) float16 with their widths -> (states (B, L * D, W) float32
    normalised per dimension, keep (B, W) float32: 1 for the window's own rows) on the device, for
    utils.models.speech.SpeechHead, which pools them (the same call as AudioPipe). In training a
    share `drop` of each window's rows is dropped at random (at least one kept)."""

    def __init__(self, mean, std, device: torch.device, drop: float = 0.0):
        self.mean = torch.as_tensor(mean, device=device)[None, :, None]
        self.std = torch.as_tensor(std, device=device)[None, :, None]
        self.device, self.drop = device, drop

    def __call__(self, states: torch.Tensor, widths: torch.Tensor, train: bool = False):
        x = (states.to(self.device).float() - self.mean) / self.std
        w = widths.to(self.device)
        keep = (torch.arange(x.shape[-1], device=self.device)[None] < w[:, None]).float()
        if train and self.drop > 0:   # a time-domain augmentation
            keep = keep * (torch.rand_like(keep) >= self.drop).float()
            keep[:, 0] = torch.where(keep.sum(1) == 0, 1.0, keep[:, 0])
        return x, keep
