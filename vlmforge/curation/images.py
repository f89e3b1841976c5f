"""Reading, checking and normalising images. Errors carry a short reason for the rejects table."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Formats stored as they are; anything else is converted to JPEG.
PASSTHROUGH = {"JPEG": "jpg", "PNG": "png"}
# JPEG modes every reader handles; CMYK and YCCK JPEGs are converted like other formats, and so are
# 16-bit and float images (X-ray PNGs, TIFF scans), scaled to 8 bits.
PLAIN_JPEG_MODES = ("RGB", "L")


class ImageError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class EncodedImage:
    data: bytes
    ext: str  # tar field: jpg or png
    width: int
    height: int
    original_format: str
    mode: str = ""  # PIL mode of the original (RGB, L, CMYK, P, RGBA, ...)
    converted: bool = False  # data was re-encoded (else it is the file's bytes as read)


def read_image(path: str | Path, check: str = "quick") -> EncodedImage:
    """Read an image file as encoded bytes, checked but not re-encoded.

    check="quick" parses the header (and, for JPEG, requires the end-of-image marker, which catches
    truncated files; data after that marker is left out); check="full" decodes every pixel. Raises
    ImageError(missing_image|unreadable_image|corrupt_image|truncated_image).
    """
    return check_image_bytes(read_bytes(path), str(path), check)


def read_bytes(path: str | Path) -> bytes:
    """An image file's bytes. Raises ImageError(missing_image|unreadable_image)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError("missing_image", f"no file at {path}") from None
    except OSError as e:
        raise ImageError("unreadable_image", f"{path}: {e.strerror or e}") from None


# After a scan, the next marker: 0xFF bytes then a code that is no stuffing (0x00) or restart (RSTn).
_MARKER_AFTER_SCAN = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


def whole_jpeg(data: bytes) -> bytes | None:
    """The JPEG `data` holds, up to its end-of-image marker, or None when it ends before that marker
    (truncated) or is no JPEG. A file that ends with the marker (zero padding aside) is returned as it
    is; data after the marker (phones append video or maker data there) is left out: the markers are
    walked and each scan skipped to its end, so bytes after the image that look like markers do not
    count."""
    if data[:2] != b"\xff\xd8":
        return None
    if data.rstrip(b"\0")[-2:] == b"\xff\xd9":
        return data
    pos, n = 2, len(data)
    while pos + 2 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:
            return data[: pos + 2]
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            pos += 2
        elif pos + 4 > n:
            return None
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker == 0xDA:
                found = _MARKER_AFTER_SCAN.search(data, pos)
                if found is None:
                    return None
                pos = found.end() - 2
    return None


def check_image_bytes(data: bytes, name: str, check: str = "quick") -> EncodedImage:
    if not data:
        raise ImageError("corrupt_image", f"{name} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "?"
            mode = im.mode
            width, height = im.size
            if check == "full":
                im.load()
            if fmt == "JPEG":  # data after the end-of-image marker is left out
                whole = whole_jpeg(data)
                if whole is None and check != "full":
                    raise ImageError("truncated_image", f"{name} ends before the JPEG end-of-image marker")
                data = whole or data
    except ImageError:
        raise
    except UnidentifiedImageError:  # its message holds the BytesIO's memory address: rejects would differ per run
        raise ImageError("corrupt_image", f"{name}: not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError("corrupt_image", f"{name}: {e}") from None
    ext = PASSTHROUGH.get(fmt)
    if fmt == "JPEG" and mode not in PLAIN_JPEG_MODES:
        ext = None
    if mode.startswith("I") or mode == "F":  # 16-bit or float pixels: readers clip them to 8 bits
        ext = None
    return EncodedImage(data, ext or "", width, height, fmt, mode)


def to_rgb_jpeg(data: bytes, quality: int = 95) -> bytes:
    """Decode any PIL-readable image and re-encode it as baseline RGB JPEG (alpha composited on white)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode.startswith("I") or im.mode == "F":
            im = _to_8bit(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            rgb = bg
        else:
            rgb = im.convert("RGB")
    return encode_jpeg(rgb, quality)


def encode_jpeg(img: Image.Image, quality: int = 95, subsampling: str = "4:2:0") -> bytes:
    """Baseline JPEG with every encoder setting fixed (chroma subsampling, no optimisation pass), so
    the same pixels always give the same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False, subsampling=subsampling)
    return buf.getvalue()


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float greyscale (X-rays, scans) scaled to 8 bits by the bit depth its values use,
    so that a 12-bit image is not clipped to white."""
    import numpy as np

    arr = np.asarray(im, dtype=np.float64)
    top = float(arr.max()) if arr.size else 0.0
    scale = 255.0 / (2 ** max(8, int(np.ceil(np.log2(top + 1)))) - 1) if top > 255 else 1.0
    return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), mode="L")


def load_for_storage(path: str | Path, check: str = "quick", jpeg_quality: int = 95,
                     keep: tuple[str, ...] = ("JPEG", "PNG")) -> EncodedImage:
    """Read an image for a shard: formats in `keep` pass through (JPEG only when RGB or grayscale),
    everything else (PNG when not kept, GIF, WebP, CMYK JPEG, palette, alpha) becomes RGB JPEG at
    `jpeg_quality`. `original_format` and `mode` always describe the file as read."""
    img = read_image(path, check)
    return encode_for_storage(img, str(path), jpeg_quality, keep)


def encode_for_storage(img: EncodedImage, name: str, jpeg_quality: int = 95,
                       keep: tuple[str, ...] = ("JPEG", "PNG")) -> EncodedImage:
    """`load_for_storage` for bytes already read and checked."""
    if img.ext and img.original_format in keep:
        return img
    try:
        data = to_rgb_jpeg(img.data, jpeg_quality)
    except (OSError, ValueError) as e:
        raise ImageError("corrupt_image", f"{name}: {e}") from None
    return EncodedImage(data, "jpg", img.width, img.height, img.original_format, img.mode, converted=True)


def bilevel_png(mask) -> bytes:
    """A boolean (H, W) mask, or a MaskCrop, as a standard 1-bit greyscale PNG (what PIL writes for
    mode "1", and reads back as such). Written directly: rows packed to bits, filter byte 0, one zlib
    stream (level 3: a quarter of level 6's time for masks a third larger, still a hundredth of the JPEG),
    at 0.05-0.1 ms for a 480x360 mask against 0.5-0.8 ms through PIL's adaptive-filter encoder.
    A MaskCrop packs only its box (8-pixel aligned) into the zeroed rows: the same bytes."""
    import struct
    import zlib

    import numpy as np

    from vlmforge.curation.segmentation import MaskCrop

    if isinstance(mask, MaskCrop):
        h, w = mask.shape
        raw = np.zeros((h, (w + 7) // 8 + 1), np.uint8)  # column 0: the row's filter type (none)
        if mask.pixels.size:
            xa, xb = mask.x0 // 8 * 8, -(-mask.x1 // 8) * 8
            bits = np.zeros((mask.pixels.shape[0], xb - xa), bool)
            bits[:, mask.x0 - xa : mask.x1 - xa] = mask.pixels
            raw[mask.y0 : mask.y1, 1 + xa // 8 : 1 + xb // 8] = np.packbits(bits, axis=1)
    else:
        h, w = mask.shape
        raw = np.zeros((h, (w + 7) // 8 + 1), np.uint8)
        raw[:, 1:] = np.packbits(np.ascontiguousarray(mask), axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 3)) + chunk(b"IEND", b""))
