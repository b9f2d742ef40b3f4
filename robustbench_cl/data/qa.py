"""Question-passage corpora for dense text retrieval: the built-in ``facts`` corpus and ``beir:DIR``.

``facts[?n=600&seed=0]`` is made offline and deterministically: ``n`` people (Faker names,
cities, jobs and companies from small pools, so that names and places recur) with three
passages each (birth, work, home) and one question per passage, in one of several paraphrases.
Every passage that names a person is a hard distractor for the questions about that person's
other facts, and passages sharing a first name, a surname, a city or a company are distractors
for each other. People are split into train and test (``train_fraction``); retrieval always
ranks the whole corpus.

``beir:DIR`` reads a local BEIR-format folder: ``corpus.jsonl`` (``_id``, ``title``, ``text``),
``queries.jsonl`` (``_id``, ``text``) and ``qrels/test.tsv`` (query-id, corpus-id, score; a
header line), plus ``qrels/train.tsv`` when present (the attacker's and the defenses' queries;
without it, a seeded share of the test queries is held out for them). A passage is relevant
when its score is positive. So an MS MARCO or NQ subset exported by BEIR loads as is.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_cl.errors import UserError

FIRST_NAMES = 36
LAST_NAMES = 36
CITIES = 24
COMPANIES = 30
JOBS = 30

BIRTH = (
    "{name} was born in {city} in {year}.",
    "Born in {year}, {name} grew up in {city}.",
    "{city} is where {name} was born, in {year}.",
)
WORK = (
    "{name} works as a {job} at {company}.",
    "At {company}, {name} is employed as a {job}.",
    "{name} has a job as a {job} with {company}.",
)
HOME = (
    "{name} now lives in {city} with a dog called {pet}.",
    "These days {name} lives in {city}, together with a dog named {pet}.",
)
# with namesakes (``namesakes=k``: each full name shared by k people), every passage and
# question also carries the attribute that tells the namesakes apart: the job for the birth
# and home facts, the birth city for the work fact
BIRTH_NAMESAKE = (
    "{name}, a {job}, was born in {city} in {year}.",
    "Born in {year}, {name} the {job} grew up in {city}.",
    "{city} is where {name}, a {job}, was born, in {year}.",
)
WORK_NAMESAKE = (
    "{name}, born in {city}, works as a {job} at {company}.",
    "At {company}, {name} from {city} is employed as a {job}.",
    "{name} of {city} has a job as a {job} with {company}.",
)
HOME_NAMESAKE = (
    "{name}, a {job}, now lives in {home_city} with a dog called {pet}.",
    "These days {name} the {job} lives in {home_city}, together with a dog named {pet}.",
)
QUESTIONS_NAMESAKE = {
    "birth": (
        "Where was {name} the {job} born?",
        "In which city was {name}, the {job}, born?",
        "In what year was the {job} {name} born?",
    ),
    "work": (
        "Which company employs {name} from {city}?",
        "What does {name}, born in {city}, do for a living?",
        "Where does {name} of {city} work?",
    ),
    "home": (
        "Where does {name} the {job} live now?",
        "What is the name of the dog of {name}, the {job}?",
    ),
}
QUESTIONS = {
    "birth": (
        "Where was {name} born?",
        "In which city was {name} born?",
        "What is the birthplace of {name}?",
        "In what year was {name} born?",
    ),
    "work": (
        "What does {name} do for a living?",
        "Which company employs {name}?",
        "Where does {name} work?",
        "What is the job of {name}?",
    ),
    "home": (
        "Where does {name} live now?",
        "In which city does {name} live today?",
        "What is the name of the dog of {name}?",
    ),
}


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    relevant: tuple[str, ...]  # passage ids


@dataclass
class QACorpus:
    """Passages, and train and test queries with their relevant passage ids."""

    name: str
    passages: list[Passage]
    train: list[Query]
    test: list[Query]
    info: dict[str, Any] = field(default_factory=dict)

    def texts(self) -> list[str]:
        return [p.text if not p.title else f"{p.title}. {p.text}" for p in self.passages]

    def index(self) -> dict[str, int]:
        return {p.id: i for i, p in enumerate(self.passages)}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passages": len(self.passages),
            "train_queries": len(self.train),
            "test_queries": len(self.test),
            **self.info,
        }


def make_facts(
    n: int = 600, seed: int = 0, train_fraction: float = 0.5, namesakes: int = 1
) -> QACorpus:
    """The built-in corpus: ``n`` people, three passages and three questions each. With
    ``namesakes`` k > 1, each full name belongs to k people (with different jobs and birth
    cities), and passages and questions name the attribute that tells them apart: a question
    must match both the name and that attribute, and the namesakes' passages of the same kind
    are the hardest distractors (the bi-encoder's pooled embedding mostly sees the name)."""
    from faker import Faker

    if n < 4:
        raise UserError("textret.data", f"facts needs n >= 4 people, got {n}", "use n=600")
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    pools = {
        "first": sorted({fake.first_name() for _ in range(4 * FIRST_NAMES)})[:FIRST_NAMES],
        "last": sorted({fake.last_name() for _ in range(4 * LAST_NAMES)})[:LAST_NAMES],
        "city": sorted({fake.city() for _ in range(4 * CITIES)})[:CITIES],
        "company": sorted({fake.company() for _ in range(4 * COMPANIES)})[:COMPANIES],
        "job": sorted({fake.job().split(",")[0] for _ in range(4 * JOBS)})[:JOBS],
        "pet": sorted({fake.first_name() for _ in range(200)})[-40:],
    }
    if not 1 <= namesakes <= min(len(pools["job"]), len(pools["city"])):
        raise UserError("textret.data", f"namesakes must be 1..{JOBS}, got {namesakes}", "use 3")
    if len(pools["first"]) * len(pools["last"]) * namesakes < n:
        raise UserError("textret.data", f"at most {FIRST_NAMES * LAST_NAMES} people", "lower n")
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:  # unique full names; first names and surnames recur
        name = f"{rng.choice(pools['first'])} {rng.choice(pools['last'])}"
        if name not in seen:
            seen.add(name)
            names.extend([name] * min(namesakes, n - len(names)))
    if namesakes > 1:
        births, works, homes, questions = (
            BIRTH_NAMESAKE,
            WORK_NAMESAKE,
            HOME_NAMESAKE,
            QUESTIONS_NAMESAKE,
        )
    else:
        births, works, homes, questions = BIRTH, WORK, HOME, QUESTIONS
    passages, queries = [], []
    group: dict[str, set[str]] = {}  # attributes already taken by a namesake
    for index, name in enumerate(names):
        taken = group.setdefault(name, set())
        # in this order (city, year, job, ...): the corpus without namesakes is what it was
        city = rng.choice([c for c in pools["city"] if c not in taken])
        year = rng.randint(1940, 2005)
        job = rng.choice([j for j in pools["job"] if j.lower() not in taken]).lower()
        taken |= {job, city}
        facts = {
            "name": name,
            "city": city,
            "year": year,
            "job": job,
            "company": rng.choice(pools["company"]),
            "pet": rng.choice(pools["pet"]),
        }
        home_city = rng.choice(pools["city"])
        home = dict(facts, city=home_city, home_city=home_city)
        texts = {
            "birth": rng.choice(births).format(**facts),
            "work": rng.choice(works).format(**facts),
            "home": rng.choice(homes).format(**home),
        }
        person = []
        for kind, text in texts.items():
            pid = f"p{index}-{kind}"
            passages.append(Passage(pid, text))
            question = rng.choice(questions[kind]).format(**facts)
            person.append(Query(f"q{index}-{kind}", question, (pid,)))
        queries.append(person)
    order = list(range(n))
    rng.shuffle(order)
    cut = max(1, min(n - 1, round(train_fraction * n)))
    train = [q for i in sorted(order[:cut]) for q in queries[i]]
    test = [q for i in sorted(order[cut:]) for q in queries[i]]
    name = f"facts?n={n}&seed={seed}" + (f"&namesakes={namesakes}" if namesakes > 1 else "")
    info: dict[str, Any] = {"people": n}
    if namesakes > 1:
        info["namesakes"] = namesakes
    return QACorpus(name, passages, train, test, info)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(
                str(path), f"line {number} is not JSON", "one JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise UserError(str(path), f"line {number} is not a JSON object", "see BEIR's format")
        rows.append(row)
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            str(path), f"is not UTF-8 text (byte {error.start})", "save it as UTF-8"
        ) from None


def _read_qrels(path: Path) -> dict[str, set[str]]:
    relevant: dict[str, set[str]] = {}
    lines = _read_text(path).splitlines()
    for number, line in enumerate(lines, start=1):
        parts = line.split("\t")
        if number == 1 and parts[0].lower() in ("query-id", "query_id", "qid"):
            continue  # the header
        if not line.strip():
            continue
        if len(parts) < 3:
            raise UserError(
                str(path),
                f"line {number} has {len(parts)} columns",
                "query-id<TAB>corpus-id<TAB>score",
            )
        try:
            score = float(parts[2])
        except ValueError:
            raise UserError(
                str(path), f"line {number}: score {parts[2]!r} is not a number"
            ) from None
        if score > 0:
            relevant.setdefault(parts[0], set()).add(parts[1])
    return relevant


def load_beir(directory: str | Path, seed: int = 0, train_fraction: float = 0.5) -> QACorpus:
    """A local BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv (and qrels/train.tsv)."""
    root = Path(directory)
    field_name = f"beir:{root}"
    for required in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        if not (root / required).is_file():
            raise UserError(field_name, f"{required} is missing", "point beir: at a BEIR folder")
    passages = []
    for row in _read_jsonl(root / "corpus.jsonl"):
        if "_id" not in row or "text" not in row:
            raise UserError(
                str(root / "corpus.jsonl"), "a row lacks _id or text", "see BEIR's format"
            )
        passages.append(Passage(str(row["_id"]), str(row["text"]), str(row.get("title") or "")))
    known = {p.id for p in passages}
    texts = {}
    for row in _read_jsonl(root / "queries.jsonl"):
        if "_id" not in row or "text" not in row:
            raise UserError(
                str(root / "queries.jsonl"), "a row lacks _id or text", "see BEIR's format"
            )
        texts[str(row["_id"])] = str(row["text"])

    def queries(relevant: dict[str, set[str]], where: str) -> list[Query]:
        out = []
        for qid, pids in sorted(relevant.items()):
            if qid not in texts:
                raise UserError(where, f"query {qid!r} is not in queries.jsonl", "fix the qrels")
            kept = tuple(sorted(pids & known))
            if kept:
                out.append(Query(qid, texts[qid], kept))
        return out

    test = queries(_read_qrels(root / "qrels/test.tsv"), str(root / "qrels/test.tsv"))
    if not test:
        raise UserError(
            field_name, "no test query has a relevant passage in the corpus", "check qrels"
        )
    if (root / "qrels/train.tsv").is_file():
        train = queries(_read_qrels(root / "qrels/train.tsv"), str(root / "qrels/train.tsv"))
    else:  # hold a seeded share of the test queries out for training and for the attacker
        order = list(range(len(test)))
        random.Random(seed).shuffle(order)
        cut = max(1, min(len(test) - 1, round(train_fraction * len(test))))
        held = set(order[:cut])
        train = [q for i, q in enumerate(test) if i in held]
        test = [q for i, q in enumerate(test) if i not in held]
    return QACorpus(field_name, passages, train, test)


def load_qa(name: str, seed: int = 0) -> QACorpus:
    """``facts[?n=N&seed=S]`` or ``beir:DIR``."""
    from robustbench_cl.utils import parse_spec

    scheme, target, options = parse_spec(name if ":" in name else f"builtin:{name}")
    if scheme == "beir":
        return load_beir(target, seed=seed)
    if scheme == "builtin" and target == "facts":
        try:
            n = int(options.get("n", 600))
            data_seed = int(options.get("seed", seed))
            namesakes = int(options.get("namesakes", 1))
        except ValueError:
            raise UserError(
                "textret.data.name", f"bad options in {name!r}", "facts?n=600&seed=0&namesakes=3"
            ) from None
        return make_facts(n, data_seed, namesakes=namesakes)
    raise UserError(
        "textret.data.name", f"unknown corpus {name!r}", "use facts[?n=600&seed=0] or beir:DIR"
    )
