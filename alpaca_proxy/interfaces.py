"""The declared boundaries between the layers.

``IClient`` is what the upstream side (router, fan-out, sessions) may ask of a
local client connection; the downstream protocols implement it.  ``ISession``
is what a downstream protocol may ask of the upstream session it joined.  The
two layers meet only here and in ``service.build``: nothing in ``upstream/``
imports ``downstream/`` or the reverse.  Only ``fanout`` calls the ``IClient``
methods that write to a client.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IClient(Interface):
    """One local client connection, as the upstream side sees it."""

    encoding = Attribute("The client's ``codec.Encoding`` (JSON or MessagePack).")
    messages_sent = Attribute("Data messages delivered so far (counted by fanout).")

    def prepare(payload, binary):
        """A frame prepared once and sent to many clients with ``send_prepared``."""

    def send_prepared(prepared):
        """Send a prepared data frame (or cut the client off if it stopped reading)."""

    def drained():
        """A Deferred that fires once the client's connection takes writes again
        (at once if it does, or once the client is gone): a replay at speed 0 waits
        for its slowest reader this way instead of filling its buffer."""

    def acknowledge(state):
        """The client's oldest request is done: its whole state is now ``state``."""

    def refuse(code):
        """The client's oldest request was refused with ``code``; its state is unchanged."""

    def notice(message):
        """Pass on a status message upstream addressed to every client of the session."""

    def account_refused(code):
        """Upstream refused the account this client shares: say so and hang up."""


class ISession(Interface):
    """One upstream session (an account on one stream), as a downstream protocol sees it."""

    credentials = Attribute("The account's ``Credentials`` (only the key is ever shown).")
    stream = Attribute("The ``streams.Stream`` it serves.")

    def request(client, change):
        """Apply a client's ``subscriptions.Change`` (data streams) or list of
        streams to listen to (the trading stream); answered through ``IClient``."""

    def state_of(client):
        """What a client holds: its confirmed state (a ``State``), or its streams."""

    def subscriptions_of(client):
        """How many subscriptions a client holds."""


class IDataSession(ISession):
    """A market-data session: what a client's limits are checked against."""

    def size_after(client, change):
        """How many keys the client will hold once ``change`` and its waiting requests are done."""

    def queued_symbols(client):
        """Symbols named by the client's requests waiting behind its pending one."""
