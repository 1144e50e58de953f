"""Helpers for protocol tests: the proxy's data protocol and real Autobahn clients over
``iosim``, the session's link scripted by the test.  No sockets, one Clock."""

import json

import msgpack
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.test import iosim

from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects.alpaca_data import DIALECTS
from alpaca_proxy.downstream.alpaca_data import AlpacaDataProtocol
from alpaca_proxy.downstream.client import ClientFactory
from alpaca_proxy.proxy import Limits, Proxy
from alpaca_proxy.refusal import AUTH_FAILED, Refused
from alpaca_proxy.streams import STOCKS, Stream
from alpaca_proxy.timers import use_clock
from alpaca_proxy.upstream.session import DataSession

PAIR = Credentials("PKIOSIM", "s3cr3t-iosim")
#: The address clients connect from (tests may pretend to be remote).
PEER = "127.0.0.1"


class ScriptedLink:
    """The upstream side, answered by the test: records every change sent."""

    ready = True

    def __init__(self):
        self.changes = []

    def send_change(self, action, keys):
        self.changes.append((action, sorted(keys)))


class OneSessionPool:
    """Authenticates one pair into one session."""

    def __init__(self, session):
        self.session = session

    def authenticate(self, stream, credentials):
        if not PAIR.matches(credentials):
            return fail(Refused(AUTH_FAILED))
        return succeed(self.session)

    def join(self, session, client):
        session.attach(client)

    def leave(self, session, client):
        session.detach(client)


class Client(WebSocketClientProtocol):
    """Records decoded frames."""

    close_code = None

    def onOpen(self):
        self.frames = []

    def onClose(self, wasClean, code, reason):
        self.close_code = code

    def onMessage(self, payload, isBinary):
        self.frames.append(msgpack.unpackb(payload, timestamp=3) if isBinary
                           else json.loads(payload))

    def send(self, message):
        self.sendMessage(json.dumps(message).encode(), False)

    def take(self):
        frames, self.frames = self.frames, []
        return frames


class IosimProxy:
    """Mixin: a proxy's data protocol with one session on a scripted link, and real
    Autobahn clients connected to it over iosim; all timers on one Clock."""

    def build(self, limits=Limits(ping_interval=0)):
        self.clock = Clock()
        self.session = DataSession(Stream(STOCKS, "/v2/iex"), PAIR, self.clock,
                                   DIALECTS[STOCKS])
        self.session.link = self.link = ScriptedLink()
        self.session.link_ready()
        self.proxy = Proxy(self.clock, OneSessionPool(self.session), limits=limits)
        self.factory = ClientFactory(self.proxy, AlpacaDataProtocol)
        self.pumps = []

    def connect(self, msgpack_encoding=False):
        headers = {"Content-Type": "application/msgpack"} if msgpack_encoding else {}
        client_factory = WebSocketClientFactory("ws://127.0.0.1/v2/iex", headers=headers)
        client_factory.protocol = Client
        use_clock(client_factory, self.clock)
        client = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8765))
        server = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        # The server side sees the client's address, as over TCP (per-address limits).
        server_transport = iosim.FakeTransport(
            server, isServer=True, peerAddress=IPv4Address("TCP", PEER, 40000))
        pump = iosim.connect(server, server_transport,
                             client, iosim.makeFakeClient(client), greet=False)
        pump.flush()
        self.pumps.append(pump)
        client.server = server
        return client

    def flush(self):
        for pump in self.pumps:
            pump.flush()

    def login(self, **kwargs):
        client = self.connect(**kwargs)
        client.send({"action": "auth", "key": PAIR.key, "secret": PAIR.secret})
        self.flush()
        self.assertEqual(client.take(), [[{"T": "success", "msg": "connected"}],
                                         [{"T": "success", "msg": "authenticated"}]])
        return client
