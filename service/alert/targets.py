"""Where webhooks may go: public addresses only, unless the operator allows a network.

A webhook URL is an admin-supplied target the API process will POST to, so without a guard it
reaches loopback services, the cloud metadata endpoint (169.254.169.254) or the private network
(SSRF). Every address the host resolves to must be global; `webhook_allowed_networks` lists the
CIDRs that are allowed anyway (an internal receiver). Checked when a rule is saved and again
before each delivery, since DNS answers change. A URL may not carry credentials either: every read
key sees the rule, and the URL appears in logs.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from flipwatch.service.core.errors import InvalidAlertRule
from flipwatch.service.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_webhook_target(url: str, settings: Settings) -> None:
    """Raise InvalidAlertRule naming the address and why, unless every address is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidAlertRule(f"webhook_url {url[:200]!r} must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        # Rules are readable by every read key and appear in logs: a secret in the URL leaks.
        raise InvalidAlertRule(
            "webhook_url must not carry credentials (user:password@); authenticate the receiver "
            "with the X-Flipwatch-Signature HMAC (FLIPWATCH_WEBHOOK_SECRET) instead"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise InvalidAlertRule(
            f"webhook_url host {parts.hostname!r} does not resolve ({exc}); use a reachable "
            "public host"
        ) from exc
    allowed = [ipaddress.ip_network(n, strict=False) for n in settings.webhook_allowed_networks]
    for info in infos:
        address = _address(str(info[4][0]))
        if any(address in network for network in allowed):
            continue
        reason = refusal_reason(address)
        if reason is not None:
            raise InvalidAlertRule(
                f"webhook_url host {parts.hostname!r} resolves to {address} ({reason}); webhooks "
                "may only reach public addresses unless FLIPWATCH_WEBHOOK_ALLOWED_NETWORKS "
                "lists its network"
            )


def _address(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def refusal_reason(address: IPAddress) -> str | None:
    """Why a webhook may not reach `address`, or None for a global unicast address."""
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local, including cloud metadata endpoints"
    if address.is_private:
        return "private network"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "not a unicast host address"
    if not address.is_global:
        return "not a public address"
    return None
