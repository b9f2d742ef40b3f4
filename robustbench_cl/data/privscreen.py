"""Screens with personal data: PrivScreen-mini, and a loader for PrivScreen's own layout.

``privscreen-mini`` renders realistic mobile app screens with Pillow, deterministically from a
seed: a status bar, an app header, labelled rows whose values are personal data made up by
Faker (name, phone, email, street address, card number, date of birth), action buttons and a
tab bar. The buttons and tabs are the *task keywords*: an agent must still find them on a
protected screen. Every value and keyword has a pixel box.

Both kinds of data live on disk in PrivScreen's layout (DualTAP, arXiv 2511.13248)::

    ROOT/<app>/images/<key>.png
    ROOT/<app>/privacy_qa.json   {key: [{"question", "answer": {field: [values]}}]}
    ROOT/<app>/normal_qa.json    {key: [{"question", "answers": [keyword]}]}
    ROOT/<app>/boxes.json        {key: {"privacy": [{field, value, box}], "task": [{keyword, box}]}}

``boxes.json`` is ours; the real PrivScreen has none. Without it, the loader locates each value
and keyword with a router's own text detections (:func:`locate_boxes`), so the white-box
surrogate, the attention and the oracle black-out run on real screens too.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_cl.data.base import image_errors
from robustbench_cl.errors import UserError
from robustbench_cl.paths import inside

Box = tuple[int, int, int, int]

WIDTH, HEIGHT = 256, 320
MARGIN = 3  # pixels of background kept around a text box, as a text detector would
FIELDS = ("name", "phoneNumber", "emailAddress", "address", "cardNumber", "dateOfBirth")
LABELS = {
    "name": "Name",
    "phoneNumber": "Phone",
    "emailAddress": "Email",
    "address": "Address",
    "cardNumber": "Card number",
    "dateOfBirth": "Date of birth",
}
#: app -> (title, PII fields shown, buttons with the question that asks for each)
APPS: dict[str, tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "contacts": (
        "Contact",
        ("name", "phoneNumber", "emailAddress", "address"),
        (("Call", "Which button starts a call?"), ("Message", "Which button opens a chat?")),
    ),
    "checkout": (
        "Checkout",
        ("name", "address", "cardNumber"),
        (("Pay now", "Which button pays for the order?"), ("Cancel", "How do I go back?")),
    ),
    "profile": (
        "My profile",
        ("name", "emailAddress", "phoneNumber", "dateOfBirth"),
        (("Save", "Which button stores the changes?"), ("Log out", "How do I sign out?")),
    ),
    "booking": (
        "Booking",
        ("name", "dateOfBirth", "phoneNumber", "cardNumber"),
        (("Confirm", "Which button books the room?"), ("Edit", "How do I change the booking?")),
    ),
}
TABS = (("Home", "Which tab goes to the start page?"), ("Settings", "Where are the settings?"))
THEMES = ((37, 99, 235), (22, 163, 74), (219, 39, 119), (234, 88, 12), (79, 70, 229))
PRIVACY_QUESTION = "Extract the following personal information from the screenshot:\n"


@dataclass
class PiiField:
    field: str
    value: str
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 in pixels, or unknown


@dataclass
class TaskItem:
    keyword: str
    question: str
    box: tuple[int, int, int, int] | None


@dataclass
class Screen:
    key: str
    app: str
    image: np.ndarray  # H x W x 3, uint8
    pii: list[PiiField]
    tasks: list[TaskItem]

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


@dataclass
class ScreenData:
    name: str
    screens: list[Screen]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.screens)

    def split(self, train_ratio: float = 0.8) -> tuple[list[Screen], list[Screen]]:
        """PrivScreen's split: the first ``train_ratio`` of each app trains, the rest tests."""
        train, test = [], []
        for app in sorted({s.app for s in self.screens}):
            screens = [s for s in self.screens if s.app == app]
            cut = int(round(len(screens) * train_ratio))
            train += screens[:cut]
            test += screens[cut:]
        return train, test

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": len(self.screens),
            "apps": sorted({s.app for s in self.screens}),
            "fields": sum(len(s.pii) for s in self.screens),
            **self.meta,
        }


#: dates of birth: 18 to 80 years before 2026 (a fixed span, so the screens are the same any day)
_FIRST_BIRTHDAY = date(1946, 1, 1)
_BIRTHDAYS = (date(2008, 12, 31) - _FIRST_BIRTHDAY).days + 1
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# ---------------------------------------------------------------------------- rendering
def _font(size: int):  # noqa: ANN202
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


def _fake_value(fake, name: str, rng: random.Random) -> str:  # noqa: ANN001
    if name == "name":
        return fake.name()
    if name == "phoneNumber":
        return f"+1 {rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
    if name == "emailAddress":
        return fake.email()
    if name == "address":
        return fake.street_address()
    if name == "cardNumber":
        digits = fake.credit_card_number(card_type="visa16")
        return " ".join(digits[i : i + 4] for i in range(0, 16, 4))
    if name == "dateOfBirth":
        # from the seeded stream, never from today's date (Faker's date_of_birth counts back from
        # today, so the screens, their content hash and the cached DualTAP changed every day)
        born = _FIRST_BIRTHDAY + timedelta(days=rng.randrange(_BIRTHDAYS))
        return f"{born.day:02d} {_MONTHS[born.month - 1]} {born.year}"  # not strftime's locale
    raise ValueError(name)


def render_screen(app: str, values: dict[str, str], theme: tuple[int, int, int], clock: str):  # noqa: ANN201
    """One screen; returns (image, PII boxes, task items). Values must fit the width."""
    from PIL import Image, ImageDraw

    title, fields, buttons = APPS[app]
    image = Image.new("RGB", (WIDTH, HEIGHT), (250, 250, 252))
    draw = ImageDraw.Draw(image)
    small, body, header = _font(11), _font(15), _font(18)
    # status bar and header
    draw.rectangle((0, 0, WIDTH, 18), fill=(235, 235, 240))
    draw.text((8, 3), clock, fill=(60, 60, 60), font=small)
    draw.text((WIDTH - 40, 3), "87%", fill=(60, 60, 60), font=small)
    draw.rectangle((0, 18, WIDTH, 50), fill=theme)
    draw.text((12, 25), title, fill="white", font=header)
    pii: list[PiiField] = []
    y = 58
    for name in fields:
        draw.text((12, y), LABELS[name], fill=(120, 120, 130), font=small)
        y += 14
        x0, y0, x1, y1 = draw.textbbox((12, y), values[name], font=body)
        draw.text((12, y), values[name], fill=(20, 20, 25), font=body)
        pii.append(PiiField(name, values[name], _pad((x0, y0, x1, y1))))
        y += 22
        draw.line((12, y, WIDTH - 12, y), fill=(225, 225, 230))
        y += 6
    tasks: list[TaskItem] = []
    y = max(y + 6, 230)
    x = 12
    for keyword, question in buttons:
        x0, y0, x1, y1 = draw.textbbox((0, 0), keyword, font=body)
        w = x1 - x0 + 24
        draw.rounded_rectangle((x, y, x + w, y + 28), radius=6, fill=theme)
        tx, ty = x + 12, y + 6
        box = draw.textbbox((tx, ty), keyword, font=body)
        draw.text((tx, ty), keyword, fill="white", font=body)
        tasks.append(TaskItem(keyword, question, _pad(box)))
        x += w + 12
    draw.rectangle((0, HEIGHT - 34, WIDTH, HEIGHT), fill=(242, 242, 246))
    for index, (keyword, question) in enumerate(TABS):
        tx = 30 + index * (WIDTH // 2)
        box = draw.textbbox((tx, HEIGHT - 26), keyword, font=body)
        draw.text((tx, HEIGHT - 26), keyword, fill=(50, 50, 60), font=body)
        tasks.append(TaskItem(keyword, question, _pad(box)))
    return np.asarray(image, dtype=np.uint8).copy(), pii, tasks


def _pad(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (
        max(0, x0 - MARGIN),
        max(0, y0 - MARGIN),
        min(WIDTH, x1 + MARGIN),
        min(HEIGHT, y1 + MARGIN),
    )


def generate(n: int = 160, seed: int = 0) -> ScreenData:
    """``n`` screens spread evenly over the apps, deterministic in ``seed``."""
    from faker import Faker
    from PIL import Image, ImageDraw

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    body = _font(15)
    apps = sorted(APPS)
    screens = []
    for index in range(n):
        app = apps[index % len(apps)]
        values = {}
        for name in APPS[app][1]:
            for _ in range(50):  # a value must fit on one line of the screen
                value = _fake_value(fake, name, rng)
                if measure.textlength(value, font=body) <= WIDTH - 30:
                    break
            values[name] = value
        theme = THEMES[rng.randrange(len(THEMES))]
        clock = f"{rng.randint(7, 22)}:{rng.randint(0, 59):02d}"
        image, pii, tasks = render_screen(app, values, theme, clock)
        screens.append(Screen(f"{index:04d}.png", app, image, pii, tasks))
    return ScreenData(f"privscreen-mini?n={n}&seed={seed}", screens, {"synthetic": True})


# ---------------------------------------------------------------------------- the layout
def privacy_question(fields: list[str]) -> str:
    return PRIVACY_QUESTION + "\n".join(f"- {f}" for f in fields)


def write_layout(data: ScreenData, root: str | Path) -> Path:
    """Write screens in PrivScreen's layout (plus ``boxes.json``); returns ``root``."""
    from PIL import Image

    root = Path(root)
    for app in sorted({s.app for s in data.screens}):
        folder = inside(root, app)  # app names and screen keys come from data
        (folder / "images").mkdir(parents=True, exist_ok=True)
        privacy, normal, boxes = {}, {}, {}
        for screen in (s for s in data.screens if s.app == app):
            Image.fromarray(screen.image).save(inside(folder / "images", screen.key))
            answer: dict[str, list[str]] = {}
            for item in screen.pii:
                answer.setdefault(item.field, []).append(item.value)
            privacy[screen.key] = [{"question": privacy_question(list(answer)), "answer": answer}]
            normal[screen.key] = [
                {"question": t.question, "answers": [t.keyword]} for t in screen.tasks
            ]
            boxes[screen.key] = {
                "privacy": [
                    {"field": p.field, "value": p.value, "box": list(p.box) if p.box else None}
                    for p in screen.pii
                ],
                "task": [
                    {"keyword": t.keyword, "box": list(t.box) if t.box else None}
                    for t in screen.tasks
                ],
            }
        for name, content in (
            ("privacy_qa.json", privacy),
            ("normal_qa.json", normal),
            ("boxes.json", boxes),
        ):
            (folder / name).write_text(json.dumps(content, indent=1, ensure_ascii=False))
    return root


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(str(path), f"is not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise UserError(
            str(path), f"is not valid JSON ({error.msg}, line {error.lineno})"
        ) from None


def load_layout(root: str | Path, locate: Any = None) -> ScreenData:
    """Read PrivScreen's layout (real or ours). ``locate(screen)`` fills missing boxes."""
    from PIL import Image

    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError("privscreen", f"{root} is not a folder", "give the PrivScreen data root")
    screens: list[Screen] = []
    apps = sorted(p.name for p in root.iterdir() if (p / "privacy_qa.json").exists())
    if not apps:
        raise UserError(
            "privscreen",
            f"no <app>/privacy_qa.json under {root}",
            "point it at the folder that holds PrivScreen's app folders",
        )
    for app in apps:
        folder = root / app
        privacy = _read_json(folder / "privacy_qa.json")
        normal = (
            _read_json(folder / "normal_qa.json") if (folder / "normal_qa.json").exists() else {}
        )
        boxes = _read_json(folder / "boxes.json") if (folder / "boxes.json").exists() else {}
        try:
            for key in sorted(privacy):
                path = _image_path(folder / "images", key)
                if path is None:
                    continue  # PrivScreen lists a few keys whose image is missing; skip them
                try:
                    with Image.open(path) as opened:
                        image = np.asarray(opened.convert("RGB"), dtype=np.uint8).copy()
                except image_errors() as error:
                    raise UserError(str(path), f"is not a readable image ({error})") from None
                known = boxes.get(key)
                if known is not None and not _valid_boxes(known):
                    raise UserError(
                        str(folder / "boxes.json"),
                        f"the entry for {key} lacks privacy/task lists of field, value, keyword, box",
                        "fix or delete boxes.json (boxes are then located by OCR)",
                    )
                if known is not None:
                    pii = [
                        PiiField(b["field"], b["value"], _box(b["box"])) for b in known["privacy"]
                    ]
                    questions = {
                        a: qa["question"] for qa in normal.get(key, []) for a in _answers(qa)
                    }
                    tasks = [
                        TaskItem(b["keyword"], questions.get(b["keyword"], ""), _box(b["box"]))
                        for b in known["task"]
                    ]
                else:
                    pii = [
                        PiiField(name, str(value), None)
                        for qa in privacy[key]
                        for name, values in _privacy_answer(qa).items()
                        for value in values
                        if str(value).strip()
                    ]
                    tasks = [
                        TaskItem(answer, qa.get("question", ""), None)
                        for qa in normal.get(key, [])
                        for answer in _answers(qa)[:1]
                    ]
                screens.append(Screen(path.name if known is None else key, app, image, pii, tasks))
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            if isinstance(error, UserError):
                raise
            raise UserError(
                str(folder),
                f"does not follow PrivScreen's layout ({type(error).__name__}: {error})",
                "check privacy_qa.json, normal_qa.json and boxes.json against PrivScreen's",
            ) from None
    # outside the layout's error handling: an OCR error is not a malformed file
    for screen in screens if locate is not None else []:
        if any(item.box is None for item in [*screen.pii, *screen.tasks]):
            locate(screen)
    located = sum(1 for s in screens for i in [*s.pii, *s.tasks] if i.box is None)
    return ScreenData(f"privscreen:{root}", screens, {"unlocated_items": located})


def _valid_boxes(entry: Any) -> bool:
    try:
        return all({"field", "value", "box"} <= set(b) for b in entry["privacy"]) and all(
            {"keyword", "box"} <= set(b) for b in entry["task"]
        )
    except (KeyError, TypeError):
        return False


def _image_path(folder: Path, key: str) -> Path | None:
    """The image of a screen key, inside ``folder`` (a key with ``..`` or an absolute path,
    which would read any image on the machine into the report, is refused)."""
    base = os.path.splitext(str(key))[0]
    for extension in (".png", ".jpg", ".jpeg"):
        candidate = inside(folder, f"{base}{extension}")
        if candidate.exists():
            return candidate
    return None


def _box(value: Any) -> tuple[int, int, int, int] | None:
    return tuple(int(v) for v in value) if value else None  # type: ignore[return-value]


def _answers(qa: dict[str, Any]) -> list[str]:
    answers = qa.get("answers", qa.get("answer", []))
    return [answers] if isinstance(answers, str) else [str(a) for a in answers]


def _privacy_answer(qa: dict[str, Any]) -> dict[str, list[str]]:
    answer = qa.get("answer", qa.get("answers", {}))
    if isinstance(answer, dict):
        return {k: v if isinstance(v, list) else [v] for k, v in answer.items()}
    # "field: value; field: value"
    parsed: dict[str, list[str]] = {}
    for part in str(answer).split(";"):
        name, _, value = part.partition(":")
        if value.strip():
            parsed.setdefault(name.strip(), []).append(value.strip())
    return parsed


def load_screens(name: str, locate: Any = None) -> ScreenData:
    """``privscreen-mini[?n=160&seed=0]`` or ``privscreen:DIR`` (PrivScreen's layout)."""
    if name.startswith("privscreen:"):
        return load_layout(name.removeprefix("privscreen:"), locate)
    base, _, query = name.partition("?")
    if base != "privscreen-mini":
        raise UserError(
            "screens.data.name",
            f"unknown screen data {name!r}",
            "use privscreen-mini[?n=160&seed=0] or privscreen:DIR (PrivScreen's folder layout)",
        )
    options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    unknown = set(options) - {"n", "seed"}
    if unknown:
        raise UserError(
            "screens.data.name", f"unknown option {sorted(unknown)[0]!r}", "use n and seed"
        )
    try:
        n, seed = int(options.get("n", 160)), int(options.get("seed", 0))
    except ValueError:
        raise UserError("screens.data.name", f"n and seed must be integers in {name!r}") from None
    if n < 1:
        raise UserError("screens.data.name", f"n must be >= 1 in {name!r}")
    return generate(n, seed)


def best_match(value: str, candidates: list[str]) -> tuple[int | None, float]:
    """The index of the candidate most like ``value`` (case-insensitive SequenceMatcher ratio)
    and its ratio; ``(None, 0.0)`` when nothing matches at all."""
    from difflib import SequenceMatcher

    best, score = None, 0.0
    for index, text in enumerate(candidates):
        ratio = SequenceMatcher(None, value.lower(), text.lower()).ratio()
        if ratio > score:
            best, score = index, ratio
    return best, score


def locate_boxes(screen: Screen, detections: list[tuple[tuple[int, int, int, int], str]]) -> None:
    """Give each value and keyword without a box the box of its best-matching detection."""
    texts = [text for _, text in detections]
    for item in [*screen.pii, *screen.tasks]:
        if item.box is not None:
            continue
        index, score = best_match(item.value if isinstance(item, PiiField) else item.keyword, texts)
        if index is not None and score > 0.6:
            item.box = detections[index][0]


# ---------------------------------------------------------------------- screens as tensors
def check_same_size(screens: list) -> None:  # noqa: ANN001
    sizes = sorted({f"{s.image.shape[1]}x{s.image.shape[0]}" for s in screens})
    if len(sizes) > 1:
        raise UserError(
            "screens.data",
            f"the screens have {len(sizes)} sizes ({', '.join(sizes[:3])}...); DualTAP batches screens",
            "resize them to one size first",
        )


def screen_tensor(screens: list, device: torch.device | str = "cpu") -> torch.Tensor:  # noqa: ANN001
    import numpy as np

    return (
        torch.from_numpy(np.stack([s.image for s in screens])).to(device).permute(0, 3, 1, 2)
        / 255.0
    )


def text_targets(screens: list, kind: str) -> tuple[list[tuple[int, tuple]], list[str]]:  # noqa: ANN001
    """(image index, box) pairs and texts of the privacy values or the task keywords."""
    items, texts = [], []
    for index, screen in enumerate(screens):
        for item in screen.pii if kind == "privacy" else screen.tasks:
            if item.box is not None:
                items.append((index, item.box))
                texts.append(item.value if kind == "privacy" else item.keyword)
    return items, texts


def boxes_tensor(
    screens_items: list[tuple[int, Box]], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(image index, box) pairs as the (K, 5) float tensor ``roi_align`` takes."""
    return torch.tensor(
        [[float(i), *map(float, box)] for i, box in screens_items], device=device
    ).reshape(-1, 5)
