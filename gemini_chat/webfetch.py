"""Fetching a public web page as readable text, for the ``fetch_page`` tool.

The model chooses the URL, and a page it reads can tell it which URL to read next, so the
fetcher is the app's door to its own network: only http(s), and never an address that is not
public (loopback, private, link-local, shared/CGNAT, multicast, unspecified, reserved, or any of
these inside an IPv4-mapped, 6to4, NAT64 or IPv4-compatible IPv6 address). The check runs on
every hop of a redirect and after DNS, on the very addresses the connection then uses (the
resolver refuses them, so DNS rebinding cannot swap in another address between check and
connect). Reading stops at a size limit and the whole fetch at a time limit; only text-like
content types are read; no cookies are kept or sent.

Every refusal or failure is a ``FetchError`` whose message is one plain line for the model and
the user, e.g. "Refused: 127.0.0.1 is a loopback address".
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from html import unescape

import aiohttp
import charset_normalizer
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

USER_AGENT = "gemini-chat-fetch/1.0 (reads one page as text for a chat assistant)"
MAX_REDIRECTS = 5
MAX_URL_CHARS = 2_000
CHUNK_BYTES = 64 * 1024
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not every Python 3.11-3.13 release flags these the same way, so they are named here.
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_PRIVATE = tuple(
    ipaddress.ip_network(network)
    # 64:ff9b:1::/48: NAT64 for a local network's own use (RFC 8215).
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "64:ff9b:1::/48")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class FetchError(Exception):
    """The page could not be fetched or was refused; ``str(error)`` says why in one line."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries, and the form that carries it."""
    if address.ipv4_mapped is not None:
        return "an IPv4-mapped", address.ipv4_mapped
    if address.sixtofour is not None:
        return "a 6to4", address.sixtofour
    if address in _NAT64:
        return "a NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return "an IPv4-compatible", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why the app must not connect to ``address`` ("a loopback address", "an IPv4-mapped form
    of 127.0.0.1, a loopback address"), or None for a public one. ``allowed`` lets tests reach
    their own local server; the app never passes it."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: drop the zone
    if any(ip.version == network.version and ip in network for network in allowed):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(ip)):
        form, inner = embedded
        reason = refusal(str(inner), allowed)
        return f"{form} form of {inner}, {reason}" if reason else None
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if any(ip.version == network.version and ip in network for network in _PRIVATE):
        return "a private address"
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "a reserved address, not a public one"
    return None


def _literal_address(host: str) -> str | None:
    """``host`` as an IP address when it is one, in any spelling ``socket`` accepts (so
    2130706433 and 0177.0.0.1 are 127.0.0.1 too); None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        mapped = getattr(address, "ipv4_mapped", None)
        # One spelling on every Python: 3.13 writes ::ffff:127.0.0.1, 3.11 ::ffff:7f00:1.
        return f"::ffff:{mapped}" if mapped is not None else str(address)
    if re.fullmatch(r"[0-9a-fA-FxX.]+", host) and re.match(r"[0-9]", host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def checked_url(text: str, allowed: Sequence[Network] = ()) -> URL:
    """``text`` as a URL the fetcher may request; FetchError saying why not otherwise. A host
    name is checked later, on the addresses it resolves to."""
    if len(text) > MAX_URL_CHARS:
        raise FetchError(f"Refused: the URL is longer than {MAX_URL_CHARS:,} characters.")
    try:
        url = URL(text.strip())
    except (ValueError, TypeError):
        raise FetchError(f"Refused: {text[:200]!r} is not a URL.") from None
    if url.scheme not in ("http", "https"):
        scheme = f"{url.scheme}:" if url.scheme else "no scheme"
        raise FetchError(f"Refused: only http:// and https:// pages can be fetched, not {scheme}.")
    host = url.host
    if not host:
        raise FetchError(f"Refused: {text[:200]!r} has no host name.")
    address = _literal_address(host)
    if address is not None:
        reason = refusal(address, allowed)
        if ":" in host:
            host = address  # an IPv6 address, however the URL library wrote it
        if reason and address == host:
            raise FetchError(f"Refused: {host} is {reason}.")
        if reason:
            raise FetchError(f"Refused: {host} means {address}, {reason}.")
        if address != host:
            # A legacy spelling of a public address: ask for it the usual way.
            raise FetchError(f"Refused: write the address {host} as {address}.")
    return url


class _PublicResolver(AbstractResolver):
    """Resolves as the system does, then refuses a name if any of its addresses is not public.
    The connector connects to the addresses returned here, the ones just checked."""

    def __init__(
        self, allowed: Sequence[Network], resolver: AbstractResolver | None = None
    ) -> None:
        self._resolver = resolver or ThreadedResolver()
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            results = await self._resolver.resolve(host, port, family)
        except OSError:
            raise FetchError(f"Could not find the host {host.rstrip('.')}.") from None
        for result in results:
            reason = refusal(result["host"], self._allowed)
            if reason:
                raise FetchError(
                    f"Refused: {host.rstrip('.')} resolves to {result['host']}, {reason}."
                )
        return results

    async def close(self) -> None:
        await self._resolver.close()


@dataclass(frozen=True)
class Download:
    """A page as it came: its final address, type, declared charset, the bytes read, and
    whether it was cut at the size limit."""

    url: str
    content_type: str
    charset: str | None
    body: bytes
    cut: bool


async def _read(response: aiohttp.ClientResponse, max_bytes: int) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of the body, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        if size + len(chunk) > max_bytes:
            chunks.append(chunk[: max_bytes - size])
            # Stop here: the rest is never read (closing drops the connection).
            response.close()
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _text_like(content_type: str) -> bool:
    return (
        content_type in HTML_TYPES
        or content_type.startswith("text/")
        or content_type == "application/json"
        or content_type.endswith("+json")
    )


async def download(
    url: str,
    *,
    max_bytes: int,
    allowed: Sequence[Network] = (),
    resolver: AbstractResolver | None = None,
) -> Download:
    """The body of the page at ``url`` after at most MAX_REDIRECTS redirects, each checked."""
    current = checked_url(url, allowed)
    connector = aiohttp.TCPConnector(
        resolver=_PublicResolver(allowed, resolver), use_dns_cache=False
    )
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.9",
        },
        # A proxy from the environment would connect on the app's behalf, past the check.
        trust_env=False,
    ) as session:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with session.get(current, allow_redirects=False) as response:
                    location = response.headers.get("Location")
                    if response.status in (301, 302, 303, 307, 308) and location:
                        try:
                            target = str(response.url.join(URL(location)))
                        except (ValueError, TypeError):
                            raise FetchError(
                                f"{current} redirects to an invalid address ({location[:200]!r})."
                            ) from None
                        current = checked_url(target, allowed)
                        continue
                    if response.status >= 400:
                        # The reason phrase is the server's own text: kept short.
                        reason = (response.reason or "")[:100]
                        raise FetchError(
                            f"{current} answered {response.status} {reason}".strip() + "."
                        )
                    content_type = response.content_type
                    if not _text_like(content_type):
                        raise FetchError(
                            f"Refused: {current} is {content_type}, not a text page (this tool "
                            "reads HTML, plain text and JSON)."
                        )
                    body, cut = await _read(response, max_bytes)
                    return Download(str(response.url), content_type, response.charset, body, cut)
            except aiohttp.ClientConnectorError as error:
                reason = error.strerror or type(error).__name__
                raise FetchError(f"Could not connect to {current.host}: {reason}.") from None
            except aiohttp.ClientError as error:
                raise FetchError(f"Could not fetch {current}: {type(error).__name__}.") from None
    raise FetchError(f"Refused: {url} redirects more than {MAX_REDIRECTS} times.")


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def decode(body: bytes, charset: str | None, html: bool) -> str:
    """The body as text: the charset the server named, else the page's own <meta charset>,
    else UTF-8, else charset_normalizer's best guess."""
    named = charset
    if named is None and html and (match := _META_CHARSET.search(body[:4096])):
        named = match.group(1).decode("ascii")
    if named:
        try:
            return body.decode(named, errors="replace")
        except LookupError:
            pass  # a charset name Python does not know: guess instead
    try:
        # Incremental, so a character cut in half at the size limit is not taken for bad UTF-8.
        return codecs.getincrementaldecoder("utf-8")().decode(body, final=False)
    except UnicodeDecodeError:
        best = charset_normalizer.from_bytes(body).best()
        return str(best) if best is not None else body.decode("utf-8", errors="replace")


_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


def _title(html: str) -> str | None:
    """The page's <title>, as a browser tab shows it (trafilatura's own metadata prefers a
    heading, and guesses a date and more that the model does not need)."""
    match = _TITLE.search(html, 0, 200_000)
    title = " ".join(unescape(match.group(1)).split()) if match else ""
    return title[:300] or None


def readable(page: Download, links: bool) -> str:
    """The page as the model reads it: title, address, then the main text."""
    text = decode(page.body, page.charset, page.content_type in HTML_TYPES)
    title = None
    if page.content_type in HTML_TYPES:
        # Imported on first use: it takes most of a second, and most chats never fetch a page.
        import trafilatura

        title = _title(text)
        text = (
            trafilatura.extract(
                text,
                url=page.url,
                output_format="markdown",
                include_formatting=True,
                include_links=links,
                include_comments=False,
                with_metadata=False,
            )
            or ""
        )
    lines = [f"Title: {title}"] if title else []
    lines += [f"URL: {page.url}", "", text.strip() or "(The page has no readable text.)"]
    if page.cut:
        lines += ["", f"[The page is longer: only its first {len(page.body):,} bytes were read.]"]
    return "\n".join(lines)


async def fetch_readable(
    url: str,
    *,
    max_bytes: int,
    seconds: float,
    links: bool = False,
    allowed: Sequence[Network] = (),
    resolver: AbstractResolver | None = None,
) -> str:
    """The page at ``url`` as readable text (see ``readable``), fetched within ``seconds``
    reading at most ``max_bytes``. For tests only (the app passes neither): ``allowed``, networks
    reachable despite the policy (their local server); ``resolver``, their own DNS answers."""
    try:
        async with asyncio.timeout(seconds):
            page = await download(url, max_bytes=max_bytes, allowed=allowed, resolver=resolver)
    except TimeoutError:
        raise FetchError(f"Timed out: {url} did not answer within {seconds:g} s.") from None
    # Parsing a large page takes a while: off the event loop, so other chats keep streaming.
    return await asyncio.to_thread(readable, page, links)
