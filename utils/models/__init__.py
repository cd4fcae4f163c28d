"""The networks: timm backbones, the Modal Fusion Module, the DFEW clip model."""
