"""The method contract: every hook the engine, the evaluation protocols, export and the figures use, each
with its default. A method subclasses `Method`, implements ``forward`` and ``embed``, and overrides only
what it needs; callers read these names directly instead of probing with ``getattr``.

Optional abilities (``reconstruct``, ``branch_views``, ``classify``, ``embed_head``) default to a one-line
`UserError`; ``Method.implements(name)`` says whether a method has its own, which is how the figures and
monitors decide what to draw.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import UserError

OPTIONAL_HOOKS = ("reconstruct", "branch_views", "classify", "embed_head")


class Method(nn.Module):
    """Base of every registered method (see the module docstring)."""

    # Facts about the method, read before or without building one.
    needs_labels: ClassVar[bool] = False
    """The engine refuses unlabelled data in one line (supervised training)."""
    default_recipe: ClassVar[str | None] = None
    """The recipe ``unveil pretrain --method NAME`` starts from (e.g. a ViT and AdamW for MAE)."""
    headline_protocol: ClassVar[str] = ""
    """The evaluation ``unveil eval`` leads with for this method ("" = kNN)."""
    sync_batchnorm: ClassVar[bool] = False
    """Under DDP on CUDA, convert BatchNorm to SyncBatchNorm (heads whose BN must see the global batch)."""
    ddp_broadcast_buffers: ClassVar[bool] = True
    """False when the method gathers its buffers itself (MoCo's queue): DDP must not overwrite them."""
    normalized_inputs: ClassVar[bool] = True
    """The encoder sees normalised images; False: [0, 1] pixels (the autoencoders). Fine-tuning keeps it."""
    limits: ClassVar[dict[str, str]] = {}
    """Allowed ranges of numeric settings ("> 0", ">= 1", "[0, 1]", "(0, 1)"), checked with the types of the
    constructor's arguments before it runs (``unveil.methods.settings``)."""

    registered_name: ClassVar[str] = ""
    """The name the method is registered under (set by ``@register``)."""

    backbone: nn.Module
    """The encoder that is evaluated and exported (an attribute or a property)."""

    # Set by the constructor where they apply.
    norm_pix_loss: bool = False
    """The reconstruction target is normalised per patch (MAE): figures un-normalise before drawing."""
    eval_filter: dict[str, Any] | None = None
    """An input filter the encoder must also see at evaluation (MSCN's high-pass), recorded in exports."""
    data_info: Any = None
    """The dataset facts the method was built for (size, mean, std, classes)."""

    @property
    def has_views(self) -> bool:
        """Whether the method holds an augmentation pipeline ``views(images, generator)`` (a submodule named
        ``views``: declared by assignment in the constructor, as nn.Module registers it)."""
        return isinstance(self._modules.get("views"), nn.Module)

    @property
    def backbone_spec(self) -> dict[str, Any] | None:
        """The backbone settings that rebuild ``backbone`` when they differ from the run's ``backbone``
        section (an autoencoder's encoder); None: the run's own."""
        return None

    # The two hooks every method implements.
    def forward(self, images: Tensor, labels: Tensor | None, generator: torch.Generator) -> dict[str, Tensor]:
        """One training step's losses: a dict with ``loss`` (what is minimised) and any logged terms."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def embed(self, images: Tensor) -> Tensor:
        """Evaluation features ``(B, D)`` of a uint8 or float batch (the encoder's pooled output)."""
        raise NotImplementedError(f"{type(self).__name__}.embed")

    # Training hooks with do-nothing defaults.
    def param_groups(self) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups; None: the library's default (no weight decay on norms and biases)."""
        return None

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step (momentum encoders update here)."""

    def reset_targets(self) -> None:
        """Called after the engine loads initial weights: momentum targets restart equal to the online network."""

    def prime(self, batches: Iterator[Tensor], generator: torch.Generator) -> None:
        """Called once before the first step of a fresh run (never on resume: the state is in the checkpoint),
        under no_grad and the run's precision, with the training batches: state that must start from data
        rather than from random numbers fills here (MoCo's queue). Take only the batches needed."""

    # Optional abilities: a one-line error unless the method has its own.
    def embed_head(self, images: Tensor) -> Tensor:
        """The projection head's embedding (kNN with ``features: head``)."""
        raise UserError(f"kNN with features=head: method {self._name()} has no projection head to embed with (moco, "
                        "mixdet, simclr and byol have one): use features=backbone")

    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
        """(clean, corrupted or None, reconstruction) for the reconstruction figures."""
        raise UserError(f"method {self._name()} does not reconstruct images: reconstruction figures are for the "
                        "autoencoders and masked image models")

    def branch_views(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The views each branch sees in one step (``unveil preview``)."""
        raise UserError(f"method {self._name()} has no branch views to preview")

    def classify(self, images: Tensor) -> Tensor:
        """Class logits (the classify monitor of supervised training and fine-tuning)."""
        raise UserError(f"method {self._name()} does not classify: use train.monitor=knn")

    @classmethod
    def implements(cls, hook: str) -> bool:
        """Whether this method has its own ``hook`` (one of OPTIONAL_HOOKS) rather than the default error."""
        if hook not in OPTIONAL_HOOKS:
            raise ValueError(f"{hook!r} is not an optional hook: {', '.join(OPTIONAL_HOOKS)}")
        return getattr(cls, hook) is not getattr(Method, hook)

    def _name(self) -> str:
        return self.registered_name or type(self).__name__.lower()

