"""Pictures drawn here with Pillow (a gradient sky, a sun, hills and a few shapes), so the
gallery's tests and the screenshots in docs/screenshots/ show images that are this
project's own and may be published with it. No image from anywhere else is used."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _colour(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_picture(path: Path, seed: int, size: tuple[int, int] = (480, 360)) -> Path:
    """A landscape-like picture, different for every seed; saved by the path's suffix."""
    rng = np.random.default_rng(seed)
    width, height = size
    hue = float(rng.random())
    top = np.array(_colour(hue, 0.55, 0.95), dtype=np.float32)
    bottom = np.array(_colour(hue + 0.12, 0.35, 0.55), dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1)
    picture = Image.fromarray(sky.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    sun_x, sun_y = rng.uniform(0.15, 0.85) * width, rng.uniform(0.12, 0.4) * height
    radius = rng.uniform(0.06, 0.12) * min(width, height)
    draw.ellipse(
        [sun_x - radius, sun_y - radius, sun_x + radius, sun_y + radius],
        fill=_colour(hue + 0.5, 0.5, 1.0),
    )
    for layer in range(3):  # hills, farther ones lighter
        base = height * (0.55 + 0.13 * layer)
        xs = np.linspace(0, width, 9)
        ys = base + rng.uniform(-0.12, 0.05, size=9) * height
        outline = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
        draw.polygon(
            [(0.0, float(height)), *outline, (float(width), float(height))],
            fill=_colour(hue + 0.25 + 0.05 * layer, 0.5, 0.75 - 0.2 * layer),
        )
    for _ in range(int(rng.integers(2, 6))):  # a few shapes in the foreground
        x, y = rng.uniform(0, width), rng.uniform(0.5, 1.0) * height
        r = rng.uniform(0.03, 0.08) * width
        shade = _colour(float(rng.random()), 0.6, 0.9)
        if rng.random() < 0.5:
            draw.rectangle([x - r, y - r, x + r, y + r], fill=shade)
        else:
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=shade)
    picture = picture.filter(ImageFilter.SMOOTH)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def draw_library(folder: Path, count: int) -> list[Path]:
    """``count`` pictures of a few shapes and formats (PNG and JPEG)."""
    shapes = [(480, 360), (360, 480), (400, 400), (640, 360)]
    return [
        draw_picture(
            folder / f"picture{i:02d}{'.jpg' if i % 3 == 0 else '.png'}", i, shapes[i % len(shapes)]
        )
        for i in range(count)
    ]
