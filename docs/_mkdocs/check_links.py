"""MkDocs hook: every link and image in the built site that stays inside it
leads to a file that exists, and to an element with that id when it names
one. A broken one is a warning, so `mkdocs build --strict` fails on it.

MkDocs itself checks the links written in Markdown; this also covers what
plugins and the theme generate (the API reference's cross-references, the
navigation)."""
import logging
import os
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

log = logging.getLogger("mkdocs.hooks.check_links")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links = []
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        self.links += [attrs[attr] for attr in ("href", "src") if attrs.get(attr)]


def _parse(path, cache):
    if path not in cache:
        page = _Page()
        with open(path, encoding="utf-8") as f:
            page.feed(f.read())
        cache[path] = page
    return cache[path]


def on_post_build(config, **kwargs):
    site = config["site_dir"]
    base = urlsplit(config["site_url"] or "/").path.rstrip("/") + "/"
    cache = {}
    broken = 0
    for folder, _, files in os.walk(site):
        for name in files:
            if not name.endswith(".html"):
                continue
            page_path = os.path.join(folder, name)
            for link in _parse(page_path, cache).links:
                url = urlsplit(link)
                if url.scheme or url.netloc:
                    continue
                path = unquote(url.path)
                if path.startswith("/"):  # the 404 page links from the site's root
                    if not path.startswith(base):
                        log.warning("%s: link to %s: outside the site", os.path.relpath(page_path, site), link)
                        broken += 1
                        continue
                    path = os.path.join(site, path[len(base):])
                target = page_path if not path else os.path.normpath(os.path.join(folder, path))
                if os.path.isdir(target):
                    target = os.path.join(target, "index.html")
                where = os.path.relpath(page_path, site)
                if not os.path.isfile(target):
                    log.warning("%s: link to %s: no such file in the site", where, link)
                    broken += 1
                elif url.fragment and target.endswith(".html") and \
                        unquote(url.fragment) not in _parse(target, cache).ids:
                    log.warning("%s: link to %s: no element with that id", where, link)
                    broken += 1
    log.info("check_links: %d pages, %d broken links", sum(p.endswith(".html") for p in cache), broken)
