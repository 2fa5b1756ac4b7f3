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
    """Type ``name`` into Find, pick its option and wait until the panel is ``name``'s.

    When the option does not show within a few seconds (the list re-rendered and lost it),
    Enter picks the list's first match instead; the panel's title decides either way."""
    page.wait_for_function(GRAPH_DRAWN)
    for attempt in range(attempts):
        try:
            page.locator("#model-find").click()
            page.keyboard.press("Control+A")
            page.keyboard.type(name)
            try:
                page.get_by_role("option", name=name, exact=True).click(timeout=8_000)
            except PlaywrightTimeout:
                page.keyboard.press("Enter")
            page.wait_for_function(PANEL_NAMES, arg=name, timeout=20_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                _report(page, name)
                raise
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)


def _report(page, name: str) -> None:
    """Print what Find and the panel showed when the layer could not be opened."""
    state = page.evaluate("""() => {
        const f = document.getElementById('model-find');
        const t = document.getElementById('panel-layer');
        return {find: f ? f.innerText : null,
                active: document.activeElement ? document.activeElement.outerHTML
                    .slice(0, 200) : null,
                options: Array.from(document.querySelectorAll('[role=option]'),
                                    o => o.innerText).slice(0, 20),
                panel: t ? t.textContent : null};
    }""")
    print(f"open_layer({name!r}) failed; page state: {state}")
