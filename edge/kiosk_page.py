"""The kiosk page's HTML: results and visitor states, rendered on the server (``edge serve``).

The same fragments serve the page without JavaScript (a form GET of ``/?q=``) and with it
(``kiosk.js`` fetches ``/?_fragment=1&q=`` and swaps the block in), so there is one renderer. Every
string from a capsule or a query is escaped here (``html.escape``); highlight spans are code
points into the hit's text, as ``edge.retrieval.mark`` returns them.
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

__all__ = ["VISITOR_MESSAGES", "asset", "render_hits", "render_state"]


def asset(name: str) -> str:
    """The text of a file shipped in ``edge/kiosk/`` (UTF-8)."""
    return resources.files("edge").joinpath("kiosk", name).read_text(encoding="utf-8")


#: What a visitor reads for each state (the operator's detail goes to the log).
VISITOR_MESSAGES = {
    "no-entry": "No entry for {identifiers}.",
    "no-result": "Nothing found for that question.",
    "expired": "This information has expired. Please ask staff.",
    "not-yet-valid": "This information is not available yet. Please ask staff.",
    "busy": "Busy. Please try again in a moment.",
    "no-capsule": "No information is installed yet. Please ask staff.",
    "unknown-capsule": "That information is not installed. Please ask staff.",
    "bad-request": "Please type a shorter question.",
    "refused": "This question cannot be answered here. Please ask staff.",
    "error": "Something went wrong. Please ask staff.",
}


def _marked(text: str, spans: list[tuple[int, int]] | tuple, start: int, end: int) -> str:
    """HTML of ``text[start:end]`` with the highlight spans (code points) in ``<mark>``."""
    out, pos = [], start
    for lo, hi in spans:
        if lo < pos or hi > end:
            continue
        out.append(html.escape(text[pos:lo]))
        out.append("<mark>" + html.escape(text[lo:hi]) + "</mark>")
        pos = hi
    out.append(html.escape(text[pos:end]))
    return "".join(out)


def render_hits(payload: dict[str, Any]) -> str:
    """The results block of the kiosk page for a search response (HTML fragment)."""
    hits = payload["hits"]
    parts: list[str] = []
    if payload.get("exact_match") is False:
        # The code typed occurs nowhere: say so, and show no passage that merely looks near.
        wanted = html.escape(payload.get("query", "").strip()[:80])
        return f'<p class="state state-none" role="status">No entry for <strong>{wanted}</strong>.</p>'
    if not hits:
        return f'<p class="state state-none" role="status">{VISITOR_MESSAGES["no-result"]}</p>'
    parts.append('<ol class="hits">')
    for hit in hits:
        text = hit["text"]
        spans = [tuple(s) for s in hit.get("highlights", [])]
        answer = hit.get("answer") or [0, min(len(text), 240)]
        path = [t for n, t in enumerate(hit.get("heading_path") or []) if n == 0 or t != hit["heading_path"][n - 1]]
        heading = " › ".join(path) or hit["document"]
        parts.append(
            '<li class="hit">'
            f'<p class="heading">{html.escape(heading)}</p>'
            f'<p class="answer">{_marked(text, spans, answer[0], answer[1])}</p>'
            '<details><summary>Show the whole passage</summary>'
            f'<div class="chunk">{_marked(text, spans, 0, len(text))}</div>'
            f'<p class="source">{html.escape(hit["document"])} · {html.escape(hit.get("capsule", ""))}</p>'
            "</details></li>")
    parts.append("</ol>")
    return "".join(parts)


def render_state(reason: str) -> str:
    """The results block for a visitor-facing state (``VISITOR_MESSAGES`` key)."""
    message = VISITOR_MESSAGES.get(reason, VISITOR_MESSAGES["error"])
    return f'<p class="state state-{html.escape(reason)}" role="status">{html.escape(message)}</p>'
