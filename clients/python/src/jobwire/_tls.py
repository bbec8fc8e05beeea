"""TLS settings shared by HTTP (httpx) and WebSocket (websockets) calls.

``verify`` is what users already know from httpx/requests: ``True`` (the
system's roots), ``False`` (no verification: for tests only), a path to a
PEM file or directory of CA certificates (a private CA, e.g. behind a TLS
load balancer), or a ready :class:`ssl.SSLContext` (client certificates,
pinning, ...). One context is built once and used by both transports, so
REST calls and watches trust exactly the same certificates.
"""

from __future__ import annotations

import os
import ssl
from typing import Union

from ._errors import ConfigError

#: What ``verify=`` accepts.
Verify = Union[bool, str, "os.PathLike[str]", ssl.SSLContext]


def ssl_context(verify: Verify) -> ssl.SSLContext:
    """The SSL context for ``verify``."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is True:
        return ssl.create_default_context()
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, (str, os.PathLike)):
        path = os.fspath(verify)
        try:
            if os.path.isdir(path):
                return ssl.create_default_context(capath=path)
            return ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load CA certificates from {path!r}: {e}") from e
    raise ConfigError(
        f"verify must be True, False, a CA file path or an ssl.SSLContext, not {verify!r}"
    )
