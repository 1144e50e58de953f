"""API key pairs, handled so that the secret never reaches a log or a repr."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Mapping

from attrs import field, frozen


@frozen
class Credentials:
    """An Alpaca key id and its secret.  The secret stays out of ``repr``."""

    key: str
    secret: str = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """A digest of the pair, to recognise it again without keeping the secret."""
        pair = b"%s\0%s" % (self.key.encode("utf-8"), self.secret.encode("utf-8"))
        return hashlib.sha256(pair).hexdigest()

    def matches(self, other: "Credentials") -> bool:
        """Constant-time comparison of both halves."""
        same_key = hmac.compare_digest(self.key.encode(), other.key.encode())
        same_secret = hmac.compare_digest(self.secret.encode(), other.secret.encode())
        return same_key and same_secret

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "Credentials | None":
        """``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``, or None if either is unset."""
        key = environ.get("APCA_API_KEY_ID", "").strip()
        secret = environ.get("APCA_API_SECRET_KEY", "").strip()
        if key and secret:
            return cls(key, secret)
        return None


def header_credentials(headers: Mapping[str, str]) -> Credentials | None:
    """Credentials sent on the upgrade request (lower-cased header names).

    ``APCA-API-KEY-ID`` + ``APCA-API-SECRET-KEY``, or ``Authorization: Basic``.
    """
    key = headers.get("apca-api-key-id")
    secret = headers.get("apca-api-secret-key")
    if key and secret:
        return Credentials(key, secret)
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "basic" and token:
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        key, colon, secret = decoded.partition(":")
        if colon and key and secret:
            return Credentials(key, secret)
    return None
