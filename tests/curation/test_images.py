"""Reading and checking image files (vlmforge.curation.images)."""

import io

import numpy as np
import pytest
from PIL import Image

from vlmforge.curation.images import ImageError, check_image_bytes, whole_jpeg


def _jpeg(progressive=False) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90,
                                                                           progressive=progressive)
    return buf.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
def test_data_after_the_end_of_image_marker_is_left_out_and_a_cut_file_is_truncated(progressive):
    """Phones append video or maker data after a JPEG's end-of-image marker: such a file was rejected as
    truncated_image. Bytes after the image that look like markers (a second JPEG, random data with
    0xFFDA in it) do not count; a file cut anywhere before its marker is still truncated."""
    data = _jpeg(progressive)
    rng = np.random.default_rng(1)
    trailers = [b"MotionPhoto_Data" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
                b"\xff\xda\x00\x08" + bytes(40),  # looks like a scan header, never ends
                _jpeg()[:-2],  # a second JPEG, itself cut
                bytes(7)]
    for trailer in trailers:
        assert whole_jpeg(data + trailer) == (data + trailer if trailer == bytes(7) else data)
        img = check_image_bytes(data + trailer, "x.jpg")
        assert img.data == whole_jpeg(data + trailer) and (img.width, img.height) == (64, 48)
    assert whole_jpeg(data) == data
    for cut in range(2, len(data) - 1, 97):
        assert whole_jpeg(data[:cut]) is None
        with pytest.raises(ImageError) as e:
            check_image_bytes(data[:cut], "x.jpg")
        assert e.value.reason in ("truncated_image", "corrupt_image")
    assert whole_jpeg(b"not a jpeg") is None
