"""Conversation formatting, label masking (hand-worked), image tokens, truncation, images."""

from __future__ import annotations

import numpy as np
import pytest

from vlmforge.training.formatting import (
    IGNORE_INDEX, VICUNA_SYSTEM, ConversationTokenizer, normalise_turns, render_vicuna,
)

CONV = [
    {"from": "human", "value": "<image>\nWhat is in the image?"},
    {"from": "gpt", "value": "A man riding a horse."},
    {"from": "human", "value": "What color is the car?"},
    {"from": "gpt", "value": "Red."},
]


@pytest.fixture(scope="module")
def processor(tiny_llava):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_llava)


def _text(processor, template: str, max_length: int = 512, image_tokens: int = 3) -> ConversationTokenizer:
    return ConversationTokenizer(processor.tokenizer, template, max_length, "<image>", image_tokens,
                                 chat_apply=processor.apply_chat_template)


def test_chat_template_masks_exactly_the_assistant_tokens(processor):
    (ids, labels, keep_image), = _text(processor, "chat")([(CONV, True)])
    tokens = processor.tokenizer.convert_ids_to_tokens(ids.tolist())
    # Worked out by hand from the rendered text
    # 'USER: <image>\nWhat is in the image? ASSISTANT: A man riding a horse.</s> USER: What color is the car?
    #  ASSISTANT: Red.</s> ' and the tiny BPE's merges; 1 = trained. The image token is expanded to 3.
    expected = [
        ("USER", 0), (":", 0), ("Ġ", 0), ("<image>", 0), ("<image>", 0), ("<image>", 0), ("Ċ", 0), ("What", 0),
        ("Ġis", 0), ("Ġin", 0), ("Ġthe", 0), ("Ġimage", 0), ("?", 0), ("ĠASS", 0), ("ISTAN", 0), ("T", 0), (":", 0),
        ("ĠA", 1), ("Ġman", 1), ("Ġriding", 1), ("Ġa", 1), ("Ġhorse", 1), (".", 1), ("</s>", 1),
        ("Ġ", 0), ("USER", 0), (":", 0), ("ĠWhat", 0), ("Ġc", 0), ("o", 0), ("lo", 0), ("r", 0), ("Ġis", 0),
        ("Ġthe", 0), ("Ġcar", 0), ("?", 0), ("ĠASS", 0), ("ISTAN", 0), ("T", 0), (":", 0), ("Ġ", 0),
        ("R", 1), ("e", 1), ("d", 1), (".", 1), ("</s>", 1), ("Ġ", 0),
    ]
    assert list(zip(tokens, (labels != IGNORE_INDEX).astype(int).tolist())) == expected
    trained = labels != IGNORE_INDEX
    assert (labels[trained] == ids[trained]).all() and keep_image


def test_vicuna_v1_text_and_mask(processor):
    rendered = render_vicuna(normalise_turns(CONV, True), "</s>")
    assert rendered.text == (VICUNA_SYSTEM + " USER: <image>\nWhat is in the image? ASSISTANT: A man riding a horse.</s>"
                             "USER: What color is the car? ASSISTANT: Red.</s>")
    assert [rendered.text[a:b] for a, b in rendered.spans] == ["A man riding a horse.</s>", "Red.</s>"]
    (ids, labels, _), = _text(processor, "vicuna_v1")([(CONV, True)])
    tok = processor.tokenizer
    runs, current = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            current.append(int(i))
        elif current:
            runs.append(tok.decode(current))
            current = []
    runs.append(tok.decode(current))
    assert runs == [" A man riding a horse.</s>", "Red.</s>"]


def test_turn_normalisation():
    conv = [{"from": "gpt", "value": "stray"}, {"from": "human", "value": "Hi <image> there <image>"},
            {"from": "gpt", "value": "Hello."}]
    assert normalise_turns(conv, True) == [("user", "Hi <image> there "), ("assistant", "Hello.")]
    assert normalise_turns(conv, False) == [("user", "Hi  there"), ("assistant", "Hello.")]
    assert normalise_turns([{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}], True)[0] == \
        ("user", "<image>\nQ?")
    with pytest.raises(ValueError):
        normalise_turns([{"from": "robot", "value": "x"}], False)


def test_truncation_never_splits_image_tokens(processor):
    full = _text(processor, "chat")([(CONV, True)])[0]
    # A cut after the first answer keeps the image and the first answer's labels.
    (ids, labels, keep), = _text(processor, "chat", max_length=24)([(CONV, True)])
    assert len(ids) == 24 and keep and (labels == full[1][:24]).all()
    # A cut inside the image's tokens leaves nothing to train: the sample is dropped.
    assert _text(processor, "chat", max_length=5)([(CONV, True)]) == [None]
    # Image in a later turn: the cut ends before the image, which is dropped; the first answer stays.
    later = [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "A horse."},
             {"from": "human", "value": "<image>\nAnd now?"}, {"from": "gpt", "value": "A car."}]
    whole = _text(processor, "chat")([(later, True)])[0][0]
    first_image = int(np.argmax(whole == processor.tokenizer.convert_tokens_to_ids("<image>")))
    (ids, labels, keep), = _text(processor, "chat", max_length=first_image + 2)([(later, True)])
    assert len(ids) == first_image and not keep and (labels != IGNORE_INDEX).sum() > 0
    # No assistant turn at all: nothing to train.
    assert _text(processor, "chat")([([{"from": "human", "value": "Hi"}], False)]) == [None]


def test_collator_mixes_text_only_and_image_samples(processor, coco_build):
    from vlmforge.training.collate import LlavaCollator

    samples = [s for _, s in zip(range(2), coco_build.samples())]
    text_only = {"__key__": "t1", "json": {"conversations": [{"from": "human", "value": "Say hi."},
                                                            {"from": "gpt", "value": "Hi."}]}}
    batch = LlavaCollator(processor, "chat", 256)([samples[0], text_only, samples[1]])
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert batch["keys"] == [samples[0]["__key__"], "t1", samples[1]["__key__"]] and batch["dropped"] == 0
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [16, 0, 16]  # 4x4 patches, CLS dropped
    assert (batch["labels"][batch["input_ids"] == image_id] == IGNORE_INDEX).all()
    assert (batch["attention_mask"].sum(1) < batch["input_ids"].shape[1]).any()  # right padding present
    assert batch["labels"][batch["attention_mask"] == 0].eq(IGNORE_INDEX).all()


def test_collator_leaves_out_a_sample_whose_image_does_not_decode(processor, coco_build):
    """A corrupt image was PIL's traceback in the middle of training; it is left out, counted and named."""
    from vlmforge.training.collate import LlavaCollator

    good = [s for _, s in zip(range(2), coco_build.samples())]
    bad = {**good[1], "__key__": "bad", "jpg": good[1]["jpg"][:200]}  # cut short
    batch = LlavaCollator(processor, "chat", 256)([good[0], bad, good[1]])
    assert batch["keys"] == [good[0]["__key__"], good[1]["__key__"]] and batch["dropped"] == 1
    assert batch["unreadable"] == ["bad"] and batch["pixel_values"].shape[0] == batch["input_ids"].shape[0] == 2


def test_collator_leaves_out_a_sample_that_shows_an_image_it_does_not_hold(processor, coco_build):
    """An image stored under a member name that is not an image field ('image.jpg') lost its <image> and
    was trained as text: answers about a picture the model never saw."""
    from vlmforge.training.collate import LlavaCollator

    good = [s for _, s in zip(range(2), coco_build.samples())]
    renamed = {"__key__": "r1", "image.jpg": good[1]["jpg"], "json": good[1]["json"]}
    batch = LlavaCollator(processor, "chat", 256)([good[0], renamed, good[1]])
    assert batch["keys"] == [good[0]["__key__"], good[1]["__key__"]] and batch["dropped"] == 1
    assert batch["no_image"] == ["r1 (members: image.jpg, json)"] and batch["unreadable"] == []
    assert batch["pixel_values"].shape[0] == batch["input_ids"].shape[0] == 2


def test_collator_leaves_out_a_sample_with_a_turn_from_another_role(processor, coco_build):
    """A LLaVA JSON copied as it was may hold a turn from 'robot' (or one that is not an object): it stopped
    training with a ValueError traceback; it is left out, counted and named."""
    from vlmforge.training.collate import LlavaCollator

    good = [s for _, s in zip(range(2), coco_build.samples())]
    turns = good[1]["json"]["conversations"]
    odd = {**good[1], "__key__": "robot", "json": {**good[1]["json"], "conversations": [
        turns[0], {"from": "robot", "value": "beep"}]}}
    not_a_turn = {**good[1], "__key__": "text", "json": {**good[1]["json"], "conversations": [turns[0], "hi"]}}
    batch = LlavaCollator(processor, "chat", 256)([good[0], odd, not_a_turn, good[1]])
    assert batch["keys"] == [good[0]["__key__"], good[1]["__key__"]] and batch["dropped"] == 2
    assert batch["odd_turns"] == ["robot", "text"] and batch["unreadable"] == batch["no_image"] == []


@pytest.mark.parametrize("pad", [True, False])
def test_fast_image_path_matches_the_processor(coco_build, pad):
    from transformers import CLIPImageProcessorPil

    from vlmforge.training.images import ImagePreparer

    ip = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 48, "width": 48})
    prep = ImagePreparer(ip, pad_to_square=pad)
    assert prep.uses_fast_path
    images = [prep.load(s["jpg"]) for _, s in zip(range(3), coco_build.samples())]
    assert images[0].size == ((480, 480) if pad else (480, 360))
    ours, ref = prep(images).numpy(), ip(images=images, return_tensors="pt")["pixel_values"].numpy()
    assert ours.shape == ref.shape == (3, 3, 48, 48) and np.abs(ours - ref).max() < 1e-4
    if pad:  # LLaVA's padding colour is the processor's mean, so padded borders normalise to ~0
        assert np.abs(ours[:, :, 0, :]).max() < 0.02
