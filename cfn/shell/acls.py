"""The least-privilege Kafka ACLs of cfn's roles, as data, and as `kafka-acls` commands.

Each ACL here is necessary against Apache Kafka 4.4 with StandardAuthorizer, as tests/test_acls.py
shows: a principal holding a role's list can do what the role does, and one holding the list
minus any single entry cannot. What is *not* listed is implied by what is:

* DESCRIBE on a topic, group or transactional id is implied by READ or WRITE on it (Kafka's
  authorizer rule), so metadata, offsets lookups and FindCoordinator need no ACL of their own;
* IDEMPOTENT_WRITE on the cluster is implied by WRITE on any topic or transactional id
  (KIP-679, Kafka 3.0+), so neither the ingest's idempotent producer nor the worker's
  transactional producers need a cluster ACL (nor `cfn reconcile`'s idempotent backfill
  producer).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cfn.config import (
    OUTPUT_ROLES,
    TABLES,
    TRANSACTIONS,
    changelog_topic,
    legacy_changelog_topic,
    topic_names,
)

RESOURCE_TYPES = ("TOPIC", "GROUP", "TRANSACTIONAL_ID", "CLUSTER")
PATTERNS = ("LITERAL", "PREFIXED")
OPERATIONS = (
    "READ",
    "WRITE",
    "CREATE",
    "DESCRIBE",
    "IDEMPOTENT_WRITE",
    "ALTER",
    "DELETE",
    "DESCRIBE_CONFIGS",
)
ROLES = ("ingest", "worker", "reconcile", "provisioner")
CLUSTER_NAME = "kafka-cluster"  # the one name Kafka gives the CLUSTER resource

# kafka-acls.sh's option for each resource type.
_RESOURCE_OPTION = {
    "TOPIC": "--topic",
    "GROUP": "--group",
    "TRANSACTIONAL_ID": "--transactional-id",
    "CLUSTER": "--cluster",
}


@dataclass(frozen=True, order=True)
class Acl:
    """One ACL binding: `principal` may (or, with allow=False, may not) do `operation` on the
    resources that `name` matches under `pattern`, from any host."""

    resource_type: str  # TOPIC, GROUP, TRANSACTIONAL_ID or CLUSTER
    name: str  # the resource name, or its prefix when pattern is PREFIXED
    pattern: str  # LITERAL or PREFIXED
    operation: str  # READ, WRITE, CREATE, DESCRIBE, IDEMPOTENT_WRITE, DESCRIBE_CONFIGS, ...
    principal: str  # User:NAME
    allow: bool = True
    host: str = "*"

    def __post_init__(self) -> None:
        if self.resource_type not in RESOURCE_TYPES:
            raise ValueError(f"unknown resource type {self.resource_type!r}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern type {self.pattern!r}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"unknown operation {self.operation!r}")
        if not self.principal.startswith("User:") or self.principal == "User:":
            raise ValueError(f"a principal is User:NAME, not {self.principal!r}")


def role_acls(
    role: str,
    principal: str,
    prefix: str = "cfn.",
    app_id: str = "cfn",
    transactions: str = TRANSACTIONS[0],
    upgrading: bool = False,
) -> list[Acl]:
    """The ACLs a principal needs, and no more, to act as one of cfn's roles.

    Args:
        role: `ingest` (produces the raw log and the dead letters), `worker` (the stream
            processor: its group, inputs, outputs, changelogs and transactions), `reconcile`
            (`cfn reconcile`: reads the raw log by offsets and time, in no group, and with
            --backfill writes the missed notifications into it) or `provisioner` (creates the
            topics beforehand; cfn only creates what is missing).
        principal: `User:NAME`, the SASL user or the mapped certificate CN.
        prefix: CFN_TOPIC_PREFIX.
        app_id: CFN_APP_ID: the worker's group, transactional id prefix and changelog prefix.
        transactions: CFN_TRANSACTIONS: the worker's transactional ids are
            `<app_id>-worker-<worker id>` (worker, the default) or `<app_id>-task-<p>`
            (partition).
        upgrading: the worker also reads the per-table changelogs of earlier versions, whose
            state it moves into the shared changelog (a topic it may not see is not moved).

    Returns:
        The bindings, all ALLOW, in a stable order.

    Raises:
        ValueError: an unknown role, or a principal that is not `User:NAME`.
    """
    topics = topic_names(prefix)
    changelog = changelog_topic(app_id)

    def topic(name: str, *operations: str) -> list[Acl]:
        return [Acl("TOPIC", name, "LITERAL", op, principal) for op in operations]

    if role == "ingest":
        return topic(topics["raw"], "WRITE") + topic(topics["dlq"], "WRITE")
    if role == "worker":
        acls = [Acl("GROUP", app_id, "LITERAL", "READ", principal)]
        acls += topic(topics["raw"], "READ")
        acls += topic(topics["rate-input"], "READ", "WRITE")
        for output in OUTPUT_ROLES:
            acls += topic(topics[output], "WRITE")
        acls += topic(changelog, "READ", "WRITE")
        if upgrading:
            for table in TABLES:
                acls += topic(legacy_changelog_topic(app_id, table), "READ")
        owner = "worker" if transactions == "worker" else "task"
        acls.append(Acl("TRANSACTIONAL_ID", f"{app_id}-{owner}-", "PREFIXED", "WRITE", principal))
        return acls
    if role == "reconcile":
        # No group (it assigns partitions and seeks by time), no progress topic (each pass
        # reads cfn.raw again), no transaction: an idempotent producer for --backfill. Its
        # retention.ms (DESCRIBE_CONFIGS) says how far back cfn.raw can be compared.
        return topic(topics["raw"], "READ", "WRITE", "DESCRIBE_CONFIGS")
    if role == "provisioner":
        # CREATE alone would create blind: DESCRIBE lets it see which topics already exist.
        acls = [Acl("TOPIC", prefix, "PREFIXED", op, principal) for op in ("CREATE", "DESCRIBE")]
        acls += topic(changelog, "CREATE", "DESCRIBE")
        return acls
    raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")


def kafka_acls_command(acl: Acl, bootstrap: str, command_config: str = "admin.properties") -> str:
    """The `kafka-acls.sh` command line that adds `acl`, quoted for a POSIX shell."""
    argv = [
        "kafka-acls.sh",
        "--bootstrap-server",
        bootstrap,
        "--command-config",
        command_config,
        "--add",
        "--allow-principal" if acl.allow else "--deny-principal",
        acl.principal,
    ]
    if acl.host != "*":
        argv += ["--allow-host" if acl.allow else "--deny-host", acl.host]
    argv += ["--operation", _camel(acl.operation)]
    argv.append(_RESOURCE_OPTION[acl.resource_type])
    if acl.resource_type != "CLUSTER":
        argv.append(acl.name)
    argv += ["--resource-pattern-type", acl.pattern.lower()]
    return shlex.join(argv)


def _camel(operation: str) -> str:
    """kafka-acls spells operations in CamelCase: IDEMPOTENT_WRITE is IdempotentWrite."""
    return "".join(part.capitalize() for part in operation.split("_"))


def parse_kafka_acls_command(line: str) -> Acl:
    """Read back one line of `kafka_acls_command` (the tests check the printed commands with it).

    Raises:
        ValueError: the line is not an `--add` command this module prints.
    """
    argv = shlex.split(line)
    if not argv or argv[0] != "kafka-acls.sh" or "--add" not in argv:
        raise ValueError(f"not a kafka-acls --add command: {line!r}")
    options: dict[str, str | None] = {}
    i = 1
    while i < len(argv):
        option = argv[i]
        if option in ("--add", "--cluster"):
            options[option] = None
            i += 1
            continue
        if i + 1 >= len(argv):
            raise ValueError(f"{option} has no value in {line!r}")
        options[option] = argv[i + 1]
        i += 2
    allow = "--allow-principal" in options
    principal = options.get("--allow-principal") or options.get("--deny-principal")
    kinds = [kind for kind, opt in _RESOURCE_OPTION.items() if opt in options]
    operation = options.get("--operation")
    pattern = options.get("--resource-pattern-type", "literal")
    if principal is None or len(kinds) != 1 or operation is None or pattern is None:
        raise ValueError(f"incomplete kafka-acls command: {line!r}")
    kind = kinds[0]
    name = CLUSTER_NAME if kind == "CLUSTER" else options[_RESOURCE_OPTION[kind]]
    host = options.get("--allow-host") or options.get("--deny-host") or "*"
    op = "".join(("_" + c if c.isupper() and n else c) for n, c in enumerate(operation)).upper()
    return Acl(kind, name or "", pattern.upper(), op, principal, allow, host)


def render_role(
    role: str,
    principal: str,
    prefix: str = "cfn.",
    app_id: str = "cfn",
    bootstrap: str = "127.0.0.1:9092",
    command_config: str = "admin.properties",
    transactions: str = TRANSACTIONS[0],
    upgrading: bool = False,
) -> str:
    """`cfn acls`'s output: one kafka-acls command per binding, after a comment line."""
    acls = role_acls(role, principal, prefix, app_id, transactions, upgrading)
    head = f"# {role} as {principal}: {len(acls)} ACLs (prefix {prefix!r}, app id {app_id!r})"
    return "\n".join([head, *(kafka_acls_command(a, bootstrap, command_config) for a in acls)])
