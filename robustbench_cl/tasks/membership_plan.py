"""Planning the membership columns of a (model, defense) pair: which attacks apply, their ids.

Kept apart from the audit (:mod:`robustbench_cl.tasks.membership`) so that the pair
expansion (:mod:`robustbench_cl.tasks.pairs`) can use it without importing the audit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from robustbench_cl.data import TensorData
from robustbench_cl.defenses import make_defense
from robustbench_cl.engine.config import DefenseConfig, ModelConfig, StrictConfig
from robustbench_cl.errors import UserError, under_field
from robustbench_cl.models import parse_spec
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.privacy.membership import ReferenceRecipe, make_membership_attack
from robustbench_cl.utils import stable_hash, tensor_digest

#: bump when the audit's protocol changes, so that resumed runs do not reuse stale records
MEMBERSHIP_VERSION = 4
#: a reference model of a defense that ``seeds_per_model`` trains with seed SEED_OFFSET + its own
SEED_OFFSET = 10_000


class ReferenceTraining(StrictConfig):
    """How LiRA's and RMIA's reference models are trained like a user's model (built-in
    models have their own recipe). ``train``: ``python:module:function``, called once per
    reference model as ``function(model, x, y, seed)`` with the audited model's architecture
    re-initialised, returning the trained model; without it, that architecture is trained by
    Adam with a cosine schedule for ``epochs`` at ``lr``."""

    #: `python:module:function` that trains one reference model; unset, the built-in loop below
    train: str | None = None
    #: epochs of the built-in loop
    epochs: int = Field(default=10, ge=1)
    #: Adam's learning rate in the built-in loop
    lr: float = Field(default=1e-3, gt=0)
    #: samples per step in the built-in loop
    batch_size: int = Field(default=128, ge=1)
    #: Adam's weight decay in the built-in loop
    weight_decay: float = Field(default=0.0, ge=0)

    @field_validator("train")
    @classmethod
    def _python_function(cls, value: str | None) -> str | None:
        if value is not None:
            module, _, function = value.removeprefix("python:").rpartition(":")
            if not value.startswith("python:") or not module or not function:
                raise ValueError(f"{value!r} is not python:module:function")
        return value


class MembershipConfig(StrictConfig):
    """A membership-inference column: ``loss``, ``lira``, ``rmia``, ``art-blackbox`` or
    ``one-run`` (a canary audit that trains its own model).

    ``n`` members (from ``data.train_split``) and ``n`` non-members (from ``data.split``) are
    audited; by default half the evaluation split, the other half being RMIA's population z
    (``data.n`` is the attacked subset of the robustness matrix; it does not size the audit).
    ``recipe`` trains the reference models of a user's model (LiRA, RMIA).
    """

    #: `loss`, `lira`, `rmia`, `art-blackbox` or `one-run` (`robustbench-cl list membership`)
    attack: str
    #: the column's label (default: the attack)
    name: str | None = None
    #: the attack's parameters (`robustbench-cl list membership NAME --params`)
    params: dict[str, Any] = Field(default_factory=dict)
    #: members and non-members audited (each); default: half the evaluation split
    n: int | None = Field(default=None, ge=2)
    #: how the reference models of a user's model are trained (LiRA, RMIA)
    recipe: ReferenceTraining | None = None

    @property
    def label(self) -> str:
        return self.name or self.attack


@dataclass
class MembershipCell:
    id: str
    pair_id: str
    model: ModelConfig
    defense: DefenseConfig
    config: MembershipConfig


def reference_recipe(
    model: ModelConfig, defense: DefenseConfig, training: ReferenceTraining | None = None
) -> ReferenceRecipe | None:
    """How to train a reference model like this pair's, or None when we do not know how: a
    built-in model's own recipe, or for any other model the column's ``recipe``."""
    from robustbench_cl.models.builtin import REFERENCE_RECIPES

    scheme, name = parse_spec(model.spec)[:2]
    built = make_defense(defense.defense, **defense.params)
    if built.kind not in ("none", "training"):
        return None
    if scheme == "builtin" and name in REFERENCE_RECIPES:
        architecture, train_base, recipe = REFERENCE_RECIPES[name]
    elif training is not None:
        architecture, train_base, recipe = _user_recipe(model.spec, training)
    else:
        return None

    def train(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        if getattr(built, "from_scratch", False):  # the defense re-initialises it anyway
            base = architecture()
        else:
            base = train_base(x, y, seed)
        if built.kind == "none":
            return base
        subset = TensorData(
            f"reference-{seed}-{tensor_digest(x, y)}", "train", x, y, int(y.max()) + 1
        )
        trainer = built
        if per_model_seed:  # its own initialisation, batches and noise: never the target's
            trainer = make_defense(
                defense.defense, **{**defense.params, "seed": SEED_OFFSET + seed}
            )
        return trainer.build(Frozen(base), f"{model.spec}#reference{seed}", subset)

    # a DP defense draws its noise and batches from its seed: reference models that shared the
    # target's would know its noise, which DP does not cover
    per_model_seed = bool(getattr(built, "seeds_per_model", False))
    key = {
        "model": model.spec,
        "recipe": recipe,
        "defense": defense.defense,
        "version": built.version,
        "settings": built.settings(),
    }
    if per_model_seed:  # (absent otherwise: the cached reference models of earlier runs hold)
        key["per_model_seed"] = SEED_OFFSET

    def defended_architecture() -> nn.Module:
        return built.adapt_architecture(architecture())

    return ReferenceRecipe(key=key, architecture=defended_architecture, train=train)


def _reinitialised(
    target: nn.Module, seed: int, build: Callable[[], nn.Module] | None = None
) -> nn.Module:
    """A copy of ``target`` with every parameter re-initialised: its architecture and nothing
    it learned (a reference model must not start from the audited weights).

    The model's own initialiser runs first where it has one (timm's and Hugging Face's
    ``init_weights``), then every module's ``reset_parameters``; a parameter that none of them
    reaches, or that still holds the audited value (a class token, a position embedding, a
    layer scale, the ``weight_v`` of a weight norm), is drawn from a truncated normal of std
    0.02, as ViTs draw their tokens. ``build`` makes another instance where ``target`` cannot
    be copied."""
    import copy

    from robustbench_cl.utils import seeded

    try:
        network = copy.deepcopy(target)  # a factory may hand out one shared instance
    except RuntimeError:  # (an old-style weight norm's derived weight cannot be copied)
        if build is None:
            raise
        network = build()
    covered: set[int] = set()
    with seeded(seed):
        for name in ("init_weights", "_init_weights"):
            initialise = getattr(network, name, None)
            if callable(initialise):
                with contextlib.suppress(TypeError):  # (HF's _init_weights takes a module)
                    initialise()
                    break
        for module in network.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(
                module, "_reset_parameters", None
            )
            if callable(reset):
                reset()
                covered |= {id(p) for p in module.parameters(recurse=False)}
        with torch.no_grad():
            for (_, new), old in zip(network.named_parameters(), target.parameters()):
                varied = old.numel() > 1 and bool((old != old.flatten()[0]).any())
                if id(new) not in covered or (varied and torch.equal(new, old)):
                    torch.nn.init.trunc_normal_(new, std=0.02)
    return network.requires_grad_(True).train()


def _user_recipe(spec: str, training: ReferenceTraining) -> tuple[Any, Any, dict[str, Any]]:
    """``(architecture, train(x, y, seed), recipe key)`` for a user's model."""
    import copy
    import importlib
    import inspect

    from robustbench_cl.models import load_model
    from robustbench_cl.models.training import train_classifier

    function = None
    key: dict[str, Any] = {"user": training.model_dump(), "model": spec}
    if training.train is not None:
        module_name, _, name = training.train.removeprefix("python:").rpartition(":")
        try:
            module = importlib.import_module(module_name)
            function = getattr(module, name)
        except (ImportError, AttributeError) as error:
            raise UserError(
                "recipe.train", f"cannot load {training.train} ({error})", "check PYTHONPATH"
            ) from None
        # edited training code trains new reference models: the source of the module named
        # and of the one that defines the function are in the key
        sources = []
        for source in (module, inspect.getmodule(function)):
            with contextlib.suppress(OSError, TypeError):
                sources.append(inspect.getsource(source))
        key["source"] = stable_hash(sources)
    loaded: list[nn.Module] = []

    def target() -> nn.Module:  # the audited model's architecture, loaded once
        if not loaded:
            loaded.append(load_model(spec).model)
        return loaded[0]

    def train(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        network = _reinitialised(target(), seed, lambda: load_model(spec).model)
        if function is None:
            settings = training.model_dump(exclude={"train"})
            return train_classifier(network, x, y, seed=seed, **settings)
        expected = {k: v.shape for k, v in network.state_dict().items()}
        trained = function(network, x, y, seed)
        if not isinstance(trained, nn.Module):
            raise UserError(
                "recipe.train", f"{training.train} returned {type(trained).__name__}, not a module"
            )
        # cached reference weights are loaded into the architecture: it must take them
        got = {k: v.shape for k, v in trained.state_dict().items()}
        if got != expected:
            differ = sorted(set(got) ^ set(expected)) or [k for k in got if got[k] != expected[k]]
            raise UserError(
                "recipe.train",
                f"{training.train} returned a model whose weights do not fit {spec} "
                f"(e.g. {differ[0]})",
                "return the model it was given, trained",
            )
        return trained

    def architecture() -> nn.Module:  # cached reference weights are loaded into it
        try:
            return copy.deepcopy(target())
        except RuntimeError:
            return load_model(spec).model

    return architecture, train, key


def expand_membership(
    configs: list[MembershipConfig],
    model: ModelConfig,
    defense: DefenseConfig,
    pair_id: str,
    seed: int,
) -> tuple[list[MembershipCell], list[dict[str, str]]]:
    """Validate every membership column for this pair and give each a stable id.

    A reference-model attack (LiRA, RMIA) on a pair without a reference recipe (a user model, a
    preprocessor defense) is not run; it is returned in the second list with the reason, so that
    reports show it as not applicable. :func:`check_membership_coverage` refuses a config where
    such an attack applies to no pair at all.
    """
    cells, skipped = [], []
    for index, config in enumerate(configs):
        with under_field(f"membership[{index}]"):
            attack = make_membership_attack(config.attack, **config.params)
        needs_recipe = attack.uses_references or attack.trains_target
        if needs_recipe and reference_recipe(model, defense, config.recipe) is None:
            skipped.append(
                {
                    "attack": config.label,
                    "index": str(index),
                    "reason": f"no reference-model recipe for {model.spec} + {defense.defense}"
                    + ("" if config.recipe else " (give the column a recipe)"),
                }
            )
            continue
        key = {
            "pair": pair_id,
            "attack": config.attack,
            "settings": attack.settings(),
            "n": config.n,
            "version": MEMBERSHIP_VERSION,
        }
        if config.recipe is not None:  # (absent otherwise: the ids of earlier runs hold)
            key["recipe"] = config.recipe.model_dump()
        cells.append(
            MembershipCell(stable_hash({**key, "seed": seed}), pair_id, model, defense, config)
        )
    return cells, skipped


def check_membership_coverage(configs: list[MembershipConfig], pairs: list) -> None:  # noqa: ANN001
    """Every membership column must run on at least one pair."""
    for index, config in enumerate(configs):
        if not any(cell.config is config for pair in pairs for cell in pair.membership):
            raise UserError(
                f"membership[{index}]",
                f"{config.attack} needs models trained like the audited model (reference "
                "models, or the one-run audit's), and no model here has a recipe (built-in "
                "models have one; a preprocessor defense has none)",
                "give the column a recipe ({train: python:module:function} or epochs and lr), "
                "or use the loss or art-blackbox attack",
            )
