"""Sockets and TLS: client endpoints for upstream URLs, trust roots, TCP_NODELAY."""

from __future__ import annotations

from typing import Any

from hyperlink import URL
from twisted.internet import tcp
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


def writes_through(transport: Any) -> bool:
    """Whether ``write_now`` may send on this transport itself: a plain TCP
    connection of the Twisted this was written for (its buffer's attributes)."""
    return (isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False)
            and all(hasattr(transport, name) for name in (
                "_tempDataLen", "dataBuffer", "offset", "_writeDisconnected")))


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` at once if nothing is waiting before it, else queue it.

    ``transport.write`` always queues and asks the reactor to watch the socket
    for writability (two ``epoll_ctl`` calls and a wake-up per write, besides
    the ``send``).  A frame to a client that keeps up fits in its socket
    buffer, so it is sent here with one ``send``; whatever the socket does not
    take, or anything behind queued bytes, goes through ``transport.write`` as
    before (its ordering, producer pauses and error handling unchanged).
    """
    if (transport.connected and not transport.disconnecting
            and not transport._writeDisconnected and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)):
        sent = transport.writeSomeData(data)
        if not isinstance(sent, int):
            sent = 0  # lost: transport.write queues it, Twisted finds out as usual
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
