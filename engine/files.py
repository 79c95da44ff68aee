"""Fetching an ``input_file``'s ``file_url`` for a Chat backend, only where the operator allows.

A Chat model cannot fetch a URL, so the gateway does, on the client's behalf, and
so only from hosts in ``file_url_allowed_hosts`` (default: none). The host's
addresses are resolved once and each is checked: one in a loopback, private,
link-local, shared, multicast or reserved range passes only when an address or
network entry of the list covers it, never by a name entry (a name that resolves
inward is how DNS rebinding reaches inside). The connection goes to the checked
address itself (``Host`` and TLS SNI still name the host), redirects are not
followed, and the body has ``file_url_max_bytes`` and ``file_url_timeout``. Every
refusal is a 400 naming the URL's part (``file_url_not_allowed``,
``file_url_fetch_failed``). On the native path nothing is fetched: the URL goes
upstream untouched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Iterable
from urllib.parse import urlsplit, urlunsplit

import httpx

from requests.common import InvalidInput

__all__ = ["FileFetcher", "file_urls", "inward_address"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def file_urls(items: Iterable[dict]) -> list[tuple[str, str]]:
    """``(url, where)`` of each ``input_file`` part in ``items`` that has a ``file_url`` and no
    ``file_data``, once per URL, in order (``where``: ``input[i].content[j]``)."""
    seen: dict[str, str] = {}
    for i, item in enumerate(items):
        content = item.get("content") if item.get("type") == "message" else item.get("output")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") == "input_file" and isinstance(part.get("file_url"), str) \
                    and not isinstance(part.get("file_data"), str):
                seen.setdefault(part["file_url"], f"input[{i}].content[{j}]")
    return list(seen.items())


def inward_address(address: _Address) -> bool:
    """Whether ``address`` is one a request from outside must not reach by default."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified or not address.is_global)


class FileFetcher:
    """Fetches ``file_url`` files under the settings ``file_url_allowed_hosts``, ``file_url_max_bytes``
    and ``file_url_timeout``; :meth:`close` when done."""

    def __init__(self, allowed_hosts: list[str], max_bytes: int, timeout: float):
        self.configure(allowed_hosts, max_bytes, timeout)
        # trust_env off: a proxy from the environment would hide where the connection goes
        self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False)

    def configure(self, allowed_hosts: list[str], max_bytes: int, timeout: float) -> None:
        """Take new settings (a reload); fetches under way keep the old ones."""
        names: list[str] = []
        networks: list[_Network] = []
        for entry in allowed_hosts:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.append(entry.lower().rstrip("."))
        self.names, self.networks, self.max_bytes, self.timeout = names, networks, max_bytes, timeout

    async def close(self) -> None:
        await self._http.aclose()

    def _named(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == name or (name.startswith("*.") and host.endswith(name[1:])) for name in self.names)

    def _covered(self, address: _Address) -> bool:
        return any(address in network for network in self.networks)

    async def _address(self, host: str, port: int, where: str) -> str:
        """The one address of ``host`` to connect to, checked. Raises :class:`InvalidInput`."""
        try:
            literal: _Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:  # an address is allowed by an address or network entry only
            if not self._covered(literal):
                raise self._refused(host, where)
            return host
        if not self._named(host):
            raise self._refused(host, where)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise InvalidInput(f"The file_url host '{host}' could not be resolved: {exc}.", f"{where}.file_url",
                               "file_url_fetch_failed") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        for address in addresses:
            if inward_address(address) and not self._covered(address):
                raise InvalidInput(f"The file_url host '{host}' resolves to {address}, an inward address that "
                                   "file_url_allowed_hosts does not list.", f"{where}.file_url",
                                   "file_url_not_allowed")
        return str(addresses[0])

    def _refused(self, host: str, where: str) -> InvalidInput:
        return InvalidInput(f"The gateway fetches file_url only from hosts in file_url_allowed_hosts; '{host}' is "
                            "not one of them.", f"{where}.file_url", "file_url_not_allowed")

    async def fetch(self, url: str, where: str) -> tuple[bytes, str | None]:
        """The body of ``url`` and its ``Content-Type``. Raises :class:`InvalidInput` for a URL
        that is not http(s), a host not allowed, and a fetch that fails, is redirected, or is too big."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("A file_url must be an http or https URL.", f"{where}.file_url", "file_url_not_allowed")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await self._address(host, port, where)
        netloc = f"[{address}]" if ":" in address else address
        target = urlunsplit((parts.scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "*/*"}
        failed = f"The file at {url} could not be fetched"
        try:
            async with asyncio.timeout(self.timeout):
                async with self._http.stream("GET", target, headers=headers, timeout=self.timeout,
                                             extensions={"sni_hostname": host}) as reply:
                    if reply.status_code != 200:
                        raise InvalidInput(f"{failed}: HTTP {reply.status_code} (redirects are not followed).",
                                           f"{where}.file_url", "file_url_fetch_failed")
                    body = bytearray()
                    async for chunk in reply.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise InvalidInput(f"The file at {url} is larger than file_url_max_bytes "
                                               f"({self.max_bytes} bytes).", f"{where}.file_url",
                                               "file_url_fetch_failed")
                    return bytes(body), reply.headers.get("content-type")
        except TimeoutError:
            raise InvalidInput(f"{failed} within file_url_timeout ({self.timeout:g} s).", f"{where}.file_url",
                               "file_url_fetch_failed") from None
        except httpx.HTTPError as exc:
            raise InvalidInput(f"{failed}: {type(exc).__name__}: {exc}.", f"{where}.file_url",
                               "file_url_fetch_failed") from None
