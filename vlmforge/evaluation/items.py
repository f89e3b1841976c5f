"""What a task reader yields: `EvalItem`s (one question each) inside a `Dataset`, plus small readers
shared by the tasks (JSON or JSONL files, build samples, images by path)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from vlmforge.errors import UserError
from vlmforge.sample import IMAGE_FIELDS


@dataclass
class EvalItem:
    """One question. `answer` is the gold value in the task's own terms (option index, "yes"/"no",
    grade, reference text); `meta` holds what results are grouped by (class, category, subject...)."""

    id: str
    prompt: str  # the user's text, without an <image> marker (runners place the image)
    answer: Any = None
    options: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    image: bytes | None = None
    image_path: str | None = None  # read lazily, so big sets do not sit in memory
    image_url: str | None = None  # for API models given URLs instead of bytes
    # --scoring loss: the model's loss of each target text after prompt + loss_prefix (default: options)
    loss_prefix: str = ""
    loss_targets: list[str] | None = None

    def image_bytes(self) -> bytes | None:
        if self.image is not None:
            return self.image
        if self.image_path:
            try:
                return Path(self.image_path).read_bytes()
            except OSError as e:
                raise UserError(f"cannot read the image of item {self.id}: {self.image_path} ({e.strerror}); "
                                "check --image-root") from None
        return None

    @property
    def has_image(self) -> bool:
        return self.image is not None or bool(self.image_path) or bool(self.image_url)


@dataclass
class Dataset:
    """The items of one evaluation and where they came from (`build_id` when read from a build)."""

    items: list[EvalItem]
    source: str = ""
    build_id: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # the split read, recorded in the summary (None: the data has no splits)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class ReadOptions:
    """Reader settings from the command line; each task uses the ones that apply to it."""

    split: str | None = None
    image_root: Path | None = None
    limit: int | None = None
    prompt: str | None = None  # replaces the task's default question (grading, open)
    prompt_suffix: str | None = None
    rounds: int | None = None  # MMBench rotations per question (default: one per option)
    num_grades: int = 5
    strict: bool = False  # letter parsing as LLaVA's ScienceQA script (no lenient steps)


def read_records(path: Path) -> list[dict[str, Any]]:
    """A JSON list (or {"data": [...]}, or a dict of records keyed by id) or a JSONL file, of objects."""
    records = _records(path)
    odd = next((n for n, r in enumerate(records, 1) if not isinstance(r, dict)), None)
    if odd is not None:  # every reader takes records for objects: a list of numbers or strings was a traceback
        raise UserError(f"{path}: record {odd} is {type(records[odd - 1]).__name__}, not a JSON object; every "
                        "question or answer is an object with its fields (id, question, answer ...)")
    return records


def _records(path: Path) -> list[Any]:
    if path.is_dir():
        from vlmforge.manifests.read import open_build

        open_build(path)  # a folder without build.json: says what it is instead
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:  # an image, a model file: was a traceback
        raise UserError(f"{path} is not a text file (byte {e.start} is not UTF-8); give a JSON or JSON lines "
                        "file") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:  # cut short, or edited by hand: was a traceback
            raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None  # JSON lines
        if isinstance(doc, dict):
            if isinstance(doc.get("data"), list):
                return doc["data"]
            if doc and all(isinstance(v, dict) for v in doc.values()):
                return [{"id": k, **v} for k, v in doc.items()]
            return [doc]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {n} is not JSON ({e.msg})") from None
    return out


def is_build(path: Path) -> bool:
    return (Path(path) / "build.json").exists()


def iter_build(path: Path, split: str | None = None) -> Iterator[tuple[str, dict[str, Any], bytes | None]]:
    """(key, json, image bytes) for each sample of a finished build, in shard order."""
    from vlmforge.manifests.read import open_build

    build = open_build(path)
    for sample in build.samples(split):
        image = next((sample[f] for f in IMAGE_FIELDS if f in sample), None)
        yield sample["__key__"], sample.get("json", {}), image


def collect_items(paths: list[Path], split: str | None,
                  from_sample: Callable[[str, dict[str, Any], bytes | None], EvalItem],
                  from_path: Callable[[Path], list[EvalItem]]) -> tuple[list[EvalItem], str | None, str | None]:
    """Items from each path: build folders sample by sample (from the split `build_split` picks),
    anything else by `from_path`. Returns the items, the id of the (last) build read and the split
    read from the builds, for the summary."""
    items: list[EvalItem] = []
    build_id = used = None
    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist")
        if is_build(path):
            build_id = build_id_of(path)
            used = build_split(path, split)
            items += [from_sample(key, doc, image) for key, doc, image in iter_build(path, used)]
        else:
            items += from_path(path)
    if not items:
        raise UserError(f"no items in {', '.join(map(str, paths))}")
    return items, build_id, used


def no_split(opts: ReadOptions, why: str) -> None:
    """Refuse --split where the data has no splits: ignoring it would score other data than asked for."""
    if opts.split is not None:
        raise UserError(f"--split {opts.split} does not apply here: {why}")


def build_split(path: Path, split: str | None) -> str:
    """The split of a build to evaluate: the one asked for, else `test`, else the build's only split
    unless that is `train`. Anything else needs --split: scoring training samples as test data, or
    several splits mixed, would make the metrics mean nothing."""
    from vlmforge.manifests.read import open_build

    splits = sorted({s["split"] for s in open_build(path).info["shards"]})
    if not splits:
        raise UserError(f"build {path} is empty (no shards, 0 samples): nothing to evaluate")
    if split is not None:
        if split not in splits:
            raise UserError(f"build {path} has no split {split!r} (splits: {', '.join(splits)})")
        return split
    if "test" in splits:
        return "test"
    if len(splits) == 1 and splits[0] != "train":
        return splits[0]
    raise UserError(f"build {path} has no test split (splits: {', '.join(splits)}); choose one with --split")


def build_id_of(path: Path) -> str | None:
    try:
        return json.loads((Path(path) / "build.json").read_text()).get("build_id")
    except (OSError, json.JSONDecodeError):
        return None


def first_turns(doc: dict[str, Any]) -> tuple[str, str]:
    """The first human and first gpt turn of a LLaVA conversation, the <image> marker removed."""
    human = gpt = ""
    for turn in doc.get("conversations") or []:
        who = turn.get("from")
        if who in ("human", "user") and not human:
            human = turn.get("value", "")
        elif who in ("gpt", "assistant") and not gpt:
            gpt = turn.get("value", "")
    return strip_image_marker(human), gpt


def strip_image_marker(text: str) -> str:
    return text.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()


def resolve_image(name: str | None, roots: list[Path | None]) -> str | None:
    """The first existing `root/name`; the first candidate when none exists (the error comes when read)."""
    if not name:
        return None
    candidates = [Path(r) / name for r in roots if r is not None] or [Path(name)]
    for c in candidates:
        if c.exists():
            return str(c)
    return str(candidates[0])


def apply_limit(items: list[EvalItem], limit: int | None) -> list[EvalItem]:
    return items[:limit] if limit else items


def option_lines(options: list[str]) -> str:
    """"A. cat\nB. dog" - the layout LLaVA-1.5 uses for multiple-choice prompts."""
    return "\n".join(f"{chr(65 + i)}. {opt}" for i, opt in enumerate(options))


LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
