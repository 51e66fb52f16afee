"""The web playground: one self-contained page, assembled from package data, that the ingress serves.

The page's stylesheet and script are inlined so it needs no other route and nothing from the internet;
a Content-Security-Policy with their hashes lets the browser run exactly those and talk only to this origin.
"""
from functools import cache
from importlib.resources import files
import base64
import hashlib

from fastapi.responses import HTMLResponse

STYLE_TAG = '<link rel="stylesheet" href="playground.css">'
SCRIPT_TAG = '<script src="playground.js"></script>'


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@cache
def _page() -> tuple[str, str]:
    """The page's HTML and its Content-Security-Policy, read once per process."""
    web = files("serve_app.ingress") / "web"
    style, script = (web / "playground.css").read_text(), (web / "playground.js").read_text()
    html = (web / "index.html").read_text()
    html = html.replace(STYLE_TAG, f"<style>{style}</style>").replace(SCRIPT_TAG, f"<script>{script}</script>")
    policy = (f"default-src 'none'; script-src {_digest(script)}; style-src {_digest(style)}; "
              "connect-src 'self'; media-src blob:; img-src data:; base-uri 'none'; form-action 'none'")
    return html, policy


def playground_page() -> HTMLResponse:
    """The page; it holds no secret, so it is served without the API key (the user types it in)."""
    html, policy = _page()
    return HTMLResponse(html, headers={"Content-Security-Policy": policy, "Cache-Control": "no-cache"})
