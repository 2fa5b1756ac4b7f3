"""Talk to a real dashboard's Dash callbacks over plain HTTP, as dash-renderer does.

The request shapes come from the server's own ``/_dash-dependencies``, so the tests send exactly
what a browser (or an attacker with curl) would.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def outputs_of(spec: str) -> list[tuple[str, str]]:
    """``..a.b...c.d..`` (a multi-output callback) or ``a.b`` as [(id, property)]."""
    if spec.startswith(".."):
        items = spec.strip(".").split("...")
    else:
        items = [spec.split("@")[0]]
    out = []
    for it in items:
        cid, prop = it.split("@")[0].rsplit(".", 1)
        out.append((cid, prop))
    return out


def dependencies(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url + "/_dash-dependencies", timeout=30) as r:
        return json.load(r)


def payload(dep: dict[str, Any], values: dict[str, Any], changed: str | None = None) -> dict:
    """The body of ``/_dash-update-component`` for callback ``dep`` with these input and state
    values (``{"id.property": value}``; missing ones are None)."""
    outs = outputs_of(dep["output"])
    multi = dep["output"].startswith("..")

    def items(kind: str) -> list[dict]:
        return [{"id": i["id"], "property": i["property"],
                 "value": values.get(f"{i['id']}.{i['property']}")} for i in dep.get(kind, [])]

    return {
        "output": dep["output"],
        "outputs": ([{"id": c, "property": p} for c, p in outs] if multi
                    else {"id": outs[0][0], "property": outs[0][1]}),
        "inputs": items("inputs"), "state": items("state"),
        "changedPropIds": [changed or "{id}.{property}".format(**dep["inputs"][0])],
    }


def post(url: str, body: dict, *, referer: str = "/", timeout: float = 120
         ) -> tuple[int, bytes]:
    """POST a callback body as the browser does (same-origin JSON); (status, raw answer)."""
    req = urllib.request.Request(
        url + "/_dash-update-component", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Origin": url, "Referer": url + referer})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def find(deps: list[dict[str, Any]], output_id: str) -> dict[str, Any]:
    """The (server-side) callback whose first output is component ``output_id``."""
    return next(d for d in deps if not d.get("clientside_function")
                and outputs_of(d["output"])[0][0] == output_id)


def call(url: str, output_id: str, values: dict[str, Any], changed: str | None = None, *,
         referer: str = "/", timeout: float = 120) -> tuple[int, bytes]:
    """POST the callback whose first output is component ``output_id``; (status, raw answer)."""
    dep = find(dependencies(url), output_id)
    return post(url, payload(dep, values, changed), referer=referer, timeout=timeout)


class DashClient:
    """A server's callbacks by their first output (``"id.property"``); each answer's status and
    JSON, asserting the server did not fail (200 or 204)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.deps: dict[str, dict[str, Any]] = {}
        for d in dependencies(url):
            if d.get("clientside_function"):
                continue
            self.deps.setdefault("{}.{}".format(*outputs_of(d["output"])[0]), d)

    def call(self, output: str, values: dict, changed: str | None = None) -> tuple[int, dict]:
        status, raw = post(self.url, payload(self.deps[output], values, changed))
        text = raw.decode(errors="replace")
        assert status in (200, 204), f"{output} answered {status}: {text[-2000:]}"
        return status, (json.loads(text)["response"] if status == 200 and text else {})
