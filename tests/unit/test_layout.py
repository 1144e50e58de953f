"""The architecture holds: layers do not import each other, one module writes to clients,
and the declared interfaces are implemented."""

import ast
from pathlib import Path

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from alpaca_proxy import interfaces
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects import alpaca_data, polygon
from alpaca_proxy.downstream.alpaca_data import AlpacaDataProtocol
from alpaca_proxy.downstream.alpaca_trading import TradingProtocol
from alpaca_proxy.downstream.client import ClientProtocol
from alpaca_proxy.downstream.polygon import PolygonProtocol
from alpaca_proxy.streams import POLYGON, STOCKS, TRADING_STREAM, Stream
from alpaca_proxy.upstream import link
from alpaca_proxy.upstream.alpaca_data import AlpacaDataLink
from alpaca_proxy.upstream.alpaca_trading import TradingLink, TradingSession
from alpaca_proxy.upstream.polygon import PolygonLink
from alpaca_proxy.upstream.session import DataSession

PACKAGE = Path(alpaca_data.__file__).resolve().parent.parent

#: IClient methods that write to a client.
WRITES = {"send_prepared", "acknowledge", "refuse", "notice", "account_refused"}


def modules(folder: str = "") -> dict[str, ast.Module]:
    base = PACKAGE / folder
    return {str(path.relative_to(PACKAGE)): ast.parse(path.read_text())
            for path in sorted(base.rglob("*.py"))}


def imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update("%s.%s" % (node.module, alias.name) for alias in node.names)
    return names


class LayerTests(SynchronousTestCase):
    def test_layers_do_not_import_each_other(self):
        """Nothing in upstream/ imports downstream/, nor the reverse."""
        for folder, other in (("upstream", "downstream"), ("downstream", "upstream")):
            for name, tree in modules(folder).items():
                crossing = {n for n in imported(tree)
                            if n.startswith("alpaca_proxy.%s" % (other,))}
                self.assertEqual(crossing, set(), name)

    def test_core_modules_know_no_layer(self):
        """Core modules (router, fanout, subscriptions ...) import neither layer."""
        core = {name: tree for name, tree in modules().items() if "/" not in name}
        for name in ("service.py", "web.py"):  # the wiring and the front door see both
            core.pop(name)
        self.assertIn("router.py", core)
        for name, tree in core.items():
            layered = {n for n in imported(tree)
                       if n.startswith(("alpaca_proxy.upstream", "alpaca_proxy.downstream"))}
            self.assertEqual(layered, set(), name)

    def test_only_fanout_writes_to_clients(self):
        """Outside fanout.py and the protocols, no code calls a client's writing methods
        or bumps its counters."""
        for name, tree in modules().items():
            if name == "fanout.py" or name.startswith(("downstream/", "simulator/")):
                continue
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in WRITES
                        and not (isinstance(node.func.value, ast.Name)
                                 and node.func.value.id == "fanout")):
                    self.fail("%s:%d calls .%s" % (name, node.lineno, node.func.attr))
                if (isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Attribute)
                        and node.target.attr == "messages_sent"):
                    self.fail("%s:%d counts a client's messages" % (name, node.lineno))

    def test_the_router_is_pure(self):
        """The router imports no reactor, socket or Autobahn."""
        names = imported(modules()["router.py"])
        self.assertEqual({n for n in names if n.startswith(("twisted", "autobahn", "socket"))},
                         set())


class InterfaceTests(SynchronousTestCase):
    def test_protocols_are_clients(self):
        """Every downstream protocol declares and implements IClient."""
        for protocol in (ClientProtocol, AlpacaDataProtocol, TradingProtocol, PolygonProtocol):
            self.assertTrue(verifyClass(interfaces.IClient, protocol))

    def test_sessions_implement_what_they_declare(self):
        """Sessions are ISessions and their links' receivers."""
        clock = Clock()
        data = DataSession(Stream(STOCKS, "/v2/iex"), Credentials("k", "s"), clock,
                           alpaca_data.DIALECTS[STOCKS])
        trading = TradingSession(TRADING_STREAM, Credentials("k", "s"), clock)
        for session, receiver in ((data, link.IDataReceiver), (trading, link.IEventReceiver)):
            self.assertTrue(verifyObject(interfaces.ISession, session))
            self.assertTrue(verifyObject(receiver, session))

    def test_links_implement_ilink(self):
        """Every websocket link is an ILink."""
        reactor = MemoryReactorClock()
        credentials = Credentials("k", "s")
        for link_class, stream, options in (
                (AlpacaDataLink, Stream(STOCKS, "/v2/iex"),
                 {"dialect": alpaca_data.DIALECTS[STOCKS]}),
                (PolygonLink, Stream(POLYGON, "/stocks"), {"dialect": polygon.DIALECTS["stocks"]}),
                (TradingLink, TRADING_STREAM, {})):
            made = link_class(object(), stream, credentials, "ws://127.0.0.1:1" + stream.path,
                              reactor, reactor, **options)
            self.assertTrue(verifyObject(link.ILink, made))
