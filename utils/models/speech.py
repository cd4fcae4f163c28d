"""The small head the speech-encoder features train (utils/readers/speech.py caches them), with two
options: a learnt weighted sum of several cached layers, and the encoder's top layers fine-tuned."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class TopLayers(nn.Module):
    """Transformer layers first+1..last of a torchaudio Wav2Vec2Model / WavLM (copies with their
    pretrained weights, trainable) run on cached layer-`first` states of a window:
    forward(x (B, W, D) float32, pad (B, W) bool, True where a row is not the window's)
    -> (B, W, D). Over a whole track this gives the encoder's layer-`last` states exactly
    (tests/test_speech.py); on a window, attention sees only the window's rows.

    WavLM's relative position bias is made by its first layer's attention and shared by the layers
    above it (Chen et al. 2022, WavLM, sec. 2.2), so that module comes along, frozen."""

    def __init__(self, model: nn.Module, first: int, last: int):
        super().__init__()
        layers = model.encoder.transformer.layers
        if not 0 < first < last <= len(layers):
            raise ValueError(f"fine-tuned layers {first + 1}..{last} outside 2..{len(layers)}")
        self.layers = nn.ModuleList(copy.deepcopy(layers[k]) for k in range(first, last)).requires_grad_(True)
        attention = layers[0].attention
        self.bias = (copy.deepcopy(attention).requires_grad_(False)
                     if getattr(attention, "rel_attn_embed", None) is not None else None)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        position_bias, mask, key_mask = None, None, None
        if self.bias is not None:   # WavLM: its attention takes the padding as an additive key mask
            position_bias = self.bias.compute_bias(x.shape[1], x.shape[1])[None].repeat(len(x), 1, 1, 1)
            key_mask = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, float("-inf"))
        else:   # wav2vec 2.0 / HuBERT: the (B, 1, W, W) mask Wav2Vec2Model builds for padded batches
            mask = (-10000.0 * pad[:, None, None, :].to(x.dtype)).expand(-1, 1, x.shape[1], -1)
        for layer in self.layers:
            x, position_bias = layer(x, mask, position_bias=position_bias, key_padding_mask=key_mask)
        return x


class SpeechHead(nn.Module):
    """(states (B, L * D, W), keep (B, W)) from utils.readers.speech.SpeechPipe -> (B, num_classes)
    logits, with the timm-style calls utils.models.backbones.features_and_logits uses; the pre-logit
    feature is `width` wide.

    The window's states are pooled into their mean and std over its kept rows. With L > 1 layers
    the head first takes their softmax-weighted sum, weights learnt (SUPERB, Yang et al. 2021).
    With `top` (TopLayers) the cached states (L = 1, not normalised) first go through the
    fine-tuned layers, then a per-row layer norm."""

    def __init__(self, dim: int, num_classes: int, width: int = 256, dropout: float = 0.2, n_layers: int = 1,
                 top: TopLayers | None = None):
        super().__init__()
        if top is not None and n_layers != 1:
            raise ValueError("fine-tuned top layers take one cached layer")
        self.dim, self.num_features, self.top = dim, width, top
        self.layer_weights = nn.Parameter(torch.zeros(n_layers)) if n_layers > 1 else None
        self.body = nn.Sequential(nn.LayerNorm(2 * dim), nn.Dropout(dropout), nn.Linear(2 * dim, width), nn.GELU(),
                                  nn.Dropout(dropout))
        self.head = nn.Linear(width, num_classes)

    def mixed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L * D, W) -> (B, D, W): the weighted sum of the layers, or the fine-tuned layers' output."""
        if self.layer_weights is not None:
            w = self.layer_weights.softmax(0)
            return (x.unflatten(1, (len(w), self.dim)) * w[None, :, None, None]).sum(1)
        return x

    def forward_features(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, keep = inputs
        if self.top is not None:
            x = F.layer_norm(self.top(x.transpose(1, 2), keep == 0), (self.dim,)).transpose(1, 2)
        x = self.mixed(x)
        keep = keep[:, None]
        count = keep.sum(-1).clamp(min=1)
        mean = (x * keep).sum(-1) / count
        var = (((x - mean[..., None]) * keep) ** 2).sum(-1) / count
        return self.body(torch.cat([mean, var.clamp(min=1e-6).sqrt()], 1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups for layer-wise lr decay (--layer-decay): the fine-tuned layers
        bottom to top, then the head (layer weights, body, classifier) with the full lr."""
        return dict(stem=r"^top\.bias", blocks=[(r"^top\.layers\.(\d+)", None),
                                                (r"^(?:layer_weights|body|head)", (1 << 20,))])

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.head(self.forward_features(inputs))
