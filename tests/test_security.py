"""Kafka client security settings (cfn/security.py, turned into each client's options by
cfn/kafka.py) and the ingest's HTTPS settings: what each combination gives the clients, and a
clear, named error for every one that cannot work."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from cfn.config import ConfigError
from cfn.ingest.settings import IngestSettings
from cfn.kafka import aiokafka_options, java_properties, librdkafka_config
from cfn.processors.settings import WorkerSettings
from cfn.security import KafkaSecurity, Secret
from cfn.shell.broker import make_ca, sign_certificate

PASSWORD = "pw-Zq8-never-shown"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(folder / "ca")
    cert, key = sign_certificate(ca, ca_key, folder / "client", "worker-1")
    garbage = folder / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return {"ca": ca, "cert": cert, "key": key, "garbage": garbage}


def scram(**extra: str) -> dict[str, str]:
    return {
        "CFN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CFN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CFN_KAFKA_SASL_USERNAME": "worker",
        "CFN_KAFKA_SASL_PASSWORD": PASSWORD,
        **extra,
    }


def refused(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        KafkaSecurity.from_env(environ)
    message = str(caught.value)
    assert PASSWORD not in message
    return message


def test_the_default_is_plaintext_with_nothing_else() -> None:
    assert aiokafka_options("k:9092", KafkaSecurity.from_env({})) == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_with_scram_gives_a_verifying_tls_context_and_the_login(
    pki: dict[str, Path],
) -> None:
    security = KafkaSecurity.from_env(scram(CFN_KAFKA_SSL_CAFILE=str(pki["ca"])))
    options = aiokafka_options("k:9092", security, group_id="g")
    assert options["bootstrap_servers"] == "k:9092" and options["group_id"] == "g"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "worker"
    assert options["sasl_plain_password"] == PASSWORD
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_librdkafka_gets_the_same_settings_in_its_names(pki: dict[str, Path]) -> None:
    """The ingest's producer (librdkafka) connects as the aiokafka clients do."""
    plain = librdkafka_config("k:9092", KafkaSecurity.from_env({}), {"acks": "all"})
    assert plain == {"bootstrap.servers": "k:9092", "acks": "all", "security.protocol": "plaintext"}
    scram_tls = KafkaSecurity.from_env(scram(CFN_KAFKA_SSL_CAFILE=str(pki["ca"])))
    assert librdkafka_config("k:9092", scram_tls, {}) == {
        "bootstrap.servers": "k:9092",
        "security.protocol": "sasl_ssl",
        "ssl.ca.location": str(pki["ca"]),
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "worker",
        "sasl.password": PASSWORD,
    }
    mtls_security = KafkaSecurity.from_env(
        {
            "CFN_KAFKA_SECURITY_PROTOCOL": "SSL",
            "CFN_KAFKA_SSL_CERTFILE": str(pki["cert"]),
            "CFN_KAFKA_SSL_KEYFILE": str(pki["key"]),
            "CFN_KAFKA_SSL_CHECK_HOSTNAME": "false",
        }
    )
    assert librdkafka_config("k:9092", mtls_security, {}) == {
        "bootstrap.servers": "k:9092",
        "security.protocol": "ssl",
        "ssl.ca.location": "probe",  # the system's trust store
        "ssl.certificate.location": str(pki["cert"]),
        "ssl.key.location": str(pki["key"]),
        "ssl.endpoint.identification.algorithm": "none",
    }


def test_no_client_sets_a_connection_setting_of_its_own() -> None:
    """The builder is the only source of bootstrap, TLS and SASL: a client's own options that
    name one are refused, not silently merged."""
    with pytest.raises(ValueError, match="sasl_plain_password"):
        aiokafka_options("k:9092", KafkaSecurity(), sasl_plain_password="x")
    with pytest.raises(ValueError, match="bootstrap_servers"):
        aiokafka_options("k:9092", KafkaSecurity(), bootstrap_servers="other:9092")
    with pytest.raises(ValueError, match=r"security\.protocol"):
        librdkafka_config("k:9092", KafkaSecurity(), {"security.protocol": "plaintext"})


def test_kafkas_tools_get_the_login_and_the_trust_store(pki: dict[str, Path]) -> None:
    """`--command-config` properties: the JAAS line quotes what it is given."""
    security = KafkaSecurity.from_env(
        {**scram(CFN_KAFKA_SSL_CAFILE=str(pki["ca"])), "CFN_KAFKA_SASL_PASSWORD": 'p"w\\'}
    )
    assert java_properties(security) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="worker" password="p\\"w\\\\";',
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(pki["ca"]),
    }
    assert java_properties(KafkaSecurity()) == {"security.protocol": "PLAINTEXT"}


def test_without_a_ca_file_the_system_trust_store_is_used() -> None:
    security = KafkaSecurity.from_env({"CFN_KAFKA_SECURITY_PROTOCOL": "SSL"})
    context = security.ssl_context()
    assert security.cafile is None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_mutual_tls_loads_the_client_certificate(pki: dict[str, Path]) -> None:
    security = KafkaSecurity.from_env(
        {
            "CFN_KAFKA_SECURITY_PROTOCOL": "SSL",
            "CFN_KAFKA_SSL_CAFILE": str(pki["ca"]),
            "CFN_KAFKA_SSL_CERTFILE": str(pki["cert"]),
            "CFN_KAFKA_SSL_KEYFILE": str(pki["key"]),
        }
    )
    options = aiokafka_options("k:9092", security)
    assert security.certfile == pki["cert"] and "sasl_mechanism" not in options


def test_hostname_checks_are_off_only_when_asked(pki: dict[str, Path]) -> None:
    off = scram(CFN_KAFKA_SSL_CAFILE=str(pki["ca"]), CFN_KAFKA_SSL_CHECK_HOSTNAME="false")
    assert not KafkaSecurity.from_env(off).ssl_context().check_hostname
    bad = scram(CFN_KAFKA_SSL_CHECK_HOSTNAME="maybe")
    assert "CFN_KAFKA_SSL_CHECK_HOSTNAME" in refused(bad)


def test_the_password_file_is_read_and_its_final_newline_dropped(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    environ = scram(CFN_KAFKA_SASL_PASSWORD_FILE=str(path))
    del environ["CFN_KAFKA_SASL_PASSWORD"]
    security = KafkaSecurity.from_env(environ)
    assert security.password == Secret(PASSWORD)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"CFN_KAFKA_SECURITY_PROTOCOL": "TLS"}, "CFN_KAFKA_SECURITY_PROTOCOL"),
        ({"CFN_KAFKA_SASL_MECHANISM": "GSSAPI"}, "CFN_KAFKA_SASL_MECHANISM"),
        ({"CFN_KAFKA_SASL_MECHANISM": ""}, "CFN_KAFKA_SASL_MECHANISM"),
        ({"CFN_KAFKA_SASL_USERNAME": ""}, "CFN_KAFKA_SASL_USERNAME"),
        ({"CFN_KAFKA_SASL_PASSWORD": ""}, "CFN_KAFKA_SASL_PASSWORD"),
        ({"CFN_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "CFN_KAFKA_SASL_PASSWORD"),
        ({"CFN_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "CFN_KAFKA_SSL_CAFILE"),
        ({"CFN_KAFKA_SSL_CERTFILE": "/etc/hostname"}, "CFN_KAFKA_SSL_KEYFILE"),
    ],
)
def test_each_bad_value_or_combination_names_its_variable(
    change: dict[str, str], named: str
) -> None:
    assert named in refused(scram(**change))


def test_a_password_file_with_no_password_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    environ = scram(CFN_KAFKA_SASL_PASSWORD_FILE=str(empty))
    del environ["CFN_KAFKA_SASL_PASSWORD"]
    assert "is empty" in refused(environ)


def test_sasl_settings_without_a_sasl_protocol_are_refused() -> None:
    message = refused({"CFN_KAFKA_SECURITY_PROTOCOL": "SSL", "CFN_KAFKA_SASL_USERNAME": "u"})
    assert "CFN_KAFKA_SASL_USERNAME" in message and "does not use SASL" in message
    assert "CFN_KAFKA_SASL_PASSWORD" in refused({"CFN_KAFKA_SASL_PASSWORD": PASSWORD})


def test_tls_settings_without_a_tls_protocol_are_refused(pki: dict[str, Path]) -> None:
    environ = scram(CFN_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT")
    environ["CFN_KAFKA_SSL_CAFILE"] = str(pki["ca"])
    assert "does not use TLS" in refused(environ)


def test_files_that_are_not_pem_are_refused_at_start(pki: dict[str, Path]) -> None:
    assert "not a PEM CA bundle" in refused(scram(CFN_KAFKA_SSL_CAFILE=str(pki["garbage"])))
    mismatched = scram(
        CFN_KAFKA_SSL_CAFILE=str(pki["ca"]),
        CFN_KAFKA_SSL_CERTFILE=str(pki["cert"]),
        CFN_KAFKA_SSL_KEYFILE=str(pki["garbage"]),
    )
    assert "not a PEM certificate and its key" in refused(mismatched)


def test_the_password_never_shows_in_reprs_or_settings() -> None:
    security = KafkaSecurity.from_env(scram(CFN_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT"))
    secret = Secret(PASSWORD)
    for text in (repr(security), str(security), repr(secret), str(secret), f"{secret}"):
        assert PASSWORD not in text
    environ = scram(CFN_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT")
    assert PASSWORD not in repr(WorkerSettings.from_env(environ))
    ingest = IngestSettings.from_env({**environ, "CFN_INGEST_SECRET": "webhook-" + PASSWORD})
    assert ingest.secret is not None and PASSWORD not in repr(ingest)


def test_the_ingest_serves_https_with_both_files_or_neither(pki: dict[str, Path]) -> None:
    both = {"CFN_INGEST_TLS_CERTFILE": str(pki["cert"]), "CFN_INGEST_TLS_KEYFILE": str(pki["key"])}
    assert IngestSettings.from_env(both).tls_keyfile == pki["key"]
    with pytest.raises(ConfigError, match="CFN_INGEST_TLS_KEYFILE"):
        IngestSettings.from_env({"CFN_INGEST_TLS_CERTFILE": str(pki["cert"])})
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        IngestSettings.from_env({**both, "CFN_INGEST_TLS_KEYFILE": str(pki["garbage"])})
