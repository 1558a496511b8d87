"""The report's HTML as the tests read it: a tiny DOM and the index page's meta data.

`Dom(html).root` is a tree of `Node`s (stdlib HTMLParser, entities decoded) with
just enough to count elements and read text; `meta_of(index_html)` is the JSON
the index page embeds for its script (mode, row count, sort keys).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, dict(attrs), parent, [], ""

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag=None, cls=None, id=None):
        return [n for n in self.iter() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes())
                and (id is None or n.attrs.get("id") == id)]

    def all_text(self):
        return self.text + "".join(c.all_text() + c.tail for c in self.children)


class Dom(HTMLParser):
    """Enough of a DOM to count elements and read text (stdlib parser: entities decoded)."""

    VOID = {"meta", "link", "br", "img", "input", "line", "hr"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.root.tail = ""
        self.cur = self.root
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        n.tail = ""
        self.cur.children.append(n)
        if tag not in self.VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        n.tail = ""
        self.cur.children.append(n)

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        if self.cur.children:
            self.cur.children[-1].tail += data
        else:
            self.cur.text += data


def meta_of(index_html: str) -> dict:
    """The JSON of the index page's <script id="meta">."""
    m = re.search(r'<script id="meta" type="application/json">(.*?)</script>', index_html, re.S)
    return json.loads(m[1])
