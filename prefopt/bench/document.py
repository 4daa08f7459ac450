"""A report as a list of blocks (headings, paragraphs, tables, figures), written out as Markdown or as one HTML
page with its figures inlined, so the two files always say the same thing."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Doc:
    """The blocks of a report in order; to_markdown and to_html write it out."""

    blocks: list[tuple] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def para(self, *segments) -> None:
        """Segments: plain str, or ("code", str) / ("b", str)."""
        self.blocks.append(("p", [s if isinstance(s, tuple) else ("t", s) for s in segments]))

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", headers, rows))

    def figure(self, name: str, rel: str, png: bytes, caption: str) -> None:
        self.blocks.append(("fig", name, rel, png, caption))


def _md_text(s: str) -> str:
    return re.sub(r"([\\`*<>])", r"\\\1", s)


def _md_code(s: str) -> str:
    ticks = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def _md_segments(segments) -> str:
    out = []
    for kind, s in segments:
        out.append(_md_code(s) if kind == "code" else f"**{_md_text(s)}**" if kind == "b" else _md_text(s))
    return "".join(out)


def _md_cell(s: str) -> str:
    return _md_text(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Doc) -> str:
    parts = []
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            parts.append("#" * block[1] + " " + _md_text(block[2]))
        elif kind == "p":
            parts.append(_md_segments(block[1]))
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |"]
            lines.append("|" + "|".join(":---" if i == 0 else "---:" for i in range(len(headers))) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            parts.append("\n".join(lines))
        elif kind == "fig":
            _, name, rel, _png, caption = block
            parts.append(f"![{_md_text(name)}]({rel})\n\n*{_md_text(caption)}*")
    return "\n\n".join(parts) + "\n"


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
td.text{white-space:normal;text-align:left;min-width:14em;max-width:28em;vertical-align:top}
th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1.5em 0}
img{max-width:100%;height:auto}
figcaption{font-style:italic;color:#555}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px;word-break:break-all}
"""


LONG_CELL = 40  # characters: a longer cell (an example reply) wraps in the HTML table instead of widening it


def _html_cell(text: str) -> str:
    return f'<td class="text">{html.escape(text)}</td>' if len(text) > LONG_CELL else f"<td>{html.escape(text)}</td>"


def to_html(doc: Doc, title: str) -> str:
    esc = html.escape
    body = []
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif kind == "p":
            segs = []
            for k, s in block[1]:
                segs.append(f"<code>{esc(s)}</code>" if k == "code" else f"<strong>{esc(s)}</strong>" if k == "b"
                            else esc(s))
            body.append(f"<p>{''.join(segs)}</p>")
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines = ["<table>", "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>",
                     "<tbody>"]
            lines += ["<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in rows]
            lines += ["</tbody>", "</table>"]
            body.append("\n".join(lines))
        elif kind == "fig":
            _, name, _rel, png, caption = block
            data = base64.b64encode(png).decode("ascii")
            body.append(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(caption)}</figcaption></figure>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
