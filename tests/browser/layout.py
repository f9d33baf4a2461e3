"""Does a page fit the window? Measured in the browser, on what it actually drew.

:func:`layout_problems` lists, in words, what a reader of the page would miss or stumble on:

- the page scrolls sideways, or a column, cell, label or form row ends beyond the window's right edge;
- a scrolled or clipping container (the admin's ``.results`` around a list's table) hides part of
  its content: its ``scrollWidth`` exceeds its ``clientWidth``;
- a value clipped on purpose (``.clipped``) does not carry its full text in its title;
- a label, a column header or a heading breaks inside a word ("quarantine_threshold" on one line,
  ":" on the next): a word whose text boxes lie on more than one line.

An empty list means the page fits.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

#: Heights are free (the page scrolls down); the widths the admin must fit.
WIDTHS = (1024, 1440)
WINDOW_HEIGHT = 900

LAYOUT_PROBLEMS_JS = r"""
const problems = [];
const viewport = document.documentElement.clientWidth;
const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
    + (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\s+/).join(".") : "")
    + ' "' + el.textContent.trim().replace(/\s+/g, " ").slice(0, 40) + '"';

if (document.documentElement.scrollWidth > viewport) {
    problems.push(`the page scrolls sideways: ${document.documentElement.scrollWidth} px wide in a ${viewport} px window`);
}
for (const el of document.querySelectorAll("#content th, #content td, #content label, #content .form-row")) {
    const box = el.getBoundingClientRect();
    if (box.width > 0 && box.right > viewport + 0.5) {
        problems.push(`${name(el)} ends at ${Math.round(box.right)} px, beyond the ${viewport} px window`);
    }
}
for (const el of document.querySelectorAll("#content *")) {
    if (el.closest(".clipped")) continue;
    const overflow = getComputedStyle(el).overflowX;
    if (["auto", "scroll", "hidden", "clip"].includes(overflow) && el.scrollWidth > el.clientWidth + 1) {
        problems.push(`${name(el)} hides ${el.scrollWidth - el.clientWidth} px of its content (overflow-x: ${overflow})`);
    }
}
for (const el of document.querySelectorAll("#content .clipped")) {
    if (el.title !== el.textContent) problems.push(`${name(el)} is clipped without its full text in its title`);
}
for (const el of document.querySelectorAll("#content label, #content thead th, #content h1, #content h2, #content caption")) {
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        for (const word of node.textContent.matchAll(/\S+/g)) {
            const range = document.createRange();
            range.setStart(node, word.index);
            range.setEnd(node, word.index + word[0].length);
            const boxes = [...range.getClientRects()].filter((box) => box.width > 0);
            if (boxes.length > 1 && boxes.some((box) => box.top >= boxes[0].bottom - 1)) {
                problems.push(`"${word[0]}" breaks across lines in ${name(el)}`);
            }
        }
    }
}
return problems;
"""


def layout_problems(browser: Any) -> list[str]:
    """What does not fit on the page the browser shows (see the module's docstring); [] if all does."""
    return browser.execute_script(LAYOUT_PROBLEMS_JS)


def open_at_width(browser: Any, url: str, width: int) -> None:
    """Load ``url`` in a window ``width`` px wide (the page's own width: the window's inner width)."""
    browser.set_window_size(width, WINDOW_HEIGHT)
    inner = browser.execute_script("return window.innerWidth")
    if inner != width:  # the window's frame, if any, is not part of the page
        browser.set_window_size(2 * width - inner, WINDOW_HEIGHT)
    browser.get(url)


def full_page_screenshot(browser: Any, path: Path) -> None:
    """The whole page, as tall as it is, at the window's current width (Chromium's DevTools capture
    beyond the window: a headless window cannot grow taller than its virtual screen)."""
    width, height = browser.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollHeight]")
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })
    path.write_bytes(base64.b64decode(shot["data"]))
