"""``robustbench:NAME``: RobustBench model-zoo entries from checkpoints kept locally.

RobustBench's own ``load_model`` downloads from Google Drive (or the timm hub) when a file is
missing, and trusts whatever file is there. Here nothing is downloaded: the checkpoint must be at
``DIR/DATASET/THREAT/NAME.pt``, RobustBench's folder layout (``DIR`` defaults to ``./models``, as
there), and it loads like any foreign checkpoint: ``torch.load(weights_only=True)`` unless remote
code is trusted, the weights under ``state_dict`` (or the object itself), a real ``module.`` or
``model.`` prefix removed, then a strict load (its one leniency is RobustBench's own: the
published checkpoints of the normalised TRADES entries, e.g. Rice2020Overfitting and
Rony2019Decoupling, lack the ``mu`` and ``sigma`` buffers, which keep the zoo's values).

The ``robustbench`` package pins an old timm and imports its download helpers from its package
``__init__``, so its architecture modules cannot be imported alone. The architectures below are
written here from the published definitions that RobustBench's zoo uses (same module names, so
the zoo's state dicts load strictly):

- ``WideResNet`` (TRADES' WideResNet as RobustBench carries it: ``conv1``, ``block1..3``,
  an unused ``sub_block1`` for the entries whose checkpoints hold one, ``bn1``, ``fc``);
- ``DMWideResNet`` and ``DMPreActResNet`` (DeepMind's, with the normalisation inside, kept off
  the state dict as RobustBench's current definition keeps it, and ``SAME``-style padding; their
  Swish is SiLU, the same function and gradient).

Each entry's normalisation is the zoo's: none, the CIFAR mean and std inside the model, or
``2x - 1``; inputs stay in [0, 1].
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.errors import UserError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
RONY_MEAN = (0.491, 0.482, 0.447)
RONY_STD = (0.247, 0.243, 0.262)

DATASETS = ("cifar10",)
THREATS = ("Linf", "L2")
#: our norm names -> RobustBench's threat-model names
THREAT_NAMES = {"linf": "Linf", "l2": "L2"}


# ------------------------------------------------------------------------- WideResNet (TRADES)
class _WideBlock(nn.Module):
    """Pre-activation basic block; the shortcut convolution only where the width changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.same_width = in_planes == out_planes
        self.convShortcut = (  # noqa: N815 - the zoo's state-dict key
            None
            if self.same_width
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        shortcut = x if self.same_width else self.convShortcut(activated)
        return shortcut + out


class _Group(nn.Module):
    """``n`` blocks, the first changing the width and the stride, under the attribute name the
    zoo's checkpoints use (``layer`` for TRADES' WideResNet, ``block`` for DeepMind's)."""

    def __init__(
        self, block: type, n: int, in_planes: int, out_planes: int, stride: int, attr: str
    ):
        super().__init__()
        self.attr = attr
        blocks = [
            block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(n)
        ]
        setattr(self, attr, nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.attr)(x)


def _wide_group(n: int, in_planes: int, out_planes: int, stride: int) -> _Group:
    return _Group(_WideBlock, n, in_planes, out_planes, stride, "layer")


class WideResNet(nn.Module):
    """WRN-depth-width for 32x32 inputs, as the zoo's TRADES-derived entries define it."""

    def __init__(
        self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, sub_block1=False
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a WideResNet depth is 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _wide_group(n, widths[0], widths[1], 1)
        if sub_block1:  # in the checkpoints of some entries; never used in the forward pass
            self.sub_block1 = _wide_group(n, widths[0], widths[1], 1)
        self.block2 = _wide_group(n, widths[1], widths[2], 2)
        self.block3 = _wide_group(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# ------------------------------------------------------------------------- DeepMind's models
def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow's ``SAME`` padding of a 3x3 convolution: symmetric at stride 1, bottom-right
    only at stride 2."""
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class _DMBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = nn.SiLU()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = nn.SiLU()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
            if self.has_shortcut
            else None
        )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(_same_pad(activated, self.stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return (self.shortcut(activated) if self.has_shortcut else x) + out


def _dm_group(n: int, in_planes: int, out_planes: int, stride: int) -> _Group:
    return _Group(_DMBlock, n, in_planes, out_planes, stride, "block")


class DMWideResNet(nn.Module):
    """DeepMind's WideResNet (Gowal et al. 2020, Rebuffi et al. 2021, Wang et al. 2023...)."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        mean: tuple[float, ...] = CIFAR10_MEAN,
        std: tuple[float, ...] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        # not in the state dict: RobustBench's current definition keeps them off it, so the
        # zoo's checkpoints of these entries have no such keys (older ones' are ignored)
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            _dm_group(n, widths[0], widths[1], 1),
            _dm_group(n, widths[1], widths[2], 2),
            _dm_group(n, widths[2], widths[3], 2),
        )
        self.batchnorm = nn.BatchNorm2d(widths[3])
        self.relu = nn.SiLU()
        self.logits = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _DMPreActBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = nn.SiLU()
        self.conv_2d_1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = nn.SiLU()
        self.conv_2d_2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = stride != 1 or in_planes != out_planes
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(
                in_planes, out_planes, 3, stride=stride, padding=0, bias=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(_same_pad(x, self.stride)) if self.has_shortcut else x
        out = self.conv_2d_1(_same_pad(out, self.stride))
        return self.conv_2d_2(self.relu_1(self.batchnorm_1(out))) + shortcut


class DMPreActResNet18(nn.Module):
    """DeepMind's pre-activation ResNet-18 (Rebuffi et al. 2021, Rade et al. 2021...)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(3, 1, 1), persistent=False)
        self.conv_2d = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for index, (inp, out, stride) in enumerate(widths):
            blocks = [_DMPreActBlock(inp, out, stride), _DMPreActBlock(out, out, 1)]
            setattr(self, f"layer_{index}", nn.Sequential(*blocks))
        self.batchnorm = nn.BatchNorm2d(512)
        self.relu = nn.SiLU()
        self.logits = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_2d((x - self.mean) / self.std)
        for index in range(4):
            out = getattr(self, f"layer_{index}")(out)
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _Normalized(nn.Module):
    """``(x - mu) / sigma`` in front of a TRADES WideResNet, under the zoo's buffer names. The
    published checkpoints of these entries lack ``mu`` and ``sigma`` (RobustBench loads them
    non-strictly for exactly that): the constructor's values stay."""

    def __init__(self, net: WideResNet, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mu", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mu) / self.sigma)


class _Symmetric(nn.Module):
    """``2x - 1`` in front of the network (Hendrycks et al., 2019)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2.0 * x - 1.0)


# ------------------------------------------------------------------------- the zoo
@dataclass(frozen=True)
class ZooEntry:
    """A zoo entry: how to build it, and the normalisation it carries (for ``list``)."""

    build: Callable[[], nn.Module]
    architecture: str
    normalization: str
    #: the checkpoint's keys sit at the top level of the model (``_Normalized`` nests the
    #: network under ``net.``: its keys are moved there on load)
    nested: bool = False
    #: keys a published checkpoint of the entry may lack (the normalisation buffers): the only
    #: leniency of the otherwise strict load
    missing_ok: frozenset[str] = frozenset()
    #: keys a checkpoint may hold that the model keeps off its state dict (DeepMind's
    #: normalisation, a buffer in older versions of the definition): dropped before the load
    ignored: frozenset[str] = frozenset()


def _wrn(depth: int, width: int, sub_block1: bool = False) -> ZooEntry:
    return ZooEntry(
        lambda: WideResNet(depth, width, sub_block1=sub_block1),
        f"WideResNet-{depth}-{width}",
        "none",
    )


def _wrn_normalized(depth: int, width: int, mean, std) -> ZooEntry:  # noqa: ANN001
    return ZooEntry(
        lambda: _Normalized(WideResNet(depth, width), mean, std),
        f"WideResNet-{depth}-{width}",
        f"mean {mean}, std {std}",
        nested=True,
        missing_ok=frozenset({"mu", "sigma"}),
    )


def _dm(depth: int, width: int) -> ZooEntry:
    return ZooEntry(
        lambda: DMWideResNet(depth, width),
        f"DMWideResNet-{depth}-{width} (SiLU)",
        "CIFAR-10 mean/std (inside the model)",
        ignored=frozenset({"mean", "std"}),
    )


_DM_R18 = ZooEntry(
    DMPreActResNet18,
    "DMPreActResNet-18 (SiLU)",
    "CIFAR-10 mean/std",
    ignored=frozenset({"mean", "std"}),
)

#: (dataset, threat) -> name -> entry: the cifar10 entries whose architectures are written here
ZOO: dict[tuple[str, str], dict[str, ZooEntry]] = {
    ("cifar10", "Linf"): {
        "Standard": _wrn(28, 10),
        "Carmon2019Unlabeled": _wrn(28, 10, sub_block1=True),
        "Sehwag2020Hydra": _wrn(28, 10, sub_block1=True),
        "Wang2020Improving": _wrn(28, 10, sub_block1=True),
        "Wu2020Adversarial_extra": _wrn(28, 10, sub_block1=True),
        "Zhang2020Geometry": _wrn(28, 10, sub_block1=True),
        "Sridhar2021Robust": _wrn(28, 10, sub_block1=True),
        "Zhang2019Theoretically": _wrn(34, 10, sub_block1=True),
        "Huang2020Self": _wrn(34, 10, sub_block1=True),
        "Zhang2019You": _wrn(34, 10, sub_block1=True),
        "Zhang2020Attacks": _wrn(34, 10, sub_block1=True),
        "Sitawarin2020Improving": _wrn(34, 10, sub_block1=True),
        "Cui2020Learnable_34_10": _wrn(34, 10, sub_block1=True),
        "Cui2020Learnable_34_20": _wrn(34, 20, sub_block1=True),
        "Sridhar2021Robust_34_15": _wrn(34, 15, sub_block1=True),
        "Wu2020Adversarial": _wrn(34, 10),
        "Sehwag2021Proxy": _wrn(34, 10),
        "Chen2021LTD_WRN34_10": _wrn(34, 10),
        "Chen2021LTD_WRN34_20": _wrn(34, 20),
        "Jia2022LAS-AT_34_10": _wrn(34, 10),
        "Addepalli2022Efficient_WRN_34_10": _wrn(34, 10),
        "Rice2020Overfitting": _wrn_normalized(34, 20, CIFAR10_MEAN, CIFAR10_STD),
        "Hendrycks2019Using": ZooEntry(
            lambda: _Symmetric(WideResNet(28, 10)), "WideResNet-28-10", "2x - 1", nested=True
        ),
        "Gowal2020Uncovering_28_10_extra": _dm(28, 10),
        "Gowal2020Uncovering_34_20": _dm(34, 20),
        "Gowal2020Uncovering_70_16": _dm(70, 16),
        "Gowal2020Uncovering_70_16_extra": _dm(70, 16),
        "Gowal2021Improving_28_10_ddpm_100m": _dm(28, 10),
        "Gowal2021Improving_70_16_ddpm_100m": _dm(70, 16),
        "Gowal2021Improving_R18_ddpm_100m": _DM_R18,
        "Rebuffi2021Fixing_28_10_cutmix_ddpm": _dm(28, 10),
        "Rebuffi2021Fixing_70_16_cutmix_ddpm": _dm(70, 16),
        "Rebuffi2021Fixing_70_16_cutmix_extra": _dm(70, 16),
        "Rebuffi2021Fixing_106_16_cutmix_ddpm": _dm(106, 16),
        "Rebuffi2021Fixing_R18_ddpm": _DM_R18,
        "Rade2021Helper_ddpm": _dm(28, 10),
        "Rade2021Helper_extra": _dm(34, 10),
        "Rade2021Helper_R18_ddpm": _DM_R18,
        "Rade2021Helper_R18_extra": _DM_R18,
        "Pang2022Robustness_WRN28_10": _dm(28, 10),
        "Pang2022Robustness_WRN70_16": _dm(70, 16),
        "Wang2023Better_WRN-28-10": _dm(28, 10),
        "Wang2023Better_WRN-70-16": _dm(70, 16),
        "Xu2023Exploring_WRN-28-10": _dm(28, 10),
    },
    ("cifar10", "L2"): {
        "Standard": _wrn(28, 10),
        "Wu2020Adversarial": _wrn(34, 10),
        "Sehwag2021Proxy": _wrn(34, 10),
        "Rony2019Decoupling": _wrn_normalized(28, 10, RONY_MEAN, RONY_STD),
        "Gowal2020Uncovering": _dm(70, 16),
        "Gowal2020Uncovering_extra": _dm(70, 16),
        "Rebuffi2021Fixing_28_10_cutmix_ddpm": _dm(28, 10),
        "Rebuffi2021Fixing_70_16_cutmix_ddpm": _dm(70, 16),
        "Rebuffi2021Fixing_70_16_cutmix_extra": _dm(70, 16),
        "Rebuffi2021Fixing_R18_cutmix_ddpm": _DM_R18,
        "Rade2021Helper_R18_ddpm": _DM_R18,
        "Wang2023Better_WRN-28-10": _dm(28, 10),
        "Wang2023Better_WRN-70-16": _dm(70, 16),
    },
}


def zoo_entry(name: str, dataset: str, threat: str) -> ZooEntry:
    """The entry ``name`` of ``(dataset, threat)``, or a one-line error naming close ones."""
    if dataset not in DATASETS:
        raise UserError("dataset", f"unsupported RobustBench dataset {dataset!r}", "use cifar10")
    if threat not in THREATS:
        raise UserError(
            "threat", f"unsupported RobustBench threat model {threat!r}", "use Linf or L2"
        )
    entries = ZOO[(dataset, threat)]
    if name not in entries:
        close = difflib.get_close_matches(name, entries, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "robustbench-cl list models"
        raise UserError(
            "model",
            f"{name!r} is not a {dataset} {threat} entry whose architecture robustbench-cl has",
            hint,
        )
    return entries[name]


def _threat(options: dict[str, str]) -> str:
    """RobustBench's spelling of the threat option (``linf`` is ``Linf``)."""
    value = options.get("threat", "Linf")
    return THREAT_NAMES.get(value.lower(), value)


def find_entry(name: str, options: dict[str, str]) -> ZooEntry | None:
    """The zoo entry a ``robustbench:NAME?...`` spec names, or None (no error)."""
    return ZOO.get((options.get("dataset", "cifar10"), _threat(options)), {}).get(name)


def checkpoint_path(name: str, options: dict[str, str]) -> Path:
    """``DIR/DATASET/THREAT/NAME.pt``, RobustBench's layout."""
    base = Path(options.get("dir", "models")).expanduser()
    return base / options.get("dataset", "cifar10") / _threat(options) / f"{name}.pt"


def check_robustbench_spec(name: str, options: dict[str, str]) -> None:
    """The entry exists and its checkpoint is where RobustBench keeps it: before any work."""
    zoo_entry(name, options.get("dataset", "cifar10"), _threat(options))
    path = checkpoint_path(name, options)
    if not path.is_file():
        raise UserError(
            "model",
            f"no checkpoint for RobustBench's {name} at {path}",
            f"put the zoo's {name}.pt there (nothing is downloaded), or set ?dir= to the folder "
            "that holds DATASET/THREAT/NAME.pt",
        )


def robustbench_model(name: str, options: dict[str, str]) -> nn.Module:
    """``robustbench:NAME?dataset=cifar10&threat=Linf&dir=DIR``: a RobustBench zoo entry.

    Options:
        dataset: the zoo's dataset: `cifar10`.
        threat: the zoo's threat model: `Linf` or `L2`.
        dir: the folder that holds `DATASET/THREAT/NAME.pt` (default `models`, RobustBench's
            `model_dir`); the checkpoint loads with `weights_only=True` unless
            `--trust-remote-code`. Nothing is downloaded.
    """
    from robustbench_cl.models.artifacts import load_foreign_state_dict

    options = dict(options)
    unknown = sorted(set(options) - {"dataset", "threat", "dir"})
    if unknown:
        raise UserError("model", f"unknown option {unknown[0]!r} in the robustbench spec")
    check_robustbench_spec(name, options)
    entry = zoo_entry(name, options.get("dataset", "cifar10"), _threat(options))
    path = checkpoint_path(name, options)
    with open(path, "rb") as handle:
        if handle.read(64).lstrip().startswith(b"<"):  # RobustBench issues #152 and #158
            raise UserError(
                "model",
                f"{path} is an HTML page (a failed download saved as the checkpoint), not weights",
                f"download {name}.pt again and put it there",
            )
    state = _strip_prefix(load_foreign_state_dict(path, "model"), "model.")
    model = entry.build()
    if entry.nested:  # the zoo keeps the wrapper's buffers beside the network's own keys
        state = {
            (k if k in ("mu", "sigma") or k.startswith("net.") else f"net.{k}"): v
            for k, v in state.items()
        }
    state = {k: v for k, v in state.items() if k not in entry.ignored}
    expected = set(model.state_dict())
    missing = sorted(expected - set(state) - entry.missing_ok)
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        problem = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(
            "model",
            f"{path} does not match {name}'s architecture, {entry.architecture} ({problem})",
            "check the entry name and the dataset/threat folder",
        )
    try:
        model.load_state_dict(state, strict=not (expected - set(state)))
    except RuntimeError as error:  # same keys, other shapes
        first = str(error).strip().splitlines()[0]
        raise UserError(
            "model",
            f"{path} does not match {name}'s architecture, {entry.architecture} ({first})",
            "check the entry name and the dataset/threat folder",
        ) from None
    return model.eval()


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` when every key starts with it (a real prefix, never a substring)."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return state
