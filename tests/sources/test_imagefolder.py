"""Class-folder datasets (`--source imagefolder`): layouts and user mistakes."""

import subprocess
import sys

import pytest
from PIL import Image

from vlmforge.errors import UserError
from vlmforge.sources import open_source


def _image(path, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), color).save(path)


def test_split_folders_beside_other_folders_are_refused(tmp_path):
    """Before: ROOT/train/cat, ROOT/test/cat and ROOT/unlabeled/x made one split, train, whose labels
    were the top folders ('train', 'test', 'unlabeled'): every image mislabelled, without a word."""
    root = tmp_path / "data"
    for rel in ("train/cat/a.jpg", "train/dog/b.jpg", "test/cat/c.jpg", "unlabeled/x/d.jpg"):
        _image(root / rel)
    with pytest.raises(UserError, match=r"mixes split folders \(test, train\) with other folders \(unlabeled\)"):
        open_source("imagefolder", root=root)
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "copy", "--source", "imagefolder", "--root",
                        str(root), "--out", str(tmp_path / "out"), "-q"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "mixes split folders" in r.stderr, r.stderr
    (root / "unlabeled" / "x" / "d.jpg").unlink()
    (root / "unlabeled" / "x").rmdir()
    (root / "unlabeled").rmdir()
    src = open_source("imagefolder", root=root)  # the split layout alone is read as such
    assert src.splits() == ["test", "train"]
    assert sorted(r["label"] for r in src.records("train")) == ["cat", "dog"]
