"""The secured deploy variants: the kustomize overlay deploy/k8s/secure and the compose override
deploy/docker-compose.secure.yml (SASL_SSL, SCRAM-SHA-512, one Kafka user per role, the CA and
the passwords as mounted secrets).

Neither kustomize nor Docker is assumed: the overlay's strategic-merge patches are applied to the
base objects here, by a small merge of the fields they patch (containers and env by name, volumes
by name, volumeMounts by mountPath, as Kubernetes' patch strategy says), and the result is
validated with kubernetes-validate (strict). The compose files are merged by Compose's rules for
what they use (mappings merged, `secrets` unique by target, `!reset`). In both, each service's
resulting environment is then read by cfn's own settings, with every mount path mapped to a real
file (a CA certificate from a test CA, a password), so the wiring variable -> mount -> secret key
is checked by the code that reads it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cfn.cloudflare.settings import CloudflareSettings
from cfn.config import ConfigError
from cfn.ingest.settings import IngestSettings
from cfn.processors.settings import WorkerSettings
from cfn.security import KafkaSecurity
from cfn.shell.broker import make_ca
from tests.test_deploy import K8S_VERSION

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s" / "base"
SECURE = DEPLOY / "k8s" / "secure"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_SECURE = DEPLOY / "docker-compose.secure.yml"

# deployment -> (container, Kafka user, its key in cfn-kafka-sasl)
ROLES = {
    "cfn-ingest": ("ingest", "cfn-ingest", "ingest-password"),
    "cfn-worker": ("worker", "cfn-worker", "worker-password"),
    "cfn-reconcile": ("reconcile", "cfn-reconcile", "reconcile-password"),
}
TEST_PASSWORD = "pw-test-not-real"

Obj = dict[str, Any]


def read_settings(deployment: str, environ: Mapping[str, str]) -> tuple[str, KafkaSecurity]:
    """(bootstrap, Kafka security) as the deployment's process reads them from `environ`."""
    if deployment == "cfn-ingest":
        ingest = IngestSettings.from_env(environ)
        return ingest.bootstrap, ingest.security
    if deployment == "cfn-reconcile":
        reconcile = CloudflareSettings.from_env(environ)
        return reconcile.bootstrap, reconcile.security
    worker = WorkerSettings.from_env(environ)
    return worker.bootstrap, worker.security


def _load_all(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _ref(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    ca, _key = make_ca(tmp_path_factory.mktemp("ca"))
    return ca.read_text()


# ---------------------------------------------------------------------- strategic merge

# Kubernetes' patchMergeKey of each list the overlay patches (core/v1 types): such lists merge
# item by item; any other list, and every scalar, is replaced by the patch's.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """`patch` applied to `base` as a strategic-merge patch, for the subset the overlay uses."""
    if isinstance(patch, dict) and isinstance(base, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            assert not key.startswith("$"), f"patch directive {key} is not modelled here"
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list) and isinstance(base, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = copy.deepcopy(base)
        where = {item[key]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item[key] in where:
                i = where[item[key]]
                merged_list[i] = strategic_merge(merged_list[i], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


@cache
def _kustomization() -> Obj:
    data: Obj = yaml.safe_load((SECURE / "kustomization.yaml").read_text())
    return data


@cache
def _base_objects() -> dict[tuple[str, str], Obj]:
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = [o for name in base["resources"] for o in _load_all(K8S / name)]
    return {_ref(o): o for o in objects}


@cache
def _overlay_objects() -> dict[tuple[str, str], Obj]:
    """The overlay's output: its resources, then its patches, each on the object it names."""
    objects: dict[tuple[str, str], Obj] = {}
    for name in _kustomization()["resources"]:
        loaded = list(_base_objects().values()) if name == "../base" else _load_all(SECURE / name)
        for obj in loaded:
            assert _ref(obj) not in objects, f"{_ref(obj)} twice"
            objects[_ref(obj)] = copy.deepcopy(obj)
    for entry in _kustomization()["patches"]:
        (patch,) = _load_all(SECURE / entry["path"])
        assert set(entry) == {"path"}, "patches name their target in the patch file"
        target = objects.get(_ref(patch))
        assert target is not None, f"{entry['path']} patches no object of the base"
        assert patch["apiVersion"] == target["apiVersion"]
        assert patch["metadata"].get("namespace") == target["metadata"].get("namespace")
        objects[_ref(patch)] = strategic_merge(target, patch)
    return objects


def _pod(objects: Mapping[tuple[str, str], Obj], deployment: str) -> Obj:
    pod: Obj = objects[("Deployment", deployment)]["spec"]["template"]["spec"]
    return pod


def _container(objects: Mapping[tuple[str, str], Obj], deployment: str) -> Obj:
    name = ROLES[deployment][0]
    (container,) = [c for c in _pod(objects, deployment)["containers"] if c["name"] == name]
    assert isinstance(container, dict)
    return container


def _secret_data(secret: Obj) -> dict[str, str]:
    return {**secret.get("data", {}), **secret.get("stringData", {})}


def test_the_overlay_builds_on_the_base_and_uses_every_file_of_its_own() -> None:
    overlay = _kustomization()
    assert overlay["resources"][0] == "../base"
    own = set(overlay["resources"][1:]) | {p["path"] for p in overlay["patches"]}
    on_disk = {p.name for p in SECURE.glob("*.yaml")} - {"kustomization.yaml"}
    assert own == on_disk, "every file of the overlay is used, and exists"


@pytest.mark.parametrize("path", sorted(SECURE.glob("*.yaml")), ids=lambda p: p.name)
def test_overlay_files_are_valid_kubernetes(path: Path) -> None:
    for doc in _load_all(path):
        if doc.get("kind") == "Kustomization":
            continue
        if path.name in {p["path"] for p in _kustomization()["patches"]}:
            continue  # partial objects: validated once applied, below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_patched_objects_are_valid_kubernetes() -> None:
    for ref, obj in _overlay_objects().items():
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{ref}: {exc.message} at {list(exc.path)}")


def test_the_kafka_secrets_are_placeholders() -> None:
    text = (SECURE / "kafka-secrets.yaml").read_text()
    header = text.split("apiVersion")[0]
    assert "PLACEHOLDER" in header
    assert "kubectl -n cfn create secret generic cfn-kafka-tls" in header
    assert "kubectl -n cfn create secret generic cfn-kafka-sasl" in header
    secrets = {_ref(s)[1]: s for s in _load_all(SECURE / "kafka-secrets.yaml")}
    assert set(secrets) == {"cfn-kafka-tls", "cfn-kafka-sasl"}
    assert set(_secret_data(secrets["cfn-kafka-tls"])) == {"ca.pem"}
    assert set(_secret_data(secrets["cfn-kafka-sasl"])) == {k for _, _, k in ROLES.values()}
    for secret in secrets.values():
        assert secret["metadata"]["namespace"] == "cfn"
        for value in _secret_data(secret).values():
            assert value.startswith("PLACEHOLDER"), value


def test_no_base_setting_is_dropped() -> None:
    base, overlay = _base_objects(), _overlay_objects()
    assert set(base) <= set(overlay)
    config = overlay[("ConfigMap", "cfn-config")]["data"]
    assert set(config) == set(base[("ConfigMap", "cfn-config")]["data"])
    for deployment in ROLES:
        before, after = _container(base, deployment), _container(overlay, deployment)
        assert after["envFrom"] == before["envFrom"]
        env = {e["name"]: e for e in after.get("env", [])}
        for var in before.get("env", []):
            assert env[var["name"]] == var, f"{deployment}: {var['name']} changed"
        assert (
            before.get("volumeMounts", []) == after["volumeMounts"][: len(before["volumeMounts"])]
        )
        pod_before, pod_after = _pod(base, deployment), _pod(overlay, deployment)
        assert pod_before["volumes"] == pod_after["volumes"][: len(pod_before["volumes"])]
        unpatched = {k: v for k, v in after.items() if k not in ("env", "volumeMounts")}
        assert unpatched == {k: v for k, v in before.items() if k not in ("env", "volumeMounts")}


def _mounted_files(objects: Mapping[tuple[str, str], Obj], deployment: str) -> dict[str, Obj]:
    """Every file the pod's Secret volumes put in the container: path -> {secret, key}.

    Checks on the way that each mount names a volume, each Secret exists with each key the
    volume projects, and that Secret files are read-only, 0440, readable through the fsGroup.
    """
    pod, container = _pod(objects, deployment), _container(objects, deployment)
    volumes = {v["name"]: v for v in pod["volumes"]}
    files: dict[str, Obj] = {}
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes, f"{deployment}: mount of unknown volume {mount['name']}"
        source = volumes[mount["name"]].get("secret")
        if source is None:
            continue
        assert mount.get("readOnly") is True, f"{deployment}: {mount['name']} writable"
        assert source["defaultMode"] == 0o440, f"{deployment}: {mount['name']} mode"
        assert pod["securityContext"]["fsGroup"] == 10001
        secret = objects.get(("Secret", source["secretName"]))
        assert secret is not None, f"{deployment}: no Secret {source['secretName']}"
        data = _secret_data(secret)
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            assert item["key"] in data, f"{deployment}: {source['secretName']} has no {item['key']}"
            path = f"{mount['mountPath']}/{item['path']}"
            files[path] = {"secret": source["secretName"], "key": item["key"]}
    return files


def _environment(objects: Mapping[tuple[str, str], Obj], deployment: str) -> dict[str, str]:
    container = _container(objects, deployment)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for var in container.get("env", []):
        assert "value" in var, f"{deployment}: {var['name']} has no plain value"
        env[var["name"]] = var["value"]
    return env


@pytest.mark.parametrize("deployment", sorted(ROLES))
def test_each_deployment_logs_in_as_its_own_user_with_mounted_files(
    deployment: str, ca_pem: str, tmp_path: Path
) -> None:
    objects = _overlay_objects()
    _container_name, user, password_key = ROLES[deployment]
    env = _environment(objects, deployment)
    assert env["CFN_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["CFN_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["CFN_KAFKA_SASL_USERNAME"] == user
    assert "CFN_KAFKA_SASL_PASSWORD" not in env, "the password comes from a file"
    assert env["CFN_KAFKA_BOOTSTRAP"].endswith(":9093")

    files = _mounted_files(objects, deployment)
    assert files[env["CFN_KAFKA_SASL_PASSWORD_FILE"]] == {
        "secret": "cfn-kafka-sasl",
        "key": password_key,
    }
    assert files[env["CFN_KAFKA_SSL_CAFILE"]] == {"secret": "cfn-kafka-tls", "key": "ca.pem"}
    sasl_keys = {f["key"] for f in files.values() if f["secret"] == "cfn-kafka-sasl"}
    assert sasl_keys == {password_key}, "a pod mounts its own password only"

    # cfn's settings read the result, every mounted file made real under tmp_path.
    contents = {"ca.pem": ca_pem, password_key: TEST_PASSWORD + "\n"}
    contents["secrets.json"] = json.dumps({"default": ["test-webhook-secret"]})
    for path, origin in files.items():
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        token = origin["secret"] == "cfn-cloudflare-tokens"  # reconcile's, not read here
        local.write_text("cf-token-not-real" if token else contents[origin["key"]])
    local_env = {k: str(tmp_path / v.lstrip("/")) if v in files else v for k, v in env.items()}
    _bootstrap, security = read_settings(deployment, local_env)
    assert (security.protocol, security.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert security.username == user
    assert security.password is not None and security.password.reveal() == TEST_PASSWORD
    assert security.cafile == Path(local_env["CFN_KAFKA_SSL_CAFILE"])


def test_the_placeholder_ca_is_refused_by_cfn(tmp_path: Path) -> None:
    """Applied by mistake, the placeholder Secrets stop cfn at start with a named reason."""
    secrets = {_ref(s)[1]: s for s in _load_all(SECURE / "kafka-secrets.yaml")}
    ca = tmp_path / "ca.pem"
    ca.write_text(_secret_data(secrets["cfn-kafka-tls"])["ca.pem"])
    password = tmp_path / "password"
    password.write_text(_secret_data(secrets["cfn-kafka-sasl"])["ingest-password"])
    environ = {
        "CFN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CFN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CFN_KAFKA_SASL_USERNAME": "cfn-ingest",
        "CFN_KAFKA_SASL_PASSWORD_FILE": str(password),
        "CFN_KAFKA_SSL_CAFILE": str(ca),
    }
    with pytest.raises(ConfigError, match="CFN_KAFKA_SSL_CAFILE"):
        KafkaSecurity.from_env(environ)


# ---------------------------------------------------------------------- compose


class _Reset:
    """Compose's `!reset`: the attribute is removed from what the earlier files gave."""


class _ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> _Reset:
    return _Reset()


_ComposeLoader.add_constructor("!reset", _reset)

# Service attributes Compose merges as sets of unique items, by this key (its merge rules).
UNIQUE_BY_TARGET = ("secrets", "configs", "volumes")
REPLACED = ("command", "entrypoint")


def _load_compose(path: Path) -> Obj:
    data: Obj = yaml.load(path.read_text(encoding="utf-8"), Loader=_ComposeLoader)  # noqa: S506
    return data


def _long_secret(entry: str | Obj) -> Obj:
    return {"source": entry, "target": entry} if isinstance(entry, str) else dict(entry)


def compose_merge(base: Any, override: Any, field: str | None = None) -> Any:
    """`override` merged onto `base` by Compose's rules, for the attributes used here."""
    if isinstance(override, dict) and isinstance(base, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            if isinstance(value, _Reset):
                merged.pop(key, None)
            elif key in merged and key not in REPLACED:
                merged[key] = compose_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(override, list) and isinstance(base, list):
        if field in UNIQUE_BY_TARGET:
            assert field == "secrets", f"{field} merge not modelled"
            by_target = {e["target"]: e for e in map(_long_secret, base)}
            by_target.update({e["target"]: e for e in map(_long_secret, override)})
            return list(by_target.values())
        return copy.deepcopy(base) + copy.deepcopy(override)
    return copy.deepcopy(override)


@cache
def _merged_compose() -> Obj:
    merged: Obj = compose_merge(_load_compose(COMPOSE), _load_compose(COMPOSE_SECURE))
    return merged


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\}")


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (required)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if environ.get(name):
            return environ[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return _VARIABLE.sub(one, value)


def _variables(value: str) -> dict[str, str | None]:
    return {m["name"]: m["op"] for m in _VARIABLE.finditer(value)}


COMPOSE_ROLES = {  # service -> (default Kafka user, its password secret)
    "ingest": ("cfn-ingest", "cfn_kafka_ingest_password"),
    "worker": ("cfn-worker", "cfn_kafka_worker_password"),
    "reconcile": ("cfn-reconcile", "cfn_kafka_reconcile_password"),
}


def test_compose_override_points_each_service_at_the_secured_cluster() -> None:
    compose = _merged_compose()
    services = compose["services"]
    assert services["kafka"]["profiles"] == ["local-kafka"], "the local broker is not started"
    active = {n for n, s in services.items() if not s.get("profiles")}
    assert active == {"ingest", "worker", "reconcile", "prometheus", "grafana"}
    base = _load_compose(COMPOSE)["services"]
    for name, (user, password_secret) in COMPOSE_ROLES.items():
        service, before = services[name], base[name]
        env = service["environment"]
        assert _variables(env["CFN_KAFKA_BOOTSTRAP"]) == {"CFN_KAFKA_BOOTSTRAP": ":?"}
        assert env["CFN_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["CFN_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert interpolate(env["CFN_KAFKA_SASL_USERNAME"], {}) == user
        for key, value in before["environment"].items():
            if key != "CFN_KAFKA_BOOTSTRAP":
                assert env[key] == value, f"{name}: {key} dropped or changed"
        for dep in service.get("depends_on", {}):
            assert dep in active, f"{name} depends on {dep}, which is not started"
        assert service["command"] == before["command"]
        assert service.get("healthcheck") == before.get("healthcheck")

        mounted = {s["target"]: s["source"] for s in map(_long_secret, service["secrets"])}
        for s in map(_long_secret, before.get("secrets", [])):
            assert mounted[s["target"]] == s["source"], f"{name}: base secret dropped"
        assert mounted[env["CFN_KAFKA_SSL_CAFILE"].removeprefix("/run/secrets/")] == "cfn_kafka_ca"
        password_file = env["CFN_KAFKA_SASL_PASSWORD_FILE"].removeprefix("/run/secrets/")
        assert mounted[password_file] == password_secret
        kafka_passwords = {s for s in mounted.values() if s.endswith("_password")}
        assert kafka_passwords == {password_secret}, f"{name} mounts only its own password"
        for source in mounted.values():
            assert source in compose["secrets"], f"{name}: undeclared secret {source}"


def test_compose_override_keeps_passwords_out_of_the_file() -> None:
    compose = _merged_compose()
    for name in COMPOSE_ROLES:
        env = compose["services"][name]["environment"]
        assert "CFN_KAFKA_SASL_PASSWORD" not in env
        for key, value in env.items():
            if "PASSWORD" in key or "SECRET" in key:
                assert value.startswith("/run/secrets/"), f"{name}: {key} is inline"
    override = _load_compose(COMPOSE_SECURE)
    for name, secret in override["secrets"].items():
        assert set(secret) == {"file"}, f"{name}: a file, never a value"
        (op,) = _variables(secret["file"]).values()
        assert op == ":?", f"{name}: its file is a required variable"
        assert re.fullmatch(r"\$\{[^}]*\}", secret["file"]), f"{name}: the path is the variable"
    for name in COMPOSE_ROLES:
        for entry in override["services"][name]["secrets"]:
            # Compose cannot apply these to bind-mounted file secrets (it warns and ignores).
            assert not {"uid", "gid", "mode"} & set(entry), f"{name}: {entry}"


def test_compose_override_requires_its_variables() -> None:
    text = COMPOSE_SECURE.read_text()
    required = {n for n, op in _variables(text).items() if op == ":?"}
    assert required == {
        "CFN_KAFKA_BOOTSTRAP",
        "CFN_KAFKA_CA_FILE",
        "CFN_KAFKA_INGEST_PASSWORD_FILE",
        "CFN_KAFKA_WORKER_PASSWORD_FILE",
        "CFN_KAFKA_RECONCILE_PASSWORD_FILE",
    }
    env = {name: "x" for name in required}
    for name in required:
        with pytest.raises(KeyError, match=name):
            interpolate(text, {k: v for k, v in env.items() if k != name})
    usage = text.split("x-cfn-kafka-security")[0]
    for name in required:
        assert f"export {name}=" in usage, f"the header shows {name}"
    assert (
        "docker compose -f deploy/docker-compose.yml -f deploy/docker-compose.secure.yml" in usage
    )


@pytest.mark.parametrize("service", sorted(COMPOSE_ROLES))
def test_compose_services_settings_read_the_secret_files(
    service: str, ca_pem: str, tmp_path: Path
) -> None:
    """cfn reads each service's interpolated environment, /run/secrets/<target> being the file
    of the secret mounted there."""
    ca = tmp_path / "ca.pem"
    ca.write_text(ca_pem)
    passwords = {}
    for name, (_user, secret) in COMPOSE_ROLES.items():
        passwords[secret] = tmp_path / f"{name}.password"
        passwords[secret].write_text(f"{TEST_PASSWORD}-{name}\n")
    ingest_secrets = tmp_path / "ingest-secrets.json"
    ingest_secrets.write_text(json.dumps({"default": ["test-webhook-secret"]}))
    host_env = {
        "CFN_KAFKA_BOOTSTRAP": "broker.example.net:9093",
        "CFN_KAFKA_CA_FILE": str(ca),
        "CFN_KAFKA_INGEST_PASSWORD_FILE": str(passwords["cfn_kafka_ingest_password"]),
        "CFN_KAFKA_WORKER_PASSWORD_FILE": str(passwords["cfn_kafka_worker_password"]),
        "CFN_KAFKA_RECONCILE_PASSWORD_FILE": str(passwords["cfn_kafka_reconcile_password"]),
    }
    compose = _merged_compose()
    files = {
        n: interpolate(s["file"], host_env) for n, s in compose["secrets"].items() if "file" in s
    }
    files["cfn_ingest_secrets"] = str(ingest_secrets)  # the base's, from the environment
    mounted = {
        f"/run/secrets/{s['target']}": files[s["source"]]
        for s in map(_long_secret, compose["services"][service]["secrets"])
    }
    env = {
        k: interpolate(str(v), host_env)
        for k, v in compose["services"][service]["environment"].items()
    }
    env = {k: mounted.get(v, v) for k, v in env.items()}
    bootstrap, security = read_settings(f"cfn-{service}", env)
    assert bootstrap == "broker.example.net:9093"
    assert security.username == COMPOSE_ROLES[service][0]
    assert security.password is not None
    assert security.password.reveal() == f"{TEST_PASSWORD}-{service}"
    assert security.cafile == ca
