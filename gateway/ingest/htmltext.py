"""HTML bodies: readable text for the ticket, sanitised HTML for display.

Text extraction walks the HTML with the standard library's tolerant parser: paragraphs
and line breaks kept, list items as bullets, links as ``text <url>``, scripts, styles
and hidden parts gone.  Sanitising uses nh3 (the Rust ammonia allowlist sanitizer),
never regular expressions.
"""

from __future__ import annotations

import html as html_lib
import re
from html.parser import HTMLParser

import nh3

_BLOCK = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table",
          "blockquote", "pre", "hr", "section", "article", "header", "footer", "address", "dd", "dt"}
_SKIP = {"script", "style", "head", "title", "noscript", "template", "svg", "object", "iframe"}
_VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "wbr"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_stack: list[str] = []
        self.links: list[str | None] = []
        self.pre = 0

    def _hidden(self, attrs) -> bool:
        d = {k.lower(): (v or "") for k, v in attrs}
        style = d.get("style", "").replace(" ", "").lower()
        return "hidden" in d or "display:none" in style or "visibility:hidden" in style

    def handle_starttag(self, tag, attrs):
        tag = tag.lower()
        if self.skip_stack:
            if tag not in _VOID:
                self.skip_stack.append(tag)
            return
        if tag in _SKIP or (tag not in _VOID and self._hidden(attrs)):
            self.skip_stack.append(tag)
            return
        if tag == "pre":
            self.pre += 1
        if tag in _BLOCK:
            self.out.append("\n")
            if tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "ul", "ol"):
                self.out.append("\n")
        if tag == "li":
            self.out.append("- ")
        if tag in ("td", "th"):
            self.out.append("\t")
        if tag == "a":
            self.links.append(dict(attrs).get("href"))
        if tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.out.append(f"[{alt}]")

    def handle_endtag(self, tag):
        tag = tag.lower()
        if self.skip_stack:
            if self.skip_stack[-1] == tag:
                self.skip_stack.pop()
            elif tag in self.skip_stack:
                while self.skip_stack and self.skip_stack.pop() != tag:
                    pass
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag == "a" and self.links:
            href = self.links.pop()
            if href and href.lower().startswith(("http:", "https:", "mailto:")):
                text_so_far = "".join(self.out[-3:])
                target = href[7:] if href.lower().startswith("mailto:") else href
                if target not in text_so_far:
                    self.out.append(f" <{target}>")
        # A list item ends where the next begins: no blank line between items.
        if tag in _BLOCK and tag != "li":
            self.out.append("\n")
            if tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "ul", "ol"):
                self.out.append("\n")

    def handle_data(self, data):
        if self.skip_stack:
            return
        if self.pre:
            self.out.append(data)
        else:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """Readable plain text from an HTML body."""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # html.parser is tolerant; be safe anyway
        return html_lib.unescape(re.sub(r"<[^>]*>", " ", markup))
    text = "".join(parser.out)
    lines = [line.strip(" \t") if not line.startswith("\t") else line.strip() for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    """Remote content is blocked: an image loads only from the mail itself (``cid:``) or
    inline data, never from a tracker's server; a link never opens a ``data:`` document."""
    low = value.strip().lower()
    if tag == "img" and attribute == "src" and not low.startswith(("cid:", "data:image/")):
        return None
    if attribute == "href" and low.startswith("data:"):
        return None
    return value


def sanitize_html(markup: str) -> str:
    """HTML safe to display: allowlisted tags and attributes, no scripts, no event
    handlers, no remote images."""
    return nh3.clean(markup, url_schemes={"http", "https", "mailto", "cid", "data"}, attribute_filter=_attribute_filter)
