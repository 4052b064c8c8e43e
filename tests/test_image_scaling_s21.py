"""Images scaled down by the router (``router.convert.fit``, for Claude's per-image limits; ``to_pages``, BMP and
TIFF for a model that takes PNG) keep their text readable, whatever their mode.

Pillow scales palette ("P": every GIF, 8-bit PNG screenshots) and 1-bit images by nearest neighbour: a scaled
invoice read "1,334.68" for "1,234.56". A 16-bit grey PNG reduced 4x or more failed ("image has wrong mode"),
so it was refused as too large though the README says 16-bit scans are handled.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from router.convert import fit, to_pages
from router.types import Media, Modality


def page_of_text(size: tuple[int, int]) -> Image.Image:
    """A white RGB page with lines of black text, large enough to be scaled 4x and more."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for y in range(0, size[1] - 40, 40):
        draw.text((10, y), "Invoice total 1,234.56 EUR due 2026-03-01 " * 4, fill="black", font_size=32)
    return image


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def difference(a: Image.Image, b: Image.Image) -> float:
    """The mean absolute difference of two images' grey values (0-255)."""
    return float(np.abs(np.asarray(a.convert("L"), float) - np.asarray(b.convert("L"), float)).mean())


@pytest.mark.parametrize("mode", ["P", "1"])
def test_a_palette_or_one_bit_image_is_scaled_as_smoothly_as_its_rgb_original(mode: str) -> None:
    page = page_of_text((1400, 9000))  # over Claude's 8000 px a side
    source = page.quantize(64) if mode == "P" else page.convert("1")
    fitted = fit(Media(Modality.IMAGE, "image/png", data=png(source)), 1568)
    assert fitted is not None and fitted.data is not None
    sent = Image.open(io.BytesIO(fitted.data))
    assert max(sent.size) == 1568
    smooth = source.convert("RGB").resize(sent.size, Image.Resampling.LANCZOS)
    assert difference(sent, smooth) < 6, difference(sent, smooth)  # nearest neighbour: about 15


def test_a_sixteen_bit_grey_image_over_the_limits_is_scaled() -> None:
    values = (np.linspace(0, 60000, 8200)[None, :] * np.ones((600, 1))).astype(np.uint16)
    fitted = fit(Media(Modality.IMAGE, "image/png", data=png(Image.fromarray(values))), 1568)
    assert fitted is not None and fitted.data is not None
    sent = Image.open(io.BytesIO(fitted.data))
    assert max(sent.size) == 1568 and sent.mode == "L"
    assert sent.getextrema() == (0, 255)  # stretched to 8 bits, not clipped


def test_a_one_bit_tiff_fax_converted_for_a_model_stays_readable() -> None:
    page = page_of_text((1400, 4000)).convert("1")
    out = io.BytesIO()
    page.save(out, format="TIFF")
    pages = to_pages(Media(Modality.IMAGE, "image/tiff", data=out.getvalue()))
    assert pages is not None
    sent = Image.open(io.BytesIO(pages.images[0].data))
    smooth = page.convert("RGB").resize(sent.size, Image.Resampling.LANCZOS)
    assert difference(sent, smooth) < 6, difference(sent, smooth)
