"""What the browser loads and how it renders text: Chainlit's frontend bundle with the app's own
Markdown plugins, and a page that asks no other host for anything.

Reliance on Chainlit's internals (each one tested in tests/test_page.py; checked again at every
start, with an ERROR in the log when it no longer holds):

- The main bundle, named by the module script in ``frontend/dist/index.html``, builds the remark
  plugin list of its Markdown component as, minified,
  ``let l=[cursor,gfm,directive,alert];return latex&&(l=[...l,math]),l},[latex]);`` followed by
  ``className:cn("prose lg:prose-xl",...)``. It is served here with that list replaced by a call
  to ``window.geminiChat.remarkPlugins`` (public/gemini-chat.js): remark-directive turned
  "foo:bar" into "foo", and math follows pandoc's rules. Lazy chunks import the main bundle back
  by its path, so the patched copy is served at that same path.
- ``chainlit.server.serve`` renders the page with the module-level ``get_html_template``; a
  wrapper removes the ``<link>`` elements to other hosts (Google Fonts, jsdelivr's KaTeX CSS).
  public/theme.json's ``custom_fonts`` puts the app's own Inter and KaTeX stylesheets in their
  place.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import re
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

logger = logging.getLogger("gemini_chat")

ROUTE_NAME = "gemini_chat_bundle"
MAIN_BUNDLE = re.compile(r'<script type="module"[^>]*\bsrc="/(assets/index-[\w-]+\.js)"')
PLUGIN_LIST = re.compile(
    rb"let (?P<list>[\w$]+)=\[(?P<cursor>[\w$]+),(?P<gfm>[\w$]+),(?P<directive>[\w$]+),"
    rb"(?P<alert>[\w$]+)\];return (?P<latex>[\w$]+)&&\((?P=list)=\[\.\.\.(?P=list),"
    rb"(?P<math>[\w$]+)\]\),(?P=list)"
    rb'(?=\},\[(?P=latex)\]\);return [\w$.]+\([\w$]+,\{className:[\w$]+\("prose lg:prose-xl")'
)
# Without the app's script (it failed to load) the page still renders, without directives.
PATCHED_LIST = (
    rb"let \g<list>=[\g<cursor>,\g<gfm>,\g<alert>];return window.geminiChat?"
    rb"window.geminiChat.remarkPlugins(\g<latex>,\g<math>,\g<list>)"
    rb":\g<latex>?[...\g<list>,\g<math>]:\g<list>"
)
# Any <link> to another host: preconnects, Google Fonts' stylesheet, jsdelivr's KaTeX CSS.
OTHER_HOST_LINK = re.compile(r"""<link\b[^>]*?\bhref\s*=\s*["']?(?:https?:)?//[^>]*>\s*""", re.I)
# Anything that would make the browser fetch from another host.
OTHER_HOST_REFERENCE = re.compile(
    r"""(?:\b(?:src|href|srcset)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)(?:https?:)?//[^\s"')>]+""",
    re.I,
)


def chainlit_version() -> str:
    return version("chainlit")


def main_bundle_path(index_html: str) -> str | None:
    """The main bundle's path under the app root ("assets/index-....js"), from index.html."""
    found = MAIN_BUNDLE.findall(index_html)
    return found[0] if len(found) == 1 else None


def patch_bundle(source: bytes) -> bytes | None:
    """The bundle with its remark plugin list handed to the app's script; None when the list is
    not found exactly once."""
    found = list(PLUGIN_LIST.finditer(source))
    if len(found) != 1:
        return None
    match = found[0]
    patched = match.expand(PATCHED_LIST)
    return source[: match.start()] + patched + source[match.end() :]


@dataclass(frozen=True)
class Bundle:
    """The patched main bundle, computed once: plain, gzipped and its ETag."""

    path: str
    body: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def of(cls, path: str, body: bytes) -> Bundle:
        etag = '"gc-' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return cls(path, body, gzip.compress(body, 6, mtime=0), etag)

    def matches(self, if_none_match: str | None) -> bool:
        if not if_none_match:
            return False
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or self.etag in tags

    async def serve(self, request: Request) -> Response:
        # Revalidated on every load: the content can change under the same URL when the app
        # changes its patch, and a browser that holds Chainlit's original must get this one.
        headers = {"etag": self.etag, "cache-control": "no-cache", "vary": "accept-encoding"}
        if self.matches(request.headers.get("if-none-match")):
            return Response(status_code=304, headers=headers)
        body = self.body
        if accepts_gzip(request.headers.get("accept-encoding", "")):
            body = self.gzipped
            headers["content-encoding"] = "gzip"
        return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)


def accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.lower().split(","):
        name, _, params = item.partition(";")
        if name.strip() == "gzip":
            quality = params.replace(" ", "").removeprefix("q=") or "1"
            try:
                return float(quality) > 0
            except ValueError:
                return True
    return False


@functools.cache
def load_bundle(build_dir: str) -> Bundle | None:
    """The patched main bundle of Chainlit's frontend in ``build_dir``, or None (logged as an
    error: the page then gets Chainlit's own bundle)."""
    index_html = (Path(build_dir) / "index.html").read_text(encoding="utf-8")
    path = main_bundle_path(index_html)
    if path is None:
        logger.error(
            "Chainlit %s: no single main bundle in its index.html; text after a colon will be "
            "hidden and prices may show as formulas",
            chainlit_version(),
        )
        return None
    patched = patch_bundle((Path(build_dir) / path).read_bytes())
    if patched is None:
        logger.error(
            "Chainlit %s: the Markdown plugin list was not found once in %s; serving it "
            "unchanged, so text after a colon will be hidden and prices may show as formulas",
            chainlit_version(),
            path,
        )
        return None
    return Bundle.of(path, patched)


def local_only(html: str) -> str:
    """The page without its links to other hosts."""
    return OTHER_HOST_LINK.sub("", html)


def with_page_settings(html: str, max_message_chars: int) -> str:
    """The page with what public/gemini-chat.js needs to know of the server's settings."""
    meta = f'<meta name="gemini-chat:max-message-chars" content="{int(max_message_chars)}">'
    return html.replace("</head>", f"{meta}\n</head>", 1)


def install_html_rewrite(max_message_chars: int) -> None:
    """Make Chainlit's index route serve the page without links to other hosts, and with the
    longest message the chat takes (the page refuses a longer one before sending it)."""
    import chainlit.server as server

    original = getattr(server.get_html_template, "__wrapped__", server.get_html_template)

    @functools.wraps(original)
    def get_html_template(root_path):
        return with_page_settings(local_only(original(root_path)), max_message_chars)

    server.get_html_template = get_html_template
    if "get_html_template" not in server.serve.__code__.co_names:
        logger.error(
            "Chainlit %s: its index route no longer calls get_html_template; the page will "
            "load fonts and styles from other hosts",
            chainlit_version(),
        )
        return
    try:
        left = OTHER_HOST_REFERENCE.findall(get_html_template(""))
    except Exception:  # the page itself will show this error; here it is only a check
        logger.exception("Could not render Chainlit's page to check it")
        return
    if left:
        logger.error(
            "Chainlit %s: the page still loads from other hosts: %s", chainlit_version(), left
        )


def install_frontend(app, max_message_chars: int) -> None:
    """Serve the patched bundle and the local-only page; safe to call again on a reload."""
    from chainlit.config import config
    from chainlit.server import build_dir

    install_html_rewrite(max_message_chars)
    routes = app.router.routes
    routes[:] = [route for route in routes if getattr(route, "name", None) != ROUTE_NAME]
    bundle = load_bundle(build_dir)
    if bundle is not None:
        path = f"{config.run.root_path}/{bundle.path}"
        routes.insert(0, Route(path, bundle.serve, methods=["GET"], name=ROUTE_NAME))
