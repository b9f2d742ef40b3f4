"""Protecting screens and reading them with OCR routers: one column, shard by shard."""

from __future__ import annotations

from typing import Any

import torch

from robustbench_cl.engine.metrics import rate_entry
from robustbench_cl.errors import ThreatModelViolation, UserError
from robustbench_cl.paths import inside
from robustbench_cl.tasks.screens.config import ScreenProtectorConfig, protector_label
from robustbench_cl.tasks.screens.results import ScreenRecord
from robustbench_cl.utils import derive_seed


class Evaluation:
    """The screens task's work (mixed into it): the screens, the OCR routers and the protectors, and one (protector, eps) column, shard by shard."""

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
            "settings": column["kind"].settings(column["built"], column["eps"]),
            "routers": routers,
            "psnr": [float(v) for v in psnr(protected, x).clamp(max=99.0)],
            "ssim": [float(v) for v in ssim(protected, x)],
            "linf": float((protected - x).abs().amax()) * 255,
            "training": info,
            "examples": self.examples(record_id, test, x, protected, readings, begin),
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
        return ScreenRecord(
            type="screen",
            id=record_id,
            protector={
                "protector": config.protector,
                "name": config.name,
                "params": config.params,
                "settings": parts[0]["settings"],
            },
            label=protector_label(config.label, column["eps"]),
            eps=column["eps"],
            data={**data.describe(), "n_train": len(train), "n_test": len(test)},
            screens=[s.key for s in test],
            routers=routers,
            psnr=[v for p in parts for v in p["psnr"]],
            ssim=[v for p in parts for v in p["ssim"]],
            linf=max(p["linf"] for p in parts),
            training=parts[0]["training"],
            examples=[e for p in parts for e in p["examples"]][: self.section.examples],
        )

    def examples(self, record_id, test, x, protected, readings, begin=0) -> list[dict[str, Any]]:  # noqa: ANN001
        """Example screens for the report, with every PII box pixelated and PII text masked
        (``test`` is a shard starting at test screen ``begin``; files are named by the index
        in the whole test set)."""
        from robustbench_cl.privacy.metrics import field_leaked, mask_pii
        from robustbench_cl.report.media import save_png

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
