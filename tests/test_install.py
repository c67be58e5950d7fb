"""What a fresh machine needs: tools/install-deps, and a runtime made of the runtime
dependencies alone (no extras: no faust-streaming, no test tools) that runs every command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port_block
from tests.services import Process, free_port, request, wait_ready

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "tools" / "install-deps"
LOCKFILE = ROOT / "tools" / "asyncapi" / "package-lock.json"
TEST_TOOLS = ("java", "mvn", "prometheus", "promtool", "wrk", "go", "node", "npm")
RUNTIME_PACKAGES = (
    "cfn",
    "cfn.internals",
    "cfn.shell",
    "cfn.ingest",
    "cfn.processors",
    "cfn.schemas",
    "cfn.cloudflare",
)


def _path_with(tmp_path: Path, commands: dict[str, str | None]) -> str:
    """A PATH of one folder holding the shell tools the script uses, plus `commands`: each a
    script that prints its name (a stand-in for an installed tool), or a link to the real one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", "id", "sort", "env", "tee", "chmod", "rm"):
        real = shutil.which(tool)
        assert real is not None, tool
        (bin_dir / tool).symlink_to(real)
    for name, real in commands.items():
        target = bin_dir / name
        if real is None:
            target.write_text(f"#!/bin/sh\necho {name}\n")
            target.chmod(0o755)
        else:
            target.symlink_to(real)
    return str(bin_dir)


def _npm_cache(tmp_path: Path, ready: bool) -> Path:
    """A CFN_NPM_CACHE folder: with `ready`, as `npm ci` leaves it (the lockfile's copy and the
    parser's package.json); otherwise empty."""
    cache = tmp_path / "npm"
    if ready:
        parser = cache / "node_modules" / "@asyncapi" / "parser"
        parser.mkdir(parents=True)
        (parser / "package.json").write_text("{}")
        shutil.copy(LOCKFILE, cache / "package-lock.json")
    return cache


def _install(
    purpose: str,
    path: str,
    user: str | None = None,
    npm_cache: Path | None = None,
    script: Path = INSTALL,
) -> subprocess.CompletedProcess[str]:
    argv = ["bash", str(script), purpose]
    if user is not None:
        runuser = shutil.which("runuser")
        assert runuser is not None, "runuser (util-linux) is needed to drop root"
        argv = [runuser, "-u", user, "--", "env", f"PATH={path}", f"PYTHON={sys.executable}", *argv]
    env = {"PATH": path, "PYTHON": sys.executable}  # a python whose venv module works
    if npm_cache is not None:
        env["CFN_NPM_CACHE"] = str(npm_cache)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_install_is_quiet_and_quick_when_everything_is_there(tmp_path: Path) -> None:
    path = _path_with(tmp_path, dict.fromkeys(TEST_TOOLS))
    started = time.monotonic()
    result = _install("test", path, npm_cache=_npm_cache(tmp_path, ready=True))
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""
    assert time.monotonic() - started < 2.0


def test_run_needs_less_than_test(tmp_path: Path) -> None:
    path = _path_with(tmp_path, {"java": None, "mvn": None})
    assert _install("run", path).returncode == 0


def test_without_apt_get_it_stops_with_one_line_naming_the_packages(tmp_path: Path) -> None:
    path = _path_with(tmp_path, {"java": None, "mvn": None})  # no prometheus, wrk, apt-get
    result = _install("test", path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "prometheus" in lines[0] and "wrk" in lines[0] and "nodejs npm" in lines[0]
    assert "java" not in lines[0] and "maven" not in lines[0]


def test_without_root_or_sudo_it_stops_with_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # as root the script would install: run it as nobody
        # A folder of its own under /tmp that nobody can read; no other folder is opened up.
        shared = Path(tempfile.mkdtemp(prefix="cfn-install-", dir="/tmp"))
        shared.chmod(0o755)
        try:
            path = _path_with(  # no sudo
                shared,
                {"java": None, "mvn": None, "go": None, "node": None, "npm": None, "apt-get": None},
            )
            # A copy nobody can read: the clone may sit in a folder only its owner can enter
            # (mktemp -d makes them so).
            script = shared / "tools" / "install-deps"
            script.parent.mkdir()
            shutil.copy(INSTALL, script)
            script.chmod(0o755)
            result = _install("test", path, user="nobody", script=script)
        finally:
            shutil.rmtree(shared)
    else:
        path = _path_with(  # no sudo
            tmp_path,
            {"java": None, "mvn": None, "go": None, "node": None, "npm": None, "apt-get": None},
        )
        result = _install("test", path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    missing = lines[0].removeprefix("cfn: missing ").partition(";")[0].split()
    # (as nobody, this venv's python, under /root, may not run: then python3-venv is missing too)
    assert missing in (["prometheus", "wrk"], ["prometheus", "python3-venv", "wrk"]), lines[0]
    assert lines[0].startswith("cfn: missing ") and "; install them" in lines[0]


def test_test_installs_the_npm_lockfile_into_a_fresh_cache_folder(tmp_path: Path) -> None:
    """Without the lockfile's copy in CFN_NPM_CACHE, `npm ci` (no install scripts) runs in a
    new folder holding tools/asyncapi's package files, which then replaces the old one."""
    path = _path_with(tmp_path, dict.fromkeys(TEST_TOOLS[:-1]))
    for tool in ("mkdir", "mktemp", "cp", "mv"):
        real = shutil.which(tool)
        assert real is not None, tool
        (tmp_path / "bin" / tool).symlink_to(real)
    calls = tmp_path / "npm-calls"
    npm = tmp_path / "bin" / "npm"  # records where and how it ran, and "installs" the parser
    npm.write_text(
        "#!/bin/bash\n"
        f'echo "$PWD $*" >> {calls}\n'
        "mkdir -p node_modules/@asyncapi/parser\n"
        "echo {} > node_modules/@asyncapi/parser/package.json\n"
    )
    npm.chmod(0o755)
    cache = _npm_cache(tmp_path, ready=False)
    cache.mkdir()
    (cache / "stale").write_text("an older install")
    result = _install("test", path, npm_cache=cache)
    assert result.returncode == 0, result.stderr
    assert "installed the AsyncAPI parser" in result.stdout
    ((where, args),) = (line.split(" ", 1) for line in calls.read_text().splitlines())
    assert where.startswith(f"{cache}.new.") and args.startswith("ci --ignore-scripts")
    assert (cache / "package-lock.json").read_bytes() == LOCKFILE.read_bytes()
    assert (cache / "node_modules" / "@asyncapi" / "parser" / "package.json").exists()
    assert not (cache / "stale").exists()
    again = _install("test", path, npm_cache=cache)  # now present: quiet, npm not run again
    assert again.returncode == 0 and again.stdout == again.stderr == ""
    assert len(calls.read_text().splitlines()) == 1


# ---- the runtime alone --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv with `pip install .` and nothing else (built from this checkout)."""
    base = tmp_path_factory.mktemp("runtime")
    venv = base / "venv"
    # A copy of the checkout without build leftovers (a stale build/ would end up in the wheel).
    source = base / "src"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".local", "build", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield venv


def _runtime_modules() -> list[str]:
    modules = []
    for package in RUNTIME_PACKAGES:
        for path in sorted((ROOT / package.replace(".", "/")).glob("*.py")):
            if path.stem == "__main__":
                continue
            modules.append(package if path.stem == "__init__" else f"{package}.{path.stem}")
    return modules


@pytest.mark.slow
def test_every_runtime_module_imports_from_the_runtime_dependencies_alone(
    runtime_venv: Path, tmp_path: Path
) -> None:
    modules = _runtime_modules()
    script = (
        "import importlib, importlib.util, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "for extra in ('faust', 'pytest', 'hypothesis', 'ingest', 'processors', 'schemas'):\n"
        "    assert importlib.util.find_spec(extra) is None, extra + ' is installed'\n"
        "from cfn import internals\n"
        "internals.check_versions()\n"
        "from cfn.shell.broker import POM\n"
        "assert POM.is_file() and 'kafka_2.13' in POM.read_text(), POM\n"
        "print(len(sys.modules))\n"
    )
    result = subprocess.run(
        [str(runtime_venv / "bin" / "python"), "-c", script],
        cwd=tmp_path,  # not the checkout: the installed packages, not the source folders
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(modules) > 30


@pytest.mark.slow
@pytest.mark.broker
def test_the_runtime_alone_runs_ingest_worker_and_run(
    runtime_venv: Path, kafka: str, tmp_path: Path
) -> None:
    cfn = str(runtime_venv / "bin" / "cfn")
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith("CFN_") and k != "VIRTUAL_ENV"
    }
    env = {
        **base_env,
        "CFN_KAFKA_BOOTSTRAP": kafka,
        "CFN_TOPIC_PREFIX": "rt.",
        "CFN_PARTITIONS": "2",
    }
    ingest_port, admin_port, worker_port = free_port(), free_port(), free_port()
    procs = []
    try:
        for argv, port, extra in (
            (
                [cfn, "ingest"],
                admin_port,
                {
                    "CFN_INGEST_PORT": str(ingest_port),
                    "CFN_INGEST_ADMIN_PORT": str(admin_port),
                    "CFN_INGEST_SECRET": "rt-secret-0123456789",
                },
            ),
            (
                [cfn, "worker"],
                worker_port,
                {"CFN_WORKER_METRICS_PORT": str(worker_port), "CFN_APP_ID": "rt-worker"},
            ),
        ):
            process = Process(argv, {**env, **extra}, tmp_path / f"{argv[1]}.log", port=port)
            process.start()
            procs.append(process)
            wait_ready(process, port, "/readyz", timeout=90)
        answer = request(
            ingest_port,
            "POST",
            "/webhooks/cloudflare",
            b'{"alert_type":"runtime_check"}',
            {"cf-webhook-auth": "rt-secret-0123456789"},
        )
        assert answer.status == 202, answer.body
    finally:
        for process in procs:
            process.stop()

    # `cfn run`: its own broker, ingest and worker, from a folder that is not the checkout.
    kafka_port, http_port, metrics_port = free_port_block(1), free_port(), free_port()
    run_env = {
        **base_env,
        "CFN_INGEST_PORT": str(http_port),
        "CFN_WORKER_METRICS_PORT": str(metrics_port),
    }
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        run = subprocess.Popen(
            [cfn, "run", "--kafka-port", str(kafka_port)],
            cwd=tmp_path,
            env=run_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "cfn is running" not in log_path.read_text():
            assert run.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        secret = (tmp_path / ".local" / "secret").read_text().strip()
        answer = request(
            http_port, "POST", "/webhooks/cloudflare", b"{}", {"cf-webhook-auth": secret}
        )
        assert answer.status == 202, answer.body
    finally:
        run.send_signal(signal.SIGINT)
        try:
            code = run.wait(90)
        except subprocess.TimeoutExpired:
            run.kill()
            raise
    assert code == 0, log_path.read_text()
    assert "cfn run: stopped" in log_path.read_text()
