"""Standard SSL views as batched tensor ops on the training device (crop, flip, jitter, gray, blur, solarize).

A uint8 batch (B, 3, H, W) goes in, float views (B, 3, S, S) come out; all randomness comes from
the ``torch.Generator`` passed in, so a seeded run makes the same views on every device.
"""

from . import ops
from .config import PRESETS, SECOND_VIEW, ViewConfig, default_preset_for, view_pair, view_preset
from .pipeline import ViewPipeline, eval_transform

__all__ = [
    "PRESETS",
    "SECOND_VIEW",
    "ViewConfig",
    "ViewPipeline",
    "default_preset_for",
    "eval_transform",
    "ops",
    "view_pair",
    "view_preset",
]
