"""Which address a request or socket comes from, believing proxies only if trusted."""

import ipaddress

from django.conf import settings


def _trusted(address: str, trusted: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in trusted:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def is_trusted_proxy(address: str | None) -> bool:
    return bool(address) and _trusted(address, settings.PLACE_TRUSTED_PROXIES)


def client_ip(*, peer: str | None, forwarded_for: str | None) -> str | None:
    """The client's address.

    `X-Forwarded-For` counts only when the socket peer is a trusted proxy; then
    the chain is read right to left, skipping trusted proxies, so a client that
    sends its own forged header through the proxy cannot choose its address.
    """
    trusted = settings.PLACE_TRUSTED_PROXIES
    if not peer or not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _valid(hop):
            return peer
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _valid(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def scope_ip(scope: dict) -> str | None:
    """client_ip for an ASGI scope (WebSocket or HTTP)."""
    client = scope.get("client")
    peer = client[0] if client else None
    forwarded = None
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-for":
            value = value.decode("latin1")
            forwarded = value if forwarded is None else f"{forwarded},{value}"
    return client_ip(peer=peer, forwarded_for=forwarded)


def request_ip(request) -> str | None:
    return client_ip(
        peer=request.META.get("REMOTE_ADDR"),
        forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR"),
    )
