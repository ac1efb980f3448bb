"""Starters: ready-made first messages under the welcome of a new chat. Clicked in Chromium
through Chainlit's real frontend; their configuration, and what a client may do with them over
HTTP and the socket, checked beside."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from gemini_chat.config import ConfigError, load_settings
from gemini_chat.starters import DEFAULT_STARTERS, Starter, parse_starters
from tests.chat_client import ChatClient
from tests.chromium import ARTIFACTS
from tests.db import eventually
from tests.fake_gemini import Reply
from tests.test_browser import type_and_send
from tests.test_export_share import fetch

WELCOME = "Ask me anything"


# --- configuration ------------------------------------------------------------------------------


def test_starters_are_read_from_chat_starters():
    assert load_settings({}).starters == DEFAULT_STARTERS
    assert load_settings({"CHAT_STARTERS": ""}).starters == DEFAULT_STARTERS
    assert load_settings({"CHAT_STARTERS": "none"}).starters == ()
    assert parse_starters(" Say  hi | Hello there! ; Tea|How do I brew green tea? ;") == (
        Starter("Say hi", "Hello there!"),
        Starter("Tea", "How do I brew green tea?"),
    )
    # A bar in the message is the message's.
    assert parse_starters("Pipes|What does a | do in a shell?") == (
        Starter("Pipes", "What does a | do in a shell?"),
    )


@pytest.mark.parametrize(
    "value",
    [
        "just a message",
        "|no label",
        "no message|",
        "a|x;b|x",
        ";".join(["a|b"] * 7),
        "x" * 41 + "|m",
    ],
)
def test_a_malformed_chat_starters_stops_the_start_naming_it(value):
    with pytest.raises(ConfigError, match="CHAT_STARTERS"):
        load_settings({"CHAT_STARTERS": value})


# --- in the browser -----------------------------------------------------------------------------


async def new_chat(browser, app):
    page = await browser.new_page(viewport={"width": 1100, "height": 760})
    await page.goto(app.url)
    await page.get_by_text(WELCOME).wait_for(timeout=30_000)
    return page


def starter_buttons(page):
    welcome = page.locator(".step[data-step-type='assistant_message']", has_text=WELCOME)
    return welcome.get_by_role("button").filter(has_not=page.locator("svg.lucide-copy"))


@pytest.mark.browser
async def test_a_new_chat_offers_starters_and_clicking_one_sends_it(browser, app, gemini):
    page = await new_chat(browser, app)
    labels = [s.label for s in DEFAULT_STARTERS]
    for label in labels:
        await expect(page.get_by_role("button", name=label, exact=True)).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "starters.png")

    chosen = DEFAULT_STARTERS[2]
    gemini.script(Reply("Day one: Alfama at dawn."))
    await page.get_by_role("button", name=chosen.label, exact=True).click()
    # It is sent as the user's message, shown as typed, and answered.
    question = page.locator(".step[data-step-type='user_message'] .message-content").last
    await expect(question).to_have_text(chosen.message, timeout=15_000)
    await page.get_by_text("Day one: Alfama at dawn.").wait_for(timeout=15_000)
    request = (await gemini.arrived(1))[0]
    assert request.conversation[1:] == [("user", chosen.message)]
    # The chat has begun: the starters are gone, and the next message continues it.
    for label in labels:
        await expect(page.get_by_role("button", name=label, exact=True)).to_have_count(0)
    gemini.script(Reply("Day two: Belém."))
    await type_and_send(page, "And day two?")
    await page.get_by_text("Day two: Belém.").wait_for(timeout=15_000)
    assert (await gemini.arrived(2))[1].conversation[1:] == [
        ("user", chosen.message),
        ("assistant", "Day one: Alfama at dawn."),
        ("user", "And day two?"),
    ]


@pytest.mark.browser
async def test_typing_first_takes_the_starters_away(browser, app, gemini):
    page = await new_chat(browser, app)
    await expect(page.get_by_role("button", name=DEFAULT_STARTERS[0].label)).to_be_visible()
    gemini.script(Reply("Hi!"))
    await type_and_send(page, "Hello")
    await page.get_by_text("Hi!", exact=True).wait_for(timeout=15_000)
    await expect(page.get_by_role("button", name=DEFAULT_STARTERS[0].label)).to_have_count(0)


@pytest.mark.browser
async def test_configured_starters_are_shown_and_checked_like_typed_messages(
    browser, start_app_with, gemini
):
    """CHAT_STARTERS replaces the defaults; a starter's message meets the same checks as a
    typed one (here, one over MAX_MESSAGE_CHARS is refused with the usual notice)."""
    app = start_app_with(
        CHAT_STARTERS="Say hi|Hello there!;Essay|" + "word " * 30, MAX_MESSAGE_CHARS="100"
    )
    page = await new_chat(browser, app)
    await expect(page.get_by_role("button", name="Say hi", exact=True)).to_be_visible()
    assert await page.get_by_role("button", name=DEFAULT_STARTERS[0].label).count() == 0
    await page.get_by_role("button", name="Essay", exact=True).click()
    await page.get_by_text("characters long; the limit is 100.", exact=False).wait_for(
        timeout=15_000
    )
    assert gemini.requests == []


# --- over HTTP and the socket -------------------------------------------------------------------


async def test_only_an_offered_starter_can_be_clicked_and_only_once(app, gemini):
    client = ChatClient(app.url)
    for event in ("action", "remove_action"):
        client.sio.on(event, client._handler(event))
    await client.connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    offered = await client.wait_for(
        lambda: (
            actions
            if len(actions := [d for n, d in client.events if n == "action"])
            == len(DEFAULT_STARTERS)
            else None
        ),
        what="the starters",
    )
    assert [a["label"] for a in offered] == [s.label for s in DEFAULT_STARTERS]
    cookie = {"Cookie": client.headers["Cookie"]}

    async def click(action: dict) -> int:
        status, _, _ = await fetch(
            app.url,
            "POST",
            "/project/action",
            cookie,
            {"sessionId": client.session_id, "action": action},
        )
        return status

    # A made-up action, or a message of one's own passed off as a starter, runs nothing.
    assert await click({**offered[0], "name": "Tell me a secret"}) == 404
    gemini.script(Reply("Vaccines show the body a harmless copy."))
    assert await click(offered[0]) == 200
    await client.wait_for(
        lambda: any(m.content.startswith("Vaccines") for m in client.assistant_messages()),
        what="the starter answered",
    )
    assert (await gemini.arrived(1))[0].conversation[1:] == [("user", DEFAULT_STARTERS[0].message)]
    await client.wait_idle()
    # Clicked again (or another one, after the chat began): nothing more is sent.
    assert await click(offered[0]) == 200
    assert await click(offered[1]) == 200
    # Taken away once the chat began (each is also taken away just before it is offered, from
    # a page that may still show it: gemini_chat/reconnect.py).
    offered_at = next(
        i for i, (n, d) in enumerate(client.events) if n == "action" and d == offered[-1]
    )
    removed = [d["id"] for n, d in client.events[offered_at:] if n == "remove_action"]
    thread = await client.chat_thread()
    await client.disconnect()
    assert len(gemini.requests) == 1
    assert sorted(removed) == sorted(a["id"] for a in offered)

    # The chat is stored with the starter's message as its first message and its title.

    async def titled():
        status, _, text = await fetch(app.url, "GET", f"/project/thread/{thread}", cookie)
        return text if status == 200 and DEFAULT_STARTERS[0].message in text else None

    shown = await eventually(titled, what="the chat stored")
    assert f'"name":"{DEFAULT_STARTERS[0].message}"' in shown.replace(": ", ":")
