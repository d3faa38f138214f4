"""Headless Chromium for the web gallery's tests (Debian's package, driven by Playwright),
and the accessibility checks they run on a page."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


# WCAG 2.1 AA: 4.5:1 for text (3:1 when large), 3:1 for the focus indicator.
CONTRAST_JS = """
() => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const [r, g, b, a] = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return [r, g, b, a === undefined ? 1 : a];
  };
  const over = (top, below) => {
    const a = top[3];
    return [0, 1, 2].map(i => top[i] * a + below[i] * (1 - a)).concat(1);
  };
  const background = (el) => {
    const layers = [];
    for (let node = el; node; node = node.parentElement) {
      const c = parse(getComputedStyle(node).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let colour = [255, 255, 255, 1];
    for (const layer of layers.reverse()) colour = over(layer, colour);
    return colour;
  };
  const luminance = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const ratio = (a, b) => {
    const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  window.contrastOf = (el, pseudo) => {
    const style = getComputedStyle(el, pseudo);
    const bg = background(el);
    const fg = over(parse(style.color), bg);
    return ratio(fg, bg);
  };
  window.outlineContrastOf = (el) => {
    const style = getComputedStyle(el);
    return ratio(parse(style.outlineColor), background(el.parentElement || el));
  };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.checkVisibility()) continue;
    const style = getComputedStyle(el);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    const r = window.contrastOf(el);
    const what = `${el.tagName}#${el.id}.${el.className} "${el.textContent.trim().slice(0, 30)}"`;
    if (r < (large ? 3 : 4.5)) low.push(`${what}: ${r.toFixed(2)}`);
  }
  for (const el of document.querySelectorAll("input[placeholder]")) {
    if (!el.checkVisibility()) continue;
    const r = window.contrastOf(el, "::placeholder");
    if (r < 4.5) low.push(`placeholder of #${el.id}: ${r.toFixed(2)}`);
  }
  return low;
}
"""


NAMES_JS = """
() => {
  const unnamed = [];
  const named = (el) => Boolean(
    (el.labels && el.labels.length && [...el.labels].some(l => l.textContent.trim()))
    || el.getAttribute("aria-label")?.trim()
    || el.getAttribute("aria-labelledby")
    || (["BUTTON", "A", "SUMMARY"].includes(el.tagName) && el.textContent.trim())
    || el.title?.trim()
  );
  const controls = "input, select, textarea, button, a, summary, [role=meter]";
  for (const el of document.querySelectorAll(controls)) {
    if (el.type === "hidden" || !el.checkVisibility()) continue;
    if (!named(el)) unnamed.push(el.outerHTML.slice(0, 80));
  }
  for (const img of document.querySelectorAll("img")) {
    if (!img.hasAttribute("alt")) unnamed.push(img.outerHTML.slice(0, 80));
  }
  if (!document.documentElement.lang) unnamed.push("<html> without lang");
  return unnamed;
}
"""


def check_names_and_contrast(page: Any, where: str) -> None:
    assert page.evaluate(NAMES_JS) == [], f"{where}: controls without a name"
    assert page.evaluate(CONTRAST_JS) == [], f"{where}: text below WCAG AA contrast"
