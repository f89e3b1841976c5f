"""`mcqa`: balanced gold letters, distractors never the answer nor a synonym of it, hard distractors,
unseen classes."""

from collections import Counter

import pyarrow as pa
import pytest

import vlmforge
from vlmforge.builders.mcqa import McqaConfig, fold, format_prompt
from vlmforge.errors import UserError

from tests.derived_data import class_folder
from tests.helpers import build_files

CLASSES = {"airplane": 3, "banana": 4, "car": 5, "cat": 6, "Dog": 3, "dog": 4, "kitten": 5, "puppy": 2, "truck": 5}


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    class_folder(root, CLASSES)
    return vlmforge.build("copy", "imagefolder", out=tmp_path_factory.mktemp("parent"), source_options={"root": str(root)})


def test_prompt_format():
    assert format_prompt("What is it?", ["cat", "dog"]) == (
        "<image>\nWhat is it?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly.")


def test_gold_balanced_and_distractors_never_the_answer(tmp_path, parent):
    b = vlmforge.build("mcqa", "build", out=tmp_path / "a", source_options={"path": str(parent.path)}, seed=5)
    n = sum(CLASSES.values())
    letters = Counter(r[0] for r in b.sql("SELECT answer FROM samples").fetchall())
    assert n == 37 and sorted(letters.values()) == [9, 9, 9, 10] and set(letters) == set("ABCD")
    for s in b.samples():
        doc = s["json"]
        opts, gold = doc["options"], doc["answer_index"]
        assert len(opts) == 4 and opts[gold] == doc["label"] and doc["answer"] == "ABCD"[gold]
        assert len({fold(o) for o in opts}) == 4  # "Dog" and "dog" never face each other
        assert doc["conversations"][0]["value"] == format_prompt(doc["question"], opts)
        assert doc["conversations"][1]["value"] == doc["answer"]
        assert s["jpg"]  # the parent's image comes along
    row = b.sql("SELECT options, answer_index, label FROM samples LIMIT 1").fetchall()[0]
    assert row[0][row[1]] == row[2]
    again = vlmforge.build("mcqa", "build", out=tmp_path / "b", source_options={"path": str(parent.path)}, seed=5, workers=2)
    fa, fb = build_files(b.path), build_files(again.path)
    assert fa == fb
    with pytest.raises(UserError, match=r"split 'train' has 6 distinct classes \(names of one class count once, "
                                        r"e.g. Dog and puppy\); 7 options need at least 7"):
        vlmforge.build("mcqa", "build", out=tmp_path / "c", options=7, source_options={"path": str(parent.path)})


def test_hard_distractors_are_the_nearest_classes(tmp_path, parent):
    b = vlmforge.build("mcqa", "build", out=tmp_path, options=3, distractors="hard",
                       source_options={"path": str(parent.path), "where": "label IN ('airplane', 'car', 'cat', 'dog', 'kitten', 'puppy', 'truck')"})
    # MiniLM's nearest names: cat -> kitten, dog, car; car -> truck, dog; dog -> puppy, cat, car. A kitten
    # is a cat and a puppy a dog: never a distractor of each other, the next nearest instead.
    want = {"cat": {"dog", "car"}, "car": {"truck", "dog"}, "dog": {"cat", "car"}}
    seen = set()
    for s in b.samples():
        doc = s["json"]
        if doc["label"] in want:
            assert set(doc["options"]) - {doc["label"]} == want[doc["label"]]
            seen.add(doc["label"])
    assert seen == set(want)


def test_mcqa_on_unseen_classes(tmp_path, parent):
    split = vlmforge.build("split", "build", out=tmp_path / "s", source_options={"path": str(parent.path)},
                           splits="train=0.5,test=0.5")
    sub = vlmforge.build("subset", "build", out=tmp_path / "u", source_options={"path": str(split.path)},
                         mode="seen-unseen", unseen_fraction=0.5, seed=2)
    unseen = set(sub.info["source"]["selection"]["unseen_classes"])
    b = vlmforge.build("mcqa", "build", out=tmp_path / "m", options=3,
                       source_options={"path": str(sub.path), "splits": ["test_unseen"]})
    assert len(b) == sub.info["splits"]["test_unseen"]["samples"] > 0 and list(b.info["splits"]) == ["test_unseen"]
    for s in b.samples():
        assert set(s["json"]["options"]) <= unseen and s["json"]["class_set"] == "unseen"


def test_unlabelled_or_empty_parent(tmp_path, parent):
    # Every copy build has a `subsource` column, null for class folders: an unlabelled parent.
    with pytest.raises(UserError, match="no values in column 'subsource'"):
        vlmforge.build("mcqa", "build", out=tmp_path / "u", source_options={"path": str(parent.path)},
                       label_column="subsource")
    # A --where that matches nothing is an empty build (as for split and subset), not a crash.
    b = vlmforge.build("mcqa", "build", out=tmp_path / "e", source_options={"path": str(parent.path), "where": "label = 'zebra'"})
    with pytest.raises(UserError, match="split 'train' has 1 distinct class; 4 options need at least 4"):
        vlmforge.build("mcqa", "build", out=tmp_path / "o", source_options={"path": str(parent.path), "where": "label = 'cat'"})
    assert len(b) == 0 and b.sql('SELECT count(*) FROM samples WHERE "offset" >= 0').fetchall() == [(0,)]
    with pytest.raises(UserError, match="the --classes-from vocabulary has 2 distinct classes"):
        vlmforge.build("mcqa", "build", out=tmp_path / "v", source_options={"path": str(parent.path)},
                       classes=["cat", "dog"])


def test_a_vocabulary_without_the_answer_or_an_empty_question_is_refused(tmp_path, parent):
    """A --classes-from list lacking a record's class would make the answer the one option from outside
    the list; an empty --question leaves the prompt without one."""
    opts = {"path": str(parent.path)}
    with pytest.raises(UserError, match=r"--classes-from lacks 2 of the parent's classes \(e.g. 'puppy', 'truck'\)"):
        vlmforge.build("mcqa", "build", out=tmp_path / "v", source_options=opts,
                       classes=["airplane", "banana", "car", "cat", "dog", "kitten", "zebra"])
    ok = vlmforge.build("mcqa", "build", out=tmp_path / "w", source_options={**opts, "where": "label NOT IN ('puppy', 'truck')"},
                        classes=["airplane", "banana", "car", "cat", "DOG", "kitten", "zebra"])
    assert len(ok) == sum(n for c, n in CLASSES.items() if c not in ("puppy", "truck"))
    with pytest.raises(UserError, match="--question is empty"):
        vlmforge.build("mcqa", "build", out=tmp_path / "q", source_options=opts, question="  ")


def test_an_embedder_without_hard_distractors_is_refused(tmp_path, parent):
    with pytest.raises(UserError, match="--embedder goes with --distractors hard"):
        vlmforge.build("mcqa", "build", out=tmp_path, source_options={"path": str(parent.path)}, embedder="some/model")


def test_a_binary_classes_file_is_one_error_line(tmp_path):
    from vlmforge.builders.derived import read_lines

    (tmp_path / "c.txt").write_bytes(b"cat\n\xff\xfe dog\n")
    with pytest.raises(UserError, match=r"--classes-from file .*c.txt is not UTF-8 text \(byte 4\)"):
        read_lines(tmp_path / "c.txt", "--classes-from file")
    (tmp_path / "d.txt").write_text("# seen\ncat\n\n  dog \n", encoding="utf-8")
    assert read_lines(tmp_path / "d.txt", "--classes-from file") == ["cat", "dog"]
    # Before: Notepad's byte order mark stayed on the first name, an option '\ufeffcat' no parent label matched.
    (tmp_path / "e.txt").write_text("cat\r\ndog\r\n", encoding="utf-8-sig")
    assert read_lines(tmp_path / "e.txt", "--classes-from file") == ["cat", "dog"]


@pytest.mark.parametrize("distractors", ["random", "hard"])
def test_a_synonym_of_the_answer_is_never_a_distractor(tmp_path, parent, distractors):
    """'dog' and 'puppy' (or 'cat' and 'kitten') name one COCO category: as answer and distractor the
    question would have two right options."""
    from vlmforge.curation.grounding import SYNONYMS

    category = {fold(w): cat for cat, words in SYNONYMS.items() for w in (cat, *words)}
    b = vlmforge.build("mcqa", "build", out=tmp_path, distractors=distractors, source_options={"path": str(parent.path)})
    assert len(b) == sum(CLASSES.values())
    faced = Counter()
    for s in b.samples():
        opts = s["json"]["options"]
        cats = [category.get(fold(o), fold(o)) for o in opts]
        assert len(set(cats)) == len(opts), opts
        faced.update(opts)
    assert {"puppy", "kitten"} <= set(faced)  # still offered, with other answers
    assert b.info["source"]["selection"]["synonyms"] == [["Dog", "puppy"], ["cat", "kitten"]]


def test_mcqa_of_an_occlusion_build_asks_its_question(tmp_path, sample_coco):
    """An occlusion sample's answer is the hidden object: the default question is the sample's own
    ("What might the animal occluded by the gray blocks be?"), without its request for reasoning, not
    "What is the main object in this image?"; --question still overrides it."""
    from vlmforge.builders.mcqa import DEFAULT_QUESTION, INSTRUCTION

    occ = vlmforge.build("occlusion", "coco", out=tmp_path / "o", source_options={"coco_root": str(sample_coco)})
    asked = dict(occ.sql("SELECT key, question FROM samples").fetchall())
    b = vlmforge.build("mcqa", "build", out=tmp_path / "m", options=3, source_options={"path": str(occ.path)})
    assert len(b) == len(occ) > 0
    for s in b.samples():
        doc, own = s["json"], asked[s["__key__"]]
        assert own.startswith(doc["question"]) and len(doc["question"]) > 20 and "reason" not in doc["question"].lower()
        assert doc["conversations"][0]["value"] == format_prompt(doc["question"], doc["options"])
        assert doc["conversations"][0]["value"].endswith(INSTRUCTION)
    assert b.sql("SELECT count(*) FROM samples WHERE question = ?", [DEFAULT_QUESTION]).fetchall() == [(0,)]
    mine = vlmforge.build("mcqa", "build", out=tmp_path / "q", options=3, source_options={"path": str(occ.path)},
                          question="What is hidden?")
    assert {s["json"]["question"] for s in mine.samples()} == {"What is hidden?"}
    assert mine.sql("SELECT DISTINCT question FROM samples").fetchall() == [("What is hidden?",)]


def test_labels_the_parent_grounded_to_one_category_are_one_class(tmp_path):
    """An occlusion build's `category` column knows matches the synonym table does not ('pooch' and
    'doggie' grounded to dog by similarity): they never face 'dog' or each other."""
    from vlmforge.builders.base import run_build
    from vlmforge.builders.derived import DerivedBuilder, KeepAllPlan, parent_sample
    from vlmforge.builders.mcqa import McqaPlan
    from vlmforge.manifests.read import open_build
    from vlmforge.sources.build import BuildSource

    grounded = {"dog": "dog", "doggie": "dog", "pooch": "dog", "cat": "cat", "bus": "bus", "kite": "kite",
                "bowl": "bowl"}

    class Grounded(DerivedBuilder):
        name, VERSION, plan_class = "grounded", "0.0.1", KeepAllPlan
        own_columns = [("category", pa.string(), "COCO category")]

        def process(self, batch):
            out = []
            for rec in batch:
                s = parent_sample(rec, self.columns)
                s.columns["category"] = grounded[rec["label"]]
                out.append([s])
            return out

    root = class_folder(tmp_path / "f", {name: 3 for name in grounded})
    labelled = vlmforge.build("copy", "imagefolder", out=tmp_path / "c", source_options={"root": str(root)})
    parent = open_build(run_build(Grounded(Grounded.Config(), BuildSource(labelled.path)), tmp_path / "g", quiet=True))
    b = vlmforge.build("mcqa", "build", out=tmp_path / "m", source_options={"path": str(parent.path)})
    assert len(b) == 3 * len(grounded)
    for s in b.samples():
        cats = [grounded[o] for o in s["json"]["options"]]
        assert len(set(cats)) == 4, s["json"]["options"]
    assert b.info["source"]["selection"]["synonyms"] == [["dog", "doggie", "pooch"]]
    # without the column, only the synonym table speaks: 'pooch' is a class of its own
    plain = McqaPlan(McqaConfig())
    plain.fit(BuildSource(labelled.path))
    assert plain.meaning("pooch") == "pooch" and plain.meaning("puppy") == "dog"
