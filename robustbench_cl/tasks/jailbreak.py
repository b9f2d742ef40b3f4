"""Chat LLMs under jailbreak attacks: the ``jailbreak:`` section of a config.

Records (appended to ``cells.jsonl`` like every other cell):

- ``jailbreak_clean``, once per (model, defense): benign utility (the answer starts with the
  expected one), over-refusal on borderline prompts, and the defense's training compute
  (per-sequence forward and backward passes, attack included) and wall time;
- ``jailbreak``, per (model, defense, attack, eps): per harmful test prompt the *forced*
  outcome (greedy teacher-forced prediction equals the whole harmful target) and the *judged*
  outcome of free greedy generation (1 harmful target produced, 0 refused, -1 neither), with
  Wilson intervals. Every attack runs on every harmful prompt (no cascade): per-attack ASR is
  the number users compare; the worst case over attacks is derived in the results.

The attacks are white-box on the defended model: C-AdvUL is evaluated under attacks that know
its weights (the adaptive setting).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, Field
from rich.table import Table

from robustbench_cl.attacks.base import step_hook
from robustbench_cl.attacks.jailbreak import JailbreakAttack, judge, judge_settings
from robustbench_cl.data.chat import ChatData, answer_correct, is_refusal, make_chat
from robustbench_cl.engine import sanity
from robustbench_cl.engine.config import (
    DefenseConfig,
    JailbreakConfig,
    MatrixConfig,
    ModelConfig,
    refuse_duplicate_labels,
)
from robustbench_cl.engine.metrics import rate_entry
from robustbench_cl.engine.records import (
    AttackRef,
    DefenseRef,
    ModelRef,
    RateRef,
    Record,
    ThreatRef,
)
from robustbench_cl.engine.results import attack_entry, model_label
from robustbench_cl.engine.results_models import STRICT, Flag, Rate
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import RunContext, Task, Unit, register_task
from robustbench_cl.report.media import EXAMPLES_TOTAL
from robustbench_cl.report.table import percent_or_dash
from robustbench_cl.tasks.sections import build_columns, build_defenses, check_models
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import derive_seed, stable_hash

logger = logging.getLogger(__name__)

#: bump when the jailbreak protocol changes (record ids change, so old records are not reused)
PROTOCOL_VERSION = 1

DEFAULT_THREATS = {
    "direct": {"norm": "none", "eps": 0.0, "space": "token", "bounds": None},
    "gcg": {"norm": "none", "eps": 0.0, "space": "token", "bounds": None},
    "embedding": {
        "norm": "l2",
        "eps": 0.3,
        "space": "embedding",
        "bounds": None,
        "eps_relative": True,
    },
}


def expand_jailbreak(config: MatrixConfig) -> dict[str, Any]:
    """Validate the section; the (model, defense) pairs and the (attack, threat) columns."""

    section = config.jailbreak
    assert section is not None
    if section.data.behaviors is not None:  # a bad file fails before anything runs
        from robustbench_cl.data.behaviors import load_behaviors

        load_behaviors(section.data.behaviors)
    check_models("jailbreak", section.models)
    defenses = build_defenses(
        "jailbreak",
        section.defenses,
        "does not train chat models",
        "use none, cadv-ul, cadv-ipo or discrete-at",
    )
    columns = build_columns(
        "jailbreak",
        section.attacks,
        JailbreakAttack,
        "is not a jailbreak attack",
        "use direct, embedding or gcg (see `robustbench-cl list attacks`)",
        DEFAULT_THREATS,
    )
    labels = [jailbreak_label(c["threat"].to_dict(), c["config"].label) for c in columns]
    refuse_duplicate_labels(labels, "jailbreak.attacks[].name", "attack columns")
    return {"models": section.models, "defenses": defenses, "columns": columns}


@register_task("jailbreak")
class JailbreakTask(Task):
    """Chat LLMs (and their defenses) under jailbreak attacks: the ``jailbreak:`` section."""

    order = 40

    record_types = ("jailbreak_clean", "jailbreak")
    data_sources = (
        ("(built in)", "synthetic harmful, benign and borderline chat prompts"),
        ("behaviors:FILE.csv", "AdvBench / HarmBench-style goal,target CSV"),
    )
    template = Path(__file__).parent / "templates" / "jailbreak.html.j2"
    title = "Jailbreak"

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        assert self.config.jailbreak is not None
        self.section: JailbreakConfig = self.config.jailbreak
        self.run_dir = ctx.run_dir
        self.device = ctx.device
        self.progress = ctx.progress
        data = self.section.data
        self.test = make_chat("test", data.n_benign, data.n_harmful, data.n_borderline, seed=1)
        if data.behaviors is not None:
            from robustbench_cl.data.behaviors import load_behaviors
            from robustbench_cl.data.subset import seeded_pick

            # a seeded choice: the first n rows of a CSV grouped by category are one category
            own = seeded_pick(load_behaviors(data.behaviors), data.n_harmful, self.config.seed)
            self.test.examples = [e for e in self.test.examples if e.kind != "harmful"] + own
        self.train = make_chat(
            "train", data.train_benign, data.train_harmful, data.train_borderline, seed=0
        )
        self._base: tuple[str, Any] | None = None
        self._lm: tuple[tuple[int, int], Any, Any] | None = None

    # ---------------------------------------------------------------- ids
    def _pair_key(self, model: ModelConfig, defense: DefenseConfig, built) -> dict[str, Any]:  # noqa: ANN001
        key = self._base_key(model, defense, built)
        if self.section.data.behaviors is not None:  # an edited file must not resume old cells
            key["behaviors"] = stable_hash([vars(e) for e in self.test.of("harmful")])
        return key

    def _base_key(self, model: ModelConfig, defense: DefenseConfig, built) -> dict[str, Any]:  # noqa: ANN001
        return {
            "model": model.spec,
            "defense": defense.defense,
            "settings": built.settings() if hasattr(built, "settings") else {},
            "data": self.section.data.model_dump(exclude_none=True),  # ids as before behaviors
            "version": PROTOCOL_VERSION,
        }

    def _clean_id(self, model, defense, built) -> str:  # noqa: ANN001
        key = self._pair_key(model, defense, built)
        return stable_hash({"jailbreak_clean": key, "tokens": self.section.max_new_tokens})

    def _cell_id(self, model, defense, built, column) -> str:  # noqa: ANN001
        return stable_hash(
            {
                "jailbreak": self._pair_key(model, defense, built),
                "attack": column["config"].attack,
                "settings": column["built"].settings(),
                "threat": column["threat"].to_dict(),
                "tokens": self.section.max_new_tokens,
                "seed": self.config.seed,
                # shards beyond the first draw their own seeds: other outcomes, another id
                **({"shard_size": self.section.shard_size} if self.section.shard_size else {}),
            }
        )

    def plan(self) -> list[Unit]:
        plan = expand_jailbreak(self.config)
        self.plan_ = plan
        units = []
        self.unit_pairs: dict[str, tuple[int, int]] = {}
        shards = len(self.shard_ranges())
        for mi, model in enumerate(plan["models"]):
            for di, (defense, built) in enumerate(plan["defenses"]):
                clean_id = self._clean_id(model, defense, built)
                label = f"{model.label} / {defense.label}"
                units.append(Unit(clean_id, f"{label} | utility", "clean", (mi, di)))
                for ci, column in enumerate(plan["columns"]):
                    record_id = self._cell_id(model, defense, built, column)
                    cell_label = (
                        f"{label} | {column['config'].label} | {column['threat'].describe()}"
                    )
                    self.unit_pairs[record_id] = (mi, di)
                    key = (mi, di, ci)
                    units.append(Unit(record_id, cell_label, "cell", key, (clean_id,), shards))
        return units

    def batches(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> int:
        if unit.kind == "clean":
            return 1
        size = self.section.batch_size
        return sum(-(-(last - first) // size) for first, last in self.shard_ranges())

    def lm(self, mi: int, di: int):  # noqa: ANN201
        """The defended chat LM of (model mi, defense di); the last one built stays loaded."""
        from robustbench_cl.models import load_model
        from robustbench_cl.models.llm import unwrap_chat_lm

        if self._lm is not None and self._lm[0] == (mi, di):
            return self._lm[1], self._lm[2]
        self._lm = None
        model_config = self.plan_["models"][mi]
        defense, built = self.plan_["defenses"][di]
        if self._base is None or self._base[0] != model_config.spec:
            self._base = None
            self.progress.message(_loading_message(model_config))
            base = load_model(model_config.spec)
            if "device_map=" not in model_config.spec:  # else accelerate placed it
                base = base.to(self.device)
            unwrap_chat_lm(base)
            if not _is_builtin(model_config.spec):
                logger.info("hf model loaded; the built-in chat data is used as prompts")
            self._base = (model_config.spec, base)
        self.progress.message(f"{model_config.label} / {defense.label} | train {defense.label}")
        with step_hook(self.progress.step):
            defended = built.build(self._base[1], model_config.spec, self.train)
        lm = unwrap_chat_lm(defended)
        lm.reset_scale()
        self._lm = ((mi, di), lm, built)
        return lm, built

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        mi, di = unit.key[:2]
        model = self.plan_["models"][mi]
        defense = self.plan_["defenses"][di][0]
        lm, built = self.lm(mi, di)
        if unit.kind == "clean":
            return self.clean_record(lm, model, defense, built, unit.id)
        column = self.plan_["columns"][unit.key[2]]
        return self.attack_shard(lm, column, unit.id, shard)

    def merge(self, unit: Unit, inputs: dict[str, dict[str, Any]], parts: list[Any]) -> dict:
        if unit.kind == "clean":
            return parts[0]
        column = self.plan_["columns"][unit.key[2]]
        return self.cell_record(column, unit.id, unit.needs[0], parts)

    def close(self) -> None:
        self._lm = self._base = None

    # ------------------------------------------------------------------ results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        if not (summary.jailbreak_clean or summary.jailbreak):
            return None
        return {"jailbreak": _jailbreak_section(summary)}

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Per pair: utility and over-refusal; per cell: judged and forced ASR."""
        section = results.get("jailbreak") or {}
        rows = []
        for pair in section.get("pairs", []):
            for key, name, better in (
                ("utility", "benign utility", "higher"),
                ("over_refusal", "over-refusal", "lower"),
            ):
                if (pair.get(key) or {}).get("rate") is not None:
                    rows.append(
                        {
                            "row": pair["label"],
                            "cell": name,
                            "value": pair[key]["rate"],
                            "better": better,
                        }
                    )
        for cell in section.get("cells", []):
            for key, name in (("judged_asr", "judged ASR"), ("forced_asr", "forced ASR")):
                if (cell.get(key) or {}).get("rate") is not None:
                    rows.append(
                        {
                            "row": cell["pair"],
                            "cell": f"{cell['column']} {name}",
                            "value": cell[key]["rate"],
                            "better": "lower",
                        }
                    )
        return rows

    @classmethod
    def flag_rows(cls, section: dict[str, Any]) -> list[dict[str, str]]:
        return cls.rows_of(
            section.get("cells", []), lambda cell: f"{cell['pair']} | {cell['column']}"
        )

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        section = _jailbreak(results)
        return None if section is None else dict(section, examples=_llm(results))

    @classmethod
    def table(cls, summary: RunSummary):  # noqa: ANN206
        return jailbreak_table(summary)

    def clean_record(self, lm, model, defense, built, record_id) -> dict[str, Any]:  # noqa: ANN001
        start = time.perf_counter()
        tokens = self.section.max_new_tokens
        benign, borderline = self.test.of("benign"), self.test.of("borderline")
        answers = _respond(lm, [e.instruction for e in benign + borderline], tokens, self.section)
        benign_answers, borderline_answers = answers[: len(benign)], answers[len(benign) :]
        benign_ok = [answer_correct(e, a) for e, a in zip(benign, benign_answers)]
        by_task: dict[str, list[bool]] = {}
        for example, ok in zip(benign, benign_ok):
            by_task.setdefault(example.task, []).append(ok)
        refused = [is_refusal(a) for a in borderline_answers]
        borderline_ok = [answer_correct(e, a) for e, a in zip(borderline, borderline_answers)]
        self.progress.batch_done()
        info = getattr(built, "training_info", {}) or {}
        return {
            "type": "jailbreak_clean",
            "id": record_id,
            "model": model.model_dump(),
            "defense": defense.model_dump(),
            "utility": rate_entry(sum(benign_ok), len(benign)),
            "utility_by_task": {t: rate_entry(sum(v), len(v)) for t, v in sorted(by_task.items())},
            "over_refusal": rate_entry(sum(refused), len(borderline)),
            "borderline_correct": rate_entry(sum(borderline_ok), len(borderline)),
            "training": {
                "wall_time": info.get("wall_time"),
                "cost": info.get("cost"),
                "lora": info.get("lora"),
                "settings": info.get("settings"),
                "history": info.get("history", []),
            }
            if info
            else None,
            "embedding_scale": lm.embedding_scale,
            "examples": [
                {"prompt": e.instruction, "completion": a, "kind": e.kind}
                for e, a in list(zip(benign + borderline, answers))[:: max(1, len(answers) // 4)][
                    :4
                ]
            ],
            "wall_time": time.perf_counter() - start,
        }

    def shard_ranges(self) -> list[tuple[int, int]]:
        """Contiguous ranges of the harmful behaviours, one per shard of an attack cell."""
        n = len(self.test.of("harmful"))
        size = self.section.shard_size or n or 1
        return [(start, min(start + size, n)) for start in range(0, n, size)] or [(0, 0)]

    def attack_shard(self, lm, column, record_id: str, shard: int) -> dict[str, Any]:  # noqa: ANN001
        """Attack the harmful behaviours of one shard, batch by batch. Shard 0 takes the cell's
        seed, so an unsharded cell is seeded as it always was."""
        threat: ThreatModel = column["threat"]
        attack: JailbreakAttack = column["built"]
        first, last = self.shard_ranges()[shard]
        harmful = self.test.of("harmful")[first:last]
        size = self.section.batch_size
        start = time.perf_counter()
        key = (record_id,) if shard == 0 else (record_id, "shard", shard)
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, *key))
        part: dict[str, Any] = {
            key: []
            for key in ("forced", "judged", "losses", "completions", "suffixes", "retokenize")
        }
        part.update(histories=[], forward=0, backward=0)
        for begin in range(0, len(harmful), size):
            chunk = harmful[begin : begin + size]
            targets = [e.target for e in chunk]
            with step_hook(self.progress.step):
                result = attack.run(lm, [e.instruction for e in chunk], targets, threat, generator)
            texts = lm.generate(result.embeds, result.batch, self.section.max_new_tokens)
            part["forced"] += result.forced.int().tolist()
            part["losses"] += result.loss.tolist()
            part["histories"].append((len(chunk), list(result.history)))
            part["judged"] += [judge(t, target) for t, target in zip(texts, targets)]
            part["completions"] += texts
            part["suffixes"] += result.suffix or [None] * len(chunk)
            part["retokenize"] += result.suffix_retokenizes or []
            part["forward"] += result.cost.forward
            part["backward"] += result.cost.backward
            self.progress.batch_done()
        settings = attack.settings()
        if hasattr(attack, "resolved"):
            settings = dict(settings, resolved=attack.resolved(lm, threat))
        part.update(settings=settings, wall=time.perf_counter() - start)
        return part

    def cell_record(self, column, record_id, clean_id, parts) -> dict[str, Any]:  # noqa: ANN001
        """Merge the shards' parts (in shard order) into the cell's record."""
        threat: ThreatModel = column["threat"]
        mi, di = self.unit_pairs[record_id]
        model = self.plan_["models"][mi]
        defense = self.plan_["defenses"][di][0]
        harmful = self.test.of("harmful")

        def joined(key: str) -> list[Any]:
            return [value for part in parts for value in part[key]]

        forced, judged, losses = joined("forced"), joined("judged"), joined("losses")
        completions, suffixes, retokenize = (
            joined("completions"),
            joined("suffixes"),
            joined("retokenize"),
        )
        histories = joined("histories")
        forward = sum(part["forward"] for part in parts)
        backward = sum(part["backward"] for part in parts)
        n = len(harmful)
        # the mean target loss per step over all prompts (chunks weighted by their size)
        steps = min((len(h) for _, h in histories), default=0)
        loss_history = [
            sum(size * h[step] for size, h in histories) / sum(size for size, _ in histories)
            for step in range(steps)
        ]
        examples = [
            {
                # the suffix tokens follow the instruction directly; its text keeps any space
                "prompt": e.instruction + (s or ""),
                "completion": c,
                "target": e.target,
                "label": "harmful" if j == 1 else "refused" if j == 0 else "undetermined",
                "success": j == 1,
                "forced": bool(f),
            }
            for e, c, s, j, f in zip(harmful, completions, suffixes, judged, forced)
        ]
        # the report shows successes first, then the rest
        examples.sort(key=lambda e: not e["success"])
        return {
            "type": "jailbreak",
            "id": record_id,
            "clean_id": clean_id,
            "model": model.model_dump(),
            "defense": defense.model_dump(),
            "attack": {
                "attack": column["config"].attack,
                "name": column["config"].name,
                "params": column["config"].params,
                "settings": parts[0]["settings"],
            },
            "threat": threat.to_dict(),
            "n": n,
            "forced": forced,
            "judged": judged,
            "behaviors": [e.behavior for e in harmful],
            "target_loss": losses,
            "loss_history": loss_history,
            "forced_asr": rate_entry(sum(forced), n),
            "judged_asr": rate_entry(sum(1 for j in judged if j == 1), n),
            "refused": sum(1 for j in judged if j == 0),
            "undetermined": sum(1 for j in judged if j == -1),
            "suffix_retokenizes": (sum(retokenize) / len(retokenize)) if retokenize else None,
            "generation": {
                "decoding": "greedy",
                "max_new_tokens": self.section.max_new_tokens,
                **judge_settings(),
            },
            "cost": {"forward": forward, "backward": backward, "per_prompt_forward": forward / n},
            "examples": examples[: self.section.examples],
            "wall_time": sum(part["wall"] for part in parts),
        }


def _respond(lm, instructions: list[str], tokens: int, section: JailbreakConfig) -> list[str]:  # noqa: ANN001
    size = max(section.batch_size, 32)  # generation is cheap: larger batches than attacks
    out = []
    for begin in range(0, len(instructions), size):
        out += lm.respond(instructions[begin : begin + size], tokens)
    return out


def _is_builtin(spec: str) -> bool:
    return spec.startswith("builtin:")


__all__ = ["ChatData", "JailbreakTask", "expand_jailbreak"]


def _loading_message(model_config: Any) -> str:
    """ "loading", or "training" where the built-in chat model is not cached yet (minutes)."""
    if model_config.spec == "builtin:tiny-chat-lm":
        from robustbench_cl.models.llm import tiny_chat_lm_path

        if not (tiny_chat_lm_path() / "model.safetensors").exists():
            return f"training {model_config.label} (first use, a few minutes; cached afterwards)"
    return f"loading {model_config.label}"


def jailbreak_label(threat: dict[str, Any], attack: str) -> str:
    """``embedding l2 0.3 (relative)``, ``gcg``: the column header of a jailbreak cell."""
    if threat["norm"] == "none":
        return attack + (" (unbounded)" if threat.get("space") == "embedding" else "")
    relative = " rel." if threat.get("eps_relative") else ""
    return f"{attack} {threat['norm']} {threat['eps']:g}{relative}"


def _jailbreak_section(summary: RunSummary) -> dict[str, Any]:
    """Per (model, defense): utility, over-refusal and training compute; per attack cell: forced
    and judged ASR. ``worst_case``: a prompt counts when any attack's judged outcome is 1
    (``bounded``: any attack but the unbounded embedding suffix). The
    compute ratio of each defense is relative to C-AdvUL on the same model, when it ran."""

    def pair_label(record: dict[str, Any]) -> str:
        defense = record["defense"].get("name") or record["defense"]["defense"]
        return f"{model_label(record['model'])} / {defense}"

    pairs = []
    for r in summary.jailbreak_clean:
        training = r["training"]
        total = None
        if training and training.get("cost"):
            total = training["cost"]["forward"] + training["cost"]["backward"]
        pairs.append(
            {
                "id": r["id"],
                "label": pair_label(r),
                "model": model_label(r["model"]),
                "defense": r["defense"].get("name") or r["defense"]["defense"],
                "defense_kind": r["defense"]["defense"],
                "utility": r["utility"],
                "utility_by_task": r["utility_by_task"],
                "over_refusal": r["over_refusal"],
                "borderline_correct": r["borderline_correct"],
                "training": training,
                "training_passes": total,
                "embedding_scale": r["embedding_scale"],
                "examples": r["examples"],
            }
        )
    reference = {
        p["model"]: p["training_passes"]
        for p in pairs
        if p["defense_kind"] == "cadv-ul" and p["training_passes"]
    }
    for p in pairs:
        base = reference.get(p["model"])
        p["compute_vs_cadv_ul"] = (
            p["training_passes"] / base if base and p["training_passes"] else None
        )
    labels = {p["id"]: p["label"] for p in pairs}
    cells = []
    worst: dict[str, list[int]] = {}
    # without the unbounded embedding suffix, which forces any string (no threat model bounds it)
    worst_bounded: dict[str, list[int]] = {}
    for r in summary.jailbreak:
        label = jailbreak_label(r["threat"], r["attack"].get("name") or r["attack"]["attack"])
        cells.append(
            {
                "id": r["id"],
                "clean_id": r["clean_id"],
                "pair": labels.get(r["clean_id"], pair_label(r)),
                "attack": attack_entry(r["attack"]),
                "column": label,
                "threat": r["threat"],
                "n": r["n"],
                "forced_asr": r["forced_asr"],
                "judged_asr": r["judged_asr"],
                "refused": r["refused"],
                "undetermined": r["undetermined"],
                # the keyword-only judge of llm-attacks: jailbroken = no refusal prefix
                "not_refused": rate_entry(r["n"] - r["refused"], r["n"]),
                "suffix_retokenizes": r["suffix_retokenizes"],
                "generation": r["generation"],
                "cost": r["cost"],
                "examples": r["examples"],
                "wall_time": r["wall_time"],
            }
        )
        cells[-1]["flags"] = sanity.jailbreak_flags(cells[-1], r.get("loss_history"))
        hits = [1 if j == 1 else 0 for j in r["judged"]]
        unbounded = r["threat"]["norm"] == "none" and r["threat"]["space"] == "embedding"
        for table, keep in ((worst, True), (worst_bounded, not unbounded)):
            if not keep:
                continue
            previous = table.get(r["clean_id"])
            table[r["clean_id"]] = (
                hits if previous is None else [max(a, b) for a, b in zip(previous, hits)]
            )
    worst_case = [
        {"pair": labels.get(clean_id, clean_id), "clean_id": clean_id}
        | rate_entry(sum(hits), len(hits))
        | {
            "bounded": rate_entry(sum(worst_bounded[clean_id]), len(hits))
            if clean_id in worst_bounded
            else None  # only the unbounded suffix ran
        }
        for clean_id, hits in worst.items()
    ]
    columns = list(dict.fromkeys(c["column"] for c in cells))
    return {"pairs": pairs, "cells": cells, "columns": columns, "worst_case": worst_case}


def _llm(results: dict[str, Any]) -> list[dict[str, Any]]:
    examples: list[dict[str, Any]] = []
    for cell in results.get("jailbreak", {}).get("cells", []):
        examples += [
            dict(example, cell=f"{cell['pair']} | {cell['column']}")
            for example in cell["examples"][:2]
        ]
    return examples[: 2 * EXAMPLES_TOTAL]


def _jailbreak(results: dict[str, Any]) -> dict[str, Any] | None:
    section = results.get("jailbreak")
    if not section:
        return None
    by_pair: dict[str, dict[str, Any]] = {}
    for cell in section["cells"]:
        by_pair.setdefault(cell["clean_id"], {})[cell["column"]] = cell
    worst = {w["clean_id"]: w for w in section["worst_case"]}
    rows = [
        dict(pair, by_column=by_pair.get(pair["id"], {}), worst=worst.get(pair["id"]))
        for pair in section["pairs"]
    ]
    generation = section["cells"][0]["generation"] if section["cells"] else {}
    return {"rows": rows, "columns": section["columns"], "generation": generation}


def jailbreak_table(summary: RunSummary) -> Table | None:
    """Judged ASR % (forced ASR %) per (model, defense) and attack, with utility and compute."""
    if not summary.jailbreak_clean:
        return None
    table = Table(
        title="jailbreak: judged ASR % (forced ASR %) on held-out harmful behaviours",
        title_justify="left",
    )
    table.add_column("model / defense", justify="left")
    table.add_column("utility %", justify="right")
    table.add_column("over-refusal %", justify="right")
    columns: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for record in summary.jailbreak:
        attack = record["attack"].get("name") or record["attack"]["attack"]
        column = jailbreak_label(record["threat"], attack)
        if column not in columns:
            columns.append(column)
        cells[(record["clean_id"], column)] = (
            f"{percent_or_dash(record['judged_asr']['rate'])} ({percent_or_dash(record['forced_asr']['rate'])})"
        )
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("train passes", justify="right")
    for record in summary.jailbreak_clean:
        defense = record["defense"].get("name") or record["defense"]["defense"]
        model = record["model"].get("name") or record["model"]["spec"]
        cost = (record.get("training") or {}).get("cost")
        passes = f"{cost['forward'] + cost['backward']:,}" if cost else "-"
        table.add_row(
            f"{model} / {defense}",
            percent_or_dash(record["utility"]["rate"]),
            percent_or_dash(record["over_refusal"]["rate"]),
            *[cells.get((record["id"], c), "-") for c in columns],
            passes,
        )
    return table


# ---------------------------------------------------------------------- results.json
class JailbreakPair(BaseModel):
    model_config = STRICT
    id: str
    label: str
    model: str
    defense: str
    defense_kind: str
    utility: Rate
    utility_by_task: dict[str, Rate]
    over_refusal: Rate
    borderline_correct: Rate
    training: dict[str, Any] | None
    training_passes: int | None
    compute_vs_cadv_ul: float | None
    embedding_scale: float
    examples: list[dict[str, Any]]


class LlmExample(BaseModel):
    prompt: str
    completion: str
    label: str | None = None
    success: bool | None = None


class JailbreakCell(BaseModel):
    model_config = STRICT
    id: str
    clean_id: str
    pair: str
    attack: dict[str, Any]
    column: str
    threat: dict[str, Any]
    n: int
    forced_asr: Rate
    judged_asr: Rate
    refused: int
    undetermined: int
    suffix_retokenizes: float | None
    generation: dict[str, Any]
    cost: dict[str, Any]
    examples: list[LlmExample]
    wall_time: float
    not_refused: Rate
    flags: list[Flag]
    """
    sanity flags (docs/sanity-checks.md)
    """


class JailbreakSection(BaseModel):
    """
    Chat LLMs under jailbreak attacks: per (model, defense) benign utility, over-refusal and training compute; per (attack, eps) forced and judged ASR with Wilson intervals.
    """

    model_config = STRICT
    pairs: list[JailbreakPair]
    cells: list[JailbreakCell]
    columns: list[str]
    worst_case: list[Rate]


JailbreakTask.section_model = JailbreakSection


# ---------------------------------------------------------------------- cells.jsonl
class JailbreakCleanRecord(Record):
    """A (model, defense)'s clean pass: utility, over-refusal and the defense's training."""

    type: Literal["jailbreak_clean"]
    model: ModelRef
    defense: DefenseRef
    utility: RateRef
    utility_by_task: dict[str, RateRef]
    over_refusal: RateRef
    borderline_correct: RateRef
    training: dict[str, Any] | None
    embedding_scale: float
    examples: list[dict[str, Any]]


class JailbreakRecord(Record):
    """One attack column on one (model, defense): per-behaviour forced and judged outcomes."""

    type: Literal["jailbreak"]
    clean_id: str
    model: ModelRef
    defense: DefenseRef
    attack: AttackRef
    threat: ThreatRef
    n: int = Field(..., ge=0)
    forced: list[int]
    judged: list[Annotated[int, Field(ge=-1, le=1)]]
    """1 complied, 0 refused, -1 undetermined"""
    behaviors: list[str]
    target_loss: list[float]
    loss_history: list[float] | None = None
    forced_asr: RateRef
    judged_asr: RateRef
    refused: int = Field(..., ge=0)
    undetermined: int = Field(..., ge=0)
    suffix_retokenizes: float | None
    generation: dict[str, Any]
    cost: dict[str, float]
    examples: list[dict[str, Any]]


JailbreakTask.record_models = {
    "jailbreak_clean": JailbreakCleanRecord,
    "jailbreak": JailbreakRecord,
}
