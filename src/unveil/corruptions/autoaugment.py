"""AutoAugment (OverlayAE baseline, docs/design.md 1.2): torchvision's policies, per image, batched.

torchvision's ``AutoAugment`` draws one sub-policy (and one apply/sign decision per op) for the
whole tensor it is given, from the global RNG. Here every image gets its own draws, all from the
``generator``: a sub-policy index, and for each of the sub-policy's two ops an apply decision
(``u <= p``, as torchvision) and a sign. Those are AutoAugment's only random choices: the ops
themselves (torchvision's ``_apply_op``, the very function ``AutoAugment`` calls) are
deterministic, so no global RNG is touched and the same generator gives the same output.
Images are then grouped: for each sub-policy present (<= 25 groups) and each op, the images that
apply it with the same sign go through one batched torchvision call. The loop is over groups,
never over images; the decisions are copied to the host once (one sync per batch).

AutoAugment is defined on 8-bit images (Posterize and Equalize need uint8): a float batch in
[0, 1] is quantised to uint8 for the ops, and images to which no op applied are returned
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

from ..tensors import rand
from ._common import check_batch, check_choice, check_generator, fail
from .registry import Corruption, register_corruption

POLICIES = {p.value: p for p in AutoAugmentPolicy}  # imagenet, cifar10, svhn


@cache
def _policy(name: str) -> AutoAugment:
    return AutoAugment(POLICIES[name])


def autoaugment(
    x: Tensor,
    generator: torch.Generator,
    policy: str = "imagenet",
    interpolation: InterpolationMode = InterpolationMode.NEAREST,
    fill: list[float] | None = None,
) -> Tensor:
    """Apply a torchvision AutoAugment policy with an independent sub-policy per image.

    ``x`` is uint8 in [0, 255] or float in [0, 1]; the output has the input's dtype and device.
    """
    check_batch(x, "autoaugment", floating=False)
    if not (x.dtype == torch.uint8 or x.is_floating_point()):
        fail(f"autoaugment: expected uint8 or float images in [0, 1], got dtype {x.dtype}")
    check_generator(generator, x.device, "autoaugment")
    check_choice(policy, "policy", tuple(POLICIES))
    aa = _policy(policy)
    b, _, h, w = x.shape
    if x.dtype == torch.uint8:
        out = x.clone()
    else:
        out = (x.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)

    # All random draws, from the generator: sub-policy, apply decisions, signs.
    sub = torch.randint(0, len(aa.policies), (b,), generator=generator, device=x.device)
    probs = rand((b, 2), generator)
    signs = torch.randint(0, 2, (b, 2), generator=generator, device=x.device)
    draws = torch.cat([sub[:, None].to(probs.dtype), probs, signs.to(probs.dtype)], dim=1).cpu()  # one sync
    sub_c, probs_c, signs_c = draws[:, 0].long(), draws[:, 1:3], draws[:, 3:5].long()

    space = aa._augmentation_space(10, (h, w))
    touched = torch.zeros(b, dtype=torch.bool)
    for k in sub_c.unique().tolist():
        members = (sub_c == k).nonzero().squeeze(1)
        for i, (op_name, p, magnitude_id) in enumerate(aa.policies[k]):
            applied = members[probs_c[members, i] <= p]
            if applied.numel() == 0:
                continue
            touched[applied] = True
            magnitudes, signed = space[op_name]
            magnitude = float(magnitudes[magnitude_id].item()) if magnitude_id is not None else 0.0
            # torchvision negates the magnitude of a signed op when its sign draw is 0.
            groups = [(applied, magnitude)]
            if signed and magnitude != 0.0:
                neg = signs_c[applied, i] == 0
                groups = [(applied[~neg], magnitude), (applied[neg], -magnitude)]
            for idx, mag in groups:
                if idx.numel() == 0:
                    continue
                idx_dev = idx.to(x.device, non_blocking=True)
                result = _apply_op(out.index_select(0, idx_dev), op_name, mag, interpolation=interpolation, fill=fill)
                out.index_copy_(0, idx_dev, result)

    if x.dtype == torch.uint8:
        return out
    keep = ~touched.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(keep, x, out.to(x.dtype) / 255.0)


@register_corruption("autoaugment")
@dataclass(frozen=True)
class AutoAugmentCorruption(Corruption):
    """torchvision AutoAugment (OverlayAE baseline), an independent sub-policy per image."""

    policy: str = "imagenet"

    def __post_init__(self) -> None:
        check_choice(self.policy, "policy", tuple(POLICIES))

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return autoaugment(x, generator, self.policy)
