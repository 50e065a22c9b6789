"""The report's blocks (heading, paragraph, table, image, code) and their two renderings:
markdown with images linked, and one self-contained HTML file with images embedded, so the two
never disagree."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Block:
    """One piece of the report: kind is h1 | h2 | p | table | frame | image | code."""

    kind: str
    content: Any
    caption: str = ""


def to_markdown(blocks: list[Block], out: Path) -> str:
    """report.md: tables inline, images linked relative to the report folder."""
    parts = []
    for b in blocks:
        if b.kind == "h1":
            parts.append(f"# {b.content}")
        elif b.kind == "h2":
            parts.append(f"## {b.content}")
        elif b.kind == "p":
            parts.append(str(b.content))
        elif b.kind == "code":
            parts.append(f"```yaml\n{b.content.rstrip()}\n```")
        elif b.kind == "table":
            parts.append(b.content.to_markdown())
        elif b.kind == "frame":
            parts.append(b.content.to_markdown(index=False, disable_numparse=True))
            if b.caption:
                parts.append(f"*{b.caption}*")
        elif b.kind == "image":
            rel = Path(b.content).relative_to(out).as_posix()
            svg = (
                f" ([SVG]({rel[:-4]}.svg))" if Path(b.content).with_suffix(".svg").exists() else ""
            )
            parts.append(f"![{b.caption}]({rel})\n\n*{b.caption}*{svg}")
    return "\n\n".join(parts) + "\n"


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
caption { caption-side: top; font-weight: 600; text-align: left; padding-bottom: 0.3em; }
img { max-width: 100%; } figure { margin: 1.5em 0; } pre { background: #f5f5f5; padding: 1em; }
"""


def to_html(blocks: list[Block], grid: str | None) -> str:
    """report.html: one self-contained file, images embedded as base64 PNG."""
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2", "p"):
            body.append(f"<{b.kind}>{html.escape(str(b.content))}</{b.kind}>")
        elif b.kind == "code":
            body.append(f"<pre>{html.escape(b.content)}</pre>")
        elif b.kind == "table":
            body.append(b.content.to_html())
        elif b.kind == "frame":
            body.append(b.content.to_html(index=False, na_rep="-", border=0))
            if b.caption:
                body.append(f"<p><em>{html.escape(b.caption)}</em></p>")
        elif b.kind == "image":
            data = base64.b64encode(Path(b.content).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.caption)}">'
                f"<figcaption>{html.escape(b.caption)}</figcaption></figure>"
            )
    title = html.escape(f"cfh report {grid or 'all runs'}")
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
