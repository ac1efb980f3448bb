"""Debian's Chromium under Playwright, launched one way for every browser test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, async_playwright

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Screenshots the tests take, to be looked at.
ARTIFACTS = Path(__file__).parent / "artifacts"


@asynccontextmanager
async def launch_chromium(path: str = CHROMIUM) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


async def clipboard_holds(page, text: str, timeout: float = 10.0) -> None:
    """Wait until the page's clipboard holds ``text``: a copy button writes it asynchronously,
    after its click has returned. Fails with what the clipboard held last."""
    from tests.db import eventually

    held: list[str] = [""]

    async def holds() -> bool:
        held[0] = await page.evaluate("navigator.clipboard.readText()")
        return held[0] == text

    try:
        await eventually(holds, timeout, what="the copied text")
    except AssertionError:
        assert held[0] == text  # shows both texts
