"""(model, defense) pairs: the matrix rows that classification, membership and generation share.

:func:`expand` turns the config into pairs, each with its attack cells (grouped by threat model
for the cascade), its membership columns and its generation column, validating every name and
threat model once. :class:`PairTask` is the base of the tasks that run on pairs: it loads the
evaluation data (inputs read per shard, so a streamed dataset is never held whole) and builds a
pair's defended model, keeping the last one built, so consecutive units of one pair share it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from robustbench_cl.attacks import Attack, make_attack
from robustbench_cl.attacks.base import apply_budget, check_eps_fits
from robustbench_cl.data import TensorData, load_dataset
from robustbench_cl.data.subset import (
    class_histogram,
    draw_subset,
    spread_positions,
    subset_digest,
)
from robustbench_cl.defenses import make_defense
from robustbench_cl.engine.config import (
    AttackConfig,
    DefenseConfig,
    MatrixConfig,
    ModelConfig,
    StrictConfig,
)
from robustbench_cl.engine.records import label
from robustbench_cl.engine.summary import RunSummary, threat_label
from robustbench_cl.engine.task import RunContext, Task
from robustbench_cl.errors import UserError, under_field
from robustbench_cl.models import Preprocessed, check_spec, load_model
from robustbench_cl.tasks.membership_plan import (
    MembershipCell,
    check_membership_coverage,
    expand_membership,
)
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import derive_seed, stable_hash

logger = logging.getLogger(__name__)

ROBUST, BROKEN, NOT_ATTACKED = 1, 0, -1


class DataConfig(StrictConfig):
    """The image classification data every (model, defense) pair is evaluated on."""

    #: `digits` (built in), or `safetensors:DIR`, `imagefolder:DIR`, `cifar10:DIR`,
    #: `cifar100:DIR`, `hf-disk:DIR` (`robustbench-cl list datasets`)
    name: str = "digits"
    #: the split that is attacked
    split: Literal["train", "test"] = "test"
    #: attack a seeded random subset of this many samples; all when unset
    n: int | None = Field(default=None, ge=1)
    #: the split that training defenses and membership members come from
    train_split: Literal["train", "test"] = "train"

    @field_validator("name")
    @classmethod
    def _absolute_folder(cls, name: str) -> str:
        """A ``safetensors:`` folder is recorded as an absolute path, so that Ray workers (which
        do not share the driver's working directory) and later resumes read the same files."""
        for prefix in ("safetensors:", "imagefolder:", "cifar10:", "cifar100:", "hf-disk:"):
            if name.startswith(prefix):
                folder, mark, query = name.removeprefix(prefix).partition("?")
                return prefix + str(Path(folder).expanduser().resolve()) + mark + query
        return name


#: the top-level config keys of the pair tasks (classification owns them; membership and
#: generation run on the same pairs)
PAIR_FIELDS: dict[str, tuple[Any, Any]] = {
    "data": (DataConfig, Field(default_factory=DataConfig)),
    "models": (list[ModelConfig], Field(default_factory=list)),
    "defenses": (list[DefenseConfig], Field(default_factory=lambda: [DefenseConfig()])),
    "attacks": (list[AttackConfig], Field(default_factory=list)),
}


def pair_labels(summary: RunSummary) -> dict[str, str]:
    """``{pair id: "model / defense"}`` of a run's pairs, in the order of their clean passes
    (the rows of every pair task's tables)."""
    return {r.id: f"{label(r.model)} / {label(r.defense)}" for r in summary.of("clean")}


def check_models(config: MatrixConfig, columns: Any) -> None:
    """Columns on pairs (attacks, membership, generation) need at least one model."""
    if columns and not config.models:
        raise ValueError("models: list at least one model for the attacks to run on")


@dataclass
class Cell:
    id: str
    pair_id: str
    group_id: str
    model: ModelConfig
    defense: DefenseConfig
    attack: AttackConfig
    threat: ThreatModel


@dataclass
class Pair:
    """A (model, defense) row of the matrix and its cells, in execution order."""

    id: str
    model: ModelConfig
    defense: DefenseConfig
    cells: list[Cell] = field(default_factory=list)
    membership: list[MembershipCell] = field(default_factory=list)

    membership_skipped: list[dict[str, str]] = field(default_factory=list)
    generation_id: str | None = None


def expand(config: MatrixConfig, subset: str | None = None) -> list[Pair]:
    """Config -> (model, defense) pairs -> cells. Builds every attack once to validate it.

    ``subset`` is the fingerprint of a drawn subset (``None`` when the whole split is
    evaluated): it is part of every id, so a run made when ``n`` meant the first n rows is never
    resumed into one on the drawn samples (its records are set aside as stale)."""
    pairs = []
    data_key = config.data.model_dump(mode="json")
    if subset is not None:
        data_key["subset"] = subset
    for index, model in enumerate(config.models):
        with under_field(f"models[{index}].spec", replace=True):
            check_spec(model.spec)
    for index, defense in enumerate(config.defenses):
        with under_field(f"defenses[{index}]"):
            make_defense(defense.defense, **defense.params)
    for model in config.models:
        for defense in config.defenses:
            pair_id = stable_hash(
                {
                    "model": model.spec,
                    "defense": defense.defense,
                    "params": defense.params,
                    "data": data_key,
                    "seed": config.seed,
                }
            )
            pair = Pair(pair_id, model, defense)
            pair.membership, pair.membership_skipped = expand_membership(
                config.membership, model, defense, pair_id, config.seed
            )
            if config.generation is not None:
                pair.generation_id = stable_hash(
                    {"pair": pair_id, "generation": config.generation.model_dump(exclude_none=True)}
                )
            for index, attack in enumerate(config.attacks):
                with under_field(f"attacks[{index}]"):
                    built = make_attack(attack.attack, **attack.params)
                for eps in attack.threat.eps_values():
                    threat_values = attack.threat.model_dump()
                    threat_values["eps"] = eps
                    with under_field(f"attacks[{index}].threat"):
                        threat = ThreatModel(**threat_values)
                    reason = built.supports(threat, "classification")
                    if reason is not None:
                        raise UserError(
                            f"attacks[{index}]", reason, "change the attack or its threat"
                        )
                    with under_field(f"attacks[{index}].threat"):
                        apply_budget(make_attack(attack.attack, **attack.params), threat)
                    group_id = stable_hash({"pair": pair_id, "threat": threat.key()})
                    cell_id = stable_hash(
                        {
                            "pair": pair_id,
                            "attack": attack.attack,
                            "params": attack.params,
                            "threat": threat.key(),
                            "cascade": config.engine.cascade,
                        }
                    )
                    pair.cells.append(
                        Cell(cell_id, pair_id, group_id, model, defense, attack, threat)
                    )
            pairs.append(pair)
    check_membership_coverage(config.membership, pairs)
    _check_unique_labels(config, pairs)
    return pairs


def _check_unique_labels(config: MatrixConfig, pairs: list[Pair]) -> None:
    """Reports and compare match rows and columns by display name: names must not collide."""
    seen: dict[str, int] = {}
    for index, pair in enumerate(pairs):
        label = f"{pair.model.label} / {pair.defense.label}"
        if label in seen:
            raise UserError(
                "defenses[].name",
                f"two (model, defense) pairs are both labelled {label!r}",
                "give each model and defense a distinct `name`",
            )
        seen[label] = index
    for pair in pairs[:1]:  # every pair has the same attack columns
        counts = Counter(f"{c.attack.label} {threat_label(c.threat.to_dict())}" for c in pair.cells)
        duplicated = [column for column, count in counts.items() if count > 1]
        if duplicated:
            raise UserError(
                "attacks[].name",
                f"two attack entries share the display name and threat {duplicated[0]!r}",
                "give each attack entry a distinct `name`",
            )


def _targets(y: torch.Tensor, n_classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    offset = torch.randint(1, n_classes, y.shape, generator=generator)
    return (y.cpu() + offset) % n_classes


class PairTask(Task):
    """A task over the config's (model, defense) pairs; see the module docstring."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.run_dir = ctx.run_dir
        self.device = ctx.device
        self.progress = ctx.progress
        self._train: TensorData | None = None
        self._bare: dict[str, nn.Module] = {}
        self._auto_batch = 4096
        self._defense_kind: dict[str, str] = {}
        self._model: tuple[str, nn.Module] | None = None
        self.load_data()
        drawn = self.n < len(self.data)
        self.pairs = expand(self.config, subset_digest(self.indices) if drawn else None)
        self.by_pair = {pair.id: pair for pair in self.pairs}
        check_eps_against_data(self.pairs, self.sample_shape)
        self._check_train_split()

    def _check_train_split(self) -> None:
        """A defense that trains, and a membership audit (its members), read the train split:
        open it now (its files exist, its labels read), so a test-only folder fails before
        any work only when the run needs more than the test files."""
        reader = next(
            (
                f"defense {pair.defense.label} trains on"
                for pair in self.pairs
                if make_defense(pair.defense.defense, **pair.defense.params).kind != "none"
            ),
            "the membership audit draws its members from" if self.config.membership else None,
        )
        if reader is None or not self.ctx.driver:
            return
        split = self.config.data.train_split
        try:
            self.train_data()
        except UserError as error:
            raise UserError(
                "data.train_split",
                f"{reader} the {split!r} split: {error.problem}",
                error.fix or "add the train split's files",
            ) from None

    @classmethod
    def section(cls, config: MatrixConfig) -> Any:
        return config.models or None

    def describe_data(self) -> dict[str, Any] | None:
        """The dataset, and which of its samples were evaluated (meta.json, the report and
        ``compare``'s data fingerprint)."""
        n_classes = int(self.data.n_classes)
        histogram = class_histogram(self.y, n_classes)
        return {
            **self.data.describe(),
            "n_evaluated": self.n,
            "selection": "all" if self.n == len(self.data) else "stratified",
            "selection_seed": self.config.seed,
            "subset_sha256": subset_digest(self.indices),
            "class_histogram": histogram,
            "missing_classes": [k for k, count in enumerate(histogram) if count == 0],
        }

    @classmethod
    def data_fingerprint(
        cls, results: dict[str, Any], config: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The evaluated samples: dataset, split, which samples and the seed. The whole split
        is ``all`` for runs before and after the subset was recorded (schema 1.2), so a rerun
        compares with a committed run; an older run on part of a split took its first rows."""
        data = results["run"].get("data") or {}
        if data.get("n") is not None and data.get("n_evaluated") == data.get("n"):
            selection = f"all {data['n']}"
        elif data.get("subset_sha256"):
            selection = f"stratified {data['n_evaluated']} ({data['subset_sha256']})"
        else:
            selection = f"first {data.get('n_evaluated')} rows (before schema 1.2)"
        return {
            "seed": results["run"].get("seed"),
            "name": data.get("name"),
            "split": data.get("split"),
            "samples": selection,
        }

    def model(self, pair: Pair) -> nn.Module:
        """The pair's defended model on the device: built (or loaded) once per run of units."""
        if self._model is None or self._model[0] != pair.id:
            self._model = None
            self._bare.clear()  # the previous pair's bare model goes with it
            self._model = (pair.id, self.build_model(pair))
        return self._model[1]

    def close(self) -> None:
        self._model = None
        self._bare.clear()

    # ------------------------------------------------------------------ data and models
    def load_data(self) -> None:
        """Labels in memory; inputs are read per shard by :meth:`inputs` (streamed or not)."""
        data = load_dataset(self.config.data.name, split=self.config.data.split)
        self.data = data
        #: the evaluated samples: a seeded, class-stratified draw (data/subset.py), sorted
        self.indices = draw_subset(data.y, self.config.data.n, self.config.seed)
        self.n = len(self.indices)
        self.y = data.y[self.indices].to(self.device)
        self.sample_shape = tuple(data.sample_shape)
        self.images = len(self.sample_shape) == 3
        if isinstance(data, TensorData):
            if not torch.isfinite(data.take(self.indices)).all():
                raise UserError("data", "the dataset contains NaN or Inf inputs", "clean the data")
        elif hasattr(data, "check_rows") and self.ctx.driver:
            # files: every evaluated image decodes, now (once per run: not again in a worker,
            # nor for a second pair task on the same samples)
            checked = (data.name, data.split, subset_digest(self.indices))
            done = self.ctx.__dict__.setdefault("decoded_subsets", set())  # this run's
            if checked not in done:
                self.progress.message(f"checking the {self.n} evaluated samples of {data.name}")
                # in pieces no larger than a shard: a streamed dataset is never held whole
                data.check_rows(self.indices, min(256, self.config.engine.shard_size or 256))
                done.add(checked)
        size = self.config.engine.shard_size or self.n
        #: contiguous sample ranges; each is attacked with its own seed, and is one Ray task
        self.shards = [(s, min(s + size, self.n)) for s in range(0, self.n, size)]
        self._held: tuple[int, int, torch.Tensor] | None = None

    def inputs(self, start: int, end: int) -> torch.Tensor:
        """Evaluated inputs ``start:end`` (positions in the drawn subset) on the device. Only the last range asked for is held, so a
        sharded run keeps one shard of inputs in memory, never the whole evaluation set."""
        if self._held is not None and self._held[:2] == (start, end):
            return self._held[2]
        self._held = None  # free the previous shard before reading the next one
        x = self.data.take(self.indices[start:end]).to(self.device)
        if not isinstance(self.data, TensorData) and not torch.isfinite(x).all():
            raise UserError(
                "data",
                f"evaluated samples {start}..{end} contain NaN or Inf inputs",
                "clean the data",
            )
        if self.device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self._held = (start, end, x)
        return x

    def probe_inputs(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A class-stratified probe of ``size`` evaluated samples (sanity probes): positions,
        inputs and labels. The first evaluated samples may all be of one class."""
        positions = spread_positions(self.y, size, derive_seed(self.config.seed, "probe"))
        x = self.data.take(self.indices[positions.cpu()]).to(self.device)
        return positions.to(self.device), x, self.y[positions.to(self.y.device)]

    def train_data(self) -> TensorData:
        if self._train is None:
            self._train = load_dataset(self.config.data.name, split=self.config.data.train_split)
        return self._train

    def build_model(self, pair: Pair) -> nn.Module:
        base = load_model(pair.model.spec)
        defense = make_defense(pair.defense.defense, **pair.defense.params)
        self.progress.message(f"preparing {pair.model.label} + {pair.defense.label}")
        # no training data for an undefended model: a user's own test set may come without one
        train = self.train_data() if defense.kind != "none" else None
        model = defense.build(base, pair.model.spec, train)  # type: ignore[arg-type]
        if hasattr(base, "unchanged") and not base.unchanged():
            raise RuntimeError(f"defense {pair.defense.defense} modified the frozen base model")
        # the bare model: where non-adaptive (transfer) attacks are crafted. A `wrapped:` spec
        # is already a preprocessor in front of a model: its bare model is the one behind it.
        inner = getattr(base, "model", base)
        if isinstance(inner, Preprocessed) and defense.kind == "none":
            self._bare[pair.id] = inner.model.to(self.device).eval()
            self._defense_kind[pair.id] = "preprocessor"
        else:
            self._bare[pair.id] = base.to(self.device).eval()
            self._defense_kind[pair.id] = defense.kind
        return self._accelerate(model.to(self.device).eval())

    def _accelerate(self, model: nn.Module) -> nn.Module:
        """GPU fast paths (cudnn autotuning, channels_last for images) and opt-in compile."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            if self.images:
                model = model.to(memory_format=torch.channels_last)
        if self.config.engine.compile:
            model = torch.compile(model)
        return model

    # ------------------------------------------------------------------ batched helpers
    @property
    def batch_size(self) -> int:
        """The configured batch size, or the current automatic one (halved on out-of-memory)."""
        size = self.config.engine.batch_size
        return self._auto_batch if size == "auto" else size

    def _autocast(self, attack: Attack | None = None):  # noqa: ANN202
        if self.config.engine.precision == "bf16" and getattr(attack, "supports_bf16", True):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        size = self.batch_size
        with torch.no_grad():
            return torch.cat([model(x[i : i + size]) for i in range(0, len(x), size)])


def check_eps_against_data(pairs: list[Pair], sample_shape: tuple[int, ...]) -> None:
    """Fail before any work when an l2/l1 eps exceeds the largest distance in the bounds."""
    for pair in pairs:
        for cell in pair.cells:
            with under_field(f"{cell.attack.label}.threat.eps", replace=True):
                check_eps_fits(cell.threat, math.prod(sample_shape))
