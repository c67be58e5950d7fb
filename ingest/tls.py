"""HTTPS at the ingest: the server's TLS context, and its certificate reloaded in place.

uvicorn builds the context in each process through `server_context` (its profile is uvicorn's
default: TLS 1.2 and 1.3 only, forward-secret AEAD suites, TLS 1.3 preferred). SIGHUP loads the
files again into that same context, so new handshakes get the new certificate and open
connections keep theirs; a pair that does not load leaves the old one in place.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

_live: list[ssl.SSLContext] = []  # the context of this process, once uvicorn has built it


def server_context(config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's `ssl_context_factory`: its own context, kept for `reload_certificate`."""
    context = default()
    _live[:] = [context]
    return context


class CertificateError(Exception):
    """The certificate and key could not be loaded; the message names the files' variables."""


def reload_certificate(certfile: str, keyfile: str) -> bool:
    """Load `certfile` and `keyfile` into the live context; False if there is none yet.

    Raises:
        CertificateError: the pair does not load (the live context keeps its certificate).
    """
    if not _live:
        return False
    try:  # first into a scratch context: a failed load must not half-change the live one
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        _live[0].load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(
            f"CFN_INGEST_TLS_CERTFILE / CFN_INGEST_TLS_KEYFILE: not a PEM certificate and its "
            f"key ({type(exc).__name__})"
        ) from None
    return True
