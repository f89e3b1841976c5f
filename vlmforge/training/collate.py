"""Batches for LLaVA-style models: shard samples to input ids, labels and pixel values."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmforge.training.formatting import (
    IGNORE_INDEX, ROLES, ConversationTokenizer, count_image_tokens, image_field, no_image_note, pad_batch, shows_image,
)
from vlmforge.training.images import ImagePreparer


class LlavaCollator:
    """Callable on a list of shard samples (json parsed, image bytes): returns
    {input_ids, attention_mask, labels, pixel_values (when any image), keys, dropped}.

    Samples with nothing to train (no assistant turn, or truncated away), an image that does not
    decode, or an `<image>` in the conversation but no image member are left out and counted in
    `dropped` (the latter two also listed in `unreadable` and `no_image`); text-only samples sit in
    the same batch as image samples."""

    def __init__(self, processor: Any, template: str = "chat", max_length: int = 2048, pad_to_square: bool = True):
        tok = processor.tokenizer
        self.image_token = getattr(processor, "image_token", None) or "<image>"
        image_token_id = tok.convert_tokens_to_ids(self.image_token)
        n_tokens = count_image_tokens(processor, self.image_token, image_token_id)
        chat_apply = processor.apply_chat_template if getattr(processor, "chat_template", None) else None
        self.text = ConversationTokenizer(tok, template, max_length, self.image_token, n_tokens, chat_apply)
        self.images = ImagePreparer(processor.image_processor, pad_to_square)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        items, fields, no_image, odd_turns = [], [], [], []
        for s in samples:
            f = image_field(s)
            conversation = s.get("json", {}).get("conversations", [])
            if not all(isinstance(t, dict) and str(t.get("from", "")).lower() in ROLES for t in conversation):
                # A turn from another role (a LLaVA JSON copied as it was): it cannot be rendered. Left out and
                # counted, as an image that does not decode is; it stopped the run with a traceback.
                odd_turns.append(s["__key__"])
                conversation = []
            elif f is None and shows_image(conversation, self.image_token):
                # Trained as text, it would learn to answer about an image it never sees.
                no_image.append(no_image_note(s))
                conversation = []
            fields.append(f)
            items.append((conversation, f is not None))
        encoded = self.text(items)
        ids, labels, images, keys, unreadable = [], [], [], [], []
        for s, f, enc in zip(samples, fields, encoded):
            if enc is None:
                continue
            if enc[2]:
                image = self.images.try_load(s[f], s.get("json", {}).get("image_transform"))
                if image is None:
                    unreadable.append(s["__key__"])
                    continue
                images.append(image)
            ids.append(enc[0])
            labels.append(enc[1])
            keys.append(s["__key__"])
        batch: dict[str, Any] = {"keys": keys, "dropped": len(samples) - len(keys), "unreadable": unreadable,
                                 "no_image": no_image, "odd_turns": odd_turns,
                                 "prepared_again": self.images.take_mismatched()}
        if not ids:
            return batch
        input_ids = pad_batch(ids, self.pad_id)
        mask = np.zeros_like(input_ids)
        for i, s in enumerate(ids):
            mask[i, : len(s)] = 1
        batch["input_ids"] = torch.from_numpy(input_ids)
        batch["attention_mask"] = torch.from_numpy(mask)
        batch["labels"] = torch.from_numpy(pad_batch(labels, IGNORE_INDEX))
        if images:
            batch["pixel_values"] = self.images(images)
        return batch


MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "pixel_values")


def model_inputs(batch: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """The tensors a model's forward takes, moved to `device`."""
    out = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out
