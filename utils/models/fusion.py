"""The Modal Fusion Module (Kim, Kim, Won, ABAW5 2023) and the token sequences it reads.

Image tokens are the image branch's features f_I of frames t-16 .. t+16 at stride 4 (9 tokens;
`context` and `stride` configurable, context 0 gives the single-frame variant); frames past
either end of the txtid are masked out. Audio tokens are the audio branch's three window
features of frame t. Both are projected to a common width with learned modality and position
embeddings, attend to each other (Y_IA = MHA(Q=audio, K=V=image), Y_AI = MHA(Q=image,
K=V=audio)), and the concatenation goes through two pre-norm transformer encoder layers and a
masked mean pool to the fusion head Y_T. Linear heads on f_I(t) and on the mean audio feature
give Y_I and Y_A; the three are trained together and ensembled.

Tokens are gathered per batch from the cached features by (txtid, frame) key, never by row
position, so the order of rows in a prediction file does not matter and no per-sample copy of
the context is ever stored.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from utils.evaluation.preds import order_by_key


def context_offsets(context: int, stride: int) -> np.ndarray:
    """Frame offsets of the image tokens: -context .. +context every `stride` frames."""
    if context <= 0:
        return np.zeros(1, np.int64)
    return np.arange(-context, context + 1, max(stride, 1), dtype=np.int64)


def context_rows(txtid: np.ndarray, frame: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N, T) row index of (txtid, frame + offset) for every row, -1 where no such row exists.

    Built by key lookup, so it is correct for rows in any order."""
    codes, _ = pd.factorize(txtid)
    key = codes.astype(np.int64) << 32 | frame.astype(np.int64)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    wanted = key[:, None] + offsets[None, :]
    pos = np.clip(np.searchsorted(sorted_key, wanted), 0, len(key) - 1)
    found = sorted_key[pos] == wanted
    return np.where(found, order[pos], -1)


def sort_rows(preds: dict) -> dict:
    """A prediction dict with its rows in (txtid, frame) order, whatever order it was stored in."""
    order = order_by_key(preds["txtid"], preds["frame"])
    if np.array_equal(order, np.arange(len(order))):
        return preds
    return {k: v[order] for k, v in preds.items()}


class TokenDataset(Dataset):
    """Rows `rows` of a split, each yielding its image-token context and its audio tokens.

    __getitems__ returns (image (B, T, Di) float16, image_mask (B, T) bool, audio (B, 3, Da)
    float16, labels (B,)), gathered from the split's cached feature arrays."""

    def __init__(self, image: np.ndarray, audio: np.ndarray, context: np.ndarray, labels: np.ndarray,
                 rows: np.ndarray | None = None, keys: tuple[np.ndarray, np.ndarray] | None = None):
        self.keys = keys   # (txtid, frame) of every row of the split, for error messages
        self.image, self.audio = torch.from_numpy(image), torch.from_numpy(audio)
        self.context = torch.from_numpy(context)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.rows = torch.from_numpy(np.arange(len(labels)) if rows is None else np.asarray(rows))

    def set_epoch(self, epoch: int) -> None:   # the Trainer's hook; nothing changes per epoch
        pass

    def describe(self, indices) -> list[str]:
        """'txtid/frame' of the given samples, for error messages."""
        rows = self.rows[torch.as_tensor(np.asarray(indices))].numpy()
        return [f"{self.keys[0][r]}/{int(self.keys[1][r]):05d}" if self.keys else f"row {r}" for r in rows]

    def __len__(self):
        return len(self.rows)

    def __getitems__(self, indices):
        rows = self.rows[torch.as_tensor(indices)]
        context = self.context[rows]
        mask = context >= 0
        image = self.image[context.clamp(min=0)]
        return image, mask, self.audio[rows], self.labels[rows]


class ModalFusionModule(nn.Module):
    def __init__(self, image_dim: int, audio_dim: int, num_classes: int, n_image_tokens: int,
                 n_audio_tokens: int = 3, width: int = 256, heads: int = 4, layers: int = 2,
                 mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        self.centre = n_image_tokens // 2
        self.image_head = nn.Linear(image_dim, num_classes)
        self.audio_head = nn.Linear(audio_dim, num_classes)
        self.image_proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, width))
        self.audio_proj = nn.Sequential(nn.LayerNorm(audio_dim), nn.Linear(audio_dim, width))
        # Position within each modality plus which modality: the encoder sees one sequence.
        self.image_pos = nn.Parameter(torch.zeros(1, n_image_tokens, width))
        self.audio_pos = nn.Parameter(torch.zeros(1, n_audio_tokens, width))
        self.modality = nn.Parameter(torch.zeros(2, width))
        for p in (self.image_pos, self.audio_pos, self.modality):
            nn.init.trunc_normal_(p, std=0.02)
        self.audio_to_image = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.image_to_audio = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        layer = nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.fusion_head = nn.Linear(width, num_classes)
        self.num_features = width

    def forward(self, image, image_mask, audio):
        """image (B, T, Di), image_mask (B, T) True where the frame exists, audio (B, A, Da).
        Returns the logits of the fusion, image and audio heads and the pooled fusion feature."""
        image, audio = image.float(), audio.float()
        y_image = self.image_head(image[:, self.centre])
        y_audio = self.audio_head(audio.mean(1))
        img = self.image_proj(image) + self.image_pos + self.modality[0]
        aud = self.audio_proj(audio) + self.audio_pos + self.modality[1]
        y_ia, _ = self.audio_to_image(aud, img, img, key_padding_mask=~image_mask, need_weights=False)
        y_ai, _ = self.image_to_audio(img, aud, aud, need_weights=False)
        tokens = torch.cat([y_ia, y_ai], 1)
        valid = torch.cat([torch.ones_like(audio[..., 0], dtype=torch.bool), image_mask], 1)
        tokens = self.norm(self.encoder(tokens, src_key_padding_mask=~valid))
        weights = valid.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1)
        return dict(fusion=self.fusion_head(pooled), image=y_image, audio=y_audio, features=pooled)


# The MFM's three heads, in the order of the model's outputs and the preds files' logits_<head>.
HEADS = ("fusion", "image", "audio")


def ensemble_logits(outputs: dict) -> torch.Tensor:
    """The three heads' ensemble: mean log-probability, so no head dominates by its scale."""
    return torch.stack([F.log_softmax(outputs[k].float(), -1) for k in HEADS]).mean(0)
