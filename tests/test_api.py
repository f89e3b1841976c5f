"""The Python API's argument checks: what the CLI's typed options catch is one error line here too."""

import pytest

import vlmforge
from vlmforge.errors import UserError


def test_a_source_option_given_as_a_config_option_says_where_it_goes(tmp_path):
    # the source opened first and said "--source cub needs --root DIR", though root= was given
    with pytest.raises(UserError, match=r"selfsynth has no option\(s\) \['root'\].*source_options="):
        vlmforge.build("selfsynth", "cub", out=tmp_path, root=str(tmp_path))


@pytest.mark.parametrize("name, value, want", [
    ("trials", "16", "trials must be int, not '16'"),
    ("trials", 2.5, "trials must be int"),
    ("threshold", True, "threshold must be float, not True"),
    ("model", 3, "model must be str or None, not 3"),
])
def test_a_config_value_of_the_wrong_type_is_one_error(tmp_path, name, value, want):
    # a string for trials was a TypeError traceback from inside the builder
    with pytest.raises(UserError, match=want):
        vlmforge.build("cvc-trials", "build", out=tmp_path, source_options={"path": str(tmp_path)}, **{name: value})


def test_right_types_pass_the_check_and_wrong_ones_do_not():
    from vlmforge.api import check_option_type

    for value, annotation in ((2, "float"), (0.5, "float"), (None, "str | None"), ("x", "str | None"), (3, "int | None"),
                              (False, "bool"), (["a"], "list[str] | None"), (None, "int | None")):
        check_option_type("b", "o", value, annotation)
    # a bool is no number, an int no bool, None only where the annotation allows it
    for value, annotation in (("2", "float"), (True, "float"), (True, "int | None"), (1, "bool"), (3, "str | None"),
                              (None, "int"), (2.0, "int")):
        with pytest.raises(UserError, match=rf"^b option o must be {annotation.replace('|', 'or')}, not {value!r}$"):
            check_option_type("b", "o", value, annotation)


def test_a_file_option_may_be_a_path(tmp_path):
    # a pathlib.Path reached build.json as is and json.dumps failed with a TypeError traceback
    import json

    from tests.classification_fixtures import make_cub

    make_cub(tmp_path / "data", per_class=2, attributes=False)
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps({"Black footed Albatross": ["dark plumage", "pale face ring", "long wings"]}))
    b = vlmforge.build("selfsynth", "cub", out=tmp_path / "out", concepts=concepts, instructions=1, questions=1,
                       source_options={"root": str(tmp_path / "data"), "splits": ["train"]})
    assert b.info["config"]["concepts"] == "file" and len(b) == 1


def test_samples_of_a_split_the_build_lacks_is_an_error(tmp_path):
    # b.samples("validation") was an empty loop: a typo read as "no data"
    b = vlmforge.build("copy", "coco", out=tmp_path)
    assert [s["__key__"] for s in b.samples("val")] and len(list(b.samples())) == len(b)
    with pytest.raises(UserError, match=r"has no split 'validation' \(splits: val\)"):
        b.samples("validation")
    assert "build_id" not in repr(b) and str(b.path) in repr(b)  # repr is not all of build.json
