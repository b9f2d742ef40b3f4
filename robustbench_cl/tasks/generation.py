"""Generation columns: how well does each (model, defense) draw the digits it classifies?

Every pair's classifier samples the same class-conditional batch with the same sampler (gradient
ascent on the class logit from the same OOD seeds). An *independent* classifier, trained
separately with another architecture (``builtin:digits-judge``), scores the samples:

- **intended-class accuracy**: how often the judge reads the class the sampler aimed for;
- **mini-FID**: the Frechet distance between the judge's penultimate features of the samples
  and of the real evaluation images (lower is better). For scale, the record also holds the
  distance of real training images (a floor) and of the raw seeds (a ceiling);
- **OOD AUROC** of the pair's own ``s(x) = logsumexp f(x)``: real evaluation images against each
  OOD seed kind (uniform, blurred, pixel- and patch-shuffled), and over all of them.

Training defenses that log their stage-2 run (DAT) add it: the AUC trace's spread, the final
curriculum T and the number of NaN batches.
"""

from __future__ import annotations

import base64
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from rich.table import Table
from safetensors.torch import save_file
from torch import nn

from robustbench_cl.attacks.base import step_hook
from robustbench_cl.attacks.generation import SEED_KINDS, class_conditional_ascent, ood_seeds
from robustbench_cl.data import TensorData, load_dataset
from robustbench_cl.defenses import make_defense
from robustbench_cl.engine.config import GenerationConfig
from robustbench_cl.engine.records import DefenseRef, ModelRef, Record
from robustbench_cl.engine.results_models import STRICT, Probability
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import Unit, register_task
from robustbench_cl.errors import UserError
from robustbench_cl.paths import inside
from robustbench_cl.privacy.metrics import auc as roc_auc
from robustbench_cl.privacy.metrics import roc
from robustbench_cl.report import plots
from robustbench_cl.report.media import run_file
from robustbench_cl.report.table import percent
from robustbench_cl.tasks.pairs import PairTask


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Inputs of the last Linear layer of a Sequential classifier."""
    model = getattr(model, "model", model)
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise TypeError("the judge must be an nn.Sequential ending in an nn.Linear layer")
    body = model[:-1]
    device = next(model.parameters()).device
    return torch.cat([body(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)), in float64.

    Like FID it is biased upwards for small sample counts; compare numbers computed with the
    same counts only (the suites keep them fixed).
    """
    from scipy import linalg

    a64, b64 = a.double().cpu().numpy(), b.double().cpu().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    with warnings.catch_warnings():  # singular covariances (fewer samples than features)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(root):
        root = root.real
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))
    return max(value, 0.0)


def _auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    scores = torch.cat([positive, negative]).double().cpu().numpy()
    labels = np.concatenate([np.ones(len(positive), bool), np.zeros(len(negative), bool)])
    fpr, tpr = roc(scores, labels)
    return roc_auc(fpr, tpr)


class GenerationAudit:
    def __init__(
        self,
        config: GenerationConfig,
        train: TensorData,
        evaluation: TensorData,
        judge: nn.Module,
        seed: int,
        device: torch.device,
    ) -> None:
        self.config, self.seed, self.device = config, seed, device
        self.judge = judge.to(device).eval()
        self.real = evaluation.x.to(device)
        self.bounds = evaluation.bounds
        self.n_classes = evaluation.n_classes
        per_class = config.n_per_class
        generator = torch.Generator().manual_seed(seed)
        self.classes = (
            list(config.classes) if config.classes is not None else list(range(self.n_classes))
        )
        self.targets = torch.tensor(self.classes).repeat_interleave(per_class).to(device)
        self.seeds = ood_seeds(len(self.targets), train.x.to(device), generator)
        # OOD detection: one batch per seed kind, shaped like the evaluation set
        self.ood = {
            kind: ood_seeds(len(self.real), train.x.to(device), generator, kinds=(kind,))
            for kind in SEED_KINDS
        }
        self.real_features = penultimate_features(self.judge, self.real)
        self.reference = {
            "fid_train_vs_eval": frechet_distance(
                penultimate_features(self.judge, train.x[: len(self.real)]), self.real_features
            ),
            "fid_seeds_vs_eval": frechet_distance(
                penultimate_features(self.judge, self.seeds), self.real_features
            ),
        }

    def sample(self, model: nn.Module) -> torch.Tensor:
        return class_conditional_ascent(
            model, self.seeds, self.targets, self.config.steps, self.config.step_size, self.bounds
        )

    def run(
        self, model: nn.Module, training_log: dict[str, Any] | None
    ) -> tuple[dict[str, Any], torch.Tensor]:
        start = time.perf_counter()
        samples = self.sample(model)
        with torch.no_grad():
            judged = self.judge(samples).argmax(1)
            s_real = torch.logsumexp(model(self.real), 1)
            ood = {kind: torch.logsumexp(model(x), 1) for kind, x in self.ood.items()}
        per_kind = {kind: _auroc(s_real, s) for kind, s in ood.items()}
        record: dict[str, Any] = {
            "n_samples": len(samples),
            "steps": self.config.steps,
            "step_size": self.config.step_size,
            "intended_class_accuracy": float((judged == self.targets).float().mean()),
            "mini_fid": frechet_distance(
                penultimate_features(self.judge, samples), self.real_features
            ),
            **self.reference,
            "ood_auroc": _auroc(s_real, torch.cat(list(ood.values()))),
            "ood_auroc_by_kind": per_kind,
            "samples_in_bounds": bool(
                ((samples >= self.bounds[0]) & (samples <= self.bounds[1])).all()
            ),
            "training": _training_summary(training_log),
            "wall_time": time.perf_counter() - start,
        }
        return record, samples


def _training_summary(log: dict[str, Any] | None) -> dict[str, Any] | None:
    if not log or "auc" not in log:  # only energy-trained defenses (DAT) log an AUC trace
        return None
    aucs = log.get("auc", [])
    return {
        "final_gen_steps": log.get("final_gen_steps"),
        "nan_batches": log.get("nan_batches", 0),
        "auc_std_last_100": log.get("auc_std_last_100"),
        "auc_mean_last_100": float(np.mean(aucs[-100:])) if aucs else None,
        "batches": len(aucs),
        # a coarse trace for the report: one point every 10 batches
        "auc_trace": aucs[::10],
        "gen_steps_trace": log.get("gen_steps", [])[::10],
    }


def save_png(image: torch.Tensor, path: Path) -> Path:
    """A C x H x W image in [0, 1] as a PNG (grayscale for one channel)."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    array = array[0] if array.shape[0] == 1 else array.permute(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.numpy()).save(path)
    return path


def sample_grid(samples: torch.Tensor, per_class: int, n_classes: int, columns: int = 8):  # noqa: ANN201
    """A (classes x min(per_class, columns)) grid image tensor, one row per class."""
    shown = min(per_class, columns)
    rows = samples.view(n_classes, per_class, *samples.shape[1:])[:, :shown]
    c, h, w = samples.shape[1:]
    pad = 1
    grid = torch.ones(c, n_classes * (h + pad) + pad, shown * (w + pad) + pad)
    for i in range(n_classes):
        for j in range(shown):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, top : top + h, left : left + w] = rows[i, j].cpu()
    return grid


@register_task("generation")
class GenerationTask(PairTask):
    """Generation columns: each pair's classifier as a sampler, scored by an independent judge."""

    order = 20

    record_types = ("generation",)
    template = Path(__file__).parent / "templates" / "generation.html.j2"
    title = "Generation"

    @classmethod
    def section(cls, config):  # noqa: ANN001, ANN206
        return config.generation if config.models else None

    def plan(self) -> list[Unit]:
        self._audit: GenerationAudit | None = None
        classes = self.config.generation.classes if self.config.generation else None
        if classes is not None:  # before any work, not when the first generation unit runs
            n_classes = self.train_data().n_classes
            bad = [c for c in classes if not 0 <= c < n_classes]
            if bad:
                raise UserError(
                    "generation.classes",
                    f"{bad[0]} is not a class of {self.config.data.name}",
                    f"use 0..{n_classes - 1}",
                )
        units = []
        for pair in self.pairs:
            assert pair.generation_id is not None
            label = f"{pair.model.label} | {pair.defense.label} | generation"
            units.append(Unit(pair.generation_id, label, "generation", pair.id, (pair.id,)))
        return units

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        config = self.config.generation
        assert config is not None
        pair = self.by_pair[unit.key]
        model = self.model(pair)
        if self._audit is None:
            from robustbench_cl.models import load_model

            evaluation = load_dataset(self.config.data.name, split=self.config.data.split)
            judge = load_model(config.judge)
            self._audit = GenerationAudit(
                config, self.train_data(), evaluation, judge, self.config.seed, self.device
            )
        defense = make_defense(pair.defense.defense, **pair.defense.params)
        log = None
        if hasattr(defense, "training_log"):
            log = defense.training_log(pair.model.spec, self.train_data())
        with step_hook(self.progress.step):
            metrics, samples = self._audit.run(model, log)
        grid = sample_grid(samples, config.n_per_class, len(self._audit.classes))
        relative = f"artifacts/generation/{unit.id}.png"
        save_png(grid, inside(self.run_dir, relative))
        kept = f"artifacts/generation/{unit.id}.safetensors"
        save_file(
            {"samples": samples.detach().cpu().contiguous(), "targets": self._audit.targets.cpu()},
            inside(self.run_dir, kept),
        )
        self.progress.batch_done()
        return {
            "type": "generation",
            "id": unit.id,
            "pair_id": pair.id,
            "model": pair.model.model_dump(),
            "defense": pair.defense.model_dump(),
            "judge": config.judge,
            **metrics,
            "grid": relative,
            "samples": kept,
        }

    def close(self) -> None:
        super().close()
        self._audit = None

    # ------------------------------------------------------------------ results
    @classmethod
    def data_fingerprint(
        cls, results: dict[str, Any], config: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The whole evaluation split (its FID reference), the training split, the seed."""
        data = (config or {}).get("data") or results["run"].get("data") or {}
        return {
            "seed": results["run"].get("seed"),
            "name": data.get("name"),
            "split": data.get("split"),
            "train_split": data.get("train_split", "train"),
        }

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """The judge's intended-class accuracy of each pair's samples."""
        return [
            {
                "row": entry["pair"],
                "cell": "generation intended-class accuracy",
                "value": entry["intended_class_accuracy"],
                "better": "higher",
            }
            for entry in results.get("generation") or []
            if entry.get("intended_class_accuracy") is not None
        ]

    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        entries = [_generation_entry(p.generation, p.label) for p in summary.pairs if p.generation]
        return {"generation": entries} if entries else None

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        return _generation(results, run_dir)

    @classmethod
    def table(cls, summary: RunSummary):  # noqa: ANN206
        return generation_table(summary)


def _generation_entry(record: dict[str, Any], pair_label: str) -> dict[str, Any]:
    keys = (
        "judge",
        "n_samples",
        "steps",
        "step_size",
        "intended_class_accuracy",
        "mini_fid",
        "fid_train_vs_eval",
        "fid_seeds_vs_eval",
        "ood_auroc",
        "ood_auroc_by_kind",
        "samples_in_bounds",
        "training",
        "grid",
        "wall_time",
    )
    return {"id": record["id"], "pair_id": record["pair_id"], "pair": pair_label} | {
        key: record[key] for key in keys
    }


def _generation(results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    entries = results.get("generation")
    if not entries:
        return None
    rows = []
    for entry in entries:
        grid = None
        path = run_file(run_dir, entry.get("grid"))
        if path is not None:
            grid = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        rows.append(dict(entry, image=grid))
    traces = [(e["pair"], e["training"]) for e in entries if e.get("training")]
    return {"rows": rows, "trace": plots.training_traces(traces) if traces else None}


def generation_table(summary: RunSummary) -> Table | None:
    """Generation quality per (model, defense), scored by the independent judge."""
    rows = [(pair, pair.generation) for pair in summary.pairs if pair.generation]
    if not rows:
        return None
    first = rows[0][1]
    table = Table(
        title=f"generation ({first['n_samples']} samples, {first['steps']} ascent steps; judge "
        f"{first['judge']}; mini-FID floor {first['fid_train_vs_eval']:.1f}, "
        f"seeds {first['fid_seeds_vs_eval']:.1f})",
        title_justify="left",
    )
    for name in ("model / defense", "intended class %", "mini-FID", "OOD AUROC", "training"):
        table.add_column(name, justify="left" if name == "model / defense" else "right")
    for pair, record in rows:
        training = record.get("training")
        note = (
            f"T={training['final_gen_steps']} NaN={training['nan_batches']} "
            f"AUC sd={training['auc_std_last_100']:.3f}"
            if training
            else "-"
        )
        table.add_row(
            pair.label,
            percent(record["intended_class_accuracy"]),
            f"{record['mini_fid']:.1f}",
            f"{record['ood_auroc']:.3f}",
            note,
        )
    return table


# ---------------------------------------------------------------------- results.json
class GenerationTraining(BaseModel):
    final_gen_steps: int | None = None
    nan_batches: int | None = Field(None, ge=0)
    auc_std_last_100: float | None = None
    auc_mean_last_100: float | None = None
    batches: int | None = Field(None, ge=0)
    auc_trace: list[float] | None = None
    gen_steps_trace: list[int] | None = None


class GenerationEntry(BaseModel):
    """
    class-conditional samples of one (model, defense), scored by an independent judge
    """

    model_config = STRICT
    id: str
    pair_id: str
    pair: str
    judge: str
    n_samples: int = Field(..., ge=0)
    steps: int = Field(..., ge=0)
    step_size: float = Field(..., ge=0.0)
    intended_class_accuracy: float = Field(..., ge=0.0, le=1.0)
    mini_fid: float = Field(..., ge=0.0)
    fid_train_vs_eval: float = Field(..., ge=0.0)
    fid_seeds_vs_eval: float = Field(..., ge=0.0)
    ood_auroc: float = Field(..., ge=0.0, le=1.0)
    ood_auroc_by_kind: dict[str, Probability]
    samples_in_bounds: bool
    training: GenerationTraining | None
    grid: str
    wall_time: float = Field(..., ge=0.0)


GenerationTask.section_model = list[GenerationEntry]


# ---------------------------------------------------------------------- cells.jsonl
class GenerationRecord(Record):
    """A pair's sampler audit: class-conditional samples judged by an independent classifier,
    their mini-FID, and the OOD AUROC of the model's energy."""

    type: Literal["generation"]
    pair_id: str
    model: ModelRef
    defense: DefenseRef
    judge: str
    n_samples: int = Field(..., ge=0)
    steps: int = Field(..., ge=0)
    step_size: float
    intended_class_accuracy: float | None
    samples_in_bounds: bool
    mini_fid: float | None
    fid_train_vs_eval: float | None
    fid_seeds_vs_eval: float | None
    ood_auroc: float | None
    ood_auroc_by_kind: dict[str, float | None]
    training: dict[str, Any] | None
    grid: str
    samples: str | None = None
    """the samples and their intended classes (a safetensors file in the run directory)"""


GenerationTask.record_models = {"generation": GenerationRecord}
