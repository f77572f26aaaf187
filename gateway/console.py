"""The operator console: one static page (gateway/console.html) served by the app, no build step.

The page reads the operator routes (`/gateway/backends`, `/gateway/usage`, `/gateway/callers`, `/gateway/work`)
with the function key it was opened with (`?code=`), refreshes itself, and calls the backends' and callers'
`POST` actions. It
builds every value as a DOM text node, and its Content-Security-Policy allows only its own inline script and
style (by hash) and requests to this origin, so a caller name or an error message from outside can never run.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path

__all__ = ["page"]

_PAGE = Path(__file__).with_name("console.html")


@functools.cache
def page() -> tuple[bytes, dict[str, str]]:
    """The page and its headers (read and hashed once per process)."""
    html = _PAGE.read_text(encoding="utf-8")
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src " + _hashes(html, "script"),
            "style-src " + _hashes(html, "style"),
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    headers = {
        "content-type": "text/html; charset=utf-8",
        "content-security-policy": csp,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",  # the page's URL carries the function key
        "cache-control": "no-store",
    }
    return html.encode("utf-8"), headers


def _hashes(html: str, tag: str) -> str:
    """'sha256-...' sources for every inline <tag> block of the page."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'" for block in blocks
    )
