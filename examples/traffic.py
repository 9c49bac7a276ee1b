"""A known mix of requests to the demo shop, and the counts it must produce.

Used by the demo to give the dashboards something to show, and by the tests
to check, through a real Prometheus, that every request was counted exactly.
"""

from __future__ import annotations

import collections
import urllib.error
import urllib.request

#: (method, path, expected route label, expected status, how many times)
MIX: list[tuple[str, str, str, int, int]] = [
    ("GET", "/", "/", 200, 5),
    ("GET", "/items/1", "/items/<int:item_id>", 200, 4),
    ("GET", "/items/3", "/items/<int:item_id>", 200, 3),
    ("GET", "/items/99", "/items/<int:item_id>", 404, 2),
    ("POST", "/items/1/buy", "/items/<int:item_id>/buy", 302, 2),
    ("POST", "/items/2/buy", "/items/<int:item_id>/buy", 409, 3),
    ("GET", "/boom", "/boom", 500, 2),
    ("GET", "/no/such/page", "", 404, 2),
    ("GET", "/wp-login.php", "", 404, 2),
    ("PUT", "/", "", 405, 1),
    ("GET", "/slow?ms=300", "/slow", 200, 1),
    ("GET", "/stream", "/stream", 200, 2),
    ("GET", "/healthz", "", 200, 3),  # excluded: never counted
]

#: Paths that the app does not measure.
EXCLUDED = {"/healthz"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # count the 302 itself, do not follow it


_opener = urllib.request.build_opener(_NoRedirect)


def request(base_url: str, method: str, path: str, timeout: float = 10.0) -> int:
    """Send one request; return its status (errors are statuses too)."""
    data = b"" if method in ("POST", "PUT") else None
    req = urllib.request.Request(base_url + path, method=method, data=data)
    try:
        with _opener.open(req, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)


def drive(base_url: str, rounds: int = 1) -> collections.Counter[tuple[str, str, str]]:
    """Send :data:`MIX` ``rounds`` times; return the expected request counts.

    :returns: (method, route, status) -> count, for the measured requests.
    :raises AssertionError: a response had another status than expected.
    """
    expected: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for _ in range(rounds):
        for method, path, route, status, times in MIX:
            for _ in range(times):
                got = request(base_url, method, path)
                if got != status:
                    raise AssertionError(f"{method} {path}: expected {status}, got {got}")
            if path.split("?")[0] not in EXCLUDED:
                expected[(method, route, str(status))] += times
    return expected
