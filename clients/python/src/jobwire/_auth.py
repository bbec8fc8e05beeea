"""Tokens: a fixed JWT, or a provider called again when one is needed.

A provider is any callable returning a JWT (for :class:`jobwire.AsyncClient`
it may also be ``async``). It is called when there is no token yet, when the
current one expires within a few seconds, when the server refuses one (401,
or 4401 on a socket: once per refusal, so a provider that keeps handing out
bad tokens ends in :class:`~jobwire.Unauthorized` instead of a loop), and
before a watch's token expires (sent over the open socket).

Tokens are secrets: they never appear in a ``repr``, a log line or an error
message of this package.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import threading
import time
from typing import Awaitable, Callable, Optional, Union

from ._errors import ConfigError, TokenError

#: A sync token provider.
TokenProvider = Callable[[], str]
#: An async client's token provider: sync or async.
AsyncTokenProvider = Callable[[], Union[str, Awaitable[str]]]

#: A token whose ``exp`` is closer than this is replaced before use.
EXPIRY_MARGIN = 5.0


def token_expiry(token: str) -> Optional[float]:
    """The ``exp`` of a JWT, in seconds since the epoch, or ``None`` when the
    token is not a JWT with a numeric ``exp``. The signature is not checked:
    this only decides when to ask for a fresh token."""
    try:
        payload = token.split(".")[1]
        padded = payload + "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (IndexError, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        return float(exp)
    return None


def refresh_delay(token: str, now: Optional[float] = None) -> Optional[float]:
    """Seconds until a watch should send a fresh token: a tenth of the
    token's remaining life early, between 2 and 60 seconds (docs/clients.md,
    rule 7). ``None`` for a token without ``exp``."""
    exp = token_expiry(token)
    if exp is None:
        return None
    left = max(0.0, exp - (time.time() if now is None else now))
    early = min(60.0, max(2.0, left / 10))
    return max(0.0, left - early)


def _expiring(token: Optional[str]) -> bool:
    if token is None:
        return True
    exp = token_expiry(token)
    return exp is not None and exp - time.time() < EXPIRY_MARGIN


def _checked(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TokenError(f"the token provider returned {type(value).__name__}, not a token")
    return value


class SyncTokens:
    """The token of a sync client; thread-safe (the reporter's sender thread
    and the caller share it)."""

    def __init__(self, token: Union[str, TokenProvider, None]) -> None:
        self._lock = threading.Lock()
        self._provider: Optional[TokenProvider] = None
        self._token: Optional[str] = None
        if token is None:
            raise ConfigError("no token given: pass token= a JWT or a callable returning one")
        if callable(token):
            self._provider = token
        elif isinstance(token, str) and token:
            self._token = token
        else:
            raise ConfigError("token must be a JWT string or a callable returning one")

    @property
    def refreshable(self) -> bool:
        return self._provider is not None

    def current(self) -> str:
        """The token to use now (fetched when missing or about to expire)."""
        with self._lock:
            if self._provider is not None and _expiring(self._token):
                self._token = self._call()
            assert self._token is not None
            return self._token

    def fresh(self, refused: Optional[str] = None) -> str:
        """A new token from the provider (the fixed token without one).

        ``refused``: the token the server refused. When another thread has
        replaced it meanwhile, that newer token is returned instead of
        calling the provider again."""
        with self._lock:
            if self._provider is not None and (refused is None or refused == self._token):
                self._token = self._call()
            assert self._token is not None
            return self._token

    def _call(self) -> str:
        assert self._provider is not None
        try:
            value = self._provider()
        except Exception as e:
            raise TokenError(f"the token provider failed: {type(e).__name__}: {e}") from e
        if inspect.isawaitable(value):
            # An async provider on a sync client: refuse clearly rather than
            # sending "<coroutine object ...>" as a token.
            close = getattr(value, "close", None)
            if close is not None:
                close()
            raise TokenError("the token provider is async: use jobwire.AsyncClient")
        return _checked(value)


class AsyncTokens:
    """The token of an async client. The provider may be sync or async; it
    is called by one task at a time."""

    def __init__(self, token: Union[str, AsyncTokenProvider, None]) -> None:
        self._lock: Optional[asyncio.Lock] = None
        self._provider: Optional[AsyncTokenProvider] = None
        self._token: Optional[str] = None
        if token is None:
            raise ConfigError("no token given: pass token= a JWT or a callable returning one")
        if callable(token):
            self._provider = token
        elif isinstance(token, str) and token:
            self._token = token
        else:
            raise ConfigError("token must be a JWT string or a callable returning one")

    @property
    def refreshable(self) -> bool:
        return self._provider is not None

    def _get_lock(self) -> asyncio.Lock:
        # Created lazily: on Python 3.9 a Lock binds to the loop current at
        # its creation, and the client may be built outside any loop.
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def current(self) -> str:
        async with self._get_lock():
            if self._provider is not None and _expiring(self._token):
                self._token = await self._call()
            assert self._token is not None
            return self._token

    async def fresh(self, refused: Optional[str] = None) -> str:
        async with self._get_lock():
            if self._provider is not None and (refused is None or refused == self._token):
                self._token = await self._call()
            assert self._token is not None
            return self._token

    async def _call(self) -> str:
        assert self._provider is not None
        try:
            value = self._provider()
            if inspect.isawaitable(value):
                value = await value
        except Exception as e:
            raise TokenError(f"the token provider failed: {type(e).__name__}: {e}") from e
        return _checked(value)
