"""Refusals no retry can cure: a failed login, an untrusted certificate, a missing ACL.

aiokafka reports all of them at bootstrap as "Unable to bootstrap", the same words as for a
broker that is not up yet, and a missing ACL as one of several authorization errors. cfn's
processes must tell the two kinds apart: a broker that is away is waited for (503 at the ingest,
a quiet worker), a refusal is an operator's to fix, so it is named once, in words that say what
to change.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka import errors as Errors

from cfn import internals
from cfn.kafka import connection_options
from cfn.security import KafkaSecurity

# What each authorization error means for cfn's roles (see `cfn acls`).
_REFUSED: dict[type[Exception], str] = {
    Errors.TopicAuthorizationFailedError: "a topic",
    Errors.GroupAuthorizationFailedError: "the consumer group",
    Errors.TransactionalIdAuthorizationFailed: "the transactional ids",
    Errors.ClusterAuthorizationFailedError: "a cluster operation",
}


class AccessDenied(Exception):
    """Kafka refused this client for good: the message says what, and what to grant or fix;
    `cause` is the error's class name (for metrics labels: never secret)."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def denial(exc: BaseException, role: str) -> AccessDenied | None:
    """The refusal `exc` stands for, worded for an operator; None when `exc` is not one."""
    if isinstance(exc, AccessDenied):
        return exc
    if isinstance(exc, Errors.UnsupportedSaslMechanismError):
        return AccessDenied(
            f"Kafka does not offer this SASL mechanism ({exc}): check CFN_KAFKA_SASL_MECHANISM "
            "against the listener's sasl.enabled.mechanisms",
            type(exc).__name__,
        )
    if isinstance(exc, Errors.SaslAuthenticationFailed | Errors.AuthenticationFailedError):
        return AccessDenied(
            f"Kafka refused the SASL login ({type(exc).__name__}): check "
            "CFN_KAFKA_SASL_USERNAME, the password and CFN_KAFKA_SASL_MECHANISM",
            type(exc).__name__,
        )
    for kind, what in _REFUSED.items():
        if isinstance(exc, kind):
            detail = str(exc).strip()
            return AccessDenied(
                f"Kafka refused access to {what} ({type(exc).__name__}"
                + (f": {detail}" if detail else "")
                + f"); the {role} needs the ACLs that `cfn acls --role {role}` prints",
                type(exc).__name__,
            )
    return None


async def probe(bootstrap: str, security: KafkaSecurity, timeout: float = 5.0) -> None:
    """Connect once to each bootstrap address as cfn's clients do (TLS, then SASL).

    Returns when one address accepts, or when none answers at all (not up yet: the caller
    waits and tries again).

    Raises:
        AccessDenied: an address answered and refused: an untrusted certificate, a name
            that does not match it, a TLS handshake with a listener that speaks none, or a
            failed SASL login.
    """
    if security.protocol == "PLAINTEXT":
        return
    options = connection_options(security)
    refused: AccessDenied | None = None
    try:  # as the clients read it (a missing port is 9092); theirs is the error to report
        hosts = internals.collect_hosts(bootstrap, randomize=False)
    except (ValueError, TypeError):
        return
    for host, port, _family in hosts:
        address = f"{host}:{port}"
        try:
            async with asyncio.timeout(timeout):
                conn = await internals.create_conn(
                    host,
                    port,
                    client_id="cfn-probe",
                    request_timeout_ms=int(timeout * 1000),
                    **options,
                )
        except ssl.SSLCertVerificationError as exc:
            source = security.cafile or "the system's trust store"
            refused = AccessDenied(
                f"TLS: the certificate of {address} is not accepted with {source} "
                f"({exc.verify_message}); set CFN_KAFKA_SSL_CAFILE to the CA that signed it",
                type(exc).__name__,
            )
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            continue  # closed mid-handshake: what a broker going down looks like
        except ssl.SSLError as exc:
            refused = AccessDenied(
                f"TLS: the handshake with {address} failed ({exc.reason}); is it a TLS "
                "listener, and does it accept this client's certificate?",
                type(exc).__name__,
            )
        except (
            Errors.SaslAuthenticationFailed,
            Errors.AuthenticationFailedError,
            Errors.UnsupportedSaslMechanismError,
        ) as exc:
            found = denial(exc, "client")
            assert found is not None
            refused = found
        except Errors.KafkaConnectionError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLError) and "ALERT" in str(cause.reason or ""):
                # TLS 1.3 sends a refused client certificate after the handshake: the first
                # request finds the connection closed by the server's alert.
                refused = AccessDenied(
                    f"TLS: {address} closed the connection after the handshake ({cause}); "
                    "does it require a client certificate (CFN_KAFKA_SSL_CERTFILE / _KEYFILE) "
                    "that it accepts?",
                    "SSLError",
                )
            continue
        except (OSError, TimeoutError, Errors.KafkaError):
            continue  # not answering (yet): nothing to conclude from this address
        else:
            conn.close()
            return
    if refused is not None:
        raise refused


async def diagnose(
    exc: BaseException,
    role: str,
    bootstrap: str,
    security: KafkaSecurity,
    *,
    probe_now: bool = True,
) -> AccessDenied | None:
    """Whether `exc`, met while connecting, is a refusal: one by its own kind, or, as aiokafka
    words a failed login or an untrusted certificate as "Unable to bootstrap", what one probe
    connection finds (when `probe_now`). None: an outage, to wait out."""
    refused = denial(exc, role)
    if refused is not None or not probe_now:
        return refused
    try:
        await probe(bootstrap, security)
    except AccessDenied as found:
        return found
    return None
