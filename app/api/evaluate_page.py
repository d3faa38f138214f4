"""/evaluate's ``format=html`` answer (Danbooru autotagger's default): a small page with
each file's name and its tags with scores, plus the tags as one line to copy.

Everything from the request or the model is escaped; the page loads nothing else.
"""

from __future__ import annotations

from html import escape

from app.api.schemas import EvaluateItem

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Results</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem auto; max-width: 60rem; }}
section {{ border: 1px solid #ccc; border-radius: 4px; margin: 1rem 0; padding: 0.5rem; }}
td.score {{ color: #777; text-align: right; padding-left: 1rem; }}
textarea {{ width: 100%; }}
</style></head>
<body>
<h1>Results</h1>
{sections}
</body>
</html>
"""


def render_evaluate_page(items: list[EvaluateItem]) -> str:
    return _PAGE.format(sections="\n".join(_section(item) for item in items))


def _section(item: EvaluateItem) -> str:
    if item.error is not None:
        return (
            f"<section>\n<h2>{escape(item.filename)}</h2>\n"
            f'<p class="error">{escape(item.error.code)}: {escape(item.error.message)}</p>\n'
            "</section>"
        )
    rows = "\n".join(
        f'<tr><td class="tag">{escape(tag)}</td><td class="score">{100 * score:.0f}%</td></tr>'
        for tag, score in item.tags.items()
    )
    line = escape(" ".join(item.tags))
    return (
        f"<section>\n<h2>{escape(item.filename)}</h2>\n"
        f"<table>\n{rows}\n</table>\n"
        f'<textarea rows="4" readonly>{line}</textarea>\n</section>'
    )
