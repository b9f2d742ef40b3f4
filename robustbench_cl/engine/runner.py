"""Expand a matrix config into cells and run them, cascading over still-robust samples.

For each (model, defense) pair the clean outcome is computed once. Cells that share a threat
model (same norm and eps) form a *group*; within a group, attacks run in config order and each
only attacks the samples that are still robust (the AutoAttack cascade), so the last cell of a
group holds the worst case over its attacks. Every finished cell is appended to ``cells.jsonl``
with its per-sample outcomes: 1 robust, 0 broken by this attack, -1 not attacked (misclassified
clean, or broken earlier in the cascade).
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from robustbench_cl.attacks import Attack, make_attack
from robustbench_cl.attacks.base import Cost, check_eps_fits, probe_model, step_hook
from robustbench_cl.data import TensorData, load_dataset
from robustbench_cl.defenses import make_defense
from robustbench_cl.engine import sanity
from robustbench_cl.engine.config import (
    AttackConfig,
    DefenseConfig,
    MatrixConfig,
    ModelConfig,
    load_config,
)
from robustbench_cl.engine.executors import RayExecutor
from robustbench_cl.engine.generative import GenerationAudit, sample_grid, save_png
from robustbench_cl.engine.jailbreak import JailbreakAudit, expand_jailbreak
from robustbench_cl.engine.membership import (
    MembershipAudit,
    MembershipCell,
    check_membership_coverage,
    expand_membership,
)
from robustbench_cl.engine.metrics import wilson_interval
from robustbench_cl.engine.results import write_results
from robustbench_cl.engine.retrieval import RetrievalAudit, expand_retrieval
from robustbench_cl.engine.screens import ScreensAudit, expand_screens
from robustbench_cl.engine.store import ResultsStore, write_json_atomic
from robustbench_cl.engine.summary import threat_label
from robustbench_cl.engine.threads import apply_threads
from robustbench_cl.errors import UserError, under_field
from robustbench_cl.models import Preprocessed, check_spec, load_model
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import (
    allow_remote_code,
    derive_seed,
    device_name,
    resolve_device,
    stable_hash,
)

logger = logging.getLogger(__name__)

ROBUST, BROKEN, NOT_ATTACKED = 1, 0, -1


class Progress:
    """Progress events from the engine; the CLI draws them with rich. All no-ops here."""

    def run_started(self, n_cells: int, n_todo: int) -> None: ...

    def message(self, text: str) -> None: ...

    def cell_started(self, label: str, n_batches: int) -> None: ...

    def batch_done(self) -> None: ...

    def step(self, step: int, total: int) -> None: ...

    def cell_done(self, record: dict[str, Any], skipped: bool) -> None: ...


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
class ShardPart:
    """What one shard of one cell produced; the parts of all shards merge into its record."""

    outcomes: torch.Tensor  # (shard length,) on the CPU: ROBUST, BROKEN or NOT_ATTACKED
    attacked: int
    cost: Cost
    wall: float
    examples: dict[str, torch.Tensor] | None
    probe: dict[str, Any]  # the convergence probe on this shard's share of the probe size


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

    def record_ids(self) -> list[str]:
        ids = [c.id for c in self.cells] + [c.id for c in self.membership]
        return ids + ([self.generation_id] if self.generation_id else [])


def expand(config: MatrixConfig) -> list[Pair]:
    """Config -> (model, defense) pairs -> cells. Builds every attack once to validate it."""
    pairs = []
    data_key = config.data.model_dump(mode="json")
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
                    {"pair": pair_id, "generation": config.generation.model_dump()}
                )
            for index, attack in enumerate(config.attacks):
                with under_field(f"attacks[{index}]"):
                    built = make_attack(attack.attack, **attack.params)
                for eps in attack.threat.eps_values():
                    threat_values = attack.threat.model_dump()
                    threat_values["eps"] = eps
                    with under_field(f"attacks[{index}].threat"):
                        threat = ThreatModel(**threat_values)
                    reason = built.supports(threat, config.task)
                    if reason is not None:
                        raise UserError(
                            f"attacks[{index}]", reason, "change the attack or its threat"
                        )
                    group_id = stable_hash({"pair": pair_id, "threat": threat.to_dict()})
                    cell_id = stable_hash(
                        {
                            "pair": pair_id,
                            "attack": attack.attack,
                            "params": attack.params,
                            "threat": threat.to_dict(),
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


def _meta(
    config: MatrixConfig, device: torch.device, command: str | None, profile: str | None
) -> dict[str, Any]:
    import robustbench_cl

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "robustbench_cl": robustbench_cl.__version__,
    }
    for package in ("torchattacks", "art", "sklearn", "numpy"):
        try:
            versions[package] = __import__(package).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not recorded
            pass
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "suite": config.suite,
        "profile": profile,
        "config_hash": config.config_hash(),
        "seed": config.seed,
        "device": str(device),
        "device_name": device_name(device),
        "host": socket.gethostname(),
        "versions": versions,
        "git_commit": commit,
        "command": command or " ".join(sys.argv),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class Runner:
    def __init__(
        self, config: MatrixConfig, run_dir: Path, device: torch.device, progress: Progress
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.device = device
        self.progress = progress
        self.store = ResultsStore(run_dir / "cells.jsonl")
        self._train: TensorData | None = None
        self._audit: MembershipAudit | None = None
        self._bare: dict[str, nn.Module] = {}
        self._auto_batch = 4096
        self._defense_kind: dict[str, str] = {}
        self._generation: GenerationAudit | None = None

    # ------------------------------------------------------------------ data and models
    def load_data(self) -> None:
        """Labels in memory; inputs are read per shard by :meth:`inputs` (streamed or not)."""
        data = load_dataset(self.config.data.name, split=self.config.data.split)
        self.data = data
        n = self.config.data.n
        self.n = len(data) if n is None else min(n, len(data))
        self.y = data.y[: self.n].to(self.device)
        self.sample_shape = tuple(data.sample_shape)
        self.images = len(self.sample_shape) == 3
        if isinstance(data, TensorData) and not torch.isfinite(data.x[: self.n]).all():
            raise UserError("data", "the dataset contains NaN or Inf inputs", "clean the data")
        size = self.config.engine.shard_size or self.n
        #: contiguous sample ranges; each is attacked with its own seed, and is one Ray task
        self.shards = [(s, min(s + size, self.n)) for s in range(0, self.n, size)]
        self._held: tuple[int, int, torch.Tensor] | None = None

    def inputs(self, start: int, end: int) -> torch.Tensor:
        """Inputs ``start:end`` on the device. Only the last range asked for is held, so a
        sharded run keeps one shard of inputs in memory, never the whole evaluation set."""
        if self._held is not None and self._held[:2] == (start, end):
            return self._held[2]
        self._held = None  # free the previous shard before reading the next one
        x = self.data.rows(start, end).to(self.device)
        if not isinstance(self.data, TensorData) and not torch.isfinite(x).all():
            raise UserError(
                "data", f"rows {start}..{end} contain NaN or Inf inputs", "clean the data"
            )
        if self.device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self._held = (start, end, x)
        return x

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

    # ------------------------------------------------------------------ clean pass
    def clean_record(self, pair: Pair, model: nn.Module) -> dict[str, Any]:
        start = time.perf_counter()
        # a model that does not take these inputs: one line naming both, not a torch traceback
        with under_field(f"model {pair.model.label}", replace=True):
            probe_model(model, self.inputs(*self.shards[0]))
        logits = torch.cat([self._predict(model, self.inputs(*shard)) for shard in self.shards])
        n_classes = logits.shape[1]
        correct = logits.argmax(1) == self.y
        probes: dict[str, Any] = {"n_classes": n_classes}
        if self.config.engine.sanity_checks:
            size = min(self.config.engine.sanity_probe_size, self.n)
            probe_x, probe_y = self.data.rows(0, size).to(self.device), self.y[:size]
            probes["gradients"] = sanity.gradient_health(model, probe_x, probe_y)
            probes["randomization"] = sanity.randomization(model, probe_x)
            if any(c.threat.norm == "linf" and c.threat.bounds is not None for c in pair.cells):
                keep = correct[: len(probe_y)]
                bounds = next(c.threat.bounds for c in pair.cells if c.threat.bounds is not None)
                probes["full_range_accuracy"] = (
                    sanity.full_range_accuracy(model, probe_x[keep], probe_y[keep], bounds)
                    if bool(keep.any())
                    else None
                )
        count = int(correct.sum())
        return {
            "type": "clean",
            "id": pair.id,
            "model": pair.model.model_dump(),
            "defense": pair.defense.model_dump(),
            "defense_kind": self._defense_kind.get(pair.id, "training"),
            "membership_skipped": pair.membership_skipped,
            "n": self.n,
            "correct": correct.int().tolist(),
            "clean_accuracy": count / self.n,
            "clean_ci95": list(wilson_interval(count, self.n)),
            "probes": probes,
            "wall_time": time.perf_counter() - start,
        }

    # ------------------------------------------------------------------ one cell
    def build_attack(self, cell: Cell) -> Attack:
        attack: Attack = make_attack(cell.attack.attack, **cell.attack.params)
        if cell.threat.access == "transfer" and getattr(attack, "keep_best", False):
            # keep-best returns the first iterate that fools the source: barely adversarial,
            # it transfers poorly. A transfer attack uses the final, highest-loss iterate.
            attack.keep_best = False
        return attack

    def cell_labels(self, cell: Cell, n_classes: int) -> torch.Tensor:
        """The true labels, or for a targeted threat one target per sample, shared by every
        attack (white-box and transfer) of the threat, so its worst case compares like with like."""
        if not cell.threat.targeted:
            return self.y
        target_key = {
            k: v for k, v in cell.threat.to_dict().items() if k not in ("access", "budget")
        }
        seed = derive_seed(self.config.seed, cell.pair_id, target_key, "targets")
        return _targets(self.y, n_classes, seed).to(self.device)

    def run_cell(
        self, cell: Cell, model: nn.Module, clean: dict[str, Any], alive: torch.Tensor
    ) -> dict[str, Any]:
        """Attack the cell's ``alive`` samples shard by shard, then merge the shards' parts."""
        attack = self.build_attack(cell)
        n_classes = clean["probes"]["n_classes"]
        labels = self.cell_labels(cell, n_classes)
        per_shard = [int(alive[a:b].sum()) for a, b in self.shards]  # once, before the attack
        size = self.batch_size
        label = f"{cell.model.label} | {cell.defense.label} | {cell.attack.label} | {cell.threat.describe()}"
        self.progress.cell_started(label, sum(-(-count // size) for count in per_shard))
        if attack.name == "autoattack":
            self.progress.message(f"AutoAttack settings: {attack.resolved_settings(n_classes)}")
        parts = [
            self.attack_shard(cell, attack, model, labels, alive, index)
            for index in range(len(self.shards))
        ]
        return self.finish_cell(cell, attack, clean, parts)

    def attack_shard(
        self,
        cell: Cell,
        attack: Attack,
        model: nn.Module,
        labels: torch.Tensor,
        alive: torch.Tensor,
        index: int,
    ) -> ShardPart:
        """Attack the alive samples of shard ``index``, in batches, under the shard's own seed.

        Shard 0 takes the cell's seed, so an unsharded run is seeded as it always was; the
        seed of a shard depends only on the cell and the shard, so the same shard gives the
        same outcomes in any process, in any order.
        """
        config = self.config
        first, last = self.shards[index]
        torch.manual_seed(
            derive_seed(config.seed, cell.id)
            if index == 0
            else derive_seed(config.seed, cell.id, "shard", index)
        )
        x, y, target = self.inputs(first, last), self.y[first:last], labels[first:last]
        todo = alive[first:last].nonzero().flatten()
        size = self.batch_size
        automatic = config.engine.batch_size == "auto"
        outcomes = torch.full((last - first,), NOT_ATTACKED, dtype=torch.long, device=self.device)
        cost = Cost()
        wall = 0.0
        wanted = config.engine.examples if self.images else 0
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        transfer = cell.threat.access == "transfer"
        source = self._bare.get(cell.pair_id, model) if transfer else model
        rejudge = transfer or config.engine.precision == "bf16"
        with step_hook(self.progress.step):
            start = 0
            while start < len(todo):
                batch = todo[start : start + size]
                try:
                    with self._autocast(attack):
                        result = attack(source, x[batch], target[batch], cell.threat)
                except torch.OutOfMemoryError:
                    if not automatic or len(batch) == 1:
                        raise
                    size = self._auto_batch = max(1, len(batch) // 2)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    self.progress.message(f"out of memory at batch {len(batch)}; now {size}")
                    continue
                start += len(batch)
                success = result.success
                if rejudge:  # transfer: judged on the defended model; bf16: judged in fp32
                    with torch.no_grad():
                        predicted = model(result.adv).argmax(1)
                    if cell.threat.targeted:
                        success = predicted == target[batch]
                    else:
                        success = predicted != y[batch]
                    result.cost.forward += len(batch)
                outcomes[batch] = torch.where(success, BROKEN, ROBUST)
                cost = cost + result.cost
                wall += result.wall_time
                if wanted > 0:  # once per batch, outside the attack's step loop
                    hits = success.nonzero().flatten()[:wanted]
                    kept.append((batch[hits], result.adv[hits].detach()))
                    wanted -= len(hits)
                self.progress.batch_done()
        examples = self._examples(model, x, y, target, first, kept)
        probe: dict[str, Any] = {}
        if config.engine.sanity_checks and not transfer:
            # each shard probes its share of the probe size (all of it when unsharded)
            quota = -(-config.engine.sanity_probe_size * (last - first) // self.n)
            probed = (outcomes == ROBUST).nonzero().flatten()[:quota]
            probe = sanity.convergence_probe(attack, model, x[probed], target[probed], cell.threat)
        return ShardPart(outcomes.cpu(), len(todo), cost, wall, examples, probe)

    def finish_cell(
        self, cell: Cell, attack: Attack, clean: dict[str, Any], parts: list[ShardPart]
    ) -> dict[str, Any]:
        """Merge the shards' parts (in shard order) into the cell's record."""
        config = self.config
        n_classes = clean["probes"]["n_classes"]
        transfer = cell.threat.access == "transfer"
        outcomes = torch.cat([part.outcomes for part in parts])
        cost = sum((part.cost for part in parts), Cost())
        examples_path = self._save_examples(cell, [p.examples for p in parts if p.examples])
        flags: list[dict[str, str]] = []
        probe: dict[str, Any] = {}
        robust = int((outcomes == ROBUST).sum())
        if config.engine.sanity_checks:
            if attack.uses_gradients:
                flags += sanity.pair_flags(clean["probes"], n_classes)
            if cell.threat.norm == "linf":
                flags += sanity.full_range_flag(
                    clean["probes"].get("full_range_accuracy"), n_classes
                )
            if not transfer:  # a transfer attack is non-adaptive by design; it is flagged so
                merged = sanity.merge_probes([part.probe for part in parts])
                more, probe = sanity.convergence_verdict(merged, self.n, robust)
                flags += more
        clean_correct = sum(clean["correct"])
        broken_here = int((outcomes == BROKEN).sum())
        examples = (outcomes == BROKEN).nonzero().flatten()[:8].tolist()
        return {
            "type": "cell",
            "id": cell.id,
            "pair_id": cell.pair_id,
            "group_id": cell.group_id,
            "model": cell.model.model_dump(),
            "defense": cell.defense.model_dump(),
            "attack": {
                **cell.attack.model_dump(exclude={"threat"}),
                "settings": attack.resolved_settings(n_classes),
            },
            "threat": cell.threat.to_dict(),
            "adaptive": not transfer,
            "uses_gradients": attack.uses_gradients,
            "cascade": config.engine.cascade,
            "n": self.n,
            "attacked": sum(part.attacked for part in parts),
            "broken": broken_here,
            "robust_count": robust,
            "clean_accuracy": clean["clean_accuracy"],
            "robust_accuracy": robust / self.n,
            "robust_ci95": list(wilson_interval(robust, self.n)),
            "attack_success_rate": (clean_correct - robust) / clean_correct
            if clean_correct
            else 0.0,
            "cost": cost.to_dict(),
            "wall_time": sum(part.wall for part in parts),
            "flags": flags,
            "sanity_probe": probe,
            "example_indices": examples,
            "examples": examples_path,
            "outcomes": outcomes.tolist(),
        }

    def _examples(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor,
        first: int,
        kept: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> dict[str, torch.Tensor] | None:
        """A shard's kept adversarial examples with their predictions, on the CPU."""
        kept = [(index, adv) for index, adv in kept if len(index)]
        if not kept:
            return None
        index = torch.cat([i for i, _ in kept])
        adv = torch.cat([a for _, a in kept])
        with torch.no_grad():
            clean_pred = model(x[index]).argmax(1)
            adv_pred = model(adv).argmax(1)
        tensors = {
            "index": index + first,
            "clean": x[index],
            "adversarial": adv,
            "label": y[index],
            "target": target[index],
            "clean_prediction": clean_pred,
            "adversarial_prediction": adv_pred,
        }
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def _save_examples(self, cell: Cell, parts: list[dict[str, torch.Tensor]]) -> str | None:
        """Keep a few successful adversarial examples for the report, under ``artifacts/``."""
        if not parts:
            return None
        wanted = self.config.engine.examples
        tensors = {k: torch.cat([p[k] for p in parts])[:wanted] for k in parts[0]}
        relative = f"artifacts/examples/{cell.id}.safetensors"
        path = self.run_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        return relative

    # ------------------------------------------------------------------ the matrix
    def execute(
        self,
        pairs: list[Pair],
        resume: bool,
        executor: RayExecutor | None = None,
        retrieval_fits: list[dict[str, Any]] | None = None,
        jailbreak_plan: dict[str, Any] | None = None,
        screen_columns: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Run every missing record; cells locally, or their cascade groups as Ray tasks.

        ``retrieval_fits`` (from :func:`expand_retrieval`) run after the classification pairs,
        always locally.
        """
        if resume:
            self.store.repair()
        else:
            self.store.clear()
        records = {r["id"]: r for r in self.store.read()} if resume else {}
        all_ids = [record_id for pair in pairs for record_id in pair.record_ids()]
        retrieval = None
        if retrieval_fits:
            retrieval = RetrievalAudit(
                self.config, self.run_dir, self.device, self.progress, self.store
            )
            all_ids += retrieval.record_ids(retrieval_fits)
        jailbreak = None
        if jailbreak_plan:
            jailbreak = JailbreakAudit(
                self.config, self.run_dir, self.device, self.progress, self.store
            )
            all_ids += jailbreak.record_ids(jailbreak_plan)
        screens = None
        if screen_columns:
            screens = ScreensAudit(
                self.config, self.run_dir, self.device, self.progress, self.store
            )
            all_ids += screens.record_ids(screen_columns)
        todo = [i for i in all_ids if i not in records]
        self.progress.run_started(len(all_ids), len(todo))
        #: Ray: group id -> (its unfinished cells, the clean record, shard -> parts returned)
        waiting: dict[str, tuple[list[Cell], dict[str, Any], dict[int, list[ShardPart]]]] = {}
        for pair in pairs:
            missing = [i for i in pair.record_ids() if i not in records]
            if not missing and pair.id in records:
                for record_id in pair.record_ids():
                    self.progress.cell_done(records[record_id], skipped=True)
                continue
            model = self.build_model(pair)
            if pair.id not in records:
                records[pair.id] = self.clean_record(pair, model)
                self.store.append(records[pair.id])
            clean = records[pair.id]
            correct = torch.tensor(clean["correct"], dtype=torch.bool, device=self.device)
            robust_in_group: dict[str, torch.Tensor] = {}
            submitted: set[str] = set()
            for cell in pair.cells:
                if cell.group_id in submitted:
                    continue  # the rest of this group runs in a Ray task
                alive = (
                    robust_in_group.get(cell.group_id, correct)
                    if self.config.engine.cascade
                    else correct
                )
                if cell.id in records:
                    record = records[cell.id]
                    self.progress.cell_done(record, skipped=True)
                elif executor is not None:  # the group from here on: one task per shard
                    remaining = [
                        c for c in pair.cells if c.group_id == cell.group_id and c.id not in records
                    ]
                    waiting[cell.group_id] = (remaining, clean, {})
                    for shard in range(len(self.shards)):
                        executor.submit(
                            (cell.group_id, shard),
                            self.config.model_dump(mode="json"),
                            str(self.device),
                            torch.get_num_threads(),
                            pairs.index(pair),
                            [c.id for c in remaining],
                            clean,
                            alive.tolist(),
                            shard,
                        )
                    submitted.add(cell.group_id)
                    continue
                else:
                    record = self.run_cell(cell, model, clean, alive)
                    self.store.append(record)
                    records[cell.id] = record
                    self.progress.cell_done(record, skipped=False)
                outcomes = torch.tensor(record["outcomes"], device=self.device)
                robust_in_group[cell.group_id] = alive & (outcomes != BROKEN)
            for cell in pair.membership:
                if cell.id in records:
                    self.progress.cell_done(records[cell.id], skipped=True)
                    continue
                label = (
                    f"{cell.model.label} | {cell.defense.label} | membership {cell.config.label}"
                )
                self.progress.cell_started(label, 1)
                record = self.membership_audit().run(cell, model, self.progress)
                self.store.append(record)
                records[cell.id] = record
                self.progress.batch_done()
                self.progress.cell_done(record, skipped=False)
            self._release(pair)
            if pair.generation_id is not None:
                if pair.generation_id in records:
                    self.progress.cell_done(records[pair.generation_id], skipped=True)
                else:
                    record = self.generation_record(pair, model)
                    self.store.append(record)
                    records[pair.generation_id] = record
                    self.progress.cell_done(record, skipped=False)
        if executor is not None:  # the driver alone merges the shards and writes the store
            for (group_id, shard), parts in executor.completed():
                cells, clean, done = waiting[group_id]
                done[shard] = parts
                if len(done) < len(self.shards):
                    continue
                for position, cell in enumerate(cells):
                    shard_parts = [done[index][position] for index in range(len(self.shards))]
                    attack = self.build_attack(cell)
                    record = self.finish_cell(cell, attack, clean, shard_parts)
                    self.store.append(record)
                    records[record["id"]] = record
                    self.progress.cell_done(record, skipped=False)
        if retrieval is not None:
            retrieval.execute(retrieval_fits, records, resume)
        if jailbreak is not None:
            jailbreak.execute(jailbreak_plan, records)
        if screens is not None:
            screens.execute(screen_columns, records)
        return [records[p.id] for p in pairs] + [records[i] for i in all_ids]

    def _release(self, pair: Pair) -> None:
        """Free what only this pair needed (its bare model, its reference models)."""
        self._bare.pop(pair.id, None)
        if self._audit is not None:
            self._audit.release(pair.id)

    def generation_record(self, pair: Pair, model: nn.Module) -> dict[str, Any]:
        config = self.config.generation
        assert config is not None and pair.generation_id is not None
        if self._generation is None:
            evaluation = load_dataset(self.config.data.name, split=self.config.data.split)
            judge = load_model(config.judge)
            self._generation = GenerationAudit(
                config, self.train_data(), evaluation, judge, self.config.seed, self.device
            )
        self.progress.cell_started(f"{pair.model.label} | {pair.defense.label} | generation", 1)
        defense = make_defense(pair.defense.defense, **pair.defense.params)
        log = None
        if hasattr(defense, "training_log"):
            log = defense.training_log(pair.model.spec, self.train_data())
        with step_hook(self.progress.step):
            metrics, samples = self._generation.run(model, log)
        grid = sample_grid(samples, config.n_per_class, self._generation.n_classes)
        relative = f"artifacts/generation/{pair.generation_id}.png"
        save_png(grid, self.run_dir / relative)
        self.progress.batch_done()
        return {
            "type": "generation",
            "id": pair.generation_id,
            "pair_id": pair.id,
            "model": pair.model.model_dump(),
            "defense": pair.defense.model_dump(),
            "judge": config.judge,
            **metrics,
            "grid": relative,
        }

    def membership_audit(self) -> MembershipAudit:
        if self._audit is None:
            evaluation = load_dataset(self.config.data.name, split=self.config.data.split)
            self._audit = MembershipAudit(
                self.train_data(), evaluation, self.config.seed, self.device
            )
        return self._audit


def _check_eps_against_data(pairs: list[Pair], sample_shape: tuple[int, ...]) -> None:
    """Fail before any work when an l2/l1 eps exceeds the largest distance in the bounds."""
    for pair in pairs:
        for cell in pair.cells:
            with under_field(f"{cell.attack.label}.threat.eps", replace=True):
                check_eps_fits(cell.threat, math.prod(sample_shape))


def default_run_dir(suite: str) -> Path:
    """``runs/<suite>-<timestamp>``, with a suffix if that second is already taken."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = Path("runs") / f"{suite}-{stamp}"
    counter = 2
    while candidate.exists():
        candidate = Path("runs") / f"{suite}-{stamp}-{counter}"
        counter += 1
    return candidate


def run(
    source: str | Path | dict[str, Any] = "quickstart",
    out: str | Path | None = None,
    profile: str | None = "quick",
    device: str | torch.device | None = "auto",
    resume: bool = True,
    seed: int | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    engine: dict[str, Any] | None = None,
    executor: str = "local",
    address: str | None = None,
    gpus_per_task: float = 0.0,
    threads: int | None = None,
) -> Path:
    """Run a matrix (a packaged suite name, a YAML path or a dict) into a run directory.

    ``engine`` overrides keys of the config's ``engine`` section (``batch_size``, ``precision``).
    ``executor="ray"`` runs the cascade groups as Ray tasks (``address`` of a cluster, or a local
    one); outcomes are identical to the local executor's. ``threads`` is torch's CPU thread
    count (default: half the cores, see :mod:`robustbench_cl.engine.threads`).
    """
    if executor not in ("local", "ray"):
        raise UserError("--executor", f"unknown executor {executor!r}", "use local or ray")
    used_threads = apply_threads(threads)
    config = load_config(source, profile=profile, seed=seed, engine=engine)
    if config.trust_remote_code:
        allow_remote_code()
    resolved_device = resolve_device(device)
    progress = progress or Progress()
    pairs = expand(config)  # validate every name and threat model before touching the disk
    fits = expand_retrieval(config) if config.retrieval is not None else []
    jailbreak_plan = expand_jailbreak(config) if config.jailbreak is not None else None
    screen_columns = expand_screens(config) if config.screens is not None else None
    run_dir = Path(out) if out is not None else default_run_dir(config.suite)
    config_path = run_dir / "config.yaml"
    resolved = config.model_dump(mode="json")
    if resume and config_path.exists():
        previous = yaml.safe_load(config_path.read_text())
        with contextlib.suppress(Exception):  # a run by an older version: compare like with like
            previous = MatrixConfig.model_validate(previous).model_dump(mode="json")
        if previous != resolved:
            raise UserError(
                "--out",
                f"{run_dir} holds a run of a different config",
                "use --fresh to overwrite it, or another --out",
            )
    runner = Runner(config, run_dir, resolved_device, progress)
    runner.load_data()
    _check_eps_against_data(pairs, runner.sample_shape)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    meta = _meta(config, resolved_device, command, profile)
    write_json_atomic(run_dir / "meta.json", meta)
    meta["data"] = {**runner.data.describe(), "n_evaluated": runner.n}
    started = time.perf_counter()
    ray_executor = RayExecutor(address, gpus_per_task) if executor == "ray" else None
    runner.execute(pairs, resume, ray_executor, fits, jailbreak_plan, screen_columns)
    meta["executor"] = executor
    meta["threads"] = used_threads
    from robustbench_cl.models.artifacts import USED_ARTIFACTS

    # content hashes of the cached weights this process used (Ray workers' are not seen here)
    meta["artifacts"] = dict(sorted(USED_ARTIFACTS.items()))
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["wall_time"] = time.perf_counter() - started
    write_json_atomic(run_dir / "meta.json", meta)
    write_results(run_dir)
    logger.info("run written to %s", run_dir)
    return run_dir
