"""Draw the pack's Registry icon (``icon.png``, 256x256): a tap on a stream between two blocks.

Run ``python -m devtools.make_icon`` to redraw it; the picture is committed (it ships with the pack).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
ICON = ROOT / "icon.png"
SIZE = 256


def draw_icon() -> Image.Image:
    """Two blocks joined by a stream, with a small adapter loop tapping it."""
    image = Image.new("RGB", (SIZE, SIZE), (24, 28, 40))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((28, 88, 100, 168), radius=14, fill=(70, 130, 220))
    draw.rounded_rectangle((156, 88, 228, 168), radius=14, fill=(70, 130, 220))
    draw.line((100, 128, 156, 128), fill=(230, 230, 240), width=8)
    draw.line((64, 88, 64, 52, 192, 52, 192, 88), fill=(250, 190, 40), width=8, joint="curve")
    draw.ellipse((112, 34, 144, 70), fill=(250, 190, 40))
    draw.text((86, 196), "TapTune", fill=(230, 230, 240))
    return image


if __name__ == "__main__":
    draw_icon().save(ICON, format="PNG", optimize=True)
    print(f"wrote {ICON}")
