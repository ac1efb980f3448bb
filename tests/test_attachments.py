"""Files attached to a message: judged by their content, within limits, sent to Gemini as content
parts, kept with the chat (and nowhere else), sent again with later messages and after a resume,
and served to their owner only.

Against the real `chainlit run` over HTTP and socket.io (uploads as the page makes them), the
fake Gemini recording each request; the checks on a file and its token cost also in-process."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import struct
import urllib.error
import urllib.request
import uuid
import wave
import zlib
from pathlib import Path

import pytest

from tests.chat_client import ChatClient
from tests.db import eventually, query
from tests.fake_gemini import Reply

# --- files, made here ----------------------------------------------------------------------------


def png(width: int = 2, height: int = 2, rgb: bytes = b"\x10\x80\xf0") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + rgb * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def pdf(pages: int = 1) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(200, 200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


def mp3(frames: int = 39) -> bytes:
    """MPEG-1 Layer III frames, 128 kbit/s at 44.1 kHz (417 bytes, 1152 samples each): about
    one second for 39 frames."""
    header = bytes([0xFF, 0xFB, 0x90, 0x64])
    return (header + b"\x00" * 413) * frames


def heic() -> bytes:
    """The start of a HEIC file (its ftyp box), enough to be recognised by its brands."""
    ftyp = b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return struct.pack(">I", 8 + len(ftyp)) + ftyp + b"\x00" * 64


# --- the page's requests, made here --------------------------------------------------------------


def multipart(name: str, data: bytes, mime: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: {mime}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


def _request(url: str, method: str = "GET", data: bytes | None = None, headers=None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def upload(client: ChatClient, name: str, data: bytes, mime: str, headers=None):
    """The page's upload of one file: (status, JSON or text)."""
    import json

    body, boundary = multipart(name, data, mime)
    status, _, raw = await asyncio.to_thread(
        _request,
        f"{client.url}/project/file?session_id={client.session_id}",
        "POST",
        body,
        {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            **(client.headers if headers is None else headers),
        },
    )
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


async def attach(client: ChatClient, name: str, data: bytes, mime: str) -> str:
    status, answer = await upload(client, name, data, mime)
    assert status == 200, answer
    return answer["id"]


async def send_with_files(client: ChatClient, text: str, file_ids: list[str]) -> str:
    client.mark()
    return await client.send(text, file_ids=file_ids)


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(mime: str, data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(mime, data), "detail": "auto"}}


def database(app) -> str:
    return f"sqlite+aiosqlite:///{app.directory}/chats.db"


async def stored_attachments(app, thread_id: str | None = None) -> list[tuple]:
    rows = await query(
        database(app),
        'SELECT a."name", a."mime", a."owner", a."data", e."url", e."type", e."forId" '
        'FROM attachments a LEFT JOIN elements e ON e."id" = a."id" '
        + ('WHERE a."threadId" = :t ' if thread_id else "")
        + 'ORDER BY a."createdAt", a."name"',
        **({"t": thread_id} if thread_id else {}),
    )
    return [(n, m, o, bytes(d), u, t, f) for n, m, o, d, u, t, f in rows]


def uploads_waiting(app) -> list[Path]:
    files = app.directory / ".files"
    return [p for p in files.rglob("*") if p.is_file()] if files.exists() else []


def element_events(client: ChatClient) -> list[dict]:
    return [data for name, data in client.events if name == "element"]


def watch_elements(client: ChatClient) -> ChatClient:
    """Note the element events the page gets (shown files, and files taken off the page)."""
    for name in ("element", "remove_element"):
        client.sio.on(name, client._handler(name))
    return client


# --- sent, stored, shown -------------------------------------------------------------------------

IMAGE = png(800, 900)  # 2 x 2 tiles
PDF = pdf(3)
CODE = b'def greet(name):\n    return f"Hello, {name}!"\n'


async def test_an_image_a_pdf_and_a_code_file_reach_gemini_as_content_parts(chat, gemini, app):
    watch_elements(chat)
    ids = [
        await attach(chat, "chart.png", IMAGE, "image/png"),
        await attach(chat, "report.pdf", PDF, "application/pdf"),
        await attach(chat, "greet.py", CODE, "text/x-python"),
    ]
    assert len(uploads_waiting(app)) >= 3  # Chainlit keeps them until the message is sent
    gemini.script(Reply("Three files seen."))
    message_id = await send_with_files(chat, "What are these?", ids)
    await chat.wait_idle()

    request = (await gemini.arrived(1))[-1]
    assert request.messages[-1] == {
        "role": "user",
        "content": [
            image_part("image/png", IMAGE),
            image_part("application/pdf", PDF),
            {"type": "text", "text": "File greet.py:\n\n" + CODE.decode()},
            {"type": "text", "text": "What are these?"},
        ],
    }
    assert request.files() == [("image/png", IMAGE), ("application/pdf", PDF)]

    # Kept with the chat, with its owner, shown from the app's route; Chainlit's copies gone.
    thread = await chat.chat_thread()
    rows = await eventually(
        lambda: _when(stored_attachments(app, thread), 3), what="the stored files"
    )
    by_name = {row[0]: row for row in rows}
    assert {name: (mime, owner, data) for name, (_, mime, owner, data, *_) in by_name.items()} == {
        "chart.png": ("image/png", "local", IMAGE),
        "report.pdf": ("application/pdf", "local", PDF),
        "greet.py": ("text/plain", "local", CODE),
    }
    assert {name: (row[5], row[6]) for name, row in by_name.items()} == {
        "chart.png": ("image", message_id),
        "report.pdf": ("pdf", message_id),
        "greet.py": ("file", message_id),
    }
    urls = {name: row[4] for name, row in by_name.items()}
    assert all(url.startswith("/attachments/") for url in urls.values())
    await eventually(lambda: _true(not uploads_waiting(app)), what=".files emptied")
    # The page was told to show each file from the app's route.
    shown = {e["name"]: e.get("url") for e in element_events(chat) if e.get("url")}
    assert shown == urls

    # The owner reads them back, byte for byte, as what they are.
    status, headers, body = await asyncio.to_thread(
        _request, app.url + urls["chart.png"], headers=chat.headers
    )
    assert (status, headers["content-type"], body) == (200, "image/png", IMAGE)
    status, headers, body = await asyncio.to_thread(
        _request, app.url + urls["greet.py"], headers=chat.headers
    )
    assert (status, headers["content-type"], body) == (200, "text/plain; charset=utf-8", CODE)
    assert "sandbox" in headers["content-security-policy"]


async def _when(rows_coroutine, count: int):
    rows = await rows_coroutine
    return rows if len(rows) >= count else None


async def _true(value: bool):
    return value


async def test_files_go_again_with_the_next_message_and_after_a_resume(app, gemini):
    chat = await ChatClient(app.url).connect()
    await chat.wait_for(chat.assistant_messages, what="the welcome")
    image_id = await attach(chat, "cat.png", IMAGE, "image/png")
    gemini.script(Reply("A cat."), Reply("Still a cat."), Reply("Yes, the cat."))
    await send_with_files(chat, "Look", [image_id])
    await chat.wait_idle()
    chat.mark()
    await chat.send("And now?")
    await chat.wait_idle()
    earlier = [
        {"role": "user", "content": [image_part("image/png", IMAGE), _text("Look")]},
        {"role": "assistant", "content": "A cat."},
    ]
    second = (await gemini.arrived(2))[-1]
    assert second.messages[1:] == [*earlier, {"role": "user", "content": "And now?"}]
    thread = await chat.chat_thread()
    await eventually(lambda: _when(stored_attachments(app, thread), 1), what="the stored image")
    await chat.disconnect()

    # Opened again (a reload, or after a restart): the stored file goes with the history.
    resumed = ChatClient(app.url, headers=dict(chat.headers))
    await resumed.connect(thread_id=thread)
    await resumed.wait_for(lambda: any(n == "resume_thread" for n, _ in resumed.events))
    shown = next(d for n, d in resumed.events if n == "resume_thread")["elements"]
    assert [(e["name"], e["type"], e["url"]) for e in shown] == [
        ("cat.png", "image", (await stored_attachments(app, thread))[0][4])
    ]
    resumed.mark()
    await resumed.send("Sure?")
    await resumed.wait_idle()
    third = (await gemini.arrived(3))[-1]
    assert third.messages[1:] == [
        *earlier,
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "Still a cat."},
        {"role": "user", "content": "Sure?"},
    ]
    await resumed.disconnect()


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


async def test_a_tab_that_followed_the_answer_sends_the_files_in_its_history(app, gemini):
    chat = await ChatClient(app.url).connect()
    await chat.wait_for(chat.assistant_messages, what="the welcome")
    image_id = await attach(chat, "cat.png", IMAGE, "image/png")
    words = [f"w{i} " for i in range(30)]
    gemini.script(Reply(chunks=words, delay=0.1), Reply("Next."))
    await send_with_files(chat, "Look", [image_id])
    thread = await chat.chat_thread()
    await chat.wait_for(lambda: any(m.tokens for m in chat.assistant_messages()), what="text")
    # The chat opened in a second tab while the answer is written: it follows the answer...
    second = ChatClient(app.url, headers=dict(chat.headers))
    await second.connect(thread_id=thread)
    await second.wait_for(
        lambda: any(m.content == "".join(words) for m in second.assistant_messages()),
        timeout=20,
        what="the whole answer in the second tab",
    )
    # ...and its next message carries the file in its history.
    second.mark()
    await second.send("And next?")
    await second.wait_idle()
    request = (await gemini.arrived(2))[-1]
    assert request.messages[1:] == [
        {"role": "user", "content": [image_part("image/png", IMAGE), _text("Look")]},
        {"role": "assistant", "content": "".join(words)},
        {"role": "user", "content": "And next?"},
    ]
    await chat.disconnect()
    await second.disconnect()


async def test_an_edited_message_is_answered_afresh_with_its_files(chat, gemini, app):
    image_id = await attach(chat, "cat.png", IMAGE, "image/png")
    gemini.script(Reply("A cat."), Reply("A dog?"))
    message_id = await send_with_files(chat, "What is it?", [image_id])
    await chat.wait_idle()
    chat.mark()
    await chat.edit(message_id, "Is it a dog?")
    await chat.wait_idle()
    request = (await gemini.arrived(2))[-1]
    assert request.messages[1:] == [
        {"role": "user", "content": [image_part("image/png", IMAGE), _text("Is it a dog?")]}
    ]
    # Stored once.
    thread = await chat.chat_thread()
    assert [row[0] for row in await stored_attachments(app, thread)] == ["cat.png"]


async def test_audio_goes_as_input_audio_and_a_file_alone_is_a_message(chat, gemini, app):
    sound, song = wav(1.0), mp3()
    ids = [
        await attach(chat, "voice.wav", sound, "audio/wav"),
        await attach(chat, "song.mp3", song, "audio/mpeg"),
    ]
    gemini.script(Reply("Two sounds."))
    await send_with_files(chat, "", ids)
    await chat.wait_idle()
    request = (await gemini.arrived(1))[-1]
    assert request.messages[-1] == {
        "role": "user",
        "content": [
            {"type": "input_audio", "input_audio": {"data": _b64(sound), "format": "wav"}},
            {"type": "input_audio", "input_audio": {"data": _b64(song), "format": "mp3"}},
        ],
    }
    assert chat.errors() == []


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_a_heic_photo_goes_as_heic_and_is_shown_by_its_name(chat, gemini, app):
    watch_elements(chat)
    photo = heic()
    image_id = await attach(chat, "IMG_0001.HEIC", photo, "image/heic")
    gemini.script(Reply("A photo."))
    await send_with_files(chat, "Where is this?", [image_id])
    await chat.wait_idle()
    request = (await gemini.arrived(1))[-1]
    assert request.messages[-1]["content"][0] == image_part("image/heic", photo)
    # Browsers cannot draw HEIC: the page shows it as a named file, now and after a reload.
    (shown,) = [e for e in element_events(chat) if e.get("url")]
    assert (shown["name"], shown["type"]) == ("IMG_0001.HEIC", "file")
    thread = await chat.chat_thread()
    rows = await eventually(lambda: _when(stored_attachments(app, thread), 1), what="stored")
    assert [(row[1], row[5]) for row in rows] == [("image/heic", "file")]


# --- refused: the file, the message --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "mime", "status", "reason"),
    [
        (
            "huge.png",
            png() + b"\x00" * (10 * 1024 * 1024),
            "image/png",
            400,
            "it is 10.0 MB, and a file may be at most 10.0 MB.",
        ),
        (
            "archive.zip",
            b"PK\x03\x04" + b"\x00" * 100,
            "application/zip",
            400,
            "this chat takes only images (PNG, JPEG, WebP, HEIC), PDFs, audio (WAV, MP3) and "
            "text or code files.",
        ),
        (
            "holiday.png",
            b"<html><script>alert(1)</script></html>",
            "image/png",
            400,
            "it says it is a PNG image, but its content is not a PNG image.",
        ),
        (
            "notes.txt",
            pdf(),
            "text/plain",
            400,
            "it says it is a text file, but its content is a PDF.",
        ),
        (
            "song.mp3",
            png(),
            "audio/mpeg",
            400,
            "it says it is MP3 audio, but its content is a PNG image.",
        ),
        ("broken.pdf", b"%PDF-1.7\nnot really", "application/pdf", 400, None),
    ],
)
async def test_a_bad_file_is_refused_with_its_reason_and_kept_nowhere(
    chat, gemini, app, name, data, mime, status, reason
):
    before = uploads_waiting(app)
    got, answer = await upload(chat, name, data, mime)
    assert got == status, answer
    if reason is None:
        assert answer["detail"] == "it could not be read as a PDF."
    else:
        assert answer["detail"] == reason
    assert uploads_waiting(app) == before


async def test_an_upload_over_the_size_limit_is_refused_before_it_is_read(chat, app):
    import http.client
    from urllib.parse import urlsplit

    def declare_30_mb() -> tuple[int, bytes]:
        # The headers alone, declaring 30 MB: the answer comes before any of the body is sent.
        address = urlsplit(app.url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=15)
        connection.putrequest("POST", f"/project/file?session_id={chat.session_id}")
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
        connection.putheader("Content-Length", str(30 * 1024 * 1024))
        connection.putheader("Cookie", chat.headers["Cookie"])
        connection.endheaders()
        response = connection.getresponse()
        try:
            return response.status, response.read()
        finally:
            connection.close()

    status, body = await asyncio.to_thread(declare_30_mb)
    assert status == 413
    assert body.decode() == "The request is too large for this server (10,551,296 bytes at most)."
    assert uploads_waiting(app) == []


async def test_fifty_files_in_one_message_are_refused_and_nothing_is_stored_or_sent(
    chat, gemini, app
):
    watch_elements(chat)
    ids = [
        await attach(chat, f"note{i:02d}.txt", f"note {i}".encode(), "text/plain")
        for i in range(50)
    ]
    # A 51st would take the chat past its 50 files.
    status, answer = await upload(chat, "one-more.txt", b"more", "text/plain")
    assert (status, answer["detail"]) == (
        400,
        "This chat already has 0 files, and a chat may have at most 50: start a new chat to "
        "attach more.",
    )
    await send_with_files(chat, "Read all of these", ids)
    await chat.wait_idle()
    assert chat.errors() == [
        "This message has 50 files attached, and at most 10 can go with one message. Nothing "
        "was sent: attach fewer and send it again."
    ]
    assert gemini.requests == []
    # Taken off the page and off the disk; nothing stored.
    removed = [d["id"] for n, d in chat.events if n == "remove_element"]
    assert sorted(removed) == sorted(ids)
    assert uploads_waiting(app) == []
    thread = await chat.chat_thread()
    assert await stored_attachments(app, thread) == []
    assert (
        await query(database(app), 'SELECT * FROM elements WHERE "threadId" = :t', t=thread) == []
    )
    # None was ever shown from the app's own route (it was never stored).
    assert not any((e.get("url") or "").startswith("/attachments/") for e in element_events(chat))
    # The chat goes on.
    gemini.script(Reply("Fine."))
    replies = await chat.ask("Just this, then")
    assert [m.content for m in replies] == ["Fine."]


async def test_a_file_whose_upload_was_not_checked_is_refused_when_sent(chat, gemini, app):
    """A file under .files/ that did not come through the app's upload route (the route is
    the only way in, but the message checks every file again)."""
    image_id = await attach(chat, "ok.png", png(), "image/png")
    # Its content replaced on disk after the upload's check.
    (path,) = [p for p in uploads_waiting(app) if p.stem == image_id]
    path.write_bytes(b"#!/bin/sh\nrm -rf /\n")
    await send_with_files(chat, "Look", [image_id])
    await chat.wait_idle()
    assert chat.errors() == [
        "ok.png can't be attached: it says it is a PNG image, but its content is not a PNG image."
    ]
    assert gemini.requests == []
    assert await stored_attachments(app, await chat.chat_thread()) == []


# --- owners --------------------------------------------------------------------------------------


async def test_another_user_can_never_read_an_attached_file(start_app_with, gemini, tmp_path):
    from tests.test_accounts import SECRET, accounts_command

    url = f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    for name in ("alice", "bob"):
        assert accounts_command(url, "add", name, password=f"{name}-password").returncode == 0
    app = start_app_with(DATABASE_URL=url, CHAINLIT_AUTH_SECRET=SECRET)
    alice = ChatClient(app.url)
    alice_token = (await alice.login("alice", "alice-password")).split("=", 1)[1]
    await alice.connect()
    await alice.wait_for(alice.assistant_messages, what="alice's welcome")
    bob = ChatClient(app.url)
    bob_token = (await bob.login("bob", "bob-password")).split("=", 1)[1]
    await bob.connect()
    await bob.wait_for(bob.assistant_messages, what="bob's welcome")

    secret = png(3, 3)
    image_id = await attach(alice, "alice-secret.png", secret, "image/png")
    # Bob cannot upload into alice's chat session.
    status, _ = await upload(alice, "x.png", png(), "image/png", headers=bob.headers)
    assert status == 401
    gemini.script(Reply("Seen."))
    await send_with_files(alice, "Mine", [image_id])
    await alice.wait_idle()
    thread = await alice.chat_thread()
    (row,) = await eventually(lambda: _when(_stored(url, thread), 1), what="alice's stored file")
    path = row[0]
    assert path == f"/attachments/{image_id}"

    def fetch(headers):
        status, _, body = _request(app.url + path, headers=headers)
        return status, body

    assert await asyncio.to_thread(fetch, {"Cookie": f"access_token={alice_token}"}) == (
        200,
        secret,
    )
    assert await asyncio.to_thread(fetch, {"Authorization": f"Bearer {alice_token}"}) == (
        200,
        secret,
    )
    for headers in (
        {"Cookie": f"access_token={bob_token}"},
        {"Authorization": f"Bearer {bob_token}"},
    ):
        status, body = await asyncio.to_thread(fetch, headers)
        assert status == 404 and secret not in body
    status, body = await asyncio.to_thread(fetch, {})
    assert status == 401 and secret not in body
    # An id that is not a UUID, or one that does not exist, finds nothing either.
    for other in ("not-an-id", str(uuid.uuid4())):
        status, _, _ = await asyncio.to_thread(
            _request,
            f"{app.url}/attachments/{other}",
            "GET",
            None,
            {"Cookie": f"access_token={alice_token}"},
        )
        assert status == 404
    await alice.disconnect()
    await bob.disconnect()


async def _stored(url: str, thread: str):
    return await query(url, 'SELECT "url" FROM elements WHERE "threadId" = :t', t=thread)


# --- in-process: the checks and the costs --------------------------------------------------------


def test_token_costs_follow_geminis_documented_rules():
    from gemini_chat.attachments import Attachment

    def tokens(name, mime, data):
        return Attachment("id", name, mime, data).tokens

    assert tokens("small.png", "image/png", png(384, 200)) == 258
    assert tokens("wide.png", "image/png", png(800, 300)) == 2 * 258
    assert tokens("big.png", "image/png", png(1600, 900)) == 3 * 2 * 258
    assert tokens("doc.pdf", "application/pdf", pdf(3)) == 3 * 258
    assert tokens("voice.wav", "audio/wav", wav(2.5)) == 80
    # 78 frames of 1,152 samples at 44.1 kHz: 2.04 s.
    assert tokens("song.mp3", "audio/mpeg", mp3(78)) == math.ceil(32 * 78 * 1152 / 44100)


def test_the_history_budget_counts_files_at_their_token_cost():
    from gemini_chat.attachments import Attachment
    from gemini_chat.history import History, estimate_tokens

    photo = Attachment("a", "big.png", "image/png", png(1600, 900))  # 1548 tokens
    history = History(token_budget=2_000)
    history.record("Look", "A big photo.", "m1", [photo])
    history.record("Thanks", "Welcome.", "m2")
    # Instructions, the new message and both turns fit...
    assert len(history.request_items("More?", "Be brief.")) == 5
    # ...but not once the new message carries a photo of its own: the oldest turn goes.
    items = history.request_items("And this?", "Be brief.", [photo])
    assert [item["role"] for item in items] == ["user", "assistant", "user"]
    assert items[-1]["content"][0]["type"] == "input_image"
    assert photo.tokens + estimate_tokens("Look") > 1_500


async def test_the_data_layer_keeps_files_with_their_owner_on_both_stores(database_url):
    from chainlit.context import context_var
    from chainlit.element import Image
    from chainlit.user import User

    from gemini_chat.attachments import ADMITTED, Attachment
    from gemini_chat.schema import upgrade_schema
    from gemini_chat.storage import ChatDataLayer
    from tests.test_security_data import acting_as, step

    await upgrade_schema(database_url)
    layer = ChatDataLayer(database_url)
    alice = await layer.create_user(User(identifier="alice"))
    bob = await layer.create_user(User(identifier="bob"))
    hers, question = str(uuid.uuid4()), str(uuid.uuid4())
    photo = png(5, 5)

    def element(element_id: str, admitted: bool = True) -> Image:
        shown = Image(
            id=element_id, name="photo.png", content=photo, mime="image/png", thread_id=hers
        )
        shown.for_id = question
        if admitted:
            setattr(shown, ADMITTED, Attachment(element_id, "photo.png", "image/png", photo))
        return shown

    token = acting_as(alice)
    await layer.update_thread(hers, name="Alice's chat", user_id=alice.id)
    await layer.create_step(step(question, hers, "Look"))
    kept, ignored = str(uuid.uuid4()), str(uuid.uuid4())
    await layer.create_element(element(kept))
    await layer.create_element(element(ignored, admitted=False))  # not admitted: not stored
    assert await layer.get_attachment_usage(hers) == (1, len(photo))
    (entry,) = await layer.get_attachments(hers)
    assert (entry[0], entry[1].id, entry[1].data) == (question, kept, photo)
    assert (await layer.get_attachment(kept)).data == photo
    thread = await layer.get_thread(hers)
    assert [(e["id"], e["url"], e["type"]) for e in thread["elements"]] == [
        (kept, f"/attachments/{kept}", "image")
    ]
    context_var.reset(token)

    token = acting_as(bob)
    assert await layer.get_attachment(kept) is None
    assert await layer.get_attachments(hers) == []
    assert await layer.get_attachment_usage(hers) is None
    await layer.create_element(element(str(uuid.uuid4())))  # into her chat: refused
    context_var.reset(token)
    assert len(await query(database_url, "SELECT * FROM attachments")) == 1

    # Deleting the message deletes its files (an edit takes what followed away), and so does
    # deleting the chat.
    token = acting_as(alice)
    await layer.delete_step(question)
    assert await query(database_url, "SELECT * FROM attachments") == []
    assert await layer.get_attachment_usage(hers) == (0, 0)
    second = str(uuid.uuid4())
    await layer.create_step(step(question, hers, "Look again"))
    await layer.create_element(element(second))
    assert await layer.get_attachment_usage(hers) == (1, len(photo))
    await layer.delete_thread(hers)
    context_var.reset(token)
    assert await query(database_url, "SELECT * FROM attachments") == []
    await layer.engine.dispose()


def test_a_chat_may_hold_15_mb_of_files():
    from gemini_chat.attachments import MB, AttachmentRefused, Limits, check_message

    limits = Limits()
    check_message(2, [5 * MB, 5 * MB], (3, 5 * MB), limits)  # exactly 15 MB: fine
    with pytest.raises(AttachmentRefused) as refused:
        check_message(1, [1], (3, 15 * MB), limits)
    assert str(refused.value) == (
        "This chat already holds 15.0 MB of files, and a chat may hold at most 15.0 MB: start a "
        "new chat to attach more."
    )
