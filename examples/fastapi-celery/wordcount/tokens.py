"""JWTs for jobwire, signed like `jobwire token` (HS256 with the gateways'
JOBWIRE_JWT_SECRET; claims sub, scope, iat, exp), with the standard library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Sequence


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(secret: str, sub: str, scopes: Sequence[str], ttl: int) -> str:
    """A token for user ``sub`` with ``scopes`` (jobs:read, jobs:write,
    worker, admin), valid ``ttl`` seconds."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"sub": sub, "scope": " ".join(scopes), "iat": now, "exp": now + ttl}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"
