"""Screenshot privacy: PrivScreen-mini and its layout, the OCR routers, DualTAP's generator and
attention shaping, the leakage metrics, and the screens section of the engine and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_cl.data.privscreen import (
    ScreenData,
    generate,
    load_layout,
    load_screens,
    locate_boxes,
    render_screen,
    screen_tensor,
    write_layout,
)
from robustbench_cl.defenses.dualtap import (
    DualTAP,
    Protector,
    contrast,
    normalise01,
    shape_attention,
)
from robustbench_cl.errors import UserError
from robustbench_cl.privacy.metrics import (
    field_exact,
    field_leaked,
    field_ratio,
    normalise_keyword,
    psnr,
    ssim,
    task_success,
)

PHONE = "+1 415-555-0123"


@pytest.fixture(scope="module")
def screens() -> ScreenData:
    return generate(8, seed=3)


@pytest.fixture(scope="module")
def phone_screen() -> np.ndarray:
    values = {
        "name": "Alice Johnson",
        "phoneNumber": PHONE,
        "emailAddress": "alice.j@example.com",
        "address": "12 Oak Street",
    }
    image, pii, _ = render_screen("contacts", values, (37, 99, 235), "9:41")
    return image, pii


# ---------------------------------------------------------------------------- data
def test_generation_is_deterministic_and_boxes_hold_the_text(screens: ScreenData) -> None:
    again = generate(8, seed=3)
    for a, b in zip(screens.screens, again.screens):
        assert np.array_equal(a.image, b.image)
        assert [p.value for p in a.pii] == [p.value for p in b.pii]
    assert generate(8, seed=4).screens[0].pii[0].value != screens.screens[0].pii[0].value
    for screen in screens.screens:
        assert screen.image.shape == (320, 256, 3) and screen.image.dtype == np.uint8
        assert len(screen.pii) >= 3 and len(screen.tasks) == 4
        for item in [*screen.pii, *screen.tasks]:
            x0, y0, x1, y1 = item.box
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 320
            region = screen.image[y0:y1, x0:x1].astype(int)
            assert region.std() > 20, "every box holds visible text"
    train, test = screens.split(0.5)
    assert len(train) == len(test) == 4
    assert {s.key for s in train}.isdisjoint({s.key for s in test})


def test_generation_does_not_depend_on_the_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """PrivScreen-mini is a function of (n, seed) alone: Faker's date_of_birth counted back from
    today, so the screens, their content hash and the cached DualTAP changed every day."""
    import datetime as real_datetime

    import faker.providers.date_time as faker_dates

    first = generate(4, seed=0)

    class Tomorrow(real_datetime.date):
        @classmethod
        def today(cls):  # noqa: ANN206
            return real_datetime.date(2031, 7, 14)

    class Later(real_datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206
            return real_datetime.datetime(2031, 7, 14, 12, tzinfo=tz)

    monkeypatch.setattr(faker_dates, "dtdate", Tomorrow)
    monkeypatch.setattr(faker_dates, "datetime", Later)
    later = generate(4, seed=0)
    for a, b in zip(first.screens, later.screens):
        assert [p.value for p in a.pii] == [p.value for p in b.pii]
        assert np.array_equal(a.image, b.image)


def test_the_quickstart_dualtap_is_shipped() -> None:
    """The quickstart's DualTAP (its settings and its training screens) is among the shipped
    artifacts, so that a fresh ``make demo`` does not train it for minutes."""
    from robustbench_cl.defenses.dualtap import screens_key
    from robustbench_cl.engine.config import load_config
    from robustbench_cl.shipped import shipped_entries
    from robustbench_cl.tasks.screens import expand_screens

    config = load_config("quickstart")
    assert config.screens is not None
    data = load_screens(config.screens.data.name)
    train, _ = data.split(config.screens.data.train_ratio)
    shipped = {entry.name for entry in shipped_entries()}
    columns = expand_screens(config)
    dualtaps = [c["built"]["defense"] for c in columns if c["kind"].name == "dualtap"]
    assert dualtaps, "the quickstart has a DualTAP column"
    for defense in dualtaps:
        path = defense.screens_cache_path(screens_key(data.name, train))
        assert f"{path.name}.safetensors" in shipped, (
            f"{path.name} is not shipped: retrain it (robustbench-cl run quickstart) and "
            "refresh robustbench_cl/seeds with robustbench-cl artifacts export"
        )


def test_privscreen_layout_round_trip(screens: ScreenData, tmp_path: Path) -> None:
    root = write_layout(screens, tmp_path / "privscreen")
    app = sorted(p.name for p in root.iterdir())[0]
    privacy = json.loads((root / app / "privacy_qa.json").read_text())
    normal = json.loads((root / app / "normal_qa.json").read_text())
    key = sorted(privacy)[0]
    assert (root / app / "images" / key).exists()
    assert set(privacy[key][0]["answer"]) <= {
        "name",
        "phoneNumber",
        "emailAddress",
        "address",
        "cardNumber",
        "dateOfBirth",
    }
    assert privacy[key][0]["question"].startswith("Extract the following personal information")
    assert normal[key][0]["answers"]
    loaded = load_screens(f"privscreen:{root}")
    by_key = {(s.app, s.key): s for s in loaded.screens}
    for screen in screens.screens:
        back = by_key[(screen.app, screen.key)]
        assert np.array_equal(back.image, screen.image)
        assert [(p.field, p.value, p.box) for p in back.pii] == [
            (p.field, p.value, p.box) for p in screen.pii
        ]
        assert [(t.keyword, t.question, t.box) for t in back.tasks] == [
            (t.keyword, t.question, t.box) for t in screen.tasks
        ]


def test_malformed_boxes_file_is_a_one_line_error(screens: ScreenData, tmp_path: Path) -> None:
    root = write_layout(screens, tmp_path / "broken")
    boxes = next(root.glob("*/boxes.json"))
    content = json.loads(boxes.read_text())
    content[sorted(content)[0]] = {"privacy": [{"value": "x"}], "task": []}
    boxes.write_text(json.dumps(content))
    with pytest.raises(UserError, match="boxes.json.*lacks"):
        load_layout(root)


def test_real_layout_without_boxes_locates_them(screens: ScreenData, tmp_path: Path) -> None:
    """PrivScreen has no boxes: values and keywords are found among a reader's detections."""
    root = write_layout(screens, tmp_path / "real")
    for boxes in root.glob("*/boxes.json"):
        boxes.unlink()
    original = screens.screens[0]
    fake_reading = [(p.box, p.value.upper()) for p in original.pii] + [
        (t.box, t.keyword) for t in original.tasks
    ]

    def locate(screen):  # noqa: ANN001, ANN202
        if screen.app == original.app and screen.key == original.key:
            locate_boxes(screen, fake_reading)

    loaded = load_layout(root, locate)
    screen = next(s for s in loaded.screens if s.app == original.app and s.key == original.key)
    assert [p.value for p in screen.pii] == [p.value for p in original.pii]
    assert [p.box for p in screen.pii] == [p.box for p in original.pii]
    assert [t.box for t in screen.tasks] == [t.box for t in original.tasks]
    other = next(s for s in loaded.screens if s is not screen)
    assert all(p.box is None for p in other.pii)  # nothing located there: left unknown
    assert loaded.meta["unlocated_items"] > 0


def test_bad_screen_data_names_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown screen data"):
        load_screens("privscreen-maxi")
    with pytest.raises(UserError, match="unknown option"):
        load_screens("privscreen-mini?size=3")
    with pytest.raises(UserError, match="must be integers"):
        load_screens("privscreen-mini?n=abc")
    with pytest.raises(UserError, match="is not a folder"):
        load_screens(f"privscreen:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="privacy_qa.json"):
        load_screens(f"privscreen:{tmp_path}")


# ---------------------------------------------------------------------------- metrics
def test_leak_rule_on_hand_written_cases() -> None:
    assert field_ratio("abcde", "abc") == pytest.approx(0.75)  # 2*3 / 8
    assert field_leaked("abcde", "abc")
    assert field_ratio("abcde", "ab") == pytest.approx(4 / 7)
    assert not field_leaked("abcde", "ab")
    assert field_leaked("Norma Fisher", "norma fisber")  # case-insensitive, one letter wrong
    assert not field_leaked("Norma Fisher", "")
    assert field_ratio("4485 2911 8942 6225", "0000 0000 0000 0000") == pytest.approx(6 / 38)
    # exact: the normalised value is in the normalised reading
    assert field_exact(PHONE, "Phone\n+1 415-555-0123\nEmail")
    assert field_exact(PHONE, "+1415-555-0123")  # spaces do not count
    assert not field_exact(PHONE, "415-555-0123")
    assert not field_exact("", "anything")


def test_task_rule_on_hand_written_cases() -> None:
    assert normalise_keyword("Tap the Settings tab") == "settings"
    assert task_success("Pay now", "Pay now Cancel\nHome Settings")
    assert task_success("Settings", "Home. Settings")
    assert task_success("Log out", "Save Logout")  # without spaces
    assert task_success("Tap the Settings tab", "Home Settings")
    assert not task_success("Send", "Sen")
    assert not task_success("Pay now", "Pay later")
    assert not task_success("", "anything")


def test_psnr_and_ssim() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = (x + 0.1).clamp(0, 1)
    assert torch.isinf(psnr(x, x)).all()
    mse = (x - y).pow(2).flatten(1).mean(1)
    assert torch.allclose(psnr(x, y), 10 * torch.log10(1 / mse))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-4)
    assert (ssim(x, y) < 1).all()


# ---------------------------------------------------------------------------- DualTAP parts
def test_attention_shaping_on_a_hand_made_map() -> None:
    a = torch.tensor(
        [[0.0, 0.2, 0.4, 0.6], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    ).view(1, 1, 4, 4)
    # gamma alone
    assert torch.allclose(shape_attention(a, 2.0, 1, 0, 0, 1.0), a**2)
    # dilation: a 3x3 max-pool
    dilated = shape_attention(a, 1.0, 3, 0, 0, 1.0)
    assert dilated[0, 0, 1, 3] == pytest.approx(0.6) and dilated[0, 0, 2, 2] == 1.0
    assert dilated[0, 0, 2, 0] == 0.0
    # top-k 25% of 16 pixels = the 4 largest become 1, the rest 0
    top = shape_attention(a, 1.0, 1, 25.0, 0, 1.0)
    assert top.sum() == 4 and top[0, 0, 0, 1:].sum() == 3 and top[0, 0, 3, 3] == 1
    # a sparse map: fewer than k % of pixels have attention; only those are kept (the official
    # rule, a >= 0, would select the whole screen)
    sparse = torch.zeros(1, 1, 4, 4)
    sparse[0, 0, 1, 1] = 0.3
    assert shape_attention(sparse, 1.0, 1, 50.0, 0, 1.0).sum() == 1
    assert shape_attention(torch.zeros(1, 1, 4, 4), 1.0, 1, 50.0, 0, 0.9).max() == pytest.approx(
        0.1
    )
    # top-k takes precedence over the threshold
    assert torch.equal(shape_attention(a, 1.0, 1, 25.0, 0.9, 1.0), top)
    assert shape_attention(a, 1.0, 1, 0, 0.5, 1.0).sum() == 2  # 0.6 and 1.0
    # mix: the floor is 1 - mix
    mixed = shape_attention(a, 1.0, 1, 25.0, 0, 0.9)
    assert torch.allclose(mixed, 0.9 * top + 0.1)
    # contrast: ReLU(S_priv - S_task) / max
    s_priv = torch.tensor([0.0, 0.5, 1.0, 0.2]).view(1, 1, 2, 2)
    s_task = torch.tensor([0.5, 0.0, 0.5, 0.2]).view(1, 1, 2, 2)
    assert torch.allclose(contrast(s_priv, s_task).flatten(), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert torch.equal(contrast(s_task, s_task), torch.zeros_like(s_task))
    assert torch.equal(normalise01(torch.ones(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize("attention", ["random", "ones"])
def test_generator_respects_the_per_pixel_eps(screens: ScreenData, attention: str) -> None:
    torch.manual_seed(0)
    eps = 16 / 255
    protector = Protector(
        eps,
        width=8,
        depth=2,
        shaping={"gamma": 2.0, "dilate": 3, "topk_percent": 10.0, "threshold": 0.75, "mix": 0.9},
    )
    with torch.no_grad():  # saturate the tanh: the bound must hold at its extremes
        protector.generator.out.weight.mul_(1000)
    x = screen_tensor(screens.screens[:2])
    a = torch.rand(2, 1, 320, 256) if attention == "random" else torch.ones(2, 1, 320, 256)
    with torch.no_grad():
        delta = protector.delta(x, a)
        out = protector(x, a)
    budget = protector.budget(a)
    assert (delta.abs() <= budget + 1e-7).all()
    assert ((out - x).abs() <= eps + 1e-6).all()
    assert out.min() >= 0 and out.max() <= 1
    assert delta.abs().amax() > 0.9 * eps  # saturated: the bound is reached, not just kept
    if attention == "random":  # outside the top-k region only (1 - mix) of eps is allowed
        assert torch.isclose(budget.min(), torch.tensor(0.1 * eps))


def test_dualtap_settings_are_validated() -> None:
    assert DualTAP(eps="32/255").eps == pytest.approx(32 / 255)
    with pytest.raises(UserError, match="attention"):
        DualTAP(attention="global")
    with pytest.raises(UserError, match="eps"):
        DualTAP(eps=2.0)
    with pytest.raises(UserError, match="eps"):
        DualTAP(eps="a/b")
    with pytest.raises(UserError, match="mix 3.0 is out of range"):
        DualTAP(mix=3)
    with pytest.raises(UserError, match="'abc' is not a number"):
        DualTAP(steps="abc")
    for bad in ({"batch_size": 0}, {"eot_samples": 0}, {"topk_percent": 101}, {"gamma": 0}):
        with pytest.raises(UserError, match="out of range"):
            DualTAP(**bad)
    with pytest.raises(UserError, match="dilate 2 is even"):
        DualTAP(dilate=2)


def test_training_refuses_screens_without_boxes_or_of_mixed_sizes(screens: ScreenData) -> None:
    import copy

    unlocated = copy.deepcopy(screens.screens[:2])
    for screen in unlocated:
        for item in screen.pii:
            item.box = None
    with pytest.raises(UserError, match="no training screen has a located PII box"):
        DualTAP(steps=1).fit_screens(unlocated, "unlocated")
    mixed = copy.deepcopy(screens.screens[:2])
    mixed[1].image = mixed[1].image[:200]
    with pytest.raises(UserError, match="2 sizes"):
        DualTAP(steps=1).fit_screens(mixed, "mixed")


# ---------------------------------------------------------------------------- real OCR
def test_easyocr_reads_a_rendered_phone_number(phone_screen) -> None:  # noqa: ANN001
    from robustbench_cl.data.privscreen import Screen
    from robustbench_cl.privacy.routers import EasyOCRRouter

    image, pii = phone_screen
    screen = Screen("phone.png", "contacts", image, pii, [])
    answer = EasyOCRRouter().answer(screen, image)
    phone = answer.fields[[p.field for p in pii].index("phoneNumber")]
    assert "415-555-0123" in phone
    assert field_leaked(PHONE, phone)
    assert EasyOCRRouter.access == "white-box"


def test_tesseract_reads_a_rendered_phone_number(phone_screen) -> None:  # noqa: ANN001
    from robustbench_cl.data.privscreen import Screen

    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed (scripts/ensure-tesseract installs it as root)")
    from robustbench_cl.privacy.routers import TesseractRouter

    image, pii = phone_screen
    screen = Screen("phone.png", "contacts", image, pii, [])
    router = TesseractRouter()
    answer = router.answer(screen, image)
    phone = answer.fields[[p.field for p in pii].index("phoneNumber")]
    assert "415-555-0123" in phone
    assert field_leaked(PHONE, phone)
    assert router.settings()["version"].startswith(("4", "5"))


def test_surrogate_reads_the_boxes_and_its_gradient_stays_in_them(screens: ScreenData) -> None:
    from robustbench_cl.data.privscreen import boxes_tensor, text_targets
    from robustbench_cl.models.ocr import RecognizerSurrogate

    surrogate = RecognizerSurrogate()
    assert not any(p.requires_grad for p in surrogate.model.parameters())
    screen = screens.screens[1]
    x = screen_tensor([screen]).requires_grad_(True)
    items, texts = text_targets([screen], "privacy")
    boxes = boxes_tensor(items)
    read = surrogate.decode(surrogate.crops(x.detach(), boxes))
    assert sum(field_leaked(t, r) for t, r in zip(texts, read)) >= len(texts) - 1
    loss = surrogate.loss(x, boxes, texts)
    assert loss.shape == (len(texts),) and (loss >= 0).all()
    (gradient,) = torch.autograd.grad(loss.sum(), x)
    inside = torch.zeros_like(gradient, dtype=torch.bool)
    for _, (x0, y0, x1, y1) in items:
        inside[..., y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = True
    assert gradient[inside].abs().sum() > 0
    assert gradient[~inside].abs().sum() == 0


# ---------------------------------------------------------------------------- engine and CLI
def _routers() -> list[str]:
    return ["easyocr", "tesseract"] if shutil.which("tesseract") else ["easyocr"]


def _config() -> dict:
    return {
        "suite": "screens-test",
        "task": "screens",
        "screens": {
            "data": {"name": "privscreen-mini?n=8&seed=1", "train_ratio": 0.5},
            "routers": _routers(),
            "protectors": [
                {"protector": "clean"},
                {"protector": "blackout", "name": "black-out"},
                {"protector": "noise", "eps": "32/255"},
                {"protector": "pgd", "params": {"steps": 1}, "eps": 32 / 255},
                {
                    "protector": "dualtap",
                    "params": {"steps": 2, "width": 4, "depth": 2, "eot_samples": 1},
                    "eps": ["64/255"],
                },
                {
                    "protector": "dualtap",
                    "name": "from reading",
                    "params": {
                        "steps": 2,
                        "width": 4,
                        "depth": 2,
                        "eot_samples": 1,
                        "attention_from": "reading",
                    },
                    "eps": 64 / 255,
                },
            ],
            "examples": 1,
        },
    }


def test_sharded_screens_give_the_unsharded_outcomes_of_deterministic_protectors(
    tmp_path: Path,
) -> None:
    """Shards of test screens (one Ray task each) merge into the record one shard gives: the
    same per-screen outcomes, rates and examples for clean and black-out; noise draws per
    shard, so ``shard_size`` is in the ids."""
    from robustbench_cl.engine.runner import run
    from robustbench_cl.engine.store import ResultsStore

    config = _config()
    config["screens"]["routers"] = ["easyocr"]
    config["screens"]["protectors"] = config["screens"]["protectors"][:3]
    config["screens"]["examples"] = 2
    whole = ResultsStore(run(config, out=tmp_path / "whole", device="cpu") / "cells.jsonl").read()
    config["screens"]["shard_size"] = 1
    sharded = run(config, out=tmp_path / "sharded", device="cpu")
    parts = ResultsStore(sharded / "cells.jsonl").read()
    assert [r["id"] for r in parts] != [r["id"] for r in whole]
    for one, many in zip(whole[:2], parts[:2]):  # clean, black-out
        drop = ("id", "wall_time", "examples")
        assert {k: v for k, v in one.items() if k not in drop} == {
            k: v for k, v in many.items() if k not in drop
        }
        assert [e["fields"] for e in one["examples"]] == [e["fields"] for e in many["examples"]]
        assert len(many["examples"]) == 2
        assert all((sharded / e["image"]).exists() for e in many["examples"])
    assert parts[2]["label"] == "noise 32/255" and parts[2]["linf"] <= 32.5


@pytest.mark.slow
def test_screens_section_end_to_end_schema_report_without_pii_and_resume(tmp_path: Path) -> None:
    import jsonschema

    from robustbench_cl.engine.runner import run
    from robustbench_cl.engine.store import ResultsStore
    from robustbench_cl.report.html import write_report

    out = run(_config(), out=tmp_path / "run", device="cpu")
    results = json.loads((out / "results.json").read_text())
    from robustbench_cl.engine.results import results_schema

    jsonschema.validate(results, results_schema())
    rows = {(r["label"], r["router"]): r for r in results["screens"]["rows"]}
    assert len(rows) == 6 * len(_routers())
    # the same cached generator; the attention comes from EasyOCR's reading instead of the truth
    reading = rows[("from reading 64/255", "easyocr")]
    assert 0 < reading["linf"] <= 64.5 and reading["training_seconds"] is not None
    for router in _routers():
        clean, blackout = rows[("clean", router)], rows[("black-out", router)]
        assert clean["plr"]["rate"] >= 0.7 and clean["plr"]["n"] >= 12
        assert blackout["plr"]["rate"] == 0.0 and blackout["zero_leak"]["rate"] == 1.0
        assert blackout["plr_change"] == -clean["plr"]["rate"]
        assert clean["psnr"] == 99.0 and clean["linf"] == 0.0
    assert rows[("clean", "easyocr")]["tsr"]["rate"] >= 0.9
    # eps holds on the 8-bit screenshots
    assert rows[("noise 32/255", "easyocr")]["linf"] <= 32.5
    assert rows[("pgd 32/255", "easyocr")]["linf"] <= 32.5
    assert 0 < rows[("dualtap 64/255", "easyocr")]["linf"] <= 64.5
    dualtap = rows[("dualtap 64/255", "easyocr")]
    assert dualtap["training_seconds"] is not None and dualtap["access"] == "white-box"
    # the report shows example screens, never a true PII value
    html = write_report(out).read_text()
    assert 'id="screens"' in html and "data:image/png;base64," in html
    from robustbench_cl.data.privscreen import load_screens

    for screen in load_screens("privscreen-mini?n=8&seed=1").screens:
        for item in screen.pii:
            assert item.value not in html
    # a rerun resumes: nothing is recomputed
    records = ResultsStore(out / "cells.jsonl").read()
    again = run(_config(), out=tmp_path / "run", device="cpu")
    assert ResultsStore(again / "cells.jsonl").read() == records
    from tests.conftest import assert_resumes_after_a_torn_line

    assert_resumes_after_a_torn_line(out, lambda: run(_config(), out=out, device="cpu"))


def test_screens_config_errors_are_one_line() -> None:
    from robustbench_cl.engine.config import load_config
    from robustbench_cl.tasks.screens import expand_screens

    def expand(protectors: list) -> None:
        config = _config()
        config["screens"]["protectors"] = protectors
        expand_screens(load_config(config))

    with pytest.raises(UserError, match=r"protectors\[0\].eps.*needs an eps"):
        expand([{"protector": "noise"}])
    with pytest.raises(UserError, match="takes no eps"):
        expand([{"protector": "clean", "eps": 0.1}])
    with pytest.raises(UserError, match="unknown protector"):
        expand([{"protector": "jpeg"}])
    with pytest.raises(UserError, match="takes no parameter 'step'"):
        expand([{"protector": "pgd", "params": {"step": 3}, "eps": 0.1}])
    with pytest.raises(UserError, match=r"params.steps: steps 0 is invalid"):
        expand([{"protector": "pgd", "params": {"steps": 0}, "eps": 0.1}])
    with pytest.raises(UserError, match="unknown attention source"):
        expand([{"protector": "dualtap", "params": {"attention_from": "x"}, "eps": 0.1}])
    with pytest.raises(UserError, match="unknown attention"):
        expand([{"protector": "dualtap", "params": {"attention": "x"}, "eps": 0.1}])
    with pytest.raises(UserError, match="both labelled"):
        expand([{"protector": "clean"}, {"protector": "clean"}])
    with pytest.raises(UserError, match="eps"):
        expand([{"protector": "noise", "eps": "1/0"}])


def test_cli_defend_dualtap_and_protect_a_screenshot(tmp_path: Path, phone_screen) -> None:  # noqa: ANN001
    from PIL import Image

    from tests.test_cli import invoke

    trained = invoke(
        "defend",
        "dualtap",
        "--data",
        "privscreen-mini?n=8&seed=2",
        "--param",
        "steps=1",
        "--param",
        "width=4",
        "--param",
        "depth=2",
        "--param",
        "eps=16/255",
        "-o",
        str(tmp_path / "protector"),
    )
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "protector.safetensors").exists()
    image, _ = phone_screen
    Image.fromarray(image).save(tmp_path / "mine.png")
    result = invoke(
        "protect",
        "--protector",
        str(tmp_path / "protector"),
        str(tmp_path / "mine.png"),
        "-o",
        str(tmp_path / "out"),
        "--keep",
        "Call",
        "--keep",
        "Settings",
    )
    assert result.exit_code == 0, result.output
    protected = np.asarray(Image.open(tmp_path / "out" / "mine.png")).astype(int)
    assert protected.shape == image.shape
    assert 0 < np.abs(protected - image.astype(int)).max() <= 16
    missing = invoke(
        "protect",
        "--protector",
        str(tmp_path / "nope"),
        str(tmp_path / "mine.png"),
        "-o",
        str(tmp_path / "out"),
    )
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    assert "no protector artifact" in missing.output
