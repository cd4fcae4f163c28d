"""Backbones from timm, with offline weights and the pooled feature every branch exports."""
from __future__ import annotations

from pathlib import Path

import timm
import torch

from utils.files import DataError


def create_model(name: str, num_classes: int, pretrained: bool = False,
                 pretrained_path: str | None = None, img_size: int | None = None,
                 in_chans: int = 3, drop_path: float = 0.0) -> torch.nn.Module:
    """timm.create_model with ImageNet weights from the hub, or from a local file offline.

    `pretrained_path` takes the file timm would download (.safetensors or .pth/.bin); the
    classifier is re-initialised for `num_classes` as with hub weights. Hub weights that cannot
    be fetched (no network, a hub that refuses) are a DataError naming both ways out.
    """
    kwargs = dict(num_classes=num_classes, in_chans=in_chans)
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if img_size and timm.models.get_pretrained_cfg_value(name, "fixed_input_size"):
        kwargs["img_size"] = img_size   # Swin and ViT build their position tables for one size
    if pretrained_path:
        path = Path(pretrained_path)
        if not path.is_file():
            raise DataError(f"{path}: --pretrained-path file not found")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except (RuntimeError, ValueError, KeyError, OSError) as err:   # a file of another model or format
            reason = (str(err).strip().splitlines() or [""])[0][:160]
            raise DataError(f"{path}: not loadable as {name} weights ({type(err).__name__}: {reason})") from None
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as err:   # huggingface_hub's LocalEntryNotFoundError and HTTP errors are OSErrors
        if not pretrained:
            raise
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise DataError(f"the ImageNet weights of {name} could not be fetched from the timm hub "
                        f"({type(err).__name__}: {reason}); pass --pretrained-path FILE (the .safetensors timm "
                        "would download, copied from a machine with internet) or --no-pretrained") from None


def normalisation(model: torch.nn.Module) -> tuple[tuple, tuple]:
    """Mean and std the backbone was pretrained with (ImageNet's for most)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def features_and_logits(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled pre-logit feature (768-d for Swin-T) and the logits, in one pass."""
    features = model.forward_head(model.forward_features(x), pre_logits=True)
    return features, model.get_classifier()(features)


def load_weights(model: torch.nn.Module, path) -> dict:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    return checkpoint
