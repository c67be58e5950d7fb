"""The development broker: a local Apache Kafka (KRaft) for `cfn broker`, `cfn run` and the tests.

Never part of a deployment: only the command line imports it (tests/test_layout.py). What only
the tests do to a secure one (ACLs, added users, client certificates) is in tests/secure_kafka.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfn.config import CommandSettings
from cfn.kafka import aiokafka_options, java_properties
from cfn.security import PLAINTEXT, KafkaSecurity, Secret
from cfn.shell.supervisor import StopFlag, supervise

KAFKA_VERSION = "4.4.0"
POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"  # package data: in every install


class BrokerError(Exception):
    """The local broker could not be fetched, formatted or started; the message says why."""


def cache_dir() -> Path:
    """Where the Kafka jars live: outside the tracked tree, shared by every checkout."""
    return CommandSettings.from_env().kafka_cache / KAFKA_VERSION


def require_tool(name: str, install_hint: str) -> str:
    """Return the path of `name` or raise a BrokerError naming what to install."""
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"`{name}` was not found on PATH. Install {install_hint} and retry.")
    return path


def ensure_jars() -> Path:
    """Fetch the broker jars with Maven once; later calls reuse the cache.

    Returns:
        The folder holding the jars (a Java classpath wildcard target).

    Raises:
        BrokerError: Java or Maven is missing, or Maven could not fetch the jars.
    """
    require_tool("java", "a Java 17+ runtime (Debian: `apt-get install openjdk-17-jre-headless`)")
    libs = cache_dir() / "libs"
    marker = cache_dir() / ".complete"
    # The marker holds a digest of the pom: a dependency added to it is fetched on the next run.
    wanted = hashlib.sha256(POM.read_bytes()).hexdigest()
    if marker.exists() and marker.read_text().strip() == wanted:
        return libs
    mvn = require_tool("mvn", "Apache Maven (Debian: `apt-get install maven`)")
    # Fetched into a folder of its own, then swapped in: a changed pom leaves no stale jar on
    # the classpath, and a broker already running keeps the jars it opened.
    fresh = cache_dir() / f"libs.fetching-{os.getpid()}"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={fresh}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(fresh, ignore_errors=True)
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise BrokerError("Maven could not fetch the Kafka jars:\n  " + "\n  ".join(tail))
    old = cache_dir() / f"libs.old-{os.getpid()}"
    if libs.exists():
        libs.rename(old)
    fresh.rename(libs)
    shutil.rmtree(old, ignore_errors=True)
    marker.write_text(wanted)
    return libs


def _cluster_id() -> str:
    """A random Kafka cluster id. Like Kafka's own Uuid.randomUuid(), never one that starts with
    "-": the storage tool would read it as an option (1 start in 64 failed that way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
ADMIN_USER = "admin"
# The broker's own certificate CN: it authenticates the controller and inter-broker listeners
# (both mTLS), so User:<this> is a super user. Only the holder of the local CA key can issue it.
BROKER_CN = "cfn-broker"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
# "CN=alice" or "CN=alice,O=..." -> alice; anything else keeps its full DN.
PRINCIPAL_MAPPING = "RULE:^CN=([^,]+)(,.*)?$/$1/,DEFAULT"


def _openssl(*args: str, cwd: Path) -> None:
    openssl = require_tool("openssl", "OpenSSL (Debian: `apt-get install openssl`)")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_ca(folder: Path, cn: str = "cfn local CA") -> tuple[Path, Path]:
    """A self-signed CA (EC P-256, 10 years): returns (ca.pem, ca.key); the key is 0600."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "ca.pem", folder / "ca.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key.name, "-out", cert.name, "-days", "3650", "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def sign_certificate(
    ca_cert: Path, ca_key: Path, folder: Path, cn: str, *, server: bool = False
) -> tuple[Path, Path]:
    """A certificate for `cn` signed by the CA: returns (<cn>.pem, <cn>.key), the key 0600.

    A server certificate also names 127.0.0.1 and localhost (subjectAltName), so clients that
    verify host names accept it on loopback.
    """
    if not cn or any(c in cn for c in '/\\,=+"<>;\n') or cn.startswith("."):
        raise BrokerError(f"{cn!r} is not a plain certificate CN")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key, csr, ext = (folder / f"{cn}.{s}" for s in ("pem", "key", "csr", "ext"))
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature"]
    lines.append(
        "extendedKeyUsage=serverAuth,clientAuth" if server else "extendedKeyUsage=clientAuth"
    )
    if server:
        lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-set_serial", "0x" + secrets.token_hex(16), "-days", "825", "-sha256",
        "-extfile", str(ext), "-out", str(cert),
        cwd=folder,
    )  # fmt: skip
    key.chmod(0o600)
    csr.unlink()
    ext.unlink()
    return cert, key


def _scram_argument(user: str, password: str) -> str:
    """kafka-storage's --add-scram value, carrying the salted password, never the password."""
    salt = secrets.token_bytes(32)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, SCRAM_ITERATIONS)
    return (
        f"{SCRAM_MECHANISM}=[name={user},iterations={SCRAM_ITERATIONS},"
        f'salt="{base64.b64encode(salt).decode()}",'
        f'saltedpassword="{base64.b64encode(salted).decode()}"]'
    )


@dataclass
class Node:
    """One combined broker+controller process of the local cluster."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    ssl_port: int | None = None  # the mTLS listener of a secure cluster
    plaintext_port: int | None = None  # an open listener beside them (the bench's baseline)
    proxy_port: int | None = None  # where clients are told to connect (a fault proxy's port)
    internal_port: int | None = None  # the brokers' own listener when clients go by proxy

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"


@dataclass
class LocalKafka:
    """Runs a one- or three-node KRaft cluster on loopback; used by the CLI and the test fixtures.

    It trades production realism (plaintext, loopback, tiny heaps) for a start measured in
    seconds and no installation beyond Java and Maven.

    With `secure=True` it is a locked-down cluster instead (docs/security.md): SASL_SSL with
    SCRAM-SHA-512 on `port`, mutual TLS on `ssl_port` (default port + 20000), a CA made on the
    first start, StandardAuthorizer with `admin` as the only user allowed anything until ACLs
    say otherwise. `users` are SCRAM users created, with random passwords, when the storage is
    formatted (quicker than adding one later, which starts a JVM).

    `plaintext_port` (secure only) adds an unauthenticated PLAINTEXT listener whose anonymous
    clients are super users: `make bench` compares SASL_SSL with PLAINTEXT on one broker. Never
    for anything but measurements on loopback.

    `proxy_port` (plaintext only) advertises node i's client listener at proxy_port + i - 1, a
    fault proxy that forwards to `port` + i - 1 (tests/nemesis), while brokers and controllers
    talk directly: an INTERNAL listener on `internal_port` + i - 1 (default port + 30000) is the
    inter-broker one. `bootstrap` is then the proxies', `direct_bootstrap` the INTERNAL one.
    """

    data_dir: Path
    port: int = 9092
    nodes: int = 1
    controller_port: int | None = None
    heap: str = "512m"
    secure: bool = False
    ssl_port: int | None = None
    users: tuple[str, ...] = ()
    plaintext_port: int | None = None
    proxy_port: int | None = None
    internal_port: int | None = None
    members: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        cport = self.controller_port or self.port + 10000
        sport = self.ssl_port or self.port + 20000
        iport = self.internal_port or self.port + 30000
        if self.secure and self.proxy_port is not None:
            raise BrokerError("proxy_port is for a plaintext cluster only")
        self.members = [
            Node(
                i + 1,
                self.port + i,
                cport + i,
                self.data_dir / f"node-{i + 1}",
                ssl_port=sport + i if self.secure else None,
                plaintext_port=(
                    self.plaintext_port + i
                    if self.secure and self.plaintext_port is not None
                    else None
                ),
                proxy_port=None if self.proxy_port is None else self.proxy_port + i,
                internal_port=None if self.proxy_port is None else iport + i,
            )
            for i in range(self.nodes)
        ]

    @property
    def bootstrap(self) -> str:
        """The clients' bootstrap: PLAINTEXT (through the proxies when `proxy_port` is set), or
        SASL_SSL (SCRAM-SHA-512) when secure."""
        return ",".join(f"127.0.0.1:{n.proxy_port or n.port}" for n in self.members)

    @property
    def direct_bootstrap(self) -> str:
        """A bootstrap that never goes through the proxies (the INTERNAL listener when there
        are proxies; else `bootstrap`): for the harness that injects faults and checks."""
        return ",".join(f"127.0.0.1:{n.internal_port or n.port}" for n in self.members)

    @property
    def plaintext_bootstrap(self) -> str:
        """The open PLAINTEXT listener of a secure cluster started with `plaintext_port`."""
        if not self.secure or self.plaintext_port is None:
            raise BrokerError("no open PLAINTEXT listener: start it with plaintext_port")
        return ",".join(f"127.0.0.1:{n.plaintext_port}" for n in self.members)

    # -- the secure cluster: files, users, clients ---------------------------------------------

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def ssl_bootstrap(self) -> str:
        """The mutual-TLS listener's bootstrap (secure only): a client certificate signed by
        `ca_file` is the principal User:<its CN>."""
        self._need_secure()
        return ",".join(f"127.0.0.1:{n.ssl_port}" for n in self.members)

    @property
    def ca_file(self) -> Path:
        """The PEM certificate of the CA that signed the broker's certificate (secure only)."""
        self._need_secure()
        return self.tls_dir / "ca.pem"

    @property
    def passwords_file(self) -> Path:
        """JSON {user: password} of the SCRAM users this class created; mode 0600."""
        return self.data_dir / "scram-passwords.json"

    @property
    def admin_properties(self) -> Path:
        """Client properties of the admin user for Kafka's tools (`--command-config`); 0600."""
        return self.data_dir / "admin.properties"

    def password(self, user: str) -> str:
        """The password of a SCRAM user this class created.

        Raises:
            BrokerError: the cluster is not secure, or has no such user.
        """
        self._need_secure()
        passwords = self._passwords()
        if user not in passwords:
            raise BrokerError(f"no SCRAM user {user!r} in {self.passwords_file}")
        return passwords[user]

    def password_file(self, user: str) -> Path:
        """A 0600 file holding only `user`'s password (for CFN_KAFKA_SASL_PASSWORD_FILE)."""
        path = self.data_dir / "secrets" / f"{user}.password"
        _write_private(path, self.password(user))
        return path

    def client_options(
        self, user: str | None = None, password: str | None = None, cafile: Path | None = None
    ) -> dict[str, Any]:
        """aiokafka keyword arguments for a SCRAM-SHA-512 client of `bootstrap`.

        Args:
            user: the SASL user (default admin).
            password: its password (default: the one this class created for it).
            cafile: the CA to trust (default this one).
        """
        return aiokafka_options(self.bootstrap, self.client_security(user, password, cafile))

    def client_security(
        self, user: str | None = None, password: str | None = None, cafile: Path | None = None
    ) -> KafkaSecurity:
        """The settings of a SCRAM-SHA-512 client of `bootstrap` (arguments as `client_options`)."""
        user = user or ADMIN_USER
        return KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism=SCRAM_MECHANISM,
            username=user,
            password=Secret(self.password(user) if password is None else password),
            cafile=cafile or self.ca_file,
        )

    def client_env(self, user: str | None = None) -> dict[str, str]:
        """The CFN_KAFKA_* variables that log a cfn process in over SASL_SSL as `user`
        (default admin), the password by file: what `cfn broker --secure` prints."""
        user = user or ADMIN_USER
        return {
            "CFN_KAFKA_BOOTSTRAP": self.bootstrap,
            "CFN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CFN_KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "CFN_KAFKA_SASL_USERNAME": user,
            "CFN_KAFKA_SASL_PASSWORD_FILE": str(self.password_file(user).resolve()),
            "CFN_KAFKA_SSL_CAFILE": str(self.ca_file.resolve()),
        }

    def _need_secure(self) -> None:
        if not self.secure:
            raise BrokerError("this needs a secure cluster: LocalKafka(..., secure=True)")

    def _passwords(self) -> dict[str, str]:
        try:
            loaded: dict[str, str] = json.loads(self.passwords_file.read_text())
        except FileNotFoundError:
            return {}
        return loaded

    def _save_passwords(self, passwords: dict[str, str]) -> None:
        _write_private(self.passwords_file, json.dumps(passwords, indent=1, sort_keys=True))

    def _prepare_security(self, formatting: bool) -> list[str]:
        """CA, broker certificate, passwords and admin.properties, made on the first start.

        Returns:
            The --add-scram arguments for formatting (empty when nothing is formatted).
        """
        if not (self.tls_dir / "ca.pem").exists():
            ca_cert, ca_key = make_ca(self.tls_dir)
            cert, key = sign_certificate(ca_cert, ca_key, self.tls_dir, BROKER_CN, server=True)
            # Kafka's PEM keystore is one file: the private key, then the certificate chain.
            _write_private(self.tls_dir / "broker-keystore.pem", key.read_text() + cert.read_text())
        passwords = self._passwords()
        if not formatting and ADMIN_USER not in passwords:
            raise BrokerError(
                f"{self.data_dir} holds a cluster formatted without --secure (no "
                f"{self.passwords_file.name}); use another --data-dir"
            )
        wanted = (ADMIN_USER, *self.users)
        if formatting:
            passwords = {user: secrets.token_hex(24) for user in wanted}
            self._save_passwords(passwords)
        _write_private(self.admin_properties, self._admin_client_properties(passwords[ADMIN_USER]))
        return [_scram_argument(u, passwords[u]) for u in wanted] if formatting else []

    def _admin_client_properties(self, password: str) -> str:
        security = KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism=SCRAM_MECHANISM,
            username=ADMIN_USER,
            password=Secret(password),
            cafile=self.tls_dir / "ca.pem",
        )
        return "".join(f"{k}={v}\n" for k, v in java_properties(security).items())

    def _secure_properties(self, node: Node) -> dict[str, str]:
        properties = self._locked_properties(node)
        if node.plaintext_port is not None:
            plain = f"PLAINTEXT://127.0.0.1:{node.plaintext_port}"
            properties["listeners"] += f",{plain}"
            properties["advertised.listeners"] += f",{plain}"
            properties["listener.security.protocol.map"] += ",PLAINTEXT:PLAINTEXT"
            properties["super.users"] += ";User:ANONYMOUS"
        return properties

    def _locked_properties(self, node: Node) -> dict[str, str]:
        tls = self.tls_dir
        return {
            "listeners": (
                f"SASL_SSL://127.0.0.1:{node.port},SSL://127.0.0.1:{node.ssl_port},"
                f"CONTROLLER://127.0.0.1:{node.controller_port}"
            ),
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{node.port},SSL://127.0.0.1:{node.ssl_port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL",
            # Brokers and controllers authenticate each other with the broker's certificate:
            # no password in server.properties, and no anonymous super user on any port.
            "inter.broker.listener.name": "SSL",
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.controller.ssl.client.auth": "required",
            "ssl.principal.mapping.rules": PRINCIPAL_MAPPING,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(tls / "broker-keystore.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls / "ca.pem"),
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "authorizer.class.name": AUTHORIZER,
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN_USER};User:{BROKER_CN}",
        }

    def _properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.members)
        rf = min(3, self.nodes)
        isr = 2 if self.nodes >= 3 else 1
        lines = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            **(self._secure_properties(node) if self.secure else {}),
            **(self._proxied_properties(node) if node.proxy_port is not None else {}),
            "log.dirs": str(node.data_dir / "logs"),
            # Topics are created on purpose by cfn, with the partition count it needs.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(isr),
            "transaction.state.log.num.partitions": "12",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(isr),
            # Group joins otherwise wait 3 s for more members: tests and `make run` want speed.
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
            # The cleaner looks for compactable logs every second (Kafka's default: 15 s).
            "log.cleaner.backoff.ms": "1000",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    @staticmethod
    def _proxied_properties(node: Node) -> dict[str, str]:
        """Clients are sent to the proxy; brokers and controllers use INTERNAL, directly."""
        internal = f"INTERNAL://127.0.0.1:{node.internal_port}"
        return {
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},{internal},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.proxy_port},{internal}",
            "inter.broker.listener.name": "INTERNAL",
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
        }

    def _java(self, libs: Path, main: str, *args: str, gc_log: Path | None = None) -> list[str]:
        # Kafka's own start script logs GC too: a pause there stalls every client at once.
        logging = [f"-Xlog:gc:file={gc_log}:time,uptime:filecount=2,filesize=20M"] if gc_log else []
        return [
            "java",
            f"-Xmx{self.heap}",
            "-Xss1m",
            "-XX:+UseG1GC",
            *logging,
            "-Djava.awt.headless=true",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format(self, libs: Path, node: Node, cluster_id: str, scram: list[str]) -> None:
        props = node.data_dir / "server.properties"
        add_scram = [arg for value in scram for arg in ("--add-scram", value)]
        result = subprocess.run(
            self._java(
                libs,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(props),
                *add_scram,
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BrokerError(f"formatting node {node.node_id} failed: {result.stderr.strip()}")

    def start(self, timeout: float = 90.0) -> None:
        """Fetch jars, format storage on first start, start every node and wait until ready.

        Raises:
            BrokerError: a tool is missing, a node exits early, or metadata never answers.
        """
        libs = ensure_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.data_dir / "cluster.id"
        if not id_file.exists():
            id_file.write_text(_cluster_id())
        cluster_id = id_file.read_text().strip()
        formatting = not all(
            (n.data_dir / "logs" / "meta.properties").exists() for n in self.members
        )
        scram = self._prepare_security(formatting) if self.secure else []
        for node in self.members:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            # 0600 when secure: it names the key files; plaintext clusters keep the old mode.
            props = node.data_dir / "server.properties"
            props.write_text(self._properties(node))
            if self.secure:
                props.chmod(0o600)
            if not (node.data_dir / "logs" / "meta.properties").exists():
                self._format(libs, node, cluster_id, scram)
        for node in self.members:
            self.start_node(node)
        self.wait_ready(timeout)

    def start_node(self, node: Node) -> None:
        """Start (or restart) one node's JVM; its output goes to broker.log in its folder."""
        libs = cache_dir() / "libs"
        log = node.log_file.open("ab")
        node.process = subprocess.Popen(
            self._java(
                libs,
                "kafka.Kafka",
                str(node.data_dir / "server.properties"),
                gc_log=node.data_dir / "gc.log",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until every running node answers a metadata request that lists all of them."""
        deadline = time.monotonic() + timeout
        want = sum(1 for n in self.members if n.process and n.process.poll() is None)
        last = "no answer yet"
        while time.monotonic() < deadline:
            for node in self.members:
                if node.process is not None and node.process.poll() is not None:
                    raise BrokerError(
                        f"node {node.node_id} exited with {node.process.returncode}; "
                        f"see {node.log_file}"
                    )
            try:
                security = self.client_security() if self.secure else PLAINTEXT
                seen = asyncio.run(_count_brokers(self.direct_bootstrap, security))
                if seen >= want:
                    return
                last = f"{seen}/{want} brokers registered"
            except Exception as exc:  # any failure means "not ready yet"
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        raise BrokerError(f"broker not ready after {timeout:.0f}s ({last}); see {self.data_dir}")

    def stop_node(self, node_id: int, *, kill: bool = False, timeout: float = 60.0) -> None:
        """Stop one node: SIGTERM (a controlled shutdown) or SIGKILL (a crash)."""
        node = self.members[node_id - 1]
        process = node.process
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node with SIGTERM (controlled shutdown), then SIGKILL stragglers."""
        for node in self.members:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        deadline = time.monotonic() + timeout
        for node in self.members:
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


async def _count_brokers(bootstrap: str, security: KafkaSecurity) -> int:
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    # "Unable connect" warnings are the expected answer while the JVM starts.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    admin = AIOKafkaAdminClient(**aiokafka_options(bootstrap, security, request_timeout_ms=3000))
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        return len(cluster["brokers"])
    finally:
        await admin.close()


def connection_help(kafka: LocalKafka) -> str:
    """What `cfn broker --secure` prints: where to connect and with what, never a password."""
    data = kafka.data_dir.resolve()
    admin_pw = kafka.password_file(ADMIN_USER).resolve()
    return "\n".join(
        [
            f"  SASL_SSL (SCRAM-SHA-512): {kafka.bootstrap}",
            f"  mTLS (SSL, client certificate CN -> User:<CN>): {kafka.ssl_bootstrap}",
            f"  CA certificate: {kafka.ca_file.resolve()}",
            f"  super user: {ADMIN_USER} (password in {admin_pw}; all users' in "
            f"{kafka.passwords_file.resolve()}, mode 0600)",
            "  kafka-acls / kafka-configs as admin: --command-config "
            f"{kafka.admin_properties.resolve()}",
            "  every other principal can do nothing until ACLs allow it: `cfn acls --role ...`",
            "  cfn's clients (as admin here; give each its own user and role in earnest):",
            *(f"    export {name}={value}" for name, value in kafka.client_env().items()),
            "  for mTLS instead: CFN_KAFKA_SECURITY_PROTOCOL=SSL, CFN_KAFKA_BOOTSTRAP="
            f"{kafka.ssl_bootstrap}, CFN_KAFKA_SSL_CERTFILE / CFN_KAFKA_SSL_KEYFILE "
            f"(client certificates are signed by the CA key in {data / 'tls'})",
        ]
    )


def run_broker(
    data_dir: Path, port: int, nodes: int, *, secure: bool = False, ssl_port: int | None = None
) -> int:
    """Foreground entry for `cfn broker`: start, print ready, stop on SIGINT/SIGTERM."""
    kafka = LocalKafka(data_dir=data_dir, port=port, nodes=nodes, secure=secure, ssl_port=ssl_port)
    stop = StopFlag()
    try:
        print(f"cfn broker: starting Apache Kafka {KAFKA_VERSION} ({nodes} node(s))", flush=True)
        kafka.start()
    except BrokerError as exc:
        kafka.stop()
        print(f"cfn broker: {exc}", file=sys.stderr)
        return 2
    print(f"cfn broker: ready on {kafka.bootstrap} (logs under {data_dir})", flush=True)
    if secure:
        print(connection_help(kafka), flush=True)
    processes = {f"node {n.node_id}": n.process for n in kafka.members if n.process is not None}
    logs = {f"node {n.node_id}": str(n.log_file) for n in kafka.members}
    code = supervise("cfn broker", stop, processes, logs.__getitem__)
    print("cfn broker: stopping", flush=True)
    kafka.stop()
    print("cfn broker: stopped", flush=True)
    return code


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)
