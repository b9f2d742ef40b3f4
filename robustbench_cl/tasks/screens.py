"""Screenshot privacy: the ``screens:`` section of a config.

Each protector (and each of its eps) protects the test screens once; every router then reads
them. One ``screen`` record per (protector, eps) holds, per router and per screen, which PII
fields leaked (ratio > 0.6, and exactly), which task keywords were still found, and per screen
PSNR, SSIM and the l-inf distance of the 8-bit protected screenshot. DualTAP protectors are
trained on the training screens first (cached). EasyOCR is the white-box router (DualTAP and the
global PGD are optimised against its recognizer); Tesseract is black-box transfer.
"""

from __future__ import annotations

import base64
import logging
import time
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from rich.table import Table

from robustbench_cl.engine import sanity
from robustbench_cl.engine.config import (
    MatrixConfig,
    ScreenProtectorConfig,
    ScreensConfig,
    refuse_duplicate_labels,
)
from robustbench_cl.engine.metrics import rate_entry
from robustbench_cl.engine.records import Record
from robustbench_cl.engine.results_models import STRICT, Flag, Rate
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import RunContext, Task, Unit, register_task
from robustbench_cl.errors import ThreatModelViolation, UserError
from robustbench_cl.paths import inside
from robustbench_cl.report import plots
from robustbench_cl.report.media import run_file
from robustbench_cl.report.table import percent_or_dash
from robustbench_cl.utils import derive_seed, stable_hash

logger = logging.getLogger(__name__)

#: bump when the protocol changes (record ids change, so old records are not reused)
PROTOCOL_VERSION = 1


def expand_screens(config: MatrixConfig) -> list[dict[str, Any]]:
    """Validate the section; one column per (protector, eps)."""
    from robustbench_cl.defenses.protectors import make_protector

    section = config.screens
    assert section is not None
    columns = []
    for index, protector in enumerate(section.protectors):
        field = f"screens.protectors[{index}]"
        kind = make_protector(protector.protector, f"{field}.protector")
        if kind.bounded and not protector.eps:
            raise UserError(
                f"{field}.eps", f"{protector.protector} needs an eps", "e.g. eps: [16/255, 32/255]"
            )
        if not kind.bounded and protector.eps:
            raise UserError(f"{field}.eps", f"{protector.protector} takes no eps", "remove eps")
        for eps in protector.eps_values():
            built = kind.build(protector.params, eps, config.seed, field)
            columns.append({"config": protector, "eps": eps, "kind": kind, "built": built})
    labels = [column_label(c["config"].label, c["eps"]) for c in columns]
    refuse_duplicate_labels(labels, "screens.protectors[].name", "protectors")
    return columns


def column_label(name: str, eps: float | None) -> str:
    return name if eps is None else f"{name} {eps * 255:g}/255"


@register_task("screens")
class ScreensTask(Task):
    """Screenshot privacy: PII routers (OCR) against protectors, the ``screens:`` section."""

    order = 50

    record_types = ("screen",)
    data_sources = (
        ("privscreen-mini[?n=160&seed=0]", "rendered phone screens with PII boxes"),
        ("privscreen:DIR", "PrivScreen's folder layout (images + annotations)"),
    )
    template = Path(__file__).parent / "templates" / "screens.html.j2"
    title = "Screens"

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        assert self.config.screens is not None
        self.section: ScreensConfig = self.config.screens
        self.run_dir = Path(ctx.run_dir)
        self.device = torch.device("cpu")  # the OCR engines run on the CPU
        self.progress = ctx.progress
        self._data = None
        self._surrogate = None
        self._routers: dict[str, Any] = {}

    # ---------------------------------------------------------------- ids
    def record_id(self, column: dict[str, Any]) -> str:
        protector: ScreenProtectorConfig = column["config"]
        self.data()
        return stable_hash(
            {
                "screens": self.section.data.model_dump(),
                "test_screens": self._test_key,
                "protector": protector.protector,
                "name": protector.name,
                "params": protector.params,
                "examples": self.section.examples,
                "eps": column["eps"],
                "routers": list(self.section.routers),
                "seed": self.config.seed,
                "version": PROTOCOL_VERSION,
                # only when set: the ids of unsharded runs stay what they were
                **({"shard_size": self.section.shard_size} if self.section.shard_size else {}),
            }
        )

    def shard_range(self, shard: int) -> tuple[int, int]:
        n = len(self.data()[2])
        size = self.section.shard_size or n
        return shard * size, min(n, (shard + 1) * size)

    def plan(self) -> list[Unit]:
        self.columns = expand_screens(self.config)
        n = len(self.data()[2])
        shards = -(-n // (self.section.shard_size or n))
        units = []
        for index, column in enumerate(self.columns):
            label = f"screens | {column_label(column['config'].label, column['eps'])}"
            units.append(Unit(self.record_id(column), label, "column", index, shards=shards))
        return units

    def batches(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> int:
        return len(self.data()[2]) * len(self.section.routers)

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        return self.shard_part(self.columns[unit.key], unit.id, shard)

    def merge(self, unit: Unit, inputs: dict[str, dict[str, Any]], parts: list[Any]) -> dict:
        return self.cell_record(self.columns[unit.key], unit.id, parts)

    # ------------------------------------------------------------------ results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        return {"screens": _screens_section(summary)} if summary.screens else None

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Per protector and router: PII leak rate (lower) and task success rate (higher)."""
        rows = []
        for row in (results.get("screens") or {}).get("rows", []):
            where = f"{row['label']} / {row['router']}"
            for key, name, better in (("plr", "PLR", "lower"), ("tsr", "TSR", "higher")):
                if (row.get(key) or {}).get("rate") is not None:
                    rows.append(
                        {"row": where, "cell": name, "value": row[key]["rate"], "better": better}
                    )
        return rows

    @classmethod
    def flag_rows(cls, section: dict[str, Any]) -> list[dict[str, str]]:
        return cls.rows_of(section.get("rows", []), lambda row: f"{row['label']} | {row['router']}")

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        return _screens(results, run_dir)

    @classmethod
    def table(cls, summary: RunSummary):  # noqa: ANN206
        return screens_table(summary)

    # ---------------------------------------------------------------- shared parts
    def data(self) -> tuple[Any, list, list]:
        if self._data is None:
            from robustbench_cl.data.privscreen import check_same_size, load_screens
            from robustbench_cl.data.subset import seeded_pick
            from robustbench_cl.defenses.dualtap import screens_key
            from robustbench_cl.privacy.routers import easyocr_locator

            data = load_screens(self.section.data.name, easyocr_locator())
            check_same_size(data.screens)
            train, test = data.split(self.section.data.train_ratio)
            # a seeded choice of n_test, in stored order: the first ones may all be one app
            test = seeded_pick(test, self.section.data.n_test, self.config.seed)
            if not test:
                raise UserError(
                    "screens.data", "no test screens", "use more screens or a smaller train_ratio"
                )
            self._data = (data, train, test)
            self._test_key = screens_key(data.name, test)  # in every record id
        return self._data

    def surrogate(self):  # noqa: ANN201
        if self._surrogate is None:
            from robustbench_cl.models.ocr import RecognizerSurrogate

            self._surrogate = RecognizerSurrogate(self.device)
        return self._surrogate

    def router(self, name: str):  # noqa: ANN201
        if name not in self._routers:
            from robustbench_cl.privacy.routers import make_router

            self._routers[name] = make_router(name)
        return self._routers[name]

    def protect(
        self, column: dict[str, Any], x: torch.Tensor, test: list, record_id: str, shard: int = 0
    ):  # noqa: ANN201
        """Protected test screens (quantised to 8 bits) and the training info, if any."""
        from robustbench_cl.defenses.protectors import quantise

        config: ScreenProtectorConfig = column["config"]
        eps = column["eps"]
        key = record_id if shard == 0 else f"{record_id}/{shard}"
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, key))
        protected, info = column["kind"].protect(x, test, eps, generator, column["built"], self)
        protected = quantise(protected)
        if eps is not None:
            linf = (protected - x).abs().amax()
            if linf > eps + 0.5 / 255 + 1e-6:  # 8-bit rounding may add half a level
                raise ThreatModelViolation(
                    f"{config.label}: |delta|inf {float(linf) * 255:.2f}/255 > eps {eps * 255:g}/255"
                )
        return protected, info

    def reading_screen(self, screen):  # noqa: ANN001, ANN201
        """The screen as ``protect`` sees it: EasyOCR's lines; those matching one of the screen's
        task keywords are task text, every other line is private."""
        from robustbench_cl.defenses.screenshot import screen_from_reading

        detections = self.router("easyocr").read(screen.image)
        return screen_from_reading(
            screen.key, screen.image, detections, [t.keyword for t in screen.tasks]
        )

    def shard_part(self, column: dict[str, Any], record_id: str, shard: int) -> dict[str, Any]:
        """Protect and read the test screens of one shard: per router and screen, the raw
        outcomes; per screen, the image quality; the shard's example screens."""
        from robustbench_cl.data.privscreen import screen_tensor
        from robustbench_cl.privacy.metrics import (
            field_exact,
            field_leaked,
            field_ratio,
            psnr,
            ssim,
            task_success,
        )

        begin, end = self.shard_range(shard)
        test = self.data()[2][begin:end]
        start = time.perf_counter()
        x = screen_tensor(test)
        protected, info = self.protect(column, x, test, record_id, shard)
        images = (protected * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        routers: dict[str, Any] = {}
        readings: dict[str, list] = {}
        for name in self.section.routers:
            router = self.router(name)
            outcome: dict[str, list] = {"leaked": [], "exact": [], "ratio": [], "task": []}
            answers = []
            for screen, image in zip(test, images):
                answer = router.answer(screen, image)
                pairs = list(zip(screen.pii, answer.fields))
                outcome["leaked"].append([field_leaked(p.value, a) for p, a in pairs])
                outcome["exact"].append([field_exact(p.value, answer.text) for p in screen.pii])
                outcome["ratio"].append([round(field_ratio(p.value, a), 4) for p, a in pairs])
                outcome["task"].append([task_success(t.keyword, answer.text) for t in screen.tasks])
                answers.append(answer)
                self.progress.batch_done()
            routers[name] = outcome
            readings[name] = answers
        return {
            "settings": column["kind"].settings(column["built"]),
            "routers": routers,
            "psnr": [float(v) for v in psnr(protected, x).clamp(max=99.0)],
            "ssim": [float(v) for v in ssim(protected, x)],
            "linf": float((protected - x).abs().amax()) * 255,
            "training": info,
            "examples": self.examples(record_id, test, x, protected, readings, begin),
            "wall": time.perf_counter() - start,
        }

    def cell_record(
        self, column: dict[str, Any], record_id: str, parts: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The record of one (protector, eps) from its shards' parts, in shard order."""
        data, train, test = self.data()
        config: ScreenProtectorConfig = column["config"]
        routers: dict[str, Any] = {}
        for name in self.section.routers:
            router = self.router(name)
            outcome = {
                k: [row for p in parts for row in p["routers"][name][k]]
                for k in ("leaked", "exact", "ratio", "task")
            }
            leaked, exact, tasks = outcome["leaked"], outcome["exact"], outcome["task"]
            fields = [p.field for s in test for p in s.pii]
            flat = [v for row in leaked for v in row]
            by_field = {
                f: rate_entry(sum(v for v, g in zip(flat, fields) if g == f), fields.count(f))
                for f in sorted(set(fields))
            }
            routers[name] = {
                "access": router.access,
                "settings": router.settings(),
                **outcome,
                "plr": rate_entry(sum(flat), len(flat)),
                "plr_exact": rate_entry(sum(v for row in exact for v in row), len(flat)),
                "zero_leak": rate_entry(sum(1 for row in leaked if not any(row)), len(test)),
                "tsr": rate_entry(sum(v for row in tasks for v in row), sum(len(r) for r in tasks)),
                "by_field": by_field,
            }
        return {
            "type": "screen",
            "id": record_id,
            "protector": {
                "protector": config.protector,
                "name": config.name,
                "params": config.params,
                "settings": parts[0]["settings"],
            },
            "label": column_label(config.label, column["eps"]),
            "eps": column["eps"],
            "data": {**data.describe(), "n_train": len(train), "n_test": len(test)},
            "screens": [s.key for s in test],
            "routers": routers,
            "psnr": [v for p in parts for v in p["psnr"]],
            "ssim": [v for p in parts for v in p["ssim"]],
            "linf": max(p["linf"] for p in parts),
            "training": parts[0]["training"],
            "examples": [e for p in parts for e in p["examples"]][: self.section.examples],
            "wall_time": sum(p["wall"] for p in parts),
        }

    def examples(self, record_id, test, x, protected, readings, begin=0) -> list[dict[str, Any]]:  # noqa: ANN001
        """Example screens for the report, with every PII box pixelated and PII text masked
        (``test`` is a shard starting at test screen ``begin``; files are named by the index
        in the whole test set)."""
        from robustbench_cl.privacy.metrics import field_leaked, mask_pii
        from robustbench_cl.tasks.generation import save_png

        out = []
        shown_screens = [s for s in range(len(test)) if all(p.box for p in test[s].pii)]
        for index in shown_screens[: self.section.examples]:  # a PII without a box: not shown
            screen = test[index]
            boxes = [p.box for p in screen.pii]
            shown = pixelate(protected[index], boxes)
            magnitude = (protected[index] - x[index]).abs().amax(0, keepdim=True)
            magnitude = pixelate(coarse(magnitude / max(float(magnitude.max()), 1e-12)), boxes)
            relative = f"artifacts/screens/{record_id}-{begin + index}.png"
            grid = torch.cat([shown, magnitude.expand(3, -1, -1)], 2)
            save_png(grid, inside(self.run_dir, relative))
            fields = []
            for position, item in enumerate(screen.pii):
                entry = {"field": item.field, "true": mask_pii(item.value)}
                for name, answers in readings.items():
                    read = answers[index].fields[position]
                    entry[name] = {"read": mask_pii(read), "leaked": field_leaked(item.value, read)}
                fields.append(entry)
            out.append(
                {"screen": screen.key, "app": screen.app, "image": relative, "fields": fields}
            )
        return out


def pixelate(image: torch.Tensor, boxes: list, block: int = 8) -> torch.Tensor:
    """The image with each box replaced by coarse blocks: PII never appears in a report."""
    import torch.nn.functional as F

    out = image.clone()
    for x0, y0, x1, y1 in boxes:
        region = out[:, y0:y1, x0:x1]
        if region.numel() == 0:
            continue
        h, w = region.shape[-2:]
        small = F.adaptive_avg_pool2d(region[None], (max(1, h // block), max(1, w // block)))
        out[:, y0:y1, x0:x1] = F.interpolate(small, size=(h, w), mode="nearest")[0]
    return out


def coarse(image: torch.Tensor, block: int = 6) -> torch.Tensor:
    """Block averages: where the perturbation is, without the strokes of the text under it."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    small = F.avg_pool2d(image[None], block, ceil_mode=True)
    return F.interpolate(small, size=(h, w), mode="nearest")[0]


def screen_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (protector, eps, router): the table of the results and the report."""
    rows = []
    for record in records:
        for name, entry in record["routers"].items():
            rows.append(
                {
                    "id": record["id"],
                    "label": record["label"],
                    "protector": record["protector"]["protector"],
                    "name": record["protector"]["name"] or record["protector"]["protector"],
                    "eps": record["eps"],
                    "router": name,
                    "access": entry["access"],
                    "plr": entry["plr"],
                    "plr_exact": entry["plr_exact"],
                    "zero_leak": entry["zero_leak"],
                    "tsr": entry["tsr"],
                    "by_field": entry["by_field"],
                    "psnr": float(np.mean(record["psnr"])),
                    "ssim": float(np.mean(record["ssim"])),
                    "linf": record["linf"],
                    "training_seconds": (record.get("training") or {}).get("wall_time"),
                }
            )
    return rows


def _screens_section(summary: RunSummary) -> dict[str, Any]:
    """Rows per (protector, eps, router); per router the change of every row from clean."""
    from robustbench_cl.privacy.metrics import LEAK_RATIO

    rows = screen_rows(summary.screens)
    for row in rows:
        clean = next(
            (r for r in rows if r["protector"] == "clean" and r["router"] == row["router"]), None
        )
        for key in ("plr", "tsr"):
            rates = (row[key]["rate"], clean[key]["rate"] if clean else None)
            row[f"{key}_change"] = None if None in rates else rates[0] - rates[1]
    for row, flags in zip(rows, sanity.screens_flags(rows)):
        row["flags"] = flags
    first = summary.screens[0]
    return {
        "data": first["data"],
        "routers": {
            name: {"access": entry["access"], "settings": entry["settings"]}
            for name, entry in first["routers"].items()
        },
        "rules": {
            "leaked": f"SequenceMatcher ratio > {LEAK_RATIO} between the true value and the "
            "best-matching text the router read",
            "exact": "the normalised true value appears in the normalised reading",
            "task": "the normalised task keyword appears in the router's reading (with or "
            "without spaces), or all its content words do",
        },
        "rows": rows,
        "examples": [
            {"label": r["label"], "examples": r["examples"]}
            for r in summary.screens
            if r["examples"]
        ],
    }


def _screens(results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    section = results.get("screens")
    if not section:
        return None
    examples = []
    for entry in section["examples"]:
        for example in entry["examples"]:
            path = run_file(run_dir, example["image"])
            image = (
                "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
                if path is not None
                else None
            )
            examples.append(dict(example, label=entry["label"], src=image))
    routers = list(section["routers"])
    return {
        "rows": section["rows"],
        "routers": section["routers"],
        "rules": section["rules"],
        "data": section["data"],
        "plots": [(r, plots.screen_tradeoff(section["rows"], r)) for r in routers],
        "examples": examples,
    }


def screens_table(summary: RunSummary) -> Table | None:
    """PLR, exact PLR, zero-leak and TSR % per protector and router, with image quality."""
    if not summary.screens:
        return None
    table = Table(
        title="screens: PII leakage (PLR) and task success (TSR) per protector and router",
        title_justify="left",
    )
    for name, justify in (
        ("protector", "left"),
        ("router", "left"),
        ("PLR %", "right"),
        ("exact %", "right"),
        ("zero-leak %", "right"),
        ("TSR %", "right"),
        ("PSNR", "right"),
        ("SSIM", "right"),
    ):
        table.add_column(name, justify=justify)
    for row in screen_rows(summary.screens):
        table.add_row(
            row["label"],
            f"{row['router']} ({row['access']})",
            percent_or_dash(row["plr"]["rate"]),
            percent_or_dash(row["plr_exact"]["rate"]),
            percent_or_dash(row["zero_leak"]["rate"]),
            percent_or_dash(row["tsr"]["rate"]),
            f"{row['psnr']:.1f}",
            f"{row['ssim']:.3f}",
        )
    return table


__all__ = ["ScreensTask", "column_label", "expand_screens", "screen_rows"]


# ---------------------------------------------------------------------- results.json
class RouterAccess(Enum):
    WHITE_BOX = "white-box"
    BLACK_BOX = "black-box"


class ScreensRouter(BaseModel):
    access: RouterAccess
    settings: dict[str, Any]


class ProtectorKind(Enum):
    CLEAN = "clean"
    NOISE = "noise"
    PGD = "pgd"
    BLACKOUT = "blackout"
    DUALTAP = "dualtap"


class ScreensRow(BaseModel):
    model_config = STRICT
    id: str
    label: str
    protector: ProtectorKind
    name: str
    eps: float | None
    router: str
    access: RouterAccess
    plr: Rate
    plr_exact: Rate
    zero_leak: Rate
    tsr: Rate
    by_field: dict[str, Rate]
    psnr: float
    ssim: float
    linf: float = Field(..., ge=0.0)
    training_seconds: float | None
    plr_change: float | None
    tsr_change: float | None
    flags: list[Flag]
    """
    sanity flags (docs/sanity-checks.md)
    """


class ScreensSection(BaseModel):
    model_config = STRICT
    data: dict[str, Any]
    routers: dict[str, ScreensRouter]
    rules: dict[str, str]
    rows: list[ScreensRow]
    examples: list[dict[str, Any]]


ScreensTask.section_model = ScreensSection


# ---------------------------------------------------------------------- cells.jsonl
class ScreenRecord(Record):
    """One protector at one eps over the test screens: per-router, per-screen, per-field
    outcomes and the image quality of the protected screens."""

    type: Literal["screen"]
    protector: dict[str, Any]
    label: str
    eps: float | None
    data: dict[str, Any]
    screens: list[str]
    routers: dict[str, Any]
    psnr: list[float]
    ssim: list[float]
    linf: float
    training: dict[str, Any] | None
    examples: list[dict[str, Any]]


ScreensTask.record_models = {"screen": ScreenRecord}
