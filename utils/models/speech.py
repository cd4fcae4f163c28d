"""The small head the speech-encoder features train (utils/readers/speech.py caches them)."""
from __future__ import annotations

import torch
from torch import nn


class SpeechHead(nn.Module):
    """(B, in_dim) pooled window states -> (B, num_classes) logits, with the timm-style calls
    utils.models.backbones.features_and_logits uses; the pre-logit feature is `width` wide."""

    def __init__(self, in_dim: int, num_classes: int, width: int = 256, dropout: float = 0.2):
        super().__init__()
        self.num_features = width
        self.body = nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, width), nn.GELU(),
                                  nn.Dropout(dropout))
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
