"""Reading, checking and normalising images. Errors carry a short reason for the rejects table."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Formats stored as they are; anything else is converted to JPEG.
PASSTHROUGH = {"JPEG": "jpg", "PNG": "png"}


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


def read_image(path: str | Path, check: str = "quick") -> EncodedImage:
    """Read an image file as encoded bytes, checked but not re-encoded.

    check="quick" parses the header (and, for JPEG, requires the end-of-image marker, which catches
    truncated files); check="full" decodes every pixel. Raises ImageError(missing_image|
    unreadable_image|corrupt_image|truncated_image).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError("missing_image", f"no file at {path}") from None
    except OSError as e:
        raise ImageError("unreadable_image", f"{path}: {e.strerror or e}") from None
    return check_image_bytes(data, str(path), check)


def check_image_bytes(data: bytes, name: str, check: str = "quick") -> EncodedImage:
    if not data:
        raise ImageError("corrupt_image", f"{name} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "?"
            width, height = im.size
            if check == "full":
                im.load()
            elif fmt == "JPEG" and data.rstrip(b"\0")[-2:] != b"\xff\xd9":
                raise ImageError("truncated_image", f"{name} ends before the JPEG end-of-image marker")
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError("corrupt_image", f"{name}: {e}") from None
    ext = PASSTHROUGH.get(fmt)
    if ext is None:
        return EncodedImage(data, "", width, height, fmt)
    return EncodedImage(data, ext, width, height, fmt)


def to_rgb_jpeg(data: bytes, quality: int = 95) -> bytes:
    """Decode any PIL-readable image and re-encode it as baseline RGB JPEG (alpha composited on white)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            rgb = bg
        else:
            rgb = im.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def load_for_storage(path: str | Path, check: str = "quick", jpeg_quality: int = 95) -> EncodedImage:
    """Read an image for a shard: JPEG and PNG pass through, other formats become RGB JPEG."""
    img = read_image(path, check)
    if img.ext:
        return img
    try:
        data = to_rgb_jpeg(img.data, jpeg_quality)
    except (OSError, ValueError) as e:
        raise ImageError("corrupt_image", f"{path}: {e}") from None
    return EncodedImage(data, "jpg", img.width, img.height, img.original_format)
