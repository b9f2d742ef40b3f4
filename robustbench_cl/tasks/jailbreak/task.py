"""The jailbreak task: plan a utility unit per (model, defense) and an attack unit per column;
build each defended chat LM once and run them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from robustbench_cl.attacks.base import step_hook
from robustbench_cl.data.chat import ChatData, make_chat
from robustbench_cl.engine.config import (
    DefenseConfig,
    ModelConfig,
)
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import RunContext, Task, Unit, register_task
from robustbench_cl.tasks.jailbreak.config import (
    PROTOCOL_VERSION,
    AttackKey,
    JailbreakConfig,
    JudgeKey,
    UtilityKey,
    expand_jailbreak,
)
from robustbench_cl.tasks.jailbreak.evaluate import Evaluation
from robustbench_cl.tasks.jailbreak.report import _jailbreak, _llm, jailbreak_table
from robustbench_cl.tasks.jailbreak.results import (
    JailbreakCleanRecord,
    JailbreakJudgesRecord,
    JailbreakRecord,
    JailbreakSection,
    _jailbreak_section,
)
from robustbench_cl.utils import stable_hash

logger = logging.getLogger(__name__)


#: bump when the jailbreak protocol changes (record ids change, so old records are not reused)


@register_task("jailbreak")
class JailbreakTask(Evaluation, Task):
    """Chat LLMs (and their defenses) under jailbreak attacks: the ``jailbreak:`` section."""

    order = 40

    record_types = ("jailbreak_clean", "jailbreak", "jailbreak_judges")
    record_models: ClassVar[dict[str, Any]] = {
        "jailbreak_clean": JailbreakCleanRecord,
        "jailbreak": JailbreakRecord,
        "jailbreak_judges": JailbreakJudgesRecord,
    }
    section_model: ClassVar[Any] = JailbreakSection
    config_fields = {"jailbreak": (JailbreakConfig | None, None)}
    data_sources = (
        ("(built in)", "synthetic harmful, benign and borderline chat prompts"),
        ("behaviors:FILE.csv", "AdvBench / HarmBench-style goal,target CSV"),
        ("benign:FILE.csv", "utility / over-refusal prompts: instruction,answer[,kind,task] CSV"),
    )
    template = Path(__file__).parent.parent / "templates" / "jailbreak.html.j2"
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
        if data.benign is not None:
            from robustbench_cl.data.behaviors import load_benign

            self.test.examples = self.test.of("harmful") + load_benign(data.benign)
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
        if self.section.data.benign is not None:
            benign = self.test.of("benign") + self.test.of("borderline")
            key["benign"] = stable_hash([vars(e) for e in benign])
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
                "threat": column["threat"].key(),
                "tokens": self.section.max_new_tokens,
                "seed": self.config.seed,
                "judges": [judge.settings() for judge in self.judges().values()],
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
        if self.section.labels is not None:
            content = Path(self.section.labels).read_bytes()
            judge_id = stable_hash(
                {
                    "jailbreak_judges": self.section.judges,
                    "labels": stable_hash(content.decode("utf-8", "replace")),
                    "version": PROTOCOL_VERSION,
                }
            )
            units.append(Unit(judge_id, "judges vs human labels", key=JudgeKey()))
        for mi, model in enumerate(plan["models"]):
            for di, (defense, built) in enumerate(plan["defenses"]):
                clean_id = self._clean_id(model, defense, built)
                label = f"{model.label} / {defense.label}"
                units.append(Unit(clean_id, f"{label} | utility", key=UtilityKey(mi, di)))
                for ci, column in enumerate(plan["columns"]):
                    record_id = self._cell_id(model, defense, built, column)
                    cell_label = (
                        f"{label} | {column['config'].label} | {column['threat'].describe()}"
                    )
                    self.unit_pairs[record_id] = (mi, di)
                    key = AttackKey(mi, di, ci)
                    units.append(
                        Unit(record_id, cell_label, key=key, needs=(clean_id,), shards=shards)
                    )
        return units

    def cost_kind(self, unit: Unit) -> str:
        """The utility pass, or the attack column with its settings: a GCG cell is never
        estimated from a direct one."""
        if isinstance(unit.key, UtilityKey):
            return "jailbreak:utility"
        if isinstance(unit.key, JudgeKey):
            return "jailbreak:judges"
        column = self.plan_["columns"][unit.key.ci]
        return f"jailbreak:{column['config'].attack}:{stable_hash(column['built'].settings())}"

    def batches(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> int:
        if isinstance(unit.key, UtilityKey | JudgeKey):
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
        key = unit.key
        if isinstance(key, JudgeKey):
            return self.judge_record(unit.id)
        model = self.plan_["models"][key.mi]
        defense = self.plan_["defenses"][key.di][0]
        lm, built = self.lm(key.mi, key.di)
        if isinstance(key, UtilityKey):
            return self.clean_record(lm, model, defense, built, unit.id)
        column = self.plan_["columns"][key.ci]
        return self.attack_shard(lm, column, unit.id, shard)

    def merge(self, unit: Unit, inputs: dict[str, dict[str, Any]], parts: list[Any]) -> dict:
        if isinstance(unit.key, UtilityKey | JudgeKey):
            return parts[0]
        column = self.plan_["columns"][unit.key.ci]
        return self.cell_record(column, unit.id, unit.needs[0], parts)

    def close(self) -> None:
        self._lm = self._base = None

    # ------------------------------------------------------------------ results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        if not summary.of("jailbreak_clean", "jailbreak", "jailbreak_judges"):
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
                            "measure": name,
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
                            "measure": f"{cell['column']} {name}",
                            "value": cell[key]["rate"],
                            "better": "lower",
                        }
                    )
        return rows

    @classmethod
    def flag_rows(cls, results: dict[str, Any]) -> list[dict[str, str]]:
        section = results.get("jailbreak") or {}
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
