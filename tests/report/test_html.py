"""The HTML report: content from the manifest, self-contained, and rendered by headless Chromium."""

import io
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from vlmforge.builders.copy import CopyBuilder
from vlmforge.report.html import render_report

from tests.report.chromium import CHROMIUM, Chromium


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tables, self.links, self.scripts = [], 0, [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self.tables += 1
        elif tag == "script":
            self.scripts += 1
        for k in ("href", "src"):
            if k in a and tag != "img":
                self.links.append(a[k])


def test_report_content_and_self_containment(occ_build):
    page = render_report(occ_build, n=6)
    tags = _Tags()
    tags.feed(page)
    assert tags.scripts == 0 and tags.links == []  # no JavaScript, no external file
    assert all(i["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for i in tags.imgs)
    alts = [i["alt"] for i in tags.imgs]
    for plot in ("histogram of causality", "histogram of occluded_fraction", "bar chart of samples per label",
                 "bar chart of supercategory", "bar chart of rejects by reason"):
        assert plot in alts
    assert "histogram of width" not in alts and "width = 480" in page  # constant columns are a sentence
    assert sum(a.startswith("mask of ") for a in alts) == 6 and sum(a.startswith("original of ") for a in alts) == 6
    assert occ_build.build_id in page and "Built directly from its source" in page
    assert "<td>train</td><td class=\"n\">6</td><td class=\"n\">2</td>" in page  # samples, rejects per split
    assert "<td>refrigerator</td><td class=\"n\">3</td><td class=\"n\">0</td><td class=\"n\">3</td>" in page
    assert "object_too_large" in page and "box covers 16.5% of the image" in page
    assert page == render_report(occ_build, n=6)  # deterministic
    for i in tags.imgs[:3]:  # the embedded plots decode as PNGs
        import base64
        Image.open(io.BytesIO(base64.b64decode(i["src"].split(",", 1)[1]))).verify()


def test_report_of_a_derived_build_shows_its_lineage(occ_build, tmp_path):
    import vlmforge

    child = vlmforge.build("copy", "build", out=tmp_path, source_options={"path": str(occ_build.path), "where": "split = 'val'"})
    page = render_report(child, n=2)
    assert occ_build.build_id in page and "Built directly from its source" not in page
    assert "mask of " in page  # extras carried over keep the triptych


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(occ_build, copy_build, tmp_path):
    out = tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "report", str(occ_build.path), "--out", str(out), "--n", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    copy_page = tmp_path / "copy.html"
    copy_html = render_report(copy_build, n=4)
    assert "n_turns = 2; width = 480; height = 360; original_format = JPEG" in copy_html
    copy_page.write_text(copy_html, encoding="utf-8")
    browser = Chromium()
    try:
        # occlusion: 8 triptychs + 5 plots, tables: identity, splits, labels, rejects;
        # copy: 4 images and no plot (every column is constant), tables: identity, splits
        for page, n_images, n_tables in ((out, 8 * 3 + 5, 4), (copy_page, 4, 2)):
            browser.events.clear()
            browser.open(page.as_uri())
            images = browser.eval("[...document.images].map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().height])")
            assert len(images) == n_images
            assert all(done and w > 0 and h > 0 for done, w, h in images), images
            # every picture keeps its shape: a plot beside a taller table or plot is not stretched to its height
            shapes = browser.eval("[...document.images].map(i => [i.alt, i.naturalWidth / i.naturalHeight, "
                                  "i.clientWidth / i.clientHeight])")
            assert [s for s in shapes if abs(s[1] - s[2]) > 0.02 * s[1]] == []
            tables = browser.eval("[...document.querySelectorAll('table')].map(t => [t.rows.length, t.getBoundingClientRect().height])")
            assert len(tables) == n_tables and all(rows >= 2 and h > 0 for rows, h in tables), tables
            assert browser.eval("document.title").startswith(("occlusion 0.0.1", f"copy {CopyBuilder.VERSION}"))
            assert browser.errors() == []
            assert all(u.startswith(("file:", "data:")) for u in browser.requests())
        shot = Image.open(browser.screenshot(tmp_path / "shot.png")).convert("L")
        assert shot.width == 1280 and shot.height > 900
        assert np.asarray(shot).std() > 20  # a page with content, not a blank one
    finally:
        browser.close()


def test_a_reject_example_shows_one_reject_detail_and_input_together():
    import duckdb

    from vlmforge.report.html import _rejects

    con = duckdb.connect()
    con.execute("CREATE TABLE rejects AS SELECT * FROM (VALUES ('not_grounded', 'grounding', 'z: from input 1', '1'), "
                "('not_grounded', 'grounding', 'a: from input 2', '2')) t(reason, stage, detail, source_id)")
    page = _rejects(con)
    assert "z: from input 1" in page and "a: from input 2" not in page


def test_report_out_that_cannot_be_written_is_one_error_line(copy_build, tmp_path):
    """Before: --out naming a folder, or a path under a file, was a traceback; an HTML page was written
    into report.png."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, words in ((tmp_path, "is a folder"), (blocker / "r.html", "cannot write"),
                       (tmp_path / "report.png", "name a .html file")):
        r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "report", str(copy_build.path), "--n", "1",
                            "--out", str(out)], capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error:"), r.stderr
        assert words in r.stderr
    out = tmp_path / "new" / "r.html"
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "report", str(copy_build.path), "--n", "1",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and copy_build.build_id in out.read_text()


def _distributions_of(select: str, builder_cols: list[str]) -> str:
    """The report's distributions section for a samples table made by `select`."""
    import duckdb

    from vlmforge.report.html import _distributions

    con = duckdb.connect()
    con.execute(f"CREATE TABLE samples AS {select}")
    cols = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_name = 'samples'").fetchall())
    return _distributions(con, cols, builder_cols)


def test_distributions_skip_identifiers_and_free_text():
    """Before: image_id and caption_id got histograms (a mean of ids), cvc-trials' parent_key a bar chart,
    and a question column got a bar chart whose labels, cut to 40 characters, made different questions
    look like one."""
    import base64

    page = _distributions_of("SELECT i AS image_id, i % 3 + 1 AS objects, i * 0.5 AS score, "
                             "'Part of this image is hidden behind a cluster of gray blocks, number ' || (i % 4) AS question, "
                             "'cat' || (i % 30) AS category, 'k' || (i % 6) AS parent_key, "
                             "480 AS width, 360 AS height FROM range(60) t(i)",
                             ["image_id", "objects", "score", "question", "category", "parent_key"])
    tags = _Tags()
    tags.feed(page)
    alts = [i["alt"] for i in tags.imgs]
    assert alts == ["histogram of objects", "histogram of score", "bar chart of category"]
    assert "width = 480; height = 360" in page
    # objects (1, 2, 3): one bar per value, not 20 bins with fractional ticks
    hist = np.asarray(Image.open(io.BytesIO(base64.b64decode(tags.imgs[0]["src"].split(",", 1)[1]))).convert("RGB"))
    row = hist[hist.shape[0] // 2].astype(int)  # the middle row crosses every bar (20 samples each)
    bar_columns = (np.abs(row - [0x3B, 0x6E, 0xA5]).sum(axis=1) < 30).astype(int)
    assert np.count_nonzero(np.diff(bar_columns) == 1) == 3
    blue = np.nonzero(bar_columns)[0]
    assert bar_columns.sum() > 0.6 * (blue[-1] - blue[0])  # wide bars with small gaps, not 3 thin bins of 20


def test_a_single_value_with_nulls_is_not_called_the_same_for_every_sample():
    """Before: a column holding one value in some samples and null in the rest was listed as
    'the same for every sample'."""
    page = _distributions_of("SELECT CASE WHEN i < 7 THEN 'dog' END AS category, CASE WHEN i < 3 THEN 2 END AS objects, "
                             "'blocks' AS fill, 480 AS width, 360 AS height, NULL::DOUBLE AS score FROM range(10) t(i)",
                             ["category", "objects", "fill", "score"])
    assert "Columns with a single value: " in page and "same for every sample" not in page
    assert "category = dog (null in 3 samples)" in page and "objects = 2 (null in 7 samples)" in page
    assert "fill = blocks." in page and "score is always null;" in page and "width = 480;" in page



def test_a_histogram_of_values_with_nan_and_infinity(monkeypatch):
    """Before: a numeric column holding NaN or inf stopped the report with matplotlib's ValueError."""
    from matplotlib.axes import Axes

    titles = []
    set_title = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda ax, text, **kw: titles.append(text) or set_title(ax, text, **kw))
    page = _distributions_of("SELECT CASE WHEN i = 0 THEN 'nan'::DOUBLE WHEN i = 1 THEN 'inf'::DOUBLE ELSE i * 0.1 END "
                             "AS ppl, 480 AS width, 360 AS height FROM range(10) t(i)", ["ppl"])
    tags = _Tags()
    tags.feed(page)
    assert [i["alt"] for i in tags.imgs] == ["histogram of ppl"]
    # the finite values 0.2 .. 0.9 are drawn; the NaN and the inf are counted in the title
    assert titles == ["ppl  (n=8, mean 0.55, median 0.55, 2 NaN/inf not shown)"]


def test_a_build_with_no_samples_has_no_column_statements(occ_build, tmp_path):
    """Before: an empty build's report said 'width is always null', as if samples had no width."""
    import vlmforge

    empty = vlmforge.build("copy", "build", out=tmp_path, source_options={"path": str(occ_build.path), "where": "1 = 0"})
    assert len(empty) == 0
    page = render_report(empty)
    assert "always null" not in page and "No samples." in page and "No sample to show." in page


def test_dollar_signs_in_values_are_drawn_as_text():
    """Before: a value such as 'a $x^$ b' (prices, LaTeX in LLaVA data) was parsed by matplotlib as a
    formula: ValueError, no report."""
    from vlmforge.report import plots

    page = _distributions_of("SELECT CASE WHEN i < 3 THEN 'a $x^$ b' ELSE '$\\frac$' END AS category, "
                             "i AS \"cost $\", 480 AS width, 360 AS height FROM range(6) t(i)", ["category", "cost $"])
    tags = _Tags()
    tags.feed(page)
    assert [i["alt"] for i in tags.imgs] == ["histogram of cost $", "bar chart of category"]
    assert plots.plain("$5-$10") == r"\$5-\$10"


def test_a_damaged_manifest_index_is_one_line_naming_reindex(copy_build, tmp_path):
    """Before: report stopped with DuckDB's IOException traceback, and show blamed a --where it was not given."""
    import shutil

    b = tmp_path / "b"
    shutil.copytree(copy_build.path, b)
    (b / "manifest.duckdb").write_text("not a database")
    for cmd in (["report", str(b), "--out", str(tmp_path / "r.html")], ["show", str(b), "--out", str(tmp_path / "s.png")]):
        r = subprocess.run([sys.executable, "-m", "vlmforge.cli", *cmd], capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert "manifest reindex" in r.stderr and "--where" not in r.stderr


def test_boolean_columns_are_counted():
    """Before: a BOOLEAN column (vg's box_clipped) was in neither the plots nor the single-value line."""
    page = _distributions_of("SELECT i % 4 = 0 AS box_clipped, false AS truncated, 480 AS width, 360 AS height "
                             "FROM range(8) t(i)", ["box_clipped", "truncated"])
    tags = _Tags()
    tags.feed(page)
    assert [i["alt"] for i in tags.imgs] == ["bar chart of box_clipped"]
    assert "truncated = False" in page


def test_a_gallery_where_that_matches_nothing_is_said(copy_build, tmp_path):
    """Before: the page said 'No sample to show.' and the command only 'wrote', as for an empty build."""
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "report", str(copy_build.path), "--where", "width < 0",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "no sample matches --where 'width < 0'" in r.stderr, r.stderr
    assert "No sample matches where width &lt; 0." in out.read_text()
