"""Server preparation: settings, safe logging, Chainlit's UI name, the login mode and the HTTP edge
(gemini_chat/edge.py) that enforces it."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from agents import FunctionTool
from chainlit.config import config as chainlit_config
from chainlit.data import get_data_layer
from sqlalchemy.engine import make_url

from .attachments import configured_limits
from .auth import Access, AccessError, install_login_guards, prepare_access
from .chat import release_session
from .config import ConfigError, Settings, load_settings
from .edge import (
    EdgeRules,
    body_limit,
    bound_websocket_messages,
    install_edge,
    proxies_beyond_loopback,
)
from .framework import install_stop_without_notice, install_user_note, release_with_session
from .frontend import install_frontend
from .health import install_operations
from .logs import (
    install_json_logs,
    install_request_ids,
    install_secret_filter,
    instance_name,
    quiet_library_logs,
)
from .mcp import load_server_configs
from .ownership import note_authenticated
from .relay import build_relay, install_relay
from .runtime import tune_runtime
from .schema import StorageError, describe_url, prepare_database
from .sharing import install_sharing
from .storage import ChatDataLayer
from .tools import build_tools
from .uploads import install_upload_routes, upload_limit

logger = logging.getLogger("gemini_chat")

LOCAL_MODE_CSS = "/public/local-mode.css"


@dataclass
class Server:
    """What the handlers need, prepared once at start-up."""

    settings: Settings
    data_layer: ChatDataLayer
    access: Access
    edge: EdgeRules
    # The agent's own tools (TOOLS, TOOL_MODULES), checked at start-up.
    tools: list[FunctionTool] = field(default_factory=list)


# The server being prepared; the edge reads its rules from it on every request.
current: Server | None = None


def _exit(message: str) -> None:
    # One line saying what to change, not a traceback.
    print(message, file=sys.stderr)
    raise SystemExit(2)


def prepare_server() -> Server:
    """Read the settings, prepare the database and the login mode, and set up the Chainlit
    server for them; safe to call on every reload."""
    global current
    tune_runtime()
    try:
        settings = load_settings()
        tools = build_tools(settings)
        # MCP_SERVERS_FILE is read again where the servers are made (llm.build_backend); a
        # malformed one stops the start here, in one line.
        load_server_configs(settings, os.environ)
    except ConfigError as error:
        _exit(f"Configuration error: {error}")
    logging.getLogger("gemini_chat").setLevel(logging.INFO)
    if settings.log_format == "json":
        install_json_logs(instance_name(chainlit_config.run.port))
    quiet_library_logs()
    chainlit_config.ui.name = settings.assistant_name

    from chainlit.server import app, sio

    # No socket message larger than the longest allowed message can be: it is read whole
    # before anyone has logged in. A paste over the limit still fits (up to 6 times the limit
    # for plain text) and is refused politely in on_message.
    sio.eio.max_http_buffer_size = body_limit(settings.max_message_chars)
    bound_websocket_messages(body_limit(settings.max_message_chars))
    install_frontend(app, settings.max_message_chars)
    install_upload_routes(app)
    # /healthz, /readyz and /metrics (health.py); they read the server as prepared below.
    install_operations(app, sio, lambda: current)
    install_stop_without_notice()
    release_with_session(release_session)  # what Chainlit keeps of a chat, freed with it
    if not settings.api_key:
        logger.warning("GEMINI_API_KEY is not set: the chat will explain how to set it")
    try:
        prepare_database(settings.database_url)
        access = prepare_access(settings.database_url)
        install_login_guards(access)
    except StorageError as error:
        _exit(f"Database error: {error}")
    except AccessError as error:
        _exit(f"Login error: {error}")
    if access.local and (beyond := proxies_beyond_loopback(settings.forwarded_allow_ips)):
        _exit(
            f"Login error: FORWARDED_ALLOW_IPS={settings.forwarded_allow_ips!r} lets "
            f"{', '.join(beyond)} tell the app where a request came from, so anyone could pass "
            "for this computer, which is all that local mode serves: remove it, or add accounts."
        )
    # Local mode has nobody to log out (the page logs the local user in again at once), so its
    # user menu, which holds only "Logout", is hidden.
    if access.local and chainlit_config.ui.custom_css in (None, "", LOCAL_MODE_CSS):
        chainlit_config.ui.custom_css = LOCAL_MODE_CSS
    elif chainlit_config.ui.custom_css == LOCAL_MODE_CSS:
        chainlit_config.ui.custom_css = None
    # Sharing needs accounts: in local mode there is nobody to share a chat with.
    if access.local:
        chainlit_config.features.allow_thread_sharing = False
    if settings.api_key:
        logger.info(
            "Serving %s with model %s at %s; chats stored in %s",
            settings.assistant_name,
            settings.model,
            settings.base_url,
            describe_url(settings.database_url),
        )
    else:
        logger.info("Chats stored in %s", describe_url(settings.database_url))
    install_secret_filter(
        *(
            secret
            for secret in (
                settings.api_key,
                settings.metrics_token,
                os.environ.get("CHAINLIT_AUTH_SECRET"),
                make_url(settings.database_url).password,
            )
            if secret
        )
    )
    edge = EdgeRules(
        local=access.local,
        body_limit=body_limit(settings.max_message_chars),
        upload_limit=upload_limit(configured_limits()),
        page_login=access.page_login_headers,
    )
    # Instances on one PostgreSQL database tell each other of answers and logins (started with
    # the server: chatbot.py's on_app_startup).
    install_relay(build_relay(settings.database_url, access))
    data_layer = ChatDataLayer(settings.database_url, settings.max_message_chars)
    current = Server(settings, data_layer, access, edge, tools)
    # Downloads and share links, the owner check kept (sharing.py).
    install_sharing(app, get_data_layer, settings.assistant_name)
    # The data layer checks every id against the user Chainlit authenticated (ownership.py).
    install_user_note(note_authenticated)
    # Added last, so it is the outermost: nothing reads a body or answers before its checks.
    install_edge(app, lambda: current.edge if current else None)
    # Outside the edge: its lines carry the request id too.
    install_request_ids(app, sio)
    return current
