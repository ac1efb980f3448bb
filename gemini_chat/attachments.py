"""Files attached to a message: what may be attached, what each one costs, and how it goes to
Gemini.

A file is judged by its content, not by its name or the type the browser declares: its first
bytes say what it is (``filetype``, plus the ISO-BMFF brands of HEIC/HEIF), and a file whose
name or declared type says something else is refused. Accepted: images (PNG, JPEG, WebP,
HEIC/HEIF), PDFs, audio (WAV, MP3), and text or code files (valid UTF-8). The limits per file,
per message and per chat are checked when a file is uploaded (nothing refused is kept) and again
when the message is sent (nothing refused is stored or sent).

Each accepted file becomes a content part of the user's message, in the Agents SDK's input
format: images as ``input_image`` data URLs (``image_url`` on the wire), audio as
``input_audio``, text inlined as ``input_text``, PDFs as ``pdf_part`` says. Its token cost is
Gemini's documented one: 258 tokens per 768x768 tile of an image (258 for an image within
384x384), 258 per PDF page, 32 per second of audio; text at the history's estimate.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import wave
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import filetype
import imagesize

from .history import estimate_tokens

logger = logging.getLogger("gemini_chat")

MB = 1024 * 1024
# Per file: Chainlit's [features.spontaneous_file_upload] max_size_mb (the page checks it too).
DEFAULT_MAX_FILE_MB = 10
# Per message: max_files of the same section.
DEFAULT_MAX_FILES = 10
# Per chat, everything attached in it: every file is sent again with each later message (while
# its turn is within the history budget), and Gemini takes at most 20 MB of inline data in one
# request; base64 makes 15 MB of files about 20 MB.
CHAT_BYTES = 15 * MB
CHAT_FILES = 50

# Gemini's documented costs.
TOKENS_PER_TILE = 258
TILE_PIXELS = 768
SMALL_IMAGE_PIXELS = 384
TOKENS_PER_PDF_PAGE = 258
TOKENS_PER_AUDIO_SECOND = 32

ACCEPTED = "images (PNG, JPEG, WebP, HEIC), PDFs, audio (WAV, MP3) and text or code files"


class AttachmentRefused(Exception):
    """A file or a message's files refused; the message is safe to show the user. ``reason``
    is the same without the file's name (the page puts the name before it)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message

    @property
    def detail(self) -> dict[str, str]:  # for errors.log_detail
        return {"reason": self.reason}


def _refuse(shown: str, reason: str) -> AttachmentRefused:
    return AttachmentRefused(f"{shown} can't be attached: {reason}", reason)


@dataclass(frozen=True)
class Kind:
    """A kind of file the chat takes."""

    mime: str  # as stored and sent
    label: str  # for people
    family: str  # image, pdf, audio or text
    declared: frozenset[str]  # content types a browser may declare for it
    extensions: frozenset[str]


def _kind(mime: str, label: str, family: str, declared: str, extensions: str) -> Kind:
    return Kind(mime, label, family, frozenset(declared.split()), frozenset(extensions.split()))


BINARY_KINDS = {
    kind.mime: kind
    for kind in (
        _kind("image/png", "a PNG image", "image", "image/png", ".png"),
        _kind("image/jpeg", "a JPEG image", "image", "image/jpeg image/jpg", ".jpg .jpeg"),
        _kind("image/webp", "a WebP image", "image", "image/webp", ".webp"),
        _kind("image/heic", "a HEIC image", "image", "image/heic image/heif", ".heic .heif"),
        _kind("image/heif", "a HEIF image", "image", "image/heif image/heic", ".heif .heic"),
        _kind("application/pdf", "a PDF", "pdf", "application/pdf", ".pdf"),
        _kind("audio/wav", "WAV audio", "audio", "audio/wav audio/x-wav audio/wave", ".wav"),
        _kind("audio/mpeg", "MP3 audio", "audio", "audio/mpeg audio/mp3", ".mp3"),
    )
}
TEXT = _kind("text/plain", "a text file", "text", "", "")
# What browsers declare for text and code files besides text/*.
TEXT_DECLARED = frozenset(
    {
        "application/json",
        "application/ld+json",
        "application/xml",
        "application/javascript",
        "application/x-javascript",
        "application/typescript",
        "application/x-typescript",
        "application/x-python",
        "application/x-python-code",
        "application/x-sh",
        "application/x-shellscript",
        "application/sql",
        "application/toml",
        "application/x-yaml",
        "application/yaml",
        "application/x-httpd-php",
        "application/x-tex",
        "application/x-ipynb+json",
        "application/graphql",
    }
)
TEXT_EXTENSIONS = frozenset(
    """.txt .md .markdown .rst .csv .tsv .log .json .jsonl .xml .yaml .yml .toml .ini .cfg
    .conf .env .html .htm .css .scss .js .mjs .cjs .jsx .ts .tsx .py .pyi .ipynb .rb .php .java
    .kt .kts .scala .go .rs .c .h .cc .cpp .hpp .cs .swift .m .mm .sh .bash .zsh .fish .ps1
    .bat .sql .r .jl .lua .pl .hs .ex .exs .erl .clj .dart .vue .svelte .tex .bib .diff .patch
    .gitignore .dockerfile""".split()
)
# Declared when the browser does not know the type: the name and the content decide.
UNKNOWN_DECLARED = frozenset({"", "application/octet-stream"})
# Names of the brands an ISO-BMFF file (HEIC/HEIF) lists in its ftyp box.
HEIC_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"})
HEIF_BRANDS = frozenset({b"mif1", b"msf1"})
# filetype's names for what it recognises, where they differ from the ones the app uses.
SNIFFED_ALIASES = {"audio/x-wav": "audio/wav", "audio/mp3": "audio/mpeg"}


def _sniff_heif(data: bytes) -> str | None:
    if len(data) < 16 or data[4:8] != b"ftyp":
        return None
    size = int.from_bytes(data[:4], "big")
    box = data[8 : max(16, min(size, 256))]
    brands = {box[0:4], *(box[i : i + 4] for i in range(8, len(box) - 3, 4))}
    if brands & HEIC_BRANDS:
        return "image/heic"
    if box[0:4] in HEIF_BRANDS:
        return "image/heif"
    return None


def sniff(data: bytes) -> str | None:
    """The MIME type the content says it has, or None (text, or something not recognised)."""
    heif = _sniff_heif(data)
    if heif:
        return heif
    guessed = filetype.guess(data[:8192])
    if guessed is None:
        return None
    return SNIFFED_ALIASES.get(guessed.mime, guessed.mime)


def _label_of(mime: str) -> str:
    kind = BINARY_KINDS.get(mime)
    if kind is not None:
        return kind.label
    return f"a file of type {mime}"


def _megabytes(size: int) -> str:
    return f"{size / MB:.1f} MB" if size >= MB // 10 else f"{max(1, round(size / 1024))} KB"


# --- one file ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    file_bytes: int = DEFAULT_MAX_FILE_MB * MB
    files_per_message: int = DEFAULT_MAX_FILES
    chat_bytes: int = CHAT_BYTES
    chat_files: int = CHAT_FILES
    # A text file is inlined in the message: no longer than a typed message may be.
    text_chars: int = 100_000
    # Text and code files whose type browsers get wrong (.ts is "video/mp2t") or do not know.
    text_extensions: frozenset[str] = TEXT_EXTENSIONS


def configured_limits(max_message_chars: int = 100_000) -> Limits:
    """The limits, with the per-file and per-message ones from Chainlit's config (which the
    page enforces too), so the page and the server agree."""
    from chainlit.config import config

    upload = config.features.spontaneous_file_upload
    file_mb = getattr(upload, "max_size_mb", None) or DEFAULT_MAX_FILE_MB
    files = getattr(upload, "max_files", None) or DEFAULT_MAX_FILES
    return Limits(
        file_bytes=int(file_mb * MB), files_per_message=int(files), text_chars=max_message_chars
    )


def inspect_file(name: str, declared: str | None, data: bytes, limits: Limits) -> Kind:
    """The kind of an uploaded file; AttachmentRefused (saying why) when it may not be attached."""
    shown = name or "The file"
    declared = (declared or "").split(";")[0].strip().lower()
    extension = os.path.splitext(name or "")[1].lower()
    if len(data) > limits.file_bytes:
        raise _refuse(
            shown,
            f"it is {_megabytes(len(data))}, and a file may be at "
            f"most {_megabytes(limits.file_bytes)}.",
        )
    if not data:
        raise _refuse(shown, "it is empty.")
    sniffed = sniff(data)
    claimed = _claimed_kind(declared, extension)
    text_named = extension in limits.text_extensions
    says = claimed.label if claimed else ("a text file" if _text_declared(declared) else None)
    if sniffed is not None:
        kind = BINARY_KINDS.get(sniffed)
        if kind is None:
            if claimed is not None or declared.startswith("text/"):
                raise _lie(shown, says, f"is {_label_of(sniffed)}")
            raise _refuse(shown, f"this chat takes only {ACCEPTED}.")
        if claimed is kind or (claimed is None and declared in UNKNOWN_DECLARED):
            return kind
        if claimed is not None and claimed.family == kind.family == "image":
            return kind  # a JPEG named .png is still an image, of the kind its bytes say
        raise _lie(shown, says or f"of type {declared}", f"is {kind.label}")
    if claimed is not None:  # says it is an image, a PDF or audio; its bytes are not
        raise _lie(shown, claimed.label, f"is not {claimed.label}")
    if not (_text_declared(declared) or text_named):
        raise _refuse(shown, f"this chat takes only {ACCEPTED}.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\x00"
    if "\x00" in text:
        if text_named or (declared not in UNKNOWN_DECLARED and _text_declared(declared)):
            raise _lie(shown, "a text file", "is not text")
        raise _refuse(shown, f"this chat takes only {ACCEPTED}.")
    if len(text) > limits.text_chars:
        raise _refuse(
            shown,
            f"it has {len(text):,} characters, and a text file may "
            f"have at most {limits.text_chars:,}.",
        )
    return TEXT


def _claimed_kind(declared: str, extension: str) -> Kind | None:
    """The image, PDF or audio kind the declared type or the name claims, if any."""
    for kind in BINARY_KINDS.values():
        if declared in kind.declared:
            return kind
    if declared in UNKNOWN_DECLARED or declared.startswith("text/"):
        for kind in BINARY_KINDS.values():
            if extension in kind.extensions:
                return kind
    return None


def _text_declared(declared: str) -> bool:
    return declared.startswith("text/") or declared in TEXT_DECLARED or declared in UNKNOWN_DECLARED


def _lie(shown: str, claimed: str, content: str) -> AttachmentRefused:
    return _refuse(shown, f"it says it is {claimed}, but its content {content}.")


# --- what it costs -------------------------------------------------------------------------------


def image_tokens(data: bytes) -> int:
    """258 tokens for an image within 384x384; otherwise 258 per 768x768 tile."""
    try:
        width, height = imagesize.get(io.BytesIO(data))
    except Exception:
        width = height = -1
    if width <= 0 or height <= 0:
        return 4 * TOKENS_PER_TILE  # dimensions unknown: as a large photo
    if width <= SMALL_IMAGE_PIXELS and height <= SMALL_IMAGE_PIXELS:
        return TOKENS_PER_TILE
    return math.ceil(width / TILE_PIXELS) * math.ceil(height / TILE_PIXELS) * TOKENS_PER_TILE


def pdf_pages(data: bytes) -> int:
    from pypdf import PdfReader

    return len(PdfReader(io.BytesIO(data)).pages)


def audio_seconds(data: bytes, mime: str) -> float:
    if mime == "audio/wav":
        with wave.open(io.BytesIO(data)) as audio:
            return audio.getnframes() / audio.getframerate()
    from mutagen.mp3 import MP3

    return float(MP3(io.BytesIO(data)).info.length)


# --- an accepted file ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Attachment:
    """A file that goes with a user's message: its content part and its token cost."""

    id: str
    name: str
    mime: str
    data: bytes

    @property
    def family(self) -> str:
        kind = BINARY_KINDS.get(self.mime)
        return kind.family if kind else "text"

    @property
    def shown_as(self) -> str:
        """How the page shows it (a Chainlit element type): browsers draw no HEIC, so a HEIC
        photo is shown by its name, as a text file is."""
        family = self.family
        if family == "image":
            return "file" if self.mime in ("image/heic", "image/heif") else "image"
        return "file" if family == "text" else family

    # Worked out once: a file goes with every later request while its turn is in the history.
    @cached_property
    def part(self) -> dict[str, Any]:
        family = self.family
        if family == "text":
            return {"type": "input_text", "text": text_part(self.name, self.data)}
        encoded = base64.b64encode(self.data).decode("ascii")
        if family == "pdf":
            return pdf_part(encoded)
        if family == "audio":
            audio_format = "wav" if self.mime == "audio/wav" else "mp3"
            return {"type": "input_audio", "input_audio": {"data": encoded, "format": audio_format}}
        return {"type": "input_image", "image_url": f"data:{self.mime};base64,{encoded}"}

    @cached_property
    def tokens(self) -> int:
        family = self.family
        if family == "image":
            return image_tokens(self.data)
        if family == "pdf":
            return TOKENS_PER_PDF_PAGE * _safely(pdf_pages, self.data, default=1)
        if family == "audio":
            seconds = _safely(audio_seconds, self.data, self.mime, default=0.0)
            return math.ceil(TOKENS_PER_AUDIO_SECOND * seconds)
        return estimate_tokens(text_part(self.name, self.data))


def _safely(measure, *args: Any, default: Any) -> Any:
    try:
        return measure(*args)
    except Exception as error:  # a file that passed the checks but cannot be measured
        logger.info("Could not measure an attachment (%s)", type(error).__name__)
        return default


def text_part(name: str, data: bytes) -> str:
    """A text file as the model reads it: its name, then its content."""
    return f"File {name}:\n\n{data.decode('utf-8')}"


def pdf_part(encoded: str) -> dict[str, Any]:
    """A PDF as a content part. Google documents PDFs on the OpenAI-compatible endpoint as an
    ``image_url`` whose data URL has the type application/pdf (the Agents SDK's ``input_file``
    becomes a ``file`` part instead, which that endpoint does not document)."""
    return {"type": "input_image", "image_url": f"data:application/pdf;base64,{encoded}"}


def measure(kind: Kind, data: bytes, name: str) -> None:
    """Refuse a file of an accepted kind that cannot be read as one (a damaged PDF or audio)."""
    if kind.family == "pdf":
        try:
            pdf_pages(data)
        except Exception:
            raise _refuse(name or "The file", "it could not be read as a PDF.") from None
    elif kind.family == "audio":
        try:
            audio_seconds(data, kind.mime)
        except Exception:
            raise _refuse(name or "The file", f"it could not be read as {kind.label}.") from None


# --- a message's files, a chat's files ------------------------------------------------------------


def check_message(
    count: int, new_sizes: list[int], stored: tuple[int, int], limits: Limits
) -> None:
    """Refuse a message with too many files, or whose new files (``new_sizes``) would take the
    chat over its limits; ``stored`` is (files, bytes) the chat holds already."""
    if count > limits.files_per_message:
        raise AttachmentRefused(
            f"This message has {count} files attached, and at most "
            f"{limits.files_per_message} can go with one message. Nothing was sent: attach "
            "fewer and send it again."
        )
    check_chat(len(new_sizes), sum(new_sizes), stored, limits)


def check_chat(count: int, size: int, stored: tuple[int, int], limits: Limits) -> None:
    stored_files, stored_bytes = stored
    if stored_files + count > limits.chat_files:
        raise AttachmentRefused(
            f"This chat already has {stored_files} files, and a chat may have at most "
            f"{limits.chat_files}: start a new chat to attach more."
        )
    if stored_bytes + size > limits.chat_bytes:
        raise AttachmentRefused(
            f"This chat already holds {_megabytes(stored_bytes)} of files, and a chat may hold "
            f"at most {_megabytes(limits.chat_bytes)}: start a new chat to attach more."
        )


# The attribute by which the chat marks an element it has admitted with its message: the data
# layer stores an element only with it (storage.ChatDataLayer.create_element).
ADMITTED = "gemini_attachment"


def admitted(element: Any) -> Attachment | None:
    return getattr(element, ADMITTED, None)
