"""Sockets and TLS: client endpoints for upstream URLs, trust roots, TCP_NODELAY."""

from __future__ import annotations

from typing import Any

from hyperlink import URL
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates


#: Seconds one attempt to connect upstream may take (TCP and TLS).
CONNECT_TIMEOUT = 5.0


def endpoint_for(reactor: Any, url: str, trust_root: Any = None) -> Any:
    """A client endpoint for a ``ws://`` or ``wss://`` URL.

    TLS verifies the certificate chain (the platform's CAs, or ``trust_root``)
    and, through service-identity, that it names the host.
    """
    parsed = URL.from_text(url)
    host = parsed.host
    # A connection attempt gives up after CONNECT_TIMEOUT seconds, so a client that
    # waits on it hears why within its own 10 s auth deadline.
    if parsed.scheme == "wss":
        port = parsed.port or 443
        tls = optionsForClientTLS(host, trustRoot=trust_root)
        return wrapClientTLS(tls, HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT))
    return HostnameEndpoint(reactor, host, parsed.port or 80, timeout=CONNECT_TIMEOUT)


def load_ca_bundle(path: str) -> Any:
    """A trust root from a PEM file of one or more CA certificates (ValueError if none)."""
    with open(path, "rb") as source:
        text = source.read()
    marker = b"-----END CERTIFICATE-----"
    certificates = [Certificate.loadPEM(block + marker) for block in text.split(marker)
                    if b"-----BEGIN CERTIFICATE-----" in block]
    if not certificates:
        raise ValueError("no certificate in %s" % (path,))
    return trustRootFromCertificates(certificates)


def set_no_delay(transport: Any) -> None:
    """Turn off Nagle's algorithm on a TCP transport, through a TLS layer if there is one.

    Autobahn sets TCP_NODELAY before it has copied the factory's options onto
    the protocol, so on client connections its attempt silently fails; with
    Nagle on, small frames and the peer's delayed ACKs hold data back by 40 ms.
    """
    while transport is not None:
        if hasattr(transport, "setTcpNoDelay"):
            try:
                transport.setTcpNoDelay(True)
            except OSError:  # not a TCP socket
                pass
            return
        transport = getattr(transport, "transport", None)
