"""Contact sheets: a grid of samples chosen by a SQL filter, each drawn as its image panels and a caption.

Any build works: a sample shows its image and, when present, its label, question and answer. Builds
whose samples carry a `mask.png` member (occlusion) show the original (`orig.jpg`, when kept), the
mask outlined on it, and the occluded image side by side. The choice of samples is deterministic: rows
are ordered by md5(seed:key), so the same build, filter and seed give the same sheet.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from vlmforge.errors import UserError
from vlmforge.manifests.read import Build, no_samples_line, read_sample_at
from vlmforge.sample import IMAGE_FIELDS

OUTLINE = (255, 40, 40)
BACKDROP = (32, 32, 32)
MAX_SHEET_PIXELS = 100_000_000  # 300 MB as RGB; 400 triptychs at the default --thumb are 66 million


def choose_samples(build: Build, where: str | None = None, n: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """Up to `n` manifest rows matching `where` (a SQL condition), in md5(seed:key) order."""
    import duckdb

    if n < 1:
        raise UserError("--n must be at least 1")
    cond = f"WHERE ({where}\n)" if where else ""  # the newline ends a trailing -- comment of the condition
    query = f"SELECT * FROM samples {cond} ORDER BY md5(CAST(? AS VARCHAR) || ':' || key) LIMIT {int(n)}"
    if where:
        from vlmforge.manifests.read import check_read_only

        try:  # what build.sql refuses before it runs (no parse, two statements) is the condition's fault
            check_read_only(query)
        except UserError as e:
            raise UserError(f"--where did not work: {e}") from None
    try:
        rel = build.sql(query, [str(seed)])
        names = list(rel.columns)
        return [dict(zip(names, r)) for r in rel.fetchall()]
    except duckdb.Error as e:
        from vlmforge.manifests.query import duckdb_error_line

        raise UserError(f"--where did not work: {duckdb_error_line(e)}") from None


def load_sample(build: Build, row: dict[str, Any]) -> dict[str, Any]:
    """The sample's members ({field: bytes}, 'json' parsed) read at its manifest offset."""
    import json

    try:
        sample = read_sample_at(build.path / row["shard"], row["offset"], row["sample_bytes"])
    except OSError as e:  # a shard missing or unreadable
        raise UserError(f"cannot read {row['shard']} of {build.path} ({e.strerror or e}); the build is damaged "
                        f"(`vlmforge verify {build.path}` says more)") from None
    if sample.get("__key__") != row["key"]:
        raise UserError(f"{row['shard']} holds no sample {row['key']} at byte {row['offset']}; the build is damaged "
                        f"(`vlmforge verify {build.path}` says more)")
    if "json" in sample:
        try:
            sample["json"] = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"sample {row['key']} in {row['shard']}: its json does not parse ({e}); the build is "
                            f"damaged (`vlmforge verify {build.path}` says more)") from None
    return sample


def _open(sample: dict[str, Any], field: str, mode: str = "RGB") -> Image.Image:
    try:
        return Image.open(io.BytesIO(sample[field])).convert(mode)
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's ways of saying the bytes are not an image
        raise UserError(f"sample {sample.get('__key__')}: its {field} cannot be decoded ({e}); the build is damaged "
                        "(`vlmforge verify` names the shard)") from None


def fit(img: Image.Image, size: int) -> Image.Image:
    """`img` scaled to fit a size x size square (up as well as down: a 64-pixel image fills the panel),
    centred on a dark backdrop."""
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)
    out = Image.new("RGB", (size, size), BACKDROP)
    out.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return out


def outline_mask(base: Image.Image, mask: Image.Image, size: int) -> Image.Image:
    """`base` fitted to the square with the mask's region tinted and its border drawn in red."""
    shown = fit(base, size)
    m = mask.convert("L").resize(base.size, Image.Resampling.NEAREST)  # the same size: panels() maps it
    m = fit(m.convert("RGB"), size).convert("L").point(lambda v: 255 if v > 127 else 0)
    edge = ImageChops.difference(m.filter(ImageFilter.MaxFilter(3)), m.filter(ImageFilter.MinFilter(3)))
    tint = Image.blend(shown, Image.new("RGB", shown.size, OUTLINE), 0.3)
    shown = Image.composite(tint, shown, m)
    shown.paste(OUTLINE, mask=edge)
    return shown


def mask_like_image(mask: Image.Image, image: Image.Image, doc: dict[str, Any]) -> Image.Image:
    """`mask` in the stored image's geometry. A model-ready build stores the image padded, resized and
    cropped (json `image_transform`, e.g. 'pad=square:122,116,104;resize=336;crop=336;resample=bicubic')
    but keeps the mask of the original: the same steps, with nearest-neighbour resampling, bring it
    over. Other masks of another size are scaled to the image."""
    from vlmforge.training.images import PixelSteps, _Fallback, expand_to_square

    transform = doc.get("image_transform")
    if mask.size == image.size or not isinstance(transform, str):
        return mask.resize(image.size, Image.Resampling.NEAREST)
    parts = dict(p.split("=", 1) for p in transform.split(";") if "=" in p)

    def hw(value: str) -> tuple[int, int]:
        h, _, w = value.partition("x")
        return int(h), int(w or h)

    if parts.get("pad", "none").startswith("square"):
        mask = expand_to_square(mask, 0)
    try:
        crop = hw(parts["crop"]) if "crop" in parts else None
        resize = parts["resize"]
        # 'resize=336' is a shortest edge or a fixed 336x336: the one that gives the image's size
        tries = [PixelSteps(Image.Resampling.NEAREST, resize_to=hw(resize), crop=crop)]
        if "x" not in resize:
            tries.insert(0, PixelSteps(Image.Resampling.NEAREST, shortest_edge=int(resize), crop=crop))
        for steps in tries:
            if (out := steps(mask)).size == image.size:
                return out
    except (KeyError, ValueError, _Fallback):  # a transform these steps do not reproduce
        pass
    return mask.resize(image.size, Image.Resampling.NEAREST)


def panels(sample: dict[str, Any], size: int) -> list[tuple[str, Image.Image]]:
    """(title, square image) panels of one sample: the occlusion triptych when the sample has a mask,
    else its image; a text-only sample gets one empty panel."""
    field = next((f for f in IMAGE_FIELDS if f in sample), None)
    if field is None:
        return [("text only", Image.new("RGB", (size, size), BACKDROP))]
    image = _open(sample, field)
    if "mask.png" not in sample:
        return [("image", fit(image, size))]
    mask = _open(sample, "mask.png", "L")
    out = []
    base = image
    if "orig.jpg" in sample:
        base = _open(sample, "orig.jpg")
        out.append(("original", fit(base, size)))
    mask = mask_like_image(mask, base, sample.get("json") or {})
    out.append(("mask", outline_mask(base, mask, size)))
    out.append(("occluded", fit(image, size)))
    return out


def first_turns(doc: dict[str, Any]) -> tuple[str, str]:
    """The first human turn (without the <image> token) and the first answer, on one line each."""
    conv = doc.get("conversations") or []
    q = next((t.get("value", "") for t in conv if t.get("from") == "human"), "")
    a = next((t.get("value", "") for t in conv if t.get("from") == "gpt"), "")
    return " ".join(q.replace("<image>", " ").split()), " ".join(a.split())


def caption(row: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    """Caption parts of a sample: key and split, label, question, answer (those present)."""
    parts = [f"{row['key']}  ({row['split']})"]
    label = row.get("label") or doc.get("label")
    if label:
        parts.append(f"label: {label}")
    q, a = first_turns(doc)
    question = doc.get("question") or q
    options = doc.get("options")
    if isinstance(options, list) and options:  # multiple choice: the options and the gold letter, then
        # the question (a long one, as occlusion samples ask, is cut short instead of the options)
        parts.append("  ".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options)))
        if doc.get("answer"):
            parts.append(f"gold: {doc['answer']}")
    if question:
        parts.append(f"Q: {question}")
    if a and not (isinstance(options, list) and options):
        parts.append(f"A: {a}")
    return parts


def font(size: int = 12) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def wrap(parts: list[str], fnt, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap of each part into lines of at most `width` pixels, cut to `max_lines`."""
    lines: list[str] = []
    for part in parts:
        line = ""
        for word in part.split():
            trial = f"{line} {word}" if line else word
            if fnt.getlength(trial) <= width:
                line = trial
                continue
            if line:
                lines.append(line)
            # a word wider than the cell (a long key) is cut, not drawn over the next cell
            while len(word) > 1 and fnt.getlength(word) > width:
                cut = len(word) - 1
                while cut > 1 and fnt.getlength(word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and fnt.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines


@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry of a contact sheet. A cell is `panels` squares side by side, a title strip above
    them and `caption_lines` of text below."""

    thumb: int = 192
    pad: int = 8
    gap: int = 4
    title_h: int = 16
    line_h: int = 15
    caption_lines: int = 4
    header_h: int = 28

    def cell(self, panels: int) -> tuple[int, int]:
        return panels * self.thumb + (panels - 1) * self.gap, self.title_h + self.thumb + self.caption_lines * self.line_h

    def size(self, n: int, panels: int, cols: int) -> tuple[int, int]:
        cw, ch = self.cell(panels)
        rows = math.ceil(n / cols)
        return self.pad + cols * (cw + self.pad), self.header_h + self.pad + rows * (ch + self.pad)


def default_cols(panels: int, n: int) -> int:
    return max(1, min(n, 2 if panels >= 3 else 3 if panels == 2 else 4))


def sheet_columns(layout: SheetLayout, n: int, panels: int, cols: int | None) -> int:
    """Cells per row for `n` cells (no empty columns); a sheet above MAX_SHEET_PIXELS is a UserError
    (400 samples at --thumb 1024 took 3.6 GB of memory and a minute for a 117 MB PNG)."""
    cols = min(cols, n) if cols else default_cols(panels, n)
    w, h = layout.size(n, panels, cols)
    if w * h > MAX_SHEET_PIXELS:
        raise UserError(f"a sheet of {n} samples at --thumb {layout.thumb} would be {w:,} x {h:,} pixels; "
                        "lower --n or --thumb")
    return cols


def contact_sheet(build: Build, where: str | None = None, n: int = 16, seed: int = 0, cols: int | None = None,
                  layout: SheetLayout = SheetLayout()) -> Image.Image:
    """The contact sheet as a PIL image (see the module docstring)."""
    if not len(build):
        raise UserError(no_samples_line(build))
    rows = choose_samples(build, where, n, seed)
    if not rows:
        raise UserError("no sample matches" + (f" --where {where!r}" if where else ""))
    # checked before any panel is drawn (a triptych of 1024-pixel panels is 9 MB per sample)
    sheet_columns(layout, len(rows), len(panels(load_sample(build, rows[0]), 1)), cols)
    cells = []
    for row in rows:
        sample = load_sample(build, row)
        cells.append((row, sample.get("json") or {}, panels(sample, layout.thumb)))
    info = build.info
    head = f"{info['builder']} {info['version']}  build {build.build_id}  ·  {len(cells)} samples"
    return draw_sheet([(ps, caption(row, doc), (0, 0, 0)) for row, doc, ps in cells],
                      head + (f"  ·  where {where}" if where else ""), layout, cols)


Cell = tuple[list[tuple[str, Image.Image]], list[str], tuple[int, int, int]]


def draw_sheet(cells: list[Cell], title: str, layout: SheetLayout = SheetLayout(), cols: int | None = None) -> Image.Image:
    """A sheet with `title` on top and a grid of cells: each cell is (titled thumb-sized panels side by
    side, caption parts wrapped below them, caption colour)."""
    k = max(len(p) for p, _, _ in cells)
    cols = sheet_columns(layout, len(cells), k, cols)
    sheet = Image.new("RGB", layout.size(len(cells), k, cols), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    title_font, text_font = font(15), font(12)
    draw.text((layout.pad, 6), title, fill=(0, 0, 0), font=title_font)
    cw, ch = layout.cell(k)
    for i, (ps, parts, colour) in enumerate(cells):
        x = layout.pad + (i % cols) * (cw + layout.pad)
        y = layout.header_h + layout.pad + (i // cols) * (ch + layout.pad)
        for j, (name, img) in enumerate(ps):
            px = x + j * (layout.thumb + layout.gap)
            draw.text((px + 2, y + 1), name, fill=(90, 90, 90), font=text_font)
            sheet.paste(img, (px, y + layout.title_h))
        ty = y + layout.title_h + layout.thumb + 1
        for line in wrap(parts, text_font, cw, layout.caption_lines):
            draw.text((x, ty), line, fill=colour, font=text_font)
            ty += layout.line_h
    return sheet


def write_contact_sheet(build: Build, out: Path, **kwargs: Any) -> Path:
    """Render and save the sheet as PNG (or any format Pillow infers from `out`'s suffix)."""
    out = Path(out)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name (e.g. {out / 'sheet.png'})")
    if fmt not in Image.SAVE:  # checked before the samples are drawn
        raise UserError(f"--out {out}: Pillow cannot write {out.suffix or 'a file without a suffix'}; "
                        "name a .png or .jpg file")
    sheet = contact_sheet(build, **kwargs)
    return save_output(out, sheet.save)


def save_output(out: Path, write: Callable[[Path], Any]) -> Path:
    """Make `out`'s folder and call `write(out)`; a path that cannot be written is a UserError."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write(out)
    except OSError as e:
        in_the_way = next((a for a in out.parents if a.exists() and not a.is_dir()), None)
        why = f"{in_the_way} is a file, not a folder" if in_the_way else e.strerror or e
        raise UserError(f"cannot write {out}: {why}") from None
    return out
