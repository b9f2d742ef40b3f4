"""The auto-encoder behind the RAE preprocessor, and the ``wrapped:`` model spec.

``robustbench-cl wrap --preprocessor ARTIFACT --model SPEC -o OUT`` writes ``OUT.json`` (the
model spec and the preprocessor's shape) and ``OUT.safetensors`` (its weights);
``load_model("wrapped:OUT")`` rebuilds ``Preprocessed(auto-encoder, load_model(SPEC))``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from robustbench_cl.errors import UserError
from robustbench_cl.models.artifacts import (
    load_artifact_config,
    load_artifact_weights,
    with_extension,
)


class AutoEncoder(nn.Module):
    """Conv encoder -> latent -> conv decoder (sigmoid output in [0, 1]), plus a projection head.

    Works for C x H x W inputs with H and W divisible by 4.
    """

    def __init__(
        self, channels: int = 1, size: int = 16, latent: int = 32, width: int = 16
    ) -> None:
        super().__init__()
        if size % 4:
            raise UserError("input size", f"{size} is not divisible by 4", "resize the data")
        self.shape = {"channels": channels, "size": size, "latent": latent, "width": width}
        side = size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * side * side, latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, 2 * width * side * side),
            nn.ReLU(),
            nn.Unflatten(1, (2 * width, side, side)),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )
        self.projection = nn.Sequential(
            nn.Linear(latent, latent), nn.ReLU(), nn.Linear(latent, latent)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The preprocessor: reconstruct x through the (robust) latent."""
        return self.decoder(self.encoder(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(x))


def load_autoencoder(path: str | Path) -> AutoEncoder:
    """An RAE artifact written by ``robustbench-cl defend rae`` (safetensors + JSON)."""
    config = load_artifact_config(path)
    if config.get("defense") != "rae":
        raise UserError(
            "--preprocessor", f"{path} is not an RAE artifact", "train one with `defend rae`"
        )
    shape = config["shape"]
    autoencoder = AutoEncoder(shape["channels"], shape["size"], shape["latent"], shape["width"])
    return load_artifact_weights(path, autoencoder).eval().requires_grad_(False)


def _prefix(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def write_wrapped(preprocessor: str | Path, model_spec: str, output: str | Path) -> Path:
    """Bundle an RAE artifact and a model spec into ``OUT.json`` + ``OUT.safetensors``."""
    from safetensors.torch import save_file

    source = _prefix(preprocessor)
    if not with_extension(source, ".json").exists():
        raise UserError("--preprocessor", f"{source}.json does not exist", "pass an RAE artifact")
    autoencoder = load_autoencoder(source)
    out = _prefix(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in autoencoder.state_dict().items()},
        str(with_extension(out, ".safetensors")),
    )
    config = load_artifact_config(source)
    description = {
        "kind": "wrapped",
        "model": _absolute_spec(model_spec),
        "preprocessor": {
            "defense": "rae",
            "shape": config["shape"],
            "settings": config.get("settings", {}),
        },
        "gradient_mode": config.get("settings", {}).get("gradient_mode", "end-to-end"),
    }
    with_extension(out, ".json").write_text(json.dumps(description, indent=2, sort_keys=True))
    return out


def _absolute_spec(model_spec: str) -> str:
    """The spec with its weight-file options made absolute, so OUT loads from any directory."""
    from robustbench_cl.utils import parse_spec

    scheme, target, options = parse_spec(model_spec)
    for key in ("weights", "checkpoint"):
        if options.get(key):
            options[key] = str(Path(options[key]).resolve())
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"{scheme}:{target}" + (f"?{query}" if query else "")


def wrapped_model(target: str, options: dict[str, str]) -> nn.Module:
    """The ``wrapped:OUT`` scheme: the preprocessor in front of the wrapped model spec."""
    from robustbench_cl.models.loading import load_model
    from robustbench_cl.models.wrappers import Preprocessed

    if options:
        raise UserError(
            "model", f"wrapped: specs take no options, got {sorted(options)}", "use wrapped:OUT"
        )

    out = _prefix(target)
    if not with_extension(out, ".json").exists():
        raise UserError(
            "model", f"{out}.json does not exist", "create it with `robustbench-cl wrap`"
        )
    description = json.loads(with_extension(out, ".json").read_text())
    if description.get("kind") != "wrapped":
        raise UserError("model", f"{out}.json is not a wrapped model", "create it with `wrap`")
    shape = description["preprocessor"]["shape"]
    autoencoder = AutoEncoder(shape["channels"], shape["size"], shape["latent"], shape["width"])
    load_artifact_weights(out, autoencoder)
    autoencoder.eval().requires_grad_(False)
    model = load_model(description["model"])
    return Preprocessed(autoencoder, model, gradient_mode=description["gradient_mode"]).eval()
