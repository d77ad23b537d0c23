"""Where a request came from, as far as it can be trusted (the audit trail, login and API
throttling all use this one answer).

The client address is the peer's ``REMOTE_ADDR``. ``X-Forwarded-For`` is honoured only
when that peer is a proxy listed in ``settings.RADTRACK_TRUSTED_PROXIES`` (addresses or
networks, e.g. ``["127.0.0.1", "10.0.0.0/8"]``); otherwise any client could write
whatever address it liked into the trail, or dodge a lockout by changing the header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from django.conf import settings
from django.http import HttpRequest

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_address(text: str) -> _IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:8000"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:8000"
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted_networks() -> list[_IPNetwork]:
    entries: Iterable[str] = getattr(settings, "RADTRACK_TRUSTED_PROXIES", ()) or ()
    if isinstance(entries, str):
        entries = entries.split(",")
    networks = []
    for entry in entries:
        entry = entry.strip()
        if entry:
            networks.append(ipaddress.ip_network(entry, strict=False))
    return networks


def _is_trusted(address: _IPAddress, networks: list[_IPNetwork]) -> bool:
    return any(address in network for network in networks)


def client_address(request: HttpRequest) -> str | None:
    """The address the request came from, as far as it can be trusted.

    Walks ``X-Forwarded-For`` from the right (the entry the nearest proxy added)
    past every trusted proxy, and returns the first address that is not one.
    """
    peer = _parse_address(request.META.get("REMOTE_ADDR", "") or "")
    if peer is None:
        return None
    networks = _trusted_networks()
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if not forwarded or not _is_trusted(peer, networks):
        return str(peer)
    address = peer
    for hop in reversed(forwarded.split(",")):
        parsed = _parse_address(hop)
        if parsed is None:
            break  # a garbled entry: stop at the last address we could trust
        address = parsed
        if not _is_trusted(parsed, networks):
            break
    return str(address)
