"""DualTAP: a dual-task adversarial protector for screenshots (Zhang et al., arXiv 2511.13248).

A small U-Net generator G runs on the device, before a screenshot leaves it:
``x_prot = clip(x + eps * A_shaped * G(x, A), 0, 1)``. The attention A says where the
personal data is and where the agent's task is:

- saliency ``S(x) = norm01(blur(mean_RGB |d loss / d x|))`` of the surrogate reader's loss on
  the true text of the privacy boxes (``S_priv``) and of the task boxes (``S_task``);
- contrastive attention ``A = ReLU(S_priv - S_task) / max``;
- shaping (official defaults): ``A ** gamma``, max-pool dilation, top-k% binarisation (which
  takes precedence over a threshold), then ``mix * A + (1 - mix)``. The shaped map is a
  per-pixel eps: ``|x_prot - x| <= eps * A_shaped <= eps`` everywhere.

Only G is trained (Adam), against the frozen surrogate (EasyOCR's recognizer, CTC instead of the
paper's MLLM cross-entropy; see :class:`~robustbench_cl.models.ocr.RecognizerSurrogate`)::

    L = alpha * CTC(task text | x_prot)
        - beta * mean_t CTC(PII text | T_t(x_prot))       # EOT, privacy branch only
        + 0.05 * mean(((1 - A_shaped) * delta) ** 2) + 0.01 * TV(delta)

The EOT transforms T_t imitate what a reader does to a screenshot before recognising it: colour
jitter on the screen (kornia, p 0.6), detector-box jitter (the crop's edges move by up to
``box_jitter`` pixels), then a small affine warp (p 0.9) and a Gaussian blur (p 0.3) of the crop.
The official transforms warp the whole screen by up to 10 degrees and 7 %; at our crop-level
reading that would move the text out of its box, so the warp is applied to the crop instead.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.data.privscreen import (
    boxes_tensor,
    check_same_size,
    screen_tensor,
    text_targets,
)
from robustbench_cl.defenses.base import Defense, _canonical
from robustbench_cl.errors import UserError
from robustbench_cl.models.layers import max_pool2d
from robustbench_cl.models.ocr import CropEOT, RecognizerSurrogate
from robustbench_cl.registry import register_defense
from robustbench_cl.utils import cache_file, parse_fraction, seeded, stable_hash

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- generator
class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """A U-Net (double convs, max-pool down, bilinear up, skip connections) with a tanh output.

    Input: the screen (3 channels) and its attention map (1); output: delta_raw in [-1, 1].
    The official generator has widths 64..1024 at 448 px; ``width`` 16 and ``depth`` 3 fit a CPU.
    """

    def __init__(self, width: int = 16, depth: int = 3, in_channels: int = 4) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_Block(in_channels, widths[0])])
        self.down.extend(_Block(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(
            _Block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))
        )
        self.out = nn.Conv2d(widths[0], 3, 1)
        self.depth = depth

    def forward(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x * 2 - 1, attention], 1)
        skips = []
        for index, block in enumerate(self.down):
            h = block(h if index == 0 else max_pool2d(h, 2))
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], 1))
        return torch.tanh(self.out(h))


# ---------------------------------------------------------------------------- attention
def normalise01(s: torch.Tensor) -> torch.Tensor:
    """Per image: (s - min) / (max - min), 0 where the map is flat."""
    flat = s.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = (high - low).clamp(min=1e-12)
    out = (flat - low[:, None]) / span[:, None]
    return torch.where((high - low)[:, None] > 1e-12, out, torch.zeros_like(out)).view_as(s)


def saliency(gradient: torch.Tensor) -> torch.Tensor:
    """``norm01(blur(mean_RGB |g|))``: (N, 3, H, W) gradient -> (N, 1, H, W) in [0, 1]."""
    import kornia

    s = gradient.abs().mean(1, keepdim=True)
    s = kornia.filters.gaussian_blur2d(s, (3, 3), (0.5, 0.5))
    return normalise01(s)


def contrast(s_privacy: torch.Tensor, s_task: torch.Tensor) -> torch.Tensor:
    """``ReLU(S_priv - S_task)``, renormalised by its maximum when that is positive."""
    a = (s_privacy - s_task).clamp(min=0)
    peak = a.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None, None]
    return torch.where(peak > 1e-12, a / peak, a)


def shape_attention(
    attention: torch.Tensor,
    gamma: float = 2.0,
    dilate: int = 3,
    topk_percent: float = 60.0,
    threshold: float = 0.75,
    mix: float = 0.9,
) -> torch.Tensor:
    """DualTAP's shaping: gamma, max-pool dilation, top-k% (or threshold) binarisation, mix.

    Top-k keeps the ``topk_percent`` % largest pixels of each map (ties at the cut included);
    it takes precedence over ``threshold`` (0 disables either). Only pixels with some attention
    are kept: where fewer than k % of the pixels have any, the official rule (``a >= cut`` with a
    cut of 0) would select the whole screen and spend the full eps on the task text too. The
    result is in [1 - mix, 1].
    """
    a = attention.clamp(0, 1)
    if gamma != 1.0:
        a = a.pow(gamma)
    if dilate > 1:
        a = max_pool2d(a, dilate, stride=1, padding=dilate // 2)
    if topk_percent > 0:
        flat = a.flatten(1)
        k = max(1, int(flat.shape[1] * min(100.0, topk_percent) / 100.0))
        cut = flat.topk(k, dim=1).values[:, -1].view(-1, 1, 1, 1)
        a = ((a >= cut) & (a > 0)).to(a.dtype)
    elif threshold > 0:
        a = (a >= threshold).to(a.dtype)
    return mix * a + (1 - mix)


def total_variation(delta: torch.Tensor) -> torch.Tensor:
    return (delta[..., 1:, :] - delta[..., :-1, :]).abs().mean() + (
        delta[..., :, 1:] - delta[..., :, :-1]
    ).abs().mean()


# ---------------------------------------------------------------------------- the protector
class Protector(nn.Module):
    """G with its eps and attention settings; ``forward(x, attention) -> x_prot``."""

    def __init__(self, eps: float, width: int, depth: int, shaping: dict[str, float]) -> None:
        super().__init__()
        self.generator = UNet(width, depth)
        self.eps = eps
        self.shaping = dict(shaping)

    def budget(self, attention: torch.Tensor) -> torch.Tensor:
        """The per-pixel eps: ``eps * A_shaped``, (N, 1, H, W)."""
        return self.eps * shape_attention(attention, **self.shaping)

    def delta(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.generator(x, attention) * self.budget(attention)

    def forward(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return (x + self.delta(x, attention)).clamp(0, 1)


def attention_maps(surrogate, x: torch.Tensor, screens: list, mode: str) -> torch.Tensor:  # noqa: ANN001
    """The attention DualTAP's generator sees: ``contrastive``, ``privacy`` (S_priv alone) or
    ``none`` (all ones: a global protector)."""
    if mode == "none":
        return torch.ones_like(x[:, :1])
    maps = {}
    for kind in ("privacy", "task"):
        items, texts = text_targets(screens, kind)
        probe = x.detach().clone().requires_grad_(True)
        if items:
            loss = surrogate.loss(probe, boxes_tensor(items, x.device), texts).sum()
            (gradient,) = torch.autograd.grad(loss, probe)
        else:
            gradient = torch.zeros_like(x)
        maps[kind] = saliency(gradient)
    if mode == "privacy":
        return maps["privacy"]
    return contrast(maps["privacy"], maps["task"])


@register_defense("dualtap", "DualTAP screenshot protector (U-Net + contrastive attention)")
class DualTAP(Defense):
    """DualTAP, trained against EasyOCR's recognizer on screens (``screens:`` config section).

    ``attention``: ``contrastive`` (the method), ``privacy`` (S_priv alone, no contrast) or
    ``none`` (a global protector). ``alpha`` 0 drops the task loss.

    Args:
        eps: the protector's l-inf budget; a number or a fraction such as `32/255`.
        alpha: weight of the task loss (the agent must still find the buttons); 0 drops it.
        beta: weight of the privacy loss (the OCR must not read the PII).
        attention: `contrastive` (the method), `privacy` (the PII attention alone) or `none` (a
            global protector).
        gamma: the attention map's exponent.
        dilate: the kernel size (odd, 1 to 15) of the max-pool that dilates the attention map.
        topk_percent: keep the top-k % of attention pixels (takes precedence over `threshold`; 0
            disables it).
        threshold: binarise the attention at this value when `topk_percent` is 0.
        mix: the shaped map is `mix * A + (1 - mix)`, in [1 - mix, 1].
        outside_weight: weight of the perturbation outside the attention.
        tv_weight: weight of the total-variation smoothness term.
        eot_samples: random views per PII box averaged per step (expectation over transformation:
            a shifted crop, colour jitter, a small affine warp and blur).
        box_jitter: the crops' random shift, in pixels.
        steps: generator training steps.
        batch_size: screens per step.
        lr: the generator's learning rate.
        width: the U-Net generator's base width.
        depth: the U-Net's depth (1 to 6).
        seed: the training seed.
    """

    name = "dualtap"
    kind = "preprocessor"
    tasks = ("screens",)
    version = 2  # 2: top-k keeps only pixels with some attention

    def __init__(
        self,
        eps: float | str = 32 / 255,
        alpha: float = 1.0,
        beta: float = 1.0,
        attention: str = "contrastive",
        gamma: float = 2.0,
        dilate: int = 3,
        topk_percent: float = 10.0,
        threshold: float = 0.75,
        mix: float = 0.9,
        outside_weight: float = 0.05,
        tv_weight: float = 0.01,
        eot_samples: int = 2,
        box_jitter: float = 2.0,
        steps: int = 150,
        batch_size: int = 2,
        lr: float = 1e-3,
        width: int = 16,
        depth: int = 3,
        seed: int = 0,
    ) -> None:
        if attention not in ("contrastive", "privacy", "none"):
            raise UserError(
                "attention", f"unknown attention {attention!r}", "use contrastive, privacy or none"
            )
        try:
            eps = parse_fraction(eps)
        except ValueError as error:
            raise UserError("eps", str(error), "give eps as a fraction, e.g. 32/255") from None
        if not 0 < eps <= 1:
            raise UserError(
                "eps", f"eps {eps} is outside (0, 1]", "give eps as a fraction, e.g. 32/255"
            )
        self.eps = float(eps)
        self.attention = attention
        numbers = {
            "alpha": (alpha, float, 0.0, None),
            "beta": (beta, float, 0.0, None),
            "gamma": (gamma, float, 1e-6, None),
            "dilate": (dilate, int, 1, 15),
            "topk_percent": (topk_percent, float, 0.0, 100.0),
            "threshold": (threshold, float, 0.0, 1.0),
            "mix": (mix, float, 0.0, 1.0),
            "outside_weight": (outside_weight, float, 0.0, None),
            "tv_weight": (tv_weight, float, 0.0, None),
            "eot_samples": (eot_samples, int, 1, None),
            "box_jitter": (box_jitter, float, 0.0, None),
            "steps": (steps, int, 1, None),
            "batch_size": (batch_size, int, 1, None),
            "lr": (lr, float, 1e-12, None),
            "width": (width, int, 1, None),
            "depth": (depth, int, 1, 6),
            "seed": (seed, int, None, None),
        }
        for name, (value, kind, low, high) in numbers.items():
            try:
                number = kind(value)
            except (TypeError, ValueError):
                raise UserError(
                    name, f"{value!r} is not a number", f"give {name} as a number"
                ) from None
            if (low is not None and number < low) or (high is not None and number > high):
                bounds = f">= {low}" + (f" and <= {high}" if high is not None else "")
                raise UserError(name, f"{name} {number} is out of range", f"use a value {bounds}")
            setattr(self, name, number)
        if self.dilate % 2 == 0:
            raise UserError(
                "dilate", f"dilate {self.dilate} is even", "use an odd kernel: 1, 3, 5, ..."
            )

    def shaping(self) -> dict[str, float]:
        return {
            "gamma": self.gamma,
            "dilate": self.dilate,
            "topk_percent": self.topk_percent,
            "threshold": self.threshold,
            "mix": self.mix,
        }

    def new_protector(self) -> Protector:
        with seeded(self.seed):
            return Protector(self.eps, self.width, self.depth, self.shaping())

    def screens_cache_path(self, data_key: str) -> Any:
        key = stable_hash(
            {
                "defense": self.name,
                "version": self.version,
                "settings": _canonical(self.settings()),
                "data": data_key,
                "surrogate": "easyocr english_g2",
            }
        )
        return cache_file("defenses", f"{self.name}-{key}")

    def attention_for(self, surrogate, x: torch.Tensor, screens: list) -> torch.Tensor:  # noqa: ANN001
        return attention_maps(surrogate, x, screens, self.attention)

    def fit_screens(self, screens: list, data_key: str, surrogate=None, step=None) -> Protector:  # noqa: ANN001
        """Train (or load from the cache) the protector on training screens."""
        from robustbench_cl.models.artifacts import (
            artifact_exists,
            artifact_lock,
            load_artifact_config,
            load_artifact_weights,
            save_artifact,
        )

        path = self.screens_cache_path(data_key)
        with artifact_lock(path):
            if artifact_exists(path):
                protector = load_artifact_weights(path, self.new_protector()).eval()
                protector.training_info = load_artifact_config(path).get("training", {})
                return protector
            protector, info = self._train(screens, surrogate, step)
            save_artifact(path, protector, {"defense": self.settings(), "training": info})
        protector.training_info = info
        return protector.eval()

    def _train(self, screens: list, surrogate, step) -> tuple[Protector, dict[str, Any]]:  # noqa: ANN001

        screens = [s for s in screens if any(p.box is not None for p in s.pii)]
        if not screens:
            raise UserError(
                "screens.data",
                "no training screen has a located PII box",
                "use more screens, a larger train_ratio, or give boxes.json",
            )
        check_same_size(screens)
        surrogate = surrogate or RecognizerSurrogate()
        start = time.perf_counter()
        x_all = screen_tensor(screens)
        attention_all = torch.cat(
            [
                self.attention_for(surrogate, x_all[i : i + 8], screens[i : i + 8])
                for i in range(0, len(screens), 8)
            ]
        )
        protector = self.new_protector()
        protector.train()
        optimizer = torch.optim.Adam(protector.generator.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        eot = CropEOT(self.box_jitter)
        history = []
        passes = 0
        for index in range(self.steps):
            chosen = torch.randperm(len(screens), generator=generator)[: self.batch_size].tolist()
            batch = [screens[i] for i in chosen]
            x, attention = x_all[chosen], attention_all[chosen]
            delta = protector.delta(x, attention)
            x_prot = (x + delta).clamp(0, 1)
            privacy_items, privacy_texts = text_targets(batch, "privacy")
            task_items, task_texts = text_targets(batch, "task")
            privacy_boxes = boxes_tensor(privacy_items)
            task_loss = (
                surrogate.loss(x_prot, boxes_tensor(task_items), task_texts).mean()
                if task_items and self.alpha > 0
                else x.new_zeros(())
            )
            privacy_loss = (
                torch.stack(
                    [
                        eot(surrogate, x_prot, privacy_boxes, privacy_texts, generator).mean()
                        for _ in range(self.eot_samples)
                    ]
                ).mean()
                if privacy_items
                else x.new_zeros(())
            )
            shaped = shape_attention(attention, **self.shaping())
            outside = ((1 - shaped) * delta).pow(2).mean()
            loss = (
                self.alpha * task_loss
                - self.beta * privacy_loss
                + self.outside_weight * outside
                + self.tv_weight * total_variation(delta)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            passes += len(privacy_items) * self.eot_samples + len(task_items) * (self.alpha > 0)
            if index % 10 == 0 or index == self.steps - 1:
                history.append(
                    {
                        "step": index,
                        "loss": float(loss.detach()),
                        "task_ctc": float(task_loss.detach()),
                        "privacy_ctc": float(privacy_loss.detach()),
                    }
                )
            if step is not None:
                step(index + 1, self.steps)
        protector.eval()
        info = {
            "wall_time": time.perf_counter() - start,
            "steps": self.steps,
            "surrogate_crop_passes": passes,
            "history": history,
            "n_screens": len(screens),
        }
        return protector, info


def screens_key(name: str, screens: list) -> str:  # noqa: ANN001
    """A content hash of training screens (pixels, values, keywords and boxes)."""
    import hashlib

    digest = hashlib.sha256()
    for screen in screens:
        digest.update(screen.key.encode())
        digest.update(screen.image.tobytes())
        for item in [*screen.pii, *screen.tasks]:
            digest.update(repr(vars(item)).encode())
    return f"{name}#{digest.hexdigest()[:16]}"
