"""How every Kafka client of cfn connects: the TLS and SASL settings, read once.

`KafkaSecurity` is built from CFN_KAFKA_* variables; `cfn.kafka` turns it into each client's
options (aiokafka's, librdkafka's, Kafka's tools'):

| variable | meaning |
|---|---|
| CFN_KAFKA_SECURITY_PROTOCOL | PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL |
| CFN_KAFKA_SASL_MECHANISM | PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only) |
| CFN_KAFKA_SASL_USERNAME | the SASL user |
| CFN_KAFKA_SASL_PASSWORD / _FILE | its password, or a file holding it (a Kubernetes secret) |
| CFN_KAFKA_SSL_CAFILE | PEM CA bundle to trust; the system's when unset |
| CFN_KAFKA_SSL_CERTFILE / _KEYFILE | client certificate and key, for mutual TLS |
| CFN_KAFKA_SSL_CHECK_HOSTNAME | true (default); false only for brokers without a matching name |

A combination that cannot work stops the process at start with a message naming the variable.
The password is held in a `Secret`, whose repr and str never show it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cfn.config import ConfigError, Env

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SASL = ("CFN_KAFKA_SASL_MECHANISM", "CFN_KAFKA_SASL_USERNAME", "CFN_KAFKA_SASL_PASSWORD")
_TLS = ("CFN_KAFKA_SSL_CAFILE", "CFN_KAFKA_SSL_CERTFILE", "CFN_KAFKA_SSL_KEYFILE")


class Secret:
    """A string that is never printed: repr, str and format show `***`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class KafkaSecurity:
    """The security settings of every Kafka client (see the module docstring)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    check_hostname: bool = True

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
        """Read and check CFN_KAFKA_* security variables (default: the process environment).

        Raises:
            ConfigError: a bad value or combination; the message names the variable.
        """
        environ = os.environ if environ is None else environ
        env = Env(environ)
        protocol = env.choice("CFN_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", PROTOCOLS)
        security = KafkaSecurity(
            protocol=protocol,
            sasl_mechanism=env.raw("CFN_KAFKA_SASL_MECHANISM"),
            username=env.raw("CFN_KAFKA_SASL_USERNAME"),
            password=_password(env),
            cafile=_file(env, "CFN_KAFKA_SSL_CAFILE"),
            certfile=_file(env, "CFN_KAFKA_SSL_CERTFILE"),
            keyfile=_file(env, "CFN_KAFKA_SSL_KEYFILE"),
            check_hostname=env.flag("CFN_KAFKA_SSL_CHECK_HOSTNAME", True),
        )
        security._check(environ)
        if security.tls:
            security.ssl_context()  # unreadable files fail now, not at the first connection
        return security

    def _check(self, environ: Mapping[str, str]) -> None:
        protocol = f"CFN_KAFKA_SECURITY_PROTOCOL={self.protocol}"
        given = {name for name, value in environ.items() if value}
        if not self.sasl:
            stray = [n for n in (*_SASL, "CFN_KAFKA_SASL_PASSWORD_FILE") if n in given]
            if stray:
                raise ConfigError(f"{stray[0]} is set, but {protocol} does not use SASL")
        else:
            if self.sasl_mechanism not in MECHANISMS:
                raise ConfigError(
                    f"CFN_KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)} with "
                    f"{protocol}; got {self.sasl_mechanism!r}"
                )
            if not self.username:
                raise ConfigError(f"CFN_KAFKA_SASL_USERNAME is required with {protocol}")
            if self.password is None:
                raise ConfigError(
                    "CFN_KAFKA_SASL_PASSWORD or CFN_KAFKA_SASL_PASSWORD_FILE is required with "
                    f"{protocol}"
                )
        if not self.tls:
            stray = [n for n in (*_TLS, "CFN_KAFKA_SSL_CHECK_HOSTNAME") if n in given]
            if stray:
                raise ConfigError(f"{stray[0]} is set, but {protocol} does not use TLS")
        if (self.certfile is None) != (self.keyfile is None):
            missing = "CFN_KAFKA_SSL_KEYFILE" if self.keyfile is None else "CFN_KAFKA_SSL_CERTFILE"
            raise ConfigError(f"{missing} is required with the other one (mutual TLS)")

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context: the CA file (or the system's trust store), the client certificate
        for mutual TLS, and hostname checks unless turned off.

        Raises:
            ConfigError: a file that is not what its variable says, named.
        """
        try:
            context = ssl.create_default_context(
                cafile=None if self.cafile is None else str(self.cafile)
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"CFN_KAFKA_SSL_CAFILE: not a PEM CA bundle ({exc})") from None
        if self.certfile is not None and self.keyfile is not None:
            try:
                context.load_cert_chain(str(self.certfile), str(self.keyfile))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    "CFN_KAFKA_SSL_CERTFILE / CFN_KAFKA_SSL_KEYFILE: not a PEM certificate "
                    f"and its key ({exc})"
                ) from None
        if not self.check_hostname:
            context.check_hostname = False
        return context


PLAINTEXT = KafkaSecurity()


def _password(env: Env) -> Secret | None:
    inline = env.raw("CFN_KAFKA_SASL_PASSWORD")
    path = env.raw("CFN_KAFKA_SASL_PASSWORD_FILE")
    if inline is not None and path is not None:
        raise ConfigError("set CFN_KAFKA_SASL_PASSWORD or CFN_KAFKA_SASL_PASSWORD_FILE, not both")
    if path is None:
        return None if inline is None else Secret(inline)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(
            f"CFN_KAFKA_SASL_PASSWORD_FILE: cannot read {path} ({exc.strerror})"
        ) from None
    value = text.rstrip("\r\n")  # files from secrets often end with a newline
    if not value:
        raise ConfigError(f"CFN_KAFKA_SASL_PASSWORD_FILE: {path} is empty")
    return Secret(value)


def _file(env: Env, name: str) -> Path | None:
    value = env.raw(name)
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{name}: no such file {value}")
    return path
