"""The rooms of the house (cfn/__init__.py): which package may import which, checked on the AST
of every module, including imports inside functions."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from cfn.kafka import AIOKAFKA_KEYS, LIBRDKAFKA_KEYS

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("ingest", "processors", "schemas", "cloudflare")  # top-level folders, linked into cfn/
SHELL = "cfn.shell"  # the command line and what only it starts: a real folder, cfn/shell/
ENTRY = "cfn.__main__"  # `python -m cfn`: the one module outside the shell that imports it
PLUMBING = "cfn"  # the modules of cfn/ itself (cfn.config, cfn.kafka, ...), the entry aside
# room -> the cfn packages it must never import. The shell may import every room; schemas
# imports nothing else of cfn's.
FORBIDDEN = {
    "cfn.ingest": ("cfn.processors", "cfn.cloudflare", SHELL),
    "cfn.processors": ("cfn.ingest", "cfn.cloudflare", SHELL),
    # It reads the ingest's secrets file with the ingest's own parser (cfn.ingest.auth).
    "cfn.cloudflare": ("cfn.processors", SHELL),
    PLUMBING: ("cfn.ingest", "cfn.processors", "cfn.cloudflare", SHELL),
}
# Within the shell, the development broker and the supervision of the foreground commands are
# started only by `cfn broker` / `cfn fetch-kafka` (cli) and `cfn run` (runner).
DEVELOPMENT = ("cfn.shell.broker", "cfn.shell.supervisor")
BROKER_USERS = ("cfn.shell.cli", "cfn.shell.runner")
# The one adapter of third-party internals (part of the plumbing): only it imports a module of
# aiokafka, uvicorn or confluent-kafka other than their public ones.
ADAPTER = "cfn.internals"
PUBLIC = {
    "aiokafka": ("aiokafka", "aiokafka.errors", "aiokafka.structs", "aiokafka.admin"),
    "uvicorn": ("uvicorn",),
    "confluent_kafka": ("confluent_kafka", "confluent_kafka.admin"),
}


def _room(module: str) -> str | None:
    """A cfn module's room: its linked folder's package, the shell or the plumbing; None for
    the entry module."""
    if module == ENTRY:
        return None
    for package in (*(f"cfn.{folder}" for folder in FOLDERS), SHELL):
        if module.startswith(package + "."):
            return package
    return PLUMBING


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def _room_violations(module: str, imported: set[str]) -> list[str]:
    """The names `module` imports that its room forbids: none when it keeps to its room."""
    room = _room(module)
    if room is None or room == SHELL:
        return []
    if room == "cfn.schemas":
        return sorted(
            n for n in imported if n.startswith("cfn.") and not _within(n, ("cfn.schemas",))
        )
    return sorted(n for n in imported if _within(n, FORBIDDEN[room]))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; cfn uses absolute ones"
            assert node.module is not None
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules() -> list[tuple[str, Path]]:
    found = [(f"cfn.{p.stem}", p) for p in sorted((ROOT / "cfn").glob("*.py"))]
    found += [(f"{SHELL}.{p.stem}", p) for p in sorted((ROOT / "cfn" / "shell").glob("*.py"))]
    for p in sorted((ROOT / "cfn" / "internals").glob("*.py")):
        found.append((ADAPTER if p.stem == "__init__" else f"{ADAPTER}.{p.stem}", p))
    for folder in FOLDERS:
        found += [(f"cfn.{folder}.{p.stem}", p) for p in sorted((ROOT / folder).glob("*.py"))]
    return found


def test_the_folders_are_the_cfn_packages() -> None:
    for folder in FOLDERS:
        link = ROOT / "cfn" / folder
        assert link.is_symlink() and link.resolve() == ROOT / folder, link


def test_every_package_of_cfn_is_a_room() -> None:
    """A new package under cfn/ is one the rules above know of (and _modules reads)."""
    packages = sorted(p.name for p in (ROOT / "cfn").iterdir() if (p / "__init__.py").exists())
    assert packages == sorted((*FOLDERS, "shell", "internals"))
    shell = ROOT / "cfn" / "shell"
    assert shell.is_dir() and not shell.is_symlink()
    assert (ROOT / "cfn" / "__main__.py").exists()  # `python -m cfn`


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_imports_stay_in_their_rooms(module: str, path: Path) -> None:
    imported = _imports(path)
    bare = sorted(n for n in imported if n.split(".")[0] in FOLDERS)
    assert not bare, f"{module} imports {bare}: use the cfn namespace"
    wrong = _room_violations(module, imported)
    assert not wrong, f"{module} ({_room(module)}) must not import {wrong}"


@pytest.mark.parametrize(
    ("module", "imported", "wrong"),
    [
        ("cfn.config", {"cfn.shell.cli"}, ["cfn.shell.cli"]),
        ("cfn.config", {"cfn", "cfn.shell"}, ["cfn.shell"]),  # from cfn import shell
        ("cfn.health", {"cfn.ingest.app"}, ["cfn.ingest.app"]),
        ("cfn.topics", {"cfn.cloudflare.client", "cfn.kafka"}, ["cfn.cloudflare.client"]),
        ("cfn.logs", {"cfn.schemas.jsonio"}, []),
        ("cfn.__main__", {"cfn.shell.cli"}, []),
        ("cfn.ingest.app", {"cfn.shell.tools", "cfn.config"}, ["cfn.shell.tools"]),
        ("cfn.processors.replay", {"cfn.ingest.auth"}, ["cfn.ingest.auth"]),
        ("cfn.cloudflare.connect", {"cfn.ingest.auth"}, []),
        ("cfn.cloudflare.connect", {"cfn.processors.pipeline"}, ["cfn.processors.pipeline"]),
        ("cfn.schemas.payload", {"cfn.schemas.jsonio", "cfn.config"}, ["cfn.config"]),
        ("cfn.shell.cli", {"cfn.ingest.server", "cfn.processors.worker", "cfn.shell.broker"}, []),
        ("cfn.shellfish", {"cfn.shell.cli"}, ["cfn.shell.cli"]),  # plumbing, not the shell
    ],
)
def test_the_room_check_sees_imports_out_of_a_room(
    module: str, imported: set[str], wrong: list[str]
) -> None:
    assert _room_violations(module, imported) == wrong


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_only_the_shell_starts_the_development_broker(module: str, path: Path) -> None:
    """Within the shell too, only `cfn broker`, `cfn fetch-kafka` and `cfn run` start the local
    broker, so it stays the development part of the command line."""
    if module in (*BROKER_USERS, *DEVELOPMENT):
        return
    wrong = sorted(n for n in _imports(path) if _within(n, DEVELOPMENT))
    assert not wrong, f"{module} imports the development broker ({wrong})"


def test_no_module_imports_itself_back() -> None:
    """The modules' imports, those inside functions included, form no cycle: a lazy import must
    not hide one."""
    modules = dict(_modules())
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = set()
        for name in _imports(path):
            # `from cfn.x import y` names cfn.x and cfn.x.y: the module is whichever exists.
            for candidate in (name, name.rpartition(".")[0]):
                if candidate in modules and candidate != module:
                    graph[module].add(candidate)
                    break
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


# The only module that names a Kafka client's connection settings (bootstrap, TLS, SASL).
BUILDER = ROOT / "cfn" / "kafka.py"


def _hand_built(tree: ast.AST) -> list[str]:
    """Where a module names a connection setting itself: a keyword argument (aiokafka's names)
    or a string (a dict key, a subscript, a lookup: aiokafka's or librdkafka's names). The
    settings object itself, `KafkaSecurity(sasl_mechanism=...)`, is what the builder reads."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) != "KafkaSecurity":  # the settings
            found += [
                f"line {node.lineno}: {k.arg}=" for k in node.keywords if k.arg in AIOKAFKA_KEYS
            ]
        elif isinstance(node, ast.Constant) and node.value in AIOKAFKA_KEYS | LIBRDKAFKA_KEYS:
            found.append(f"line {node.lineno}: {node.value!r}")
    return found


def _name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_only_the_builder_makes_kafka_client_settings(module: str, path: Path) -> None:
    """Every shipped Kafka client gets bootstrap, TLS and SASL from cfn.kafka."""
    if path.resolve() == BUILDER:
        return
    found = _hand_built(ast.parse(path.read_text(), str(path)))
    assert not found, f"{module} builds Kafka connection settings by hand ({found}): use cfn.kafka"


def test_the_builder_check_sees_settings_built_by_hand() -> None:
    hand_built = """
AIOKafkaConsumer(bootstrap_servers=b, group_id=None)
make(**{"sasl.password": p})
options["ssl_context"] = context
"""
    assert sorted(_hand_built(ast.parse(hand_built))) == [
        "line 2: bootstrap_servers=",
        "line 3: 'sasl.password'",
        "line 4: 'ssl_context'",
    ]
    built = "AIOKafkaConsumer(**aiokafka_options(b, KafkaSecurity(sasl_mechanism=m)), group_id=g)"
    assert _hand_built(ast.parse(built)) == []


# The modules that read the process environment, and why: the settings objects, each read once
# per process, and `cfn run`, which hands its environment on to the processes it starts.
ENVIRON_READERS = {
    "cfn.config": "CommandSettings: the commands that start no service",
    "cfn.logs": "LogSettings",
    "cfn.security": "KafkaSecurity",
    "cfn.ingest.settings": "IngestSettings",
    "cfn.processors.settings": "WorkerSettings",
    "cfn.cloudflare.settings": "CloudflareSettings",
    "cfn.shell.runner": "the environment of the ingest and worker it starts",
}
# The modules that set variables for the processes they start, and read none.
ENVIRON_WRITERS = {"cfn.ingest.server": "--workers and --allow-unauthenticated, for uvicorn's"}
_WRITES = ("pop", "update", "__setitem__", "__delitem__")


def _environ_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, "read" or "write") of each use of os.environ, os.getenv and their kin."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(a.name in ("environ", "environb", "getenv", "getenvb") for a in node.names):
                uses.append((node.lineno, "read"))  # a bare name could hide anything
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in ("environ", "environb", "getenv", "getenvb", "putenv", "unsetenv")
        ):
            parent = parents.get(node)
            written = (
                isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store | ast.Del)
            ) or (isinstance(parent, ast.Attribute) and parent.attr in _WRITES)
            uses.append((node.lineno, "write" if written else "read"))
    return uses


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_only_the_settings_read_the_environment(module: str, path: Path) -> None:
    """Every setting is read once, in a settings object: nothing else reads os.environ."""
    uses = _environ_uses(ast.parse(path.read_text(), str(path)))
    if module in ENVIRON_READERS:
        return
    allowed = ("write",) if module in ENVIRON_WRITERS else ()
    wrong = [f"line {line}: {kind}" for line, kind in uses if kind not in allowed]
    assert not wrong, f"{module} uses the environment ({wrong}): read it in a settings object"


def test_the_environment_check_tells_reads_from_writes() -> None:
    source = """
import os
from os import getenv
a = os.environ.get("X")
b = {**os.environ}
os.environ["Y"] = "1"
os.environ.pop("Y", None)
del os.environ["Z"]
c = os.getenv("X")
"""
    assert sorted(_environ_uses(ast.parse(source))) == [
        (3, "read"),
        (4, "read"),
        (5, "read"),
        (6, "write"),
        (7, "write"),
        (8, "write"),
        (9, "read"),
    ]


def _non_public(path: Path) -> list[str]:
    """The modules of aiokafka, uvicorn and confluent-kafka that `path` imports and that are
    not their public API (`from aiokafka import conn` included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            modules = [node.module]
            for alias in node.names:  # a submodule imported by name
                name = f"{node.module}.{alias.name}"
                if node.module.split(".")[0] in PUBLIC and _is_module(name):
                    modules.append(name)
        else:
            continue
        for module in modules:
            public = PUBLIC.get(module.split(".")[0])
            if public is not None and module not in public:
                found.append(module)
    return sorted(found)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_only_the_adapter_imports_third_party_internals(module: str, path: Path) -> None:
    if module == ADAPTER or module.startswith(ADAPTER + "."):
        return
    assert not _non_public(path), f"{module}: import these through {ADAPTER}"


def test_the_internals_check_sees_non_public_imports(tmp_path: Path) -> None:
    lines = {
        "from aiokafka.conn import create_conn": ["aiokafka.conn"],
        "from aiokafka import conn": ["aiokafka.conn"],
        "import uvicorn.supervisors.multiprocess": ["uvicorn.supervisors.multiprocess"],
        "from aiokafka.errors import KafkaError": [],
        "from aiokafka import AIOKafkaConsumer, errors": [],
    }
    for line, expected in lines.items():
        path = tmp_path / "m.py"
        path.write_text(line + "\n")
        assert _non_public(path) == expected, line
