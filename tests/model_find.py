"""Open a layer's panel on the Model page through "Find a layer", as a user types it.

The graph and Find's options come from one callback, and the page's first callbacks may refresh
those options while the list is open: the list then re-renders under the pointer, the typed text
can be lost (the option never appears) or a click meant for "conv1" lands on "layer1.1.conv1".
Every step is therefore retried, from a closed list, until the panel names the layer asked for;
a wrong layer is seen (the panel's title is checked), never taken for the right one.
"""

from __future__ import annotations

from playwright.sync_api import TimeoutError as PlaywrightTimeout

GRAPH_DRAWN = ("() => { const el = document.getElementById('model-graph');"
               " return el && el._cyreg && el._cyreg.cy.nodes().length > 0; }")
PANEL_NAMES = ("name => { const t = document.getElementById('panel-layer');"
               " return t && t.textContent === name; }")


def open_layer(page, name: str, attempts: int = 4) -> None:
    """Type ``name`` into Find, pick its option and wait until the panel is ``name``'s."""
    page.wait_for_function(GRAPH_DRAWN)
    for attempt in range(attempts):
        try:
            page.locator("#model-find").click()
            page.keyboard.press("Control+A")
            page.keyboard.type(name)
            page.get_by_role("option", name=name, exact=True).click(timeout=15_000)
            page.wait_for_function(PANEL_NAMES, arg=name, timeout=20_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)
