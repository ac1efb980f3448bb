"""Each chat's own settings: its model, temperature, instructions and thinking level.

What a user may choose is decided here, on the server: the models come from Gemini's live list
(``GET /models``, cached), narrowed by ``GEMINI_MODELS``; every value the settings panel sends is
checked before it is kept, and a refused change keeps the previous values whole. The values are
stored with the chat (thread metadata, key ``preferences``, written through the owner-checked
data layer) and read back, checked again, when the chat is resumed.

How they reach Gemini (``chat_model_settings`` and ``combined_instructions``):

- the model is the request's ``model``;
- the temperature is sent only once the user has set one (Gemini's default is 1.0);
- the operator's instructions (``ASSISTANT_INSTRUCTIONS``) always come first and whole in the
  system message; the chat's own follow, after a separator that says they are the user's and
  yield to the operator's. A user can add to the instructions, never remove or replace them;
- the thinking level goes in ``extra_body.google.thinking_config.thinking_level``, merged with
  whatever else that object holds (``include_thoughts``), and never with ``reasoning_effort``,
  which Gemini refuses beside it. Only levels the model accepts (``THINKING_LEVELS``) are offered
  or sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents import ModelSettings

from .config import Settings
from .errors import InputError

logger = logging.getLogger("gemini_chat")

# Where a chat's preferences are kept in its thread's metadata.
METADATA_KEY = "preferences"
# The longest instructions a chat may add (characters); they are sent on every turn.
MAX_CHAT_INSTRUCTIONS = 8_000
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.0, 2.0
# What the temperature slider shows while the chat has none of its own: Gemini's default.
GEMINI_DEFAULT_TEMPERATURE = 1.0
# The thinking choice that sends no level: the model decides.
MODEL_DEFAULT = "default"

# Thinking levels each model family accepts, first match wins. Gemini 3.7 and 3.8 Flash answer
# 400 to "minimal"; earlier Gemini 3 Flash and Flash-Lite models take it. Gemini 3 Pro takes
# low and high. Models not listed (Gemini 2.5, other servers' models) get no level at all.
THINKING_LEVELS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"^gemini-3\.[78]-flash(?!-lite)"), ("low", "medium", "high")),
    (re.compile(r"^gemini-3(\.\d+)?-flash"), ("minimal", "low", "medium", "high")),
    (re.compile(r"^gemini-3(\.\d+)?-pro"), ("low", "high")),
)
LEVEL_ORDER = ("minimal", "low", "medium", "high")

# Gemini lists models that cannot chat: embeddings, image, video, speech, live audio, AQA.
NOT_CHAT = re.compile(
    r"embedding|imagen|image|veo|tts|aqa|live|native-audio|audio|lyria|robotics|computer-use"
)

SEPARATOR = (
    "\n\n---\n"
    "The user of this chat added the instructions below. Follow them as long as they do not "
    "conflict with the instructions above, which always take precedence.\n\n"
)


def thinking_levels(model: str) -> tuple[str, ...]:
    """The thinking levels ``model`` accepts (empty: send none)."""
    for pattern, levels in THINKING_LEVELS:
        if pattern.search(model):
            return levels
    return ()


def nearest_level(level: str, model: str) -> str | None:
    """The level ``model`` accepts closest above ``level`` (or the highest below), if any."""
    allowed = thinking_levels(model)
    if not allowed or level not in LEVEL_ORDER:
        return None
    rank = LEVEL_ORDER.index(level)
    above = [lv for lv in allowed if LEVEL_ORDER.index(lv) >= rank]
    return above[0] if above else allowed[-1]


class SettingsRefused(InputError):
    """A settings change the server does not accept; nothing of it was kept."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__(
            "Your chat settings were not changed: "
            + "; ".join(reasons)
            + ". The previous settings still apply.",
            reasons=list(reasons),
        )


@dataclass(frozen=True)
class Preferences:
    """One chat's settings. ``temperature`` and ``thinking_level`` None: the model's default."""

    model: str
    temperature: float | None = None
    instructions: str = ""
    thinking_level: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def panel_values(self) -> dict[str, Any]:
        """The values the settings panel shows (and Chainlit keeps as the session's)."""
        return {
            "model": self.model,
            "temperature": self.shown_temperature,
            "thinking_level": self.thinking_level or MODEL_DEFAULT,
            "instructions": self.instructions,
        }

    @property
    def shown_temperature(self) -> float:
        return GEMINI_DEFAULT_TEMPERATURE if self.temperature is None else self.temperature


def defaults(settings: Settings) -> Preferences:
    return Preferences(model=settings.model)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def apply_change(
    current: Preferences, values: Mapping[str, Any], choices: Sequence[str]
) -> Preferences:
    """``current`` with the panel's ``values`` applied; SettingsRefused naming every value that
    cannot be used. Keys the panel does not have are ignored; a key left out keeps its value."""
    reasons: list[str] = []
    model = current.model
    if "model" in values:
        if isinstance(values["model"], str) and values["model"] in choices:
            model = values["model"]
        else:
            shown = str(values["model"])[:60]
            reasons.append(f'the model "{shown}" is not one of the models offered here')

    temperature = current.temperature
    if "temperature" in values:
        number = _number(values["temperature"])
        if number is None or not TEMPERATURE_MIN <= number <= TEMPERATURE_MAX:
            shown = str(values["temperature"])[:20]
            reasons.append(
                f"the temperature must be a number from {TEMPERATURE_MIN:g} to "
                f"{TEMPERATURE_MAX:g}, not {shown}"
            )
        elif number != current.shown_temperature:
            # Left where the slider showed it: the chat keeps Gemini's default, unsent.
            temperature = number

    instructions = current.instructions
    if "instructions" in values:
        text = values["instructions"]
        if text is None:
            instructions = ""  # the panel sends an emptied text box as null
        elif not isinstance(text, str):
            reasons.append("the instructions must be text")
        elif len(text) > MAX_CHAT_INSTRUCTIONS:
            reasons.append(
                f"the instructions are {len(text):,} characters long; "
                f"the limit is {MAX_CHAT_INSTRUCTIONS:,}"
            )
        else:
            instructions = text

    level = current.thinking_level
    if "thinking_level" in values:
        chosen = values["thinking_level"]
        if chosen in (None, MODEL_DEFAULT):
            level = None
        elif not isinstance(chosen, str) or chosen not in LEVEL_ORDER:
            reasons.append(f'"{str(chosen)[:20]}" is not a thinking level')
        elif chosen in thinking_levels(model):
            level = chosen
        elif chosen == current.thinking_level:
            # The chat's level, left as it was while another model was chosen that refuses it:
            # moved to the nearest level the new model takes (none if it takes none).
            level = nearest_level(chosen, model)
        else:
            reasons.append(f'{model} does not take the thinking level "{chosen}"')
    if level is not None and level not in thinking_levels(model):
        level = nearest_level(level, model)

    if reasons:
        raise SettingsRefused(reasons)
    return Preferences(model, temperature, instructions, level)


def restored(stored: Any, settings: Settings, choices: Sequence[str]) -> Preferences:
    """A chat's stored preferences, checked again (the model list or limits may have changed
    since, and the stored row is never trusted): a value that no longer passes is reset."""
    base = defaults(settings)
    if not isinstance(stored, Mapping):
        return base
    values = {
        "model": stored.get("model"),
        "temperature": (
            GEMINI_DEFAULT_TEMPERATURE
            if stored.get("temperature") is None
            else stored.get("temperature")
        ),
        "instructions": stored.get("instructions"),
        "thinking_level": stored.get("thinking_level"),
    }
    result = base
    for key, value in values.items():
        if value is None and key != "instructions":
            continue
        try:
            result = apply_change(result, {key: value}, choices)
        except SettingsRefused as refusal:
            logger.info("A stored chat setting no longer applies: %s", refusal.detail["reasons"])
    return result


# --- how the preferences reach Gemini -----------------------------------------------------------


def combined_instructions(operator: str, chat: str) -> str:
    """The system message: the operator's instructions whole, then the chat's own, marked."""
    if not chat.strip():
        return operator
    return operator + SEPARATOR + chat


def chat_model_settings(base: ModelSettings, preferences: Preferences) -> ModelSettings:
    """``base`` (the run's settings: retries, thought summaries) with the chat's temperature and
    thinking level. The level joins any ``include_thoughts`` already in Gemini's thinking config,
    and ``reasoning_effort`` is dropped beside it (Gemini refuses the two together)."""
    changes: dict[str, Any] = {}
    if preferences.temperature is not None:
        changes["temperature"] = preferences.temperature
    if preferences.thinking_level is not None:
        base = with_thinking_config(base, thinking_level=preferences.thinking_level)
    if thinking_config(base):
        changes["reasoning"] = None
    return dataclasses.replace(base, **changes) if changes else base


def thinking_config(model_settings: ModelSettings) -> dict[str, Any]:
    """Gemini's thinking config in ``model_settings`` (empty when there is none)."""
    body = model_settings.extra_body if isinstance(model_settings.extra_body, dict) else {}
    google = (body.get("extra_body") or {}).get("google") or {}
    return dict(google.get("thinking_config") or {})


def with_thinking_config(model_settings: ModelSettings, **fields: Any) -> ModelSettings:
    """``model_settings`` with ``fields`` added to Gemini's ``thinking_config`` (keeping what is
    already there, e.g. ``include_thoughts``), e.g. ``with_thinking_config(s,
    thinking_level="low")``. The one place that knows where Gemini reads it.

    Gemini's compatible endpoint takes its own options in a request field named ``extra_body``
    (``{"extra_body": {"google": {"thinking_config": {...}}}}`` on the wire); openai's
    ``extra_body`` argument merges its keys into the request, hence the double name. The SDK's
    ``ModelSettings.resolve`` replaces ``extra_body`` whole, so changes are merged here.
    """
    body = dict(model_settings.extra_body or {})  # type: ignore[arg-type]
    wire = dict(body.get("extra_body") or {})
    google = dict(wire.get("google") or {})
    google["thinking_config"] = {**(google.get("thinking_config") or {}), **fields}
    wire["google"] = google
    body["extra_body"] = wire
    return dataclasses.replace(model_settings, extra_body=body)


# --- the models a user may choose ---------------------------------------------------------------


def chat_models(ids: Sequence[str]) -> list[str]:
    """The chat models among Gemini's listed ids (``models/gemini-...``), without the prefix."""
    names = []
    for model_id in ids:
        name = model_id.removeprefix("models/")
        if name.startswith("gemini-") and not NOT_CHAT.search(name) and name not in names:
            names.append(name)
    return names


class ModelCatalog:
    """The models offered in the settings panel: Gemini's live list of chat models (narrowed
    to ``GEMINI_MODELS`` when set), the configured model always first. The list is fetched
    once for all chats and kept ``ttl`` seconds; when it cannot be had (an error, a timeout)
    the configured model alone is offered, and the list is asked for again after
    ``retry_after`` seconds."""

    def __init__(
        self,
        client: Any,
        settings: Settings,
        ttl: float = 600.0,
        retry_after: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.settings = settings
        self.ttl = ttl
        self.retry_after = retry_after
        self.timeout = timeout
        self._choices: tuple[str, ...] = (settings.model,)
        self._expires = float("-inf")
        self._lock = asyncio.Lock()

    async def choices(self) -> tuple[str, ...]:
        if time.monotonic() < self._expires:
            return self._choices
        async with self._lock:  # one fetch, however many chats start at once
            if time.monotonic() < self._expires:
                return self._choices
            listed = await self._fetch()
            keep = self.ttl if listed is not None else self.retry_after
            self._expires = time.monotonic() + keep
            self._choices = self._offer(listed or [])
            return self._choices

    async def _fetch(self) -> list[str] | None:
        if self.client is None:
            return None
        try:
            page = await self.client.models.list(timeout=self.timeout)
            return chat_models([model.id for model in page.data])
        except Exception as error:  # any failure: offer the configured model alone
            logger.warning("Could not list Gemini's models (%s)", type(error).__name__)
            return None

    def _offer(self, listed: Sequence[str]) -> tuple[str, ...]:
        allowed = self.settings.models
        others = [m for m in listed if m != self.settings.model and (not allowed or m in allowed)]
        return (self.settings.model, *sorted(others, reverse=True))


# --- the settings panel -------------------------------------------------------------------------


def panel_widgets(preferences: Preferences, choices: Sequence[str]) -> list[Any]:
    """Chainlit's input widgets for ``preferences``, offering only what the server accepts."""
    from chainlit.input_widget import Select, Slider, TextInput

    levels = thinking_levels(preferences.model)
    widgets: list[Any] = [
        Select(
            id="model",
            label="Model",
            values=list(choices),
            initial_value=preferences.model,
            description="The Gemini model that answers in this chat.",
        ),
        Slider(
            id="temperature",
            label="Temperature",
            initial=preferences.shown_temperature,
            min=TEMPERATURE_MIN,
            max=TEMPERATURE_MAX,
            step=0.1,
            description="Lower is more focused, higher more varied. Gemini's default is 1.",
        ),
    ]
    if levels:
        items = {"Model default": MODEL_DEFAULT} | {lv.capitalize(): lv for lv in levels}
        widgets.append(
            Select(
                id="thinking_level",
                label="Thinking",
                items=items,
                initial_value=preferences.thinking_level or MODEL_DEFAULT,
                # The panel is sent again once a change is confirmed, not while it is edited.
                description=(
                    f"The levels {preferences.model} takes (another model's show once it is "
                    "confirmed)."
                ),
            )
        )
    widgets.append(
        TextInput(
            id="instructions",
            label="Instructions for this chat",
            initial=preferences.instructions,
            placeholder="e.g. Answer in French. Keep answers short.",
            multiline=True,
            description=(
                f"Added after the app's own instructions, which still apply "
                f"(up to {MAX_CHAT_INSTRUCTIONS:,} characters)."
            ),
        )
    )
    return widgets


async def show_panel(preferences: Preferences, choices: Sequence[str]) -> None:
    """Send the settings panel showing ``preferences``. Sending it also resets Chainlit's session
    copy of the values (which Chainlit fills with whatever a client sends before the app is
    asked, and writes into the thread at every disconnect) to these checked ones."""
    from chainlit.chat_settings import ChatSettings

    await ChatSettings(panel_widgets(preferences, choices)).send()


def stored_in(thread: dict[str, Any]) -> Any:
    """A thread's stored preferences (unchecked), from its metadata (a dict, or JSON text on
    SQLite)."""
    from .history import load_json

    return load_json(thread.get("metadata")).get(METADATA_KEY)


def show_on_resume(thread: dict[str, Any], preferences: Preferences) -> None:
    """Make the resumed thread, as the page is about to receive it, carry the checked values:
    the page fills the panel from its metadata's ``chat_settings``, which Chainlit wrote from an
    unchecked session copy."""
    from .history import load_json

    metadata = load_json(thread.get("metadata"))
    metadata["chat_settings"] = preferences.panel_values()
    thread["metadata"] = metadata


async def store(thread_id: str, preferences: Preferences) -> None:
    """Write a chat's preferences into its thread's metadata, through the data layer (which
    checks the thread is the logged-in user's, and merges with the rest of the metadata)."""
    from chainlit.data import get_data_layer

    data_layer = get_data_layer()
    if data_layer is not None:
        await data_layer.update_thread(thread_id, metadata={METADATA_KEY: preferences.to_json()})
