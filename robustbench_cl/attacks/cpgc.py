"""C-PGC: a conditional generator of ONE universal perturbation against CLIP-style retrieval.

Fang et al., "One Perturbation is Enough: On Generating Universal Adversarial Perturbations
against Vision-Language Pre-training Models" (ICCV 2025). Following the official code
(``ffhibnese/CPGC_VLP_Universal_Attacks``), scaled to 32x32 inputs:

- the generator maps fixed noise z (one per training input and scale copy) through transposed
  convolutions with LDM-style cross-attention blocks that attend to each input's condition
  (the mean clean feature of its captions), ends in tanh, and a final Conv2d over the *batch*
  dimension collapses all outputs into one perturbation, clamped to [-eps, eps];
- each batch is noise-augmented (U(-eps, eps)) and copied at scales 0.5, 0.75, 1.25, 1.5
  (resized with Gaussian noise N(0, 0.05^2) and back, with kornia);
- the loss, per scale block, is ``log(pos / (pos + tgt))`` where ``pos`` sums exp(cos/tau) over
  the image's own captions (they act as negatives) and ``tgt`` over the captions of the least
  similar image of a random target batch (the positives), minus ``alpha`` times the summed
  squared deviation of adversarial from clean image features; the generator minimises it.

The perturbation after the last batch is the one evaluated, as in the official code.
With ``text: true`` the text-side universal word is fitted too
(:mod:`robustbench_cl.attacks.text_uap`) and evaluation perturbs both modalities at once.
Deviations, all for a CPU budget: batch 16 (official 4), 5 epochs (official 40) on 3000
training images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.attacks.base import report_step, require_int, require_number
from robustbench_cl.attacks.universal import (
    UniversalAttack,
    UniversalPerturbation,
    caption_features,
    model_device,
)
from robustbench_cl.errors import UserError
from robustbench_cl.registry import register_attack
from robustbench_cl.utils import seeded

DEFAULT_SCALES = (0.5, 0.75, 1.25, 1.5)


def cpgc_loss(
    adversarial: torch.Tensor,
    clean: torch.Tensor,
    own_captions: torch.Tensor,
    target_pool: torch.Tensor,
    temperature: float = 0.1,
    alpha: float = 0.1,
    contrastive: bool = True,
) -> torch.Tensor:
    """The C-PGC image loss (to be minimised).

    ``adversarial`` and ``clean`` are (S*B, D) features of S scale blocks of B images;
    ``own_captions`` is (B, C, D) and ``target_pool`` (T, C, D): the captions of a random target
    batch. In each block, image i's target is the pool image whose captions are least similar
    on average to the block's *clean* feature of image i (as in the official code). All
    features are L2-normalised, so a dot product is a cosine.
    """
    n_images = own_captions.shape[0]
    loss = adversarial.new_zeros(())
    if contrastive:
        for block, clean_block in zip(adversarial.split(n_images), clean.split(n_images)):
            with torch.no_grad():
                similarity = torch.einsum("bd,tcd->btc", clean_block, target_pool).mean(2)
                far = target_pool[similarity.argmin(1)]  # (B, C, D)
            own = torch.einsum("bd,bcd->bc", block, own_captions) / temperature
            target = torch.einsum("bd,bcd->bc", block, far) / temperature
            pos = torch.exp(own).sum(1).mean()
            tgt = torch.exp(target).sum(1).mean()
            loss = loss + torch.log(pos / (pos + tgt))
    deviation = ((adversarial - clean) ** 2).sum()
    return loss - alpha * deviation


class SpatialTransformer(nn.Module):
    """LDM-style block: self-attention, cross-attention to the condition, GEGLU feed-forward,
    and a zero-initialised output projection (so the block starts as the identity)."""

    def __init__(self, channels: int, context_dim: int, heads: int = 1) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(32, channels), channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.norm1 = nn.LayerNorm(channels)
        self.self_attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(channels)
        self.cross_attention = nn.MultiheadAttention(
            channels, heads, kdim=context_dim, vdim=context_dim, batch_first=True
        )
        self.norm3 = nn.LayerNorm(channels)
        self.geglu = nn.Linear(channels, 8 * channels)
        self.ff_out = nn.Linear(4 * channels, channels)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        q = self.norm1(h)
        h = h + self.self_attention(q, q, q, need_weights=False)[0]
        q = self.norm2(h)
        h = h + self.cross_attention(q, context, context, need_weights=False)[0]
        value, gate = self.geglu(self.norm3(h)).chunk(2, dim=-1)
        h = h + self.ff_out(value * F.gelu(gate))
        h = h.transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(h)


class UniversalGenerator(nn.Module):
    """Fixed noise z (one per input) + conditions -> ONE perturbation (C, H, W) in [-eps, eps]."""

    def __init__(
        self,
        n_inputs: int,
        context_dim: int,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        z_dim: int = 100,
        widths: tuple[int, int, int] = (256, 128, 64),
        seed: int = 0,
    ) -> None:
        super().__init__()
        noise = torch.Generator().manual_seed(seed)
        self.register_buffer("z", torch.randn(n_inputs, z_dim, 1, 1, generator=noise))
        w1, w2, w3 = widths
        self.block1 = nn.Sequential(
            nn.ConvTranspose2d(z_dim, w1, 4, 1, 0), nn.BatchNorm2d(w1), nn.ReLU()
        )
        self.attend1 = SpatialTransformer(w1, context_dim)
        self.block2 = nn.Sequential(
            nn.ConvTranspose2d(w1, w2, 4, 2, 1), nn.BatchNorm2d(w2), nn.ReLU()
        )
        self.attend2 = SpatialTransformer(w2, context_dim)
        self.block3 = nn.Sequential(
            nn.ConvTranspose2d(w2, w3, 4, 2, 1), nn.BatchNorm2d(w3), nn.ReLU()
        )
        self.to_image = nn.ConvTranspose2d(w3, image_shape[0], 4, 2, 1)  # 4 -> 8 -> 16 -> 32
        self.collapse = nn.Conv2d(n_inputs, 1, 3, padding=1)  # over the batch dimension
        self.image_shape = image_shape
        # DCGAN initialisation, as in the official generator: N(0, 0.02) weights, zero biases.
        # It matters: with PyTorch's default init the collapsed output starts far outside
        # [-eps, eps], the clamp saturates and almost no gradient reaches the generator.
        for module in (*self.block1, *self.block2, *self.block3, self.to_image, self.collapse):
            if isinstance(module, nn.ConvTranspose2d | nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, context: torch.Tensor, eps: float, bound: str = "clamp") -> torch.Tensor:
        """``context``: (n_inputs, D) conditions -> the universal perturbation (C, H, W).

        ``bound="clamp"`` is the official hard clamp to [-eps, eps]; ``"tanh"`` is
        ``eps * tanh(out / eps)``, which never saturates to a zero gradient (not in the paper).
        """
        context = context.unsqueeze(1)
        h = self.attend1(self.block1(self.z), context)
        h = self.attend2(self.block2(h), context)
        h = torch.tanh(self.to_image(self.block3(h)))
        if h.shape[-2:] != self.image_shape[1:]:
            h = F.interpolate(h, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        delta = self.collapse(h.transpose(0, 1)).squeeze(1)  # (C, n, H, W) -> (C, H, W)
        if bound == "tanh":
            return eps * torch.tanh(delta / eps)
        return delta.clamp(-eps, eps)


def multiscale_copies(
    x: torch.Tensor, scales: tuple[float, ...], generator: torch.Generator, sigma: float = 0.05
) -> torch.Tensor:
    """[x, S_s1(x), ...]: each copy gets N(0, sigma^2) noise, is resized by s (bicubic),
    clipped to [0, 1] and resized back, as in the official code (with kornia)."""
    from kornia.geometry.transform import resize

    size = x.shape[-2:]
    copies = [x]
    for scale in scales:
        noise = torch.randn(x.shape, generator=generator).to(x.device) * sigma
        shape = (max(2, int(size[0] * scale)), max(2, int(size[1] * scale)))
        scaled = resize(x + noise, shape, interpolation="bicubic").clamp(0, 1)
        copies.append(resize(scaled, tuple(size), interpolation="bicubic"))
    return torch.cat(copies)


@register_attack("cpgc")
class CPGC(UniversalAttack):
    """C-PGC (Fang et al., ICCV 2025): one universal perturbation from a conditional generator.

    A cross-attention generator trained with the malicious contrastive loss and multi-scale
    augmentation; optionally also the text-side universal word.

    Args:
        epochs: passes of the generator's training over the fitting images.
        batch_size: images per generator step (at least 2: the contrastive loss needs
            negatives).
        target_batch_size: random training images per step whose captions form the pool that
            each image's contrastive target is picked from (the least similar one).
        lr: the generator's Adam learning rate.
        temperature: the contrastive loss's temperature.
        alpha: weight of the summed squared distance between adversarial and clean features,
            which the loss rewards (also used by the text-side word's fit).
        contrastive: `false` drops the contrastive term (the alpha-MSE-only ablation).
        scales: the multi-scale augmentation's resize factors, each in (0, 4]; `[]` drops it
            (the ablation).
        text: also fit the text-side universal word.
        text_epochs: passes of the universal word's fit.
        text_images: training images whose captions the universal word is fitted on.
        text_lr: the universal word's learning rate.
        bound: how the generator's output is kept in the eps ball: `clamp` (the official code)
            or `tanh` (`eps * tanh(out / eps)`, never a saturated zero gradient).
    """

    name = "cpgc"

    def __init__(
        self,
        epochs: int = 5,
        batch_size: int = 16,
        target_batch_size: int = 16,
        lr: float = 2e-4,
        temperature: float = 0.1,
        alpha: float = 0.1,
        contrastive: bool = True,
        scales: list[float] | tuple[float, ...] = DEFAULT_SCALES,
        text: bool = False,
        text_epochs: int = 1,
        text_images: int = 400,
        text_lr: float = 0.01,
        bound: str = "clamp",
    ) -> None:
        require_int("cpgc.epochs", epochs)
        require_int("cpgc.batch_size", batch_size, 2)
        require_int("cpgc.target_batch_size", target_batch_size, 1)
        require_number("cpgc.lr", lr)
        require_number("cpgc.temperature", temperature)
        require_number("cpgc.alpha", alpha, -1.0)
        for flag, value in (("contrastive", contrastive), ("text", text)):
            if not isinstance(value, bool):
                raise UserError(f"cpgc.{flag}", f"must be true or false, got {value!r}")
        if bound not in ("clamp", "tanh"):
            raise UserError(
                "cpgc.bound", f"unknown bound {bound!r}", "use clamp (official) or tanh"
            )
        require_int("cpgc.text_epochs", text_epochs)
        require_int("cpgc.text_images", text_images, 2)
        require_number("cpgc.text_lr", text_lr)
        try:
            scales = tuple(float(s) for s in scales)
        except (TypeError, ValueError):
            raise UserError(
                "cpgc.scales", "must be a list of numbers, e.g. [0.5, 0.75, 1.25, 1.5]"
            ) from None
        if any(not 0 < s <= 4 for s in scales):
            raise UserError("cpgc.scales", f"scales must lie in (0, 4], got {list(scales)}")
        self.epochs = epochs
        self.batch_size = batch_size
        self.target_batch_size = target_batch_size
        self.lr = lr
        self.temperature = temperature
        self.alpha = alpha
        #: False drops the contrastive term (the alpha-MSE-only ablation)
        self.contrastive = contrastive
        #: () drops the multi-scale augmentation (the ablation)
        self.scales = list(scales)
        #: also fit the text-side universal word (on ``text_images`` training images' captions)
        self.text = text
        self.text_epochs = text_epochs
        self.text_images = text_images
        self.text_lr = text_lr
        #: "clamp" (official) or "tanh" (eps * tanh(out / eps): no saturated zero gradient)
        self.bound = bound

    def _fit(self, model, data, threat, generator):  # noqa: ANN001, ANN202
        device = model_device(model)
        if len(data) < self.batch_size:
            raise UserError("cpgc.batch_size", f"larger than the {len(data)} training images")
        captions = caption_features(model, data)  # (N, 5, D), frozen text side: computed once
        copies = 1 + len(self.scales)
        n_inputs = copies * self.batch_size
        init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with seeded(init_seed):  # seeded init, global RNG left untouched
            net = UniversalGenerator(
                n_inputs,
                captions.shape[-1],
                tuple(data.images.shape[1:]),
                seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
            ).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.5, 0.999))
        n = len(data)
        per_epoch = n // self.batch_size
        history = []
        #: per epoch: the contrastive term, the summed feature deviation, the share of pixels
        #: of delta at the clamp (+-eps), to see which term drives the generator
        diagnostics: dict[str, list[float]] = {
            "contrastive": [],
            "deviation": [],
            "saturated_share": [],
        }
        forward = 0
        delta = torch.zeros(data.images.shape[1:], device=device)
        net.train()
        for epoch in range(self.epochs):
            order = torch.randperm(n, generator=generator)
            total = torch.zeros((), device=device)
            deviation_sum = torch.zeros((), device=device)
            saturated_sum = torch.zeros((), device=device)
            for step in range(per_epoch):
                batch = order[step * self.batch_size : (step + 1) * self.batch_size]
                x = data.images[batch].to(device)
                noise = (torch.rand(x.shape, generator=generator).to(device) * 2 - 1) * threat.eps
                augmented = multiscale_copies(
                    (x + noise).clamp(0, 1), tuple(self.scales), generator
                )
                own = captions[batch.to(device)]
                condition = own.mean(1).repeat(copies, 1)
                delta = net(condition, threat.eps, self.bound)
                with torch.no_grad():
                    clean = model.encode_image(augmented)
                    target_index = torch.randint(
                        0, n, (self.target_batch_size,), generator=generator
                    )
                    pool = captions[target_index.to(device)]  # (T, 5, D)
                # not clipped to [0, 1] while training, as in the official code (evaluation clips)
                adversarial = model.encode_image(augmented + delta)
                loss = cpgc_loss(
                    adversarial, clean, own, pool, self.temperature, self.alpha, self.contrastive
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
                with torch.no_grad():  # diagnostics, kept on the device until the epoch ends
                    deviation_sum += ((adversarial - clean) ** 2).sum()
                    saturated_sum += (delta.abs() >= threat.eps * (1 - 1e-4)).float().mean()
                forward += 2 * n_inputs
                report_step(epoch * per_epoch + step + 1, self.epochs * per_epoch)
            history.append(float(total) / per_epoch)
            deviation = float(deviation_sum) / per_epoch
            diagnostics["deviation"].append(deviation)
            diagnostics["contrastive"].append(history[-1] + self.alpha * deviation)
            diagnostics["saturated_share"].append(float(saturated_sum) / per_epoch)
        word = None
        if self.text:
            word = self._fit_word(model, data, generator)
        return UniversalPerturbation(
            delta.detach(),
            word=word,
            history=history,
            forward=forward,
            backward=forward // 2,
            diagnostics=diagnostics,
        )

    def _fit_word(self, model, data, generator) -> str:  # noqa: ANN001
        from robustbench_cl.attacks.text_uap import fit_universal_word

        subset = data.subset(self.text_images)
        device = model_device(model)
        with torch.no_grad():
            images = torch.cat([model.encode_image(x.to(device)) for x in subset.images.split(256)])
        word, _ = fit_universal_word(
            model,
            subset,
            images,
            epochs=self.text_epochs,
            batch_size=5 * self.batch_size,
            target_batch_size=self.target_batch_size,
            lr=self.text_lr,
            temperature=self.temperature,
            alpha=self.alpha,
            generator=generator,
        )
        return word
