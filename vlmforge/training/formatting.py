"""Conversations to model inputs: chat-template or LLaVA `vicuna_v1` text, label masking, truncation.

Only assistant text is trained. Each template renders a conversation to one string together with the
character spans of the assistant replies (reply text plus the end-of-turn marker the template puts
after it). The string is tokenised once with offsets, and a token is trained when its first
non-space character falls inside a span; everything else is -100. A template is any chat template
that renders conversations prefix by prefix (rendering the first i messages gives a prefix of
rendering them all), which holds for the templates of LLaVA, Llama and Qwen models.

`<image>` is tokenised as one token and then expanded to the number of image tokens the model's
processor uses, so text and image features always agree; truncation never cuts an image's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from vlmforge.errors import UserError

IGNORE_INDEX = -100
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Rendered:
    """A conversation as text, with the character spans whose tokens are trained."""

    text: str
    spans: list[tuple[int, int]]


def normalise_turns(conversations: Sequence[dict[str, Any]], has_image: bool, image_token: str = "<image>"
                    ) -> list[tuple[str, str]]:
    """LLaVA turns as (role, text) with role user/assistant/system.

    As LLaVA does: a leading assistant turn is dropped; with an image, exactly one image token stays
    (the first one, or one put in front of the first user turn when the text has none); without an
    image every image token is removed."""
    turns = [(ROLES.get(str(t.get("from", "")).lower(), ""), str(t.get("value", ""))) for t in conversations]
    bad = [r for r, _ in turns if not r]
    if bad:
        raise ValueError("conversation turns must come from human, gpt or system")
    while turns and turns[0][0] == "assistant":
        turns.pop(0)
    seen = False
    out = []
    for role, text in turns:
        if image_token in text:
            if has_image and not seen:
                head, _, tail = text.partition(image_token)
                text = head + image_token + tail.replace(image_token, "")
                seen = True
            else:
                text = text.replace(image_token, "").strip()
        out.append((role, text))
    if has_image and not seen:
        for i, (role, text) in enumerate(out):
            if role == "user":
                out[i] = (role, f"{image_token}\n{text}")
                break
    return out


def render_vicuna(turns: Sequence[tuple[str, str]], eos: str, system: str = VICUNA_SYSTEM) -> Rendered:
    """LLaVA-1.5's `vicuna_v1`: 'SYSTEM USER: q ASSISTANT: a</s>USER: ...'; trained: 'a</s>'."""
    parts = [system + " "]
    spans = []
    size = len(parts[0])
    for role, text in turns:
        if role == "system":
            continue
        if role == "user":
            piece = f"USER: {text} "
        else:
            head = "ASSISTANT: "
            piece = f"{head}{text}{eos}"
            spans.append((size + len(head), size + len(piece)))
        parts.append(piece)
        size += len(piece)
    return Rendered("".join(parts), spans)


def vicuna_prompt(prompt: str, image_token: str | None, system: str | None = None) -> str:
    """What a model trained on vicuna_v1 is asked: all of its text before the assistant's answer, the
    image's token first when the request has an image."""
    image = f"{image_token}\n" if image_token else ""
    return render_vicuna([("user", image + prompt), ("assistant", "")], eos="", system=system or VICUNA_SYSTEM).text


def chat_messages(turns: Sequence[tuple[str, str]], image_token: str) -> list[dict[str, Any]]:
    """(role, text) turns as chat-template messages, the image token as an {'type': 'image'} item."""
    msgs = []
    for role, text in turns:
        content: list[dict[str, str]] = []
        pieces = text.split(image_token)
        for i, piece in enumerate(pieces):
            if i:
                content.append({"type": "image"})
                piece = piece.lstrip("\n")
            if piece:
                content.append({"type": "text", "text": piece})
        msgs.append({"role": role, "content": content})
    return msgs


def render_chat(turns: Sequence[tuple[str, str]], apply: Callable[..., str], image_token: str) -> Rendered:
    """Render with a chat template; each assistant span is what rendering its message adds after
    the generation prompt of the messages before it."""
    msgs = chat_messages(turns, image_token)
    full = apply(msgs, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt = apply(msgs[:i], add_generation_prompt=True)
        upto = apply(msgs[: i + 1], add_generation_prompt=False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise UserError("this chat template does not render conversations prefix by prefix, so assistant "
                            "turns cannot be located; use --template vicuna_v1")
        spans.append((len(prompt), len(upto)))
    return Rendered(full, spans)


def trained_tokens(text: str, offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which tokens to train: those whose first non-space character lies in a span (spans trimmed
    of surrounding spaces, so a leading space token or the next turn's header is never trained)."""
    n = len(offsets)
    mask = np.zeros(n, dtype=bool)
    if not spans or n == 0:
        return mask
    space = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    space = np.isin(space, [32, 9, 10, 13])
    # next_solid[i]: first position >= i that is not a space (len(text) when none).
    idx = np.where(~space, np.arange(len(text)), len(text))
    next_solid = np.minimum.accumulate(idx[::-1])[::-1] if len(text) else idx
    next_solid = np.append(next_solid, len(text))
    starts, ends = offsets[:, 0], offsets[:, 1]
    core = next_solid[np.clip(starts, 0, len(text))]
    core = np.where(core < ends, core, starts)
    for a, b in spans:
        a = int(next_solid[a])
        while b > a and space[b - 1]:
            b -= 1
        mask |= (core >= a) & (core < b) & (ends > starts)
    return mask


def count_image_tokens(processor: Any, image_token: str, image_token_id: int) -> int:
    """How many tokens one image becomes, found by running the processor on a probe image."""
    from PIL import Image

    probe = Image.new("RGB", (64, 48), (127, 127, 127))
    out = processor(text=[image_token], images=[probe], return_tensors="np")
    n = int((np.asarray(out["input_ids"]) == image_token_id).sum())
    if n < 1:
        raise UserError("the processor does not expand the image token; this model family is not supported")
    return n


class ConversationTokenizer:
    """Turns (turns, has_image) into input ids and labels, with image tokens expanded and truncation
    that never splits an image's tokens."""

    def __init__(self, tokenizer: Any, template: str = "chat", max_length: int = 2048, image_token: str = "<image>",
                 image_tokens: int = 1, chat_apply: Callable[..., str] | None = None):
        if not getattr(tokenizer, "is_fast", False):
            raise UserError("label masking needs a fast (Rust) tokenizer with offset mapping")
        if template not in ("chat", "vicuna_v1"):
            raise UserError(f"unknown template {template!r}; use chat or vicuna_v1")
        self.tok = tokenizer
        self.template = template
        self.max_length = max_length
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_tokens = image_tokens
        if template == "chat":
            apply = chat_apply or getattr(tokenizer, "apply_chat_template", None)
            if apply is None or not (getattr(tokenizer, "chat_template", None) or chat_apply):
                raise UserError("the model has no chat template; use --template vicuna_v1")
            self._apply = lambda msgs, add_generation_prompt: apply(msgs, tokenize=False,
                                                                    add_generation_prompt=add_generation_prompt)

    def render(self, turns: Sequence[tuple[str, str]]) -> Rendered:
        if self.template == "vicuna_v1":
            return render_vicuna(turns, self.tok.eos_token or "</s>")
        return render_chat(turns, self._apply, self.image_token)

    def __call__(self, items: Sequence[tuple[Sequence[dict], bool]]) -> list[tuple[np.ndarray, np.ndarray, bool] | None]:
        """For each (conversations, has_image): (input_ids, labels, image kept) or None when nothing
        trainable is left (no assistant text, or truncation removed it)."""
        turns = [normalise_turns(conv, img, self.image_token) for conv, img in items]
        # Only conversations with an assistant turn have anything to train.
        todo = [i for i, t in enumerate(turns) if any(role == "assistant" for role, _ in t)]
        out: list[tuple[np.ndarray, np.ndarray, bool] | None] = [None] * len(items)
        if not todo:
            return out
        rendered = [self.render(turns[i]) for i in todo]
        enc = self.tok([r.text for r in rendered], add_special_tokens=self.template == "vicuna_v1",
                       return_offsets_mapping=True)
        for i, r, ids, offs in zip(todo, rendered, enc["input_ids"], enc["offset_mapping"]):
            ids = np.asarray(ids, dtype=np.int64)
            train = trained_tokens(r.text, np.asarray(offs, dtype=np.int64).reshape(-1, 2), r.spans)
            out[i] = self._finish(ids, train, items[i][1])
        return out

    def _finish(self, ids: np.ndarray, train: np.ndarray, has_image: bool) -> tuple[np.ndarray, np.ndarray, bool] | None:
        is_img = ids == self.image_token_id
        labels = np.where(train & ~is_img, ids, IGNORE_INDEX)
        reps = np.where(is_img, self.image_tokens, 1)
        ids, labels = np.repeat(ids, reps), np.repeat(labels, reps)
        keep_image = bool(has_image and is_img.any())
        if len(ids) > self.max_length:
            cut = self.max_length
            if ids[cut - 1] == self.image_token_id and ids[cut] == self.image_token_id:
                # The cut would split an image's tokens: end before the image and drop it.
                first = int(np.argmax(ids == self.image_token_id))
                cut, keep_image = first, False
            ids, labels = ids[:cut], labels[:cut]
            if keep_image and not (ids == self.image_token_id).any():
                keep_image = False
        if not (labels != IGNORE_INDEX).any():
            return None
        return ids, labels, keep_image


def image_field(sample: dict[str, Any]) -> str | None:
    for f in IMAGE_FIELDS:
        if f in sample:
            return f
    return None


def shows_image(conversations: Any, image_token: str = "<image>") -> bool:
    """Whether a conversation's text holds an image token (LLaVA's `<image>`, or the model's own)."""
    if not isinstance(conversations, list):
        return False
    texts = [str(t.get("value", "")) for t in conversations if isinstance(t, dict)]
    return any(token in text for text in texts for token in {"<image>", image_token})


def no_image_note(sample: dict[str, Any]) -> str:
    """A sample that lacks an image, named for a warning with the members it has instead."""
    members = sorted(k for k in sample if not k.startswith("__"))
    return f"{sample.get('__key__')} (members: {', '.join(members) or 'none'})"


def pad_batch(seqs: Sequence[np.ndarray], value: int) -> np.ndarray:
    """Right-pad 1-D int arrays to one length."""
    n = max(len(s) for s in seqs)
    out = np.full((len(seqs), n), value, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out
