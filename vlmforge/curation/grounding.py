"""Grounding: boxes (and for annotations, instances) for the entities a caption names.

- `annotations` (offline default): match the entity label to the image's COCO instances by category
  name, synonyms and plural forms, then by sentence-embedding similarity (MiniLM) against the
  categories present. Among several instances of the category: a plural phrase takes them all; a
  singular one takes the instance whose mean colour is nearest a colour word of the phrase, else the
  largest. Distinct entities of one caption take distinct instances, and a word names the same instance
  in every caption of an image (AnnotationGrounder.ground_caption).
- `grounding-dino`: transformers' Grounding DINO (any checkpoint, e.g. IDEA-Research/grounding-dino-tiny),
  batched over images, box/text thresholds, non-maximum suppression; detections_for_caption gives a
  caption's entities distinct detections as ground_caption gives them distinct instances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vlmforge.curation.segmentation import MaskCrop, SegmentationError

# COCO category -> other words captions use for it.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "boy", "girl", "child", "kid", "people", "guy", "lady", "player", "skier",
               "surfer", "skateboarder", "snowboarder", "rider", "gentleman", "adult", "baby", "toddler",
               "pedestrian", "batter", "catcher", "chef", "worker", "men", "women", "someone", "driver",
               "passenger", "pilot", "officer", "policeman", "cop", "tourist", "vendor", "cook", "waiter",
               "waitress", "customer", "spectator", "student", "soldier", "athlete", "farmer", "cyclist",
               "jockey", "teenager", "umpire", "pitcher", "mother", "father", "mom", "dad", "son", "daughter",
               "husband", "wife", "bride", "groom", "friend", "businessman", "skater", "biker", "motorcyclist",
               "hiker", "swimmer", "teen", "infant", "youngster", "fireman", "firefighter", "cowboy",
               "nurse", "doctor", "clown", "shopper", "traveler", "boarder", "kiteboarder", "windsurfer",
               "wakeboarder", "parasailer", "owner"),
    "bicycle": ("bike", "cycle"), "car": ("automobile", "taxi", "cab", "sedan", "suv", "vehicle"),
    "motorcycle": ("motorbike", "motor bike", "dirt bike", "scooter", "moped"),
    "airplane": ("plane", "jet", "aircraft", "airliner"), "bus": ("coach", "double-decker"),
    "train": ("locomotive", "tram", "subway", "cable car"), "truck": ("lorry", "pickup", "fire engine"),
    "boat": ("ship", "sailboat", "canoe", "kayak", "yacht", "ferry"),
    "traffic light": ("stoplight", "stop light", "traffic signal", "signal light"), "fire hydrant": ("hydrant",),
    "stop sign": ("sign",), "parking meter": ("meter",), "bench": ("park bench",),
    "bird": ("pigeon", "seagull", "gull", "duck", "parrot", "sparrow", "goose", "swan", "eagle", "owl", "hawk",
             "crow", "pelican", "flamingo", "penguin", "heron", "peacock", "rooster", "hen", "hummingbird"), "cat": ("kitten", "kitty"),
    "dog": ("puppy", "pup", "doggy"), "horse": ("pony", "foal"), "sheep": ("lamb", "ram"),
    "cow": ("cattle", "bull", "calf", "ox"), "elephant": (), "bear": ("grizzly", "cub"), "zebra": (), "giraffe": (),
    "backpack": ("rucksack", "knapsack"), "umbrella": ("parasol",), "handbag": ("purse", "bag", "handbag"),
    "tie": ("necktie",), "suitcase": ("luggage", "bag", "suit case"), "frisbee": ("disc",), "skis": ("ski", "skiis"),
    "sports ball": ("ball", "soccer ball", "football", "baseball", "tennis ball", "basketball"),
    "kite": (), "baseball bat": ("bat",), "baseball glove": ("glove", "mitt"), "skateboard": ("board",),
    "surfboard": ("surf board", "board", "kiteboard", "paddleboard", "bodyboard", "boogie board"), "snowboard": ("snow board", "board"),  # "board": skateboard first
    "tennis racket": ("racket", "racquet"), "bottle": (),
    # "glass": a wine glass, else a cup ("a glass of milk")
    "wine glass": ("glass",), "cup": ("mug", "coffee cup", "glass"), "fork": (), "knife": (), "spoon": (),
    "bowl": (), "banana": (), "apple": (), "sandwich": ("burger", "sub", "hamburger"), "orange": (),
    "broccoli": (), "carrot": (), "hot dog": ("hotdog",), "pizza": (), "donut": ("doughnut",),
    "cake": ("cupcake",), "chair": ("stool", "seat"), "couch": ("sofa",),
    "potted plant": ("plant", "houseplant", "flower pot"), "bed": (), "dining table": ("table", "dinner table"),
    "toilet": (),
    "tv": ("television", "screen", "monitor", "tv set", "television set", "computer monitor", "computer screen"),
    "laptop": ("computer", "notebook"), "mouse": ("computer mouse",), "remote": ("remote control", "controller"),
    "keyboard": ("computer keyboard",),
    "cell phone": ("phone", "cellphone", "smartphone", "mobile phone", "iphone"),
    "microwave": ("microwave oven",), "oven": ("stove", "toaster oven"),
    "toaster": ("toaster oven",), "sink": (), "refrigerator": ("fridge",), "book": ("novel",), "clock": (), "vase": (),
    "scissors": (), "teddy bear": ("teddy", "stuffed animal"), "hair drier": ("hair dryer", "blow dryer"),
    "toothbrush": ("tooth brush",),
}
COLOR_WORDS = {
    "red": (200, 40, 40), "blue": (40, 70, 200), "green": (50, 160, 60), "yellow": (230, 200, 40),
    "white": (235, 235, 230), "black": (30, 30, 35), "brown": (120, 75, 40), "orange": (235, 130, 30),
    "gray": (128, 128, 128), "grey": (128, 128, 128), "pink": (240, 150, 180), "purple": (120, 50, 150),
}


# Labels that name a place, a substance or a thing with no COCO category: never grounded (by name they
# would not be; the sentence-embedding fallback scores them near an object: "bathroom" -> toilet 0.79,
# "bus stop" -> bus 0.78, "cutting board" -> skateboard through "board", "glasses" -> wine glass).
NOT_OBJECTS = frozenset(
    """bathroom bedroom kitchen room office restaurant airport station park zoo farm pasture field beach street
    road city yard court shop store market hallway garage classroom hotel sidewalk glasses sunglasses
    eyeglasses wine beer coffee tea water juice milk food meal snow sand grass bread toast dinner lunch breakfast hair
    toothpaste brush pot sail surf cone tennis soccer golf volleyball hockey game match kiteboarding kitesurfing
    windsurfing lap color colour rack sea ocean lake river snowsuit wetsuit wheelchair skate skates horseback beak
    pancake""".split()
) | {"parking lot", "bus stop", "train station", "living room", "dining room", "cutting board", "bulletin board",
     "ironing board", "diving board", "street sign", "road sign", "street light", "street lamp", "lamp post",
     "desktop computer"}
# Sports and things like them score near an object by embedding ("tennis" -> tennis racket 0.83, "soccer"
# -> sports ball, "pot" -> potted plant, "hair" -> hair drier, "traffic cone" -> traffic light; "lap" ->
# laptop 0.66, "colors" -> orange, "dish rack" -> tennis racket, "sea" -> boat, "skates" -> skateboard,
# "toast" -> toaster, "pancake" -> cake, "beak" -> bird):
# the object would be hidden with a wrong answer.


def is_not_object(label: str) -> bool:
    """A place, a substance or a thing COCO has no category for; a compound too whose last word is one
    ("tennis court", "living room", "skate park"), unless it names an object ("flower pot"); a toy or
    another kind of sign (_another_kind)."""
    if label in NOT_OBJECTS or _another_kind(label):
        return True
    last = label.split()[-1]
    return label not in _WORDS and (last in NOT_OBJECTS or last in ("room", "station", "lot"))


def _another_kind(label: str) -> bool:
    """A toy ("a toy mouse": 0.86 with mouse by similarity) or a kind of a name that names its category
    alone (ALONE_ONLY: "an exit sign" is no stop sign, 0.71)."""
    words = label.split()
    return len(words) > 1 and label not in _WORDS and (words[0] == "toy" or words[-1] in ALONE_ONLY)


def names_part_of_other(label: str) -> bool:
    """A compound whose modifier names one category and whose head names another or none ("toilet
    seat", "pizza box", "dog bed") is a thing of or for that object, not the object: it is not matched
    by its last word or by similarity. A person word as head stays a person ("bus driver"); as a
    modifier it says whose or what age ("passenger train", "baby elephant"): the head's object still,
    and with a head that names none a thing of a person ("batter swing": not a baseball bat by similarity)."""
    words = label.split()
    if len(words) < 2 or label in _WORDS:
        return False
    head = _WORDS.get(words[-1])
    named = {_WORDS.get(w) for w in words[:-1]} - {None}
    if head is None:
        return bool(named)
    modifiers = named - {"person"}
    return bool(modifiers) and head != "person" and bool(modifiers - {head})


def _plural_forms(word: str) -> set[str]:
    forms = {word}
    if word.endswith("s"):
        forms.add(word[:-1])
    else:
        forms.update({word + "s", word + "es"})
    return forms


def word_to_category() -> dict[str, str]:
    """Every name, synonym and plural form -> COCO category name (first claim wins)."""
    table: dict[str, str] = {}
    for cat in SYNONYMS:
        for form in _plural_forms(cat):
            table.setdefault(form, cat)
    for cat, words in SYNONYMS.items():
        for w in words:
            for form in _plural_forms(w):
                table.setdefault(form, cat)
    return table


_WORDS = word_to_category()


# Words that name a category alone, not as the last word of another name: "a one way sign" is no stop sign.
ALONE_ONLY = frozenset({"sign", "signs", "meter", "meters"})
# Words before an animal that make it a toy: "a stuffed dog" is what COCO calls a teddy bear.
TOY_WORDS = frozenset({"stuffed", "plush"})


def category_for_label(label: str, present: set[str] | None = None) -> str | None:
    """The COCO category a label names by name, synonym or plural, preferring categories in `present`.
    Multi-word labels fall back to their last word ("dinner table" -> "table" -> dining table), unless
    the label names a thing of another object ("toilet seat": not a chair) or the word names its
    category alone (ALONE_ONLY); a stuffed animal is a teddy bear, any other toy nothing ("a toy mouse":
    no computer mouse)."""
    words = label.split()
    if _another_kind(label):
        return None
    if len(words) > 1 and words[0] in TOY_WORDS and COCO_SUPERCATEGORIES.get(_WORDS.get(words[-1], "")) == "animal":
        label, words = "teddy bear", ["teddy bear"]
    elif names_part_of_other(label):
        words = [label]
    for cand in dict.fromkeys((label, words[-1])):
        cat = _WORDS.get(cand)
        if cat is None:
            continue
        if present is None or cat in present:
            return cat
        # an ambiguous word ("board", "bag") may name another present category
        for other, words in SYNONYMS.items():
            if other in present and (cand in words or cand in _plural_forms(other)):
                return other
    return None


@dataclass
class Grounding:
    box: list[float]  # x, y, w, h in pixels
    category: str | None
    score: float
    method: str
    instance_ids: list[int] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)  # one per instance/detection (plural phrases)


class NoFreeInstance(Exception):
    """Every instance of the category an entity names is held by another entity of its caption."""


class AnnotationGrounder:
    name = "annotations"
    resources = {"cpu": 1}

    def __init__(self, categories: dict[int, dict], embed_threshold: float = 0.65, embedder: str | None = None):
        self.categories = categories  # COCO category id -> {"name", "supercategory"}
        self.embed_threshold = embed_threshold
        self.embedder_name = embedder
        # text -> unit embedding, filled on first use; may be seeded with vectors made elsewhere
        # (the occlusion builder makes them once on the driver, so workers never load the model)
        self.vectors: dict[str, np.ndarray] = {}

    def setup(self) -> None:
        pass

    def _vectors(self, texts: list[str]) -> np.ndarray:
        """Unit embeddings, each text encoded once per process (labels and category names repeat)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            from vlmforge.curation.embedding import shared_embedder

            for t, v in zip(missing, shared_embedder(self.embedder_name).encode(missing)):
                self.vectors[t] = v
        return np.stack([self.vectors[t] for t in texts])

    def prefetch(self, labels: list[str], cache: "str | bool | None" = False, helper=None) -> None:
        """Embed, in one batch, every label the synonym table does not know, and all category names.
        `cache` (see embedding.cached_encode; off by default) keeps that batch's vectors on disk;
        `helper` (an embedding.EmbedderHelper) encodes them in its process."""
        unknown = [lab for lab in labels if category_for_label(lab) is None]
        if not unknown:
            return
        request = list(dict.fromkeys(t for t in unknown + [c["name"] for c in self.categories.values()]
                                     if t not in self.vectors))
        if request:
            from vlmforge.curation.embedding import cached_encode

            for t, v in zip(request, cached_encode(self.embedder_name, request, cache, helper)):
                self.vectors[t] = v

    def _embedding_match(self, label: str, present: list[str]) -> tuple[str | None, float]:
        vecs = self._vectors([label] + present)
        sims = vecs[1:] @ vecs[0]
        best = int(np.argmax(sims))
        return (present[best], float(sims[best])) if sims[best] >= self.embed_threshold else (None, float(sims[best]))

    def ground(self, phrase: str, label: str, plural: bool, instances: list[dict], image: np.ndarray | None = None,
               masks: dict[int, MaskCrop | np.ndarray] | None = None) -> Grounding | None:
        """One entity's grounding (see ground_caption); a broken segmentation raises SegmentationError."""
        got = self.ground_caption([(phrase, label, plural)], instances, image, masks)[0]
        if isinstance(got, Exception):
            raise got
        return got

    def ground_caption(self, entities: list[tuple[str, str, bool]], instances: list[dict],
                       image: np.ndarray | Callable[[], np.ndarray] | None = None,
                       masks: dict[int, MaskCrop | np.ndarray] | None = None, named: dict | None = None,
                       ) -> list[Grounding | None | NoFreeInstance | SegmentationError]:
        """Groundings of one caption's entities, (phrase, label, plural) each, in order; None where not
        grounded, an error in place of one that cannot be (the caller rejects that entity).

        Distinct entities of one caption are distinct objects ("a man and a woman"): singular ones take
        distinct instances, each the best one no other has taken, and plural ones take the instances no
        singular one holds. `named`, kept by the caller over an image's captions in order, maps a word
        (label and colour words) to the instance it first named, which it names again in a later
        caption ("a man" is the same man in every caption) before the caption's other words choose."""
        by_cat: dict[str, list[dict]] = {}
        for ann in instances:
            by_cat.setdefault(self.categories[ann["category_id"]]["name"], []).append(ann)
        named = {} if named is None else named
        matches = [self._category(label, by_cat) for _, label, _ in entities]
        out: list[Grounding | None | NoFreeInstance | SegmentationError] = [None] * len(entities)
        held: set[int] = set()
        words = [_word_key(phrase, label) for phrase, label, _ in entities]
        for k in _claim_order(entities, [m is not None for m in matches], words, named):
            phrase, label, is_plural = entities[k]
            cat, score, method = matches[k]
            anns = [a for a in by_cat[cat] if not a.get("iscrowd")] or by_cat[cat]
            free = [a for a in anns if int(a["id"]) not in held]
            if not free:
                out[k] = NoFreeInstance(f"{label}: the caption's other entities hold every {cat} instance ({len(anns)})")
                continue
            if is_plural or len(free) == 1:
                chosen = free
            else:
                again = [a for a in free if int(a["id"]) == named.get(words[k])]
                try:
                    chosen = again or [self._pick_one(phrase, free, image, masks)]
                except SegmentationError as e:
                    out[k] = e
                    continue
            if not is_plural:
                held.add(int(chosen[0]["id"]))
                named.setdefault(words[k], int(chosen[0]["id"]))
            boxes = [list(map(float, a["bbox"])) for a in chosen]
            out[k] = Grounding(union_box(boxes), cat, score, method, [int(a["id"]) for a in chosen], boxes)
        return out

    def _category(self, label: str, by_cat: dict[str, list[dict]]) -> tuple[str, float, str] | None:
        """(category present in the image, score, method) for a label, or None."""
        if not by_cat or is_not_object(label):
            return None
        cat = category_for_label(label, set(by_cat))
        if cat is None and category_for_label(label) is not None:
            return None  # a known category that is not in this image ("cat" must not become "dog")
        if cat is not None and cat in by_cat:
            return cat, 1.0, "name"
        if names_part_of_other(label):
            return None
        cat, score = self._embedding_match(label, sorted(by_cat))
        return None if cat is None else (cat, score, "embedding")

    @staticmethod
    def _pick_one(phrase: str, anns: list[dict], image: np.ndarray | Callable[[], np.ndarray] | None,
                  masks: dict[int, MaskCrop | np.ndarray] | None) -> dict:
        colours = [COLOR_WORDS[w] for w in _words(phrase) if w in COLOR_WORDS]
        if colours and image is not None and masks is not None:
            if callable(image):
                image = image()
            target = np.array(colours[0], np.float32)

            def distance(a: dict) -> float:
                m = masks[int(a["id"])]
                pixels = m.of(image)[m.pixels] if isinstance(m, MaskCrop) else image[m.astype(bool)]
                if not len(pixels):
                    return float("inf")
                return float(np.linalg.norm(pixels.reshape(-1, 3).mean(0) - target))

            return min(anns, key=lambda a: (distance(a), -_area(a), a["id"]))
        return max(anns, key=lambda a: (_area(a), -a["id"]))


def _words(phrase: str) -> list[str]:
    return [w.strip(",.").lower() for w in phrase.split()]


def _word_key(phrase: str, label: str) -> tuple:
    """What names one object in every caption of an image: the label and the phrase's colour words."""
    return label, tuple(w for w in _words(phrase) if w in COLOR_WORDS)


def _claim_order(entities: list[tuple[str, str, bool]], found: list[bool], words: list[tuple],
                 named: dict) -> list[int]:
    """The order a caption's grounded entities choose in: singular ones whose word an earlier caption
    bound first, then the other singular ones, then plural ones (which take what is left), each in
    caption order."""
    singular = [k for k, ok in enumerate(found) if ok and not entities[k][2]]
    plural = [k for k, ok in enumerate(found) if ok and entities[k][2]]
    return sorted(singular, key=lambda k: (words[k] not in named, k)) + plural


def detections_for_caption(entities: list[tuple[str, str, bool]], found: dict[str, Grounding], named: dict,
                           iou: float = 0.5) -> list[Grounding | None | NoFreeInstance]:
    """A detector's groundings (label -> Grounding, its boxes best first) for one caption's entities, as
    AnnotationGrounder.ground_caption takes instances: a detection overlapping (IoU >= `iou`) a box another
    singular entity of the caption holds for the same category (or label, without one) is that object, so
    a singular entity takes its best detection that overlaps none, a plural one all such detections; a
    word takes the box it took in an earlier caption of the image again (`named`)."""
    from dataclasses import replace

    out: list[Grounding | None | NoFreeInstance] = [None] * len(entities)
    held: list[tuple[str, list[float]]] = []
    words = [_word_key(phrase, label) for phrase, label, _ in entities]
    for k in _claim_order(entities, [label in found for _, label, _ in entities], words, named):
        phrase, label, plural = entities[k]
        g = found[label]
        kind = g.category or label
        boxes = g.boxes or [g.box]
        free = [b for b in boxes if not any(other == kind and box_iou(b, h) >= iou for other, h in held)]
        if not free:
            out[k] = NoFreeInstance(f"{label}: the caption's other entities hold every {kind} detection "
                                    f"({len(boxes)})")
            continue
        chosen = free if plural else [named[words[k]] if named.get(words[k]) in free else free[0]]
        if not plural:
            held.append((kind, chosen[0]))
            named.setdefault(words[k], chosen[0])
        out[k] = replace(g, box=union_box(chosen), boxes=chosen)
    return out


def box_iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def union_box(boxes: list[list[float]]) -> list[float]:
    """The [x, y, w, h] box around all of `boxes`."""
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


def _area(ann: dict) -> float:
    """The instance's area, or its box's where a COCO-format file leaves `area` out."""
    area = ann.get("area")
    return float(area) if isinstance(area, (int, float)) else float(ann["bbox"][2]) * float(ann["bbox"][3])


class GroundingDinoGrounder:
    """Open-vocabulary detection with transformers' Grounding DINO, batched over images."""

    name = "grounding-dino"
    resources = {"cpu": 1, "gpu": 1}
    model_types = ("grounding-dino", "mm-grounding-dino")  # with post_process_grounded_object_detection

    def __init__(self, model: str = "IDEA-Research/grounding-dino-tiny", box_threshold: float = 0.35,
                 text_threshold: float = 0.25, nms_iou: float = 0.5, device: str | None = None):
        self.model_name = model
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.nms_iou = nms_iou
        self.device = device
        self._model = None

    def setup(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        from vlmforge.curation.models import load_checkpoint, torch_device

        self._proc, model = load_checkpoint("Grounding DINO", self.model_name, lambda: (
            AutoProcessor.from_pretrained(self.model_name),
            AutoModelForZeroShotObjectDetection.from_pretrained(self.model_name)))
        self._device = torch_device(self.device)
        self._max_text = getattr(model.config, "max_text_len", 256)  # text positions: tokens per prompt
        self._model = model.eval().to(self._device)

    def __call__(self, images: list, labels: list[list[str]]) -> list[dict[str, Grounding]]:
        """For each PIL image and its entity labels: label -> Grounding (labels not found are absent).
        A box goes to the one label whose tokens score highest for it, above both thresholds: the
        phrase transformers' post-processing gives joins every token over --text-threshold ("woman
        person" for one box when the prompt is "man . person . woman ."), which no label can be read
        from ("man" is in "woman")."""
        import torch

        self.setup()
        out: list[dict[str, Grounding]] = [{} for _ in images]
        todo = [i for i, ls in enumerate(labels) if ls]
        if not todo:
            return out
        names = [list(dict.fromkeys(labels[i])) for i in todo]
        # A prompt longer than the model's text positions would stop the build: the labels past them
        # are cut off, and not found.
        batch = self._proc(images=[images[i] for i in todo], text=[" . ".join(n) + " ." for n in names],
                           return_tensors="pt", padding=True, truncation=True,
                           max_length=self._max_text)
        with torch.no_grad():
            outputs = self._model(**{k: v.to(self._device) for k, v in batch.items()})
        probs = outputs.logits.float().sigmoid().cpu()  # (images, queries, text positions)
        centres = outputs.pred_boxes.float().cpu()  # (images, queries, 4): cx, cy, w, h in [0, 1]
        tok = self._proc.tokenizer
        # An unknown word ([UNK]) is still its label's token: a break there would shift every label after it.
        breaks = (set(tok.all_special_ids) - {tok.unk_token_id}) | {tok.convert_tokens_to_ids(".")}
        for row, i in enumerate(todo):
            spans = label_spans(batch["input_ids"][row].tolist(), breaks)
            if len(spans) < len(names[row]):  # the prompt was cut off: its last label may be a part of one
                spans = spans[:-1]
            if not spans:
                continue
            # Per query, each label's score: its tokens' best probability.
            per_label = torch.stack([probs[row][:, span].max(-1).values for span in spans], -1)
            score, best = per_label.max(-1)
            width, height = images[i].size
            found: dict[str, list[tuple[list[float], float]]] = {}
            for q in ((score > self.box_threshold) & (score > self.text_threshold)).nonzero().flatten().tolist():
                cx, cy, w, h = centres[row, q].tolist()
                box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
                found.setdefault(names[row][int(best[q])], []).append((box, float(score[q])))
            for label, dets in found.items():
                keep = nms([d[0] for d in dets], [d[1] for d in dets], self.nms_iou)
                dets = [dets[k] for k in keep]
                best_box, best_score = dets[0]
                out[i][label] = Grounding(best_box, category_for_label(label), best_score, "grounding-dino",
                                          boxes=[d[0] for d in dets])
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None
        state.pop("_proc", None)
        return state


def label_spans(input_ids: list[int], breaks: set[int]) -> list[list[int]]:
    """Token positions of each label of a "label . label ." prompt, in order: the runs between
    separators (".", [CLS], [SEP], padding)."""
    spans: list[list[int]] = [[]]
    for pos, tid in enumerate(input_ids):
        if tid in breaks:
            if spans[-1]:
                spans.append([])
        else:
            spans[-1].append(pos)
    return [s for s in spans if s]


def nms(boxes: list[list[float]], scores: list[float], iou: float) -> list[int]:
    """Indices kept by non-maximum suppression, best first (OpenCV's implementation)."""
    import cv2

    if not boxes:
        return []
    keep = cv2.dnn.NMSBoxes([[float(v) for v in b] for b in boxes], [float(s) for s in scores], 0.0, iou)
    keep = [int(k) for k in np.array(keep).reshape(-1)]
    return sorted(keep, key=lambda k: (-scores[k], k))


# COCO category -> supercategory, for detections that come without a dataset's category table.
COCO_SUPERCATEGORIES: dict[str, str] = {
    name: sup
    for sup, names in {
        "person": ["person"],
        "vehicle": ["bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"],
        "outdoor": ["traffic light", "fire hydrant", "stop sign", "parking meter", "bench"],
        "animal": ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"],
        "accessory": ["backpack", "umbrella", "handbag", "tie", "suitcase"],
        "sports": ["frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
                   "skateboard", "surfboard", "tennis racket"],
        "kitchen": ["bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl"],
        "food": ["banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake"],
        "furniture": ["chair", "couch", "potted plant", "bed", "dining table", "toilet"],
        "electronic": ["tv", "laptop", "mouse", "remote", "keyboard", "cell phone"],
        "appliance": ["microwave", "oven", "toaster", "sink", "refrigerator"],
        "indoor": ["book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"],
    }.items()
    for name in names
}
