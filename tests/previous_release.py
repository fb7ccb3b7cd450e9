"""Releases of scheduler-svc from before this one, installed from this clone's git history
into venvs of their own, the rolling upgrades the tests run from them, and replicas of
any release as `scheduler-svc serve` processes (not collected as tests).

Each venv has no packages of its own but scheduler-svc at a release's commit: a .pth file
puts the running venv's site-packages after its own on sys.path, so the old release runs
on the dependencies installed here. That directory is only on the path, not a site
directory: its .pth files, among them the editable install's finder that maps
`scheduler_svc` to this work tree, are never processed, so `import scheduler_svc` in the
old venv finds the old package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from scheduler_svc.store import migrate
from tests.helpers import free_port
from tests.replicas import LEASE_MARGIN_S, Replica

# The release this one follows: schema 8 (the console, after operator controls: tags,
# jitter, maintenance windows, alerts, cancel). It leaves a database a newer release
# migrated as it is, and runs on it; it reads `jobs` through the view jobs_api_v7, reads
# `cancelled` runs, and names its sessions `scheduler-svc@8:<worker id>`.
PREVIOUS_RELEASE = "06dab8f"
# The release before operator controls, which 096fa2e (schema 7) followed: schema 6 (versioned
# migrations, job_runs partitioned by day, job keys). Its statements on `jobs` name their
# columns, it reads jobs through the view jobs_api, and job_runs with `SELECT *` only
# outside transactions; it cannot read a `cancelled` run, and names its sessions
# `scheduler-svc:<worker id>`. It upgrades straight to this release (deploy/README.md).
BEFORE_CANCEL_RELEASE = "547dd3e"
# The last release before versioned migrations: schema version 4, job_runs unpartitioned,
# schema.sql applied whole on every start. 547dd3e followed it.
UNVERSIONED_RELEASE = "ea3fc4c"
REPO_ROOT = Path(__file__).resolve().parents[1]
GIT_S = 30.0
INSTALL_S = 300.0  # building the wheel may first fetch the build backend
# Variables that would put something else on the old interpreter's path.
_PATH_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONSTARTUP")

# This release, as the test's interpreter runs it.
CURRENT = (sys.executable, "-m", "scheduler_svc")


@dataclass(frozen=True)
class Release:
    """An installed release: how to run its `scheduler-svc`, and what it was built from."""

    command: tuple[str, ...]
    commit: str
    python: Path
    venv: Path


def release_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the variables that would change what an interpreter imports."""
    return {k: v for k, v in env.items() if k not in _PATH_VARIABLES}


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args],
        capture_output=True,
        text=True,
        timeout=GIT_S,
        check=False,
    )


def resolve_commit(commit: str) -> str:
    """The full hash of `commit` in this clone; skips the test without git or the commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the previous release is installed from git")
    found = _git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    if found.returncode != 0:
        shallow = _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"
        why = "a shallow clone" if shallow else "not a clone that has it"
        pytest.skip(f"commit {commit} (the previous release) is not here: {REPO_ROOT} is {why}")
    return found.stdout.strip()


def _can_build_without_isolation() -> bool:
    """Whether this environment's setuptools builds wheels itself (70.1 took in
    bdist_wheel) or has the `wheel` package for it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    if (major, minor) >= (70, 1):
        return True
    try:
        version("wheel")
    except PackageNotFoundError:
        return False
    return True


def install(dest: Path, commit: str) -> Release:
    """Install scheduler-svc at `commit` of this clone into a new venv in `dest`.

    pip builds it from `git+file://` at the full hash. Without isolation when this
    environment can build the wheel (offline); else in pip's isolated build environment,
    which fetches the build backend from the package index as this checkout's own
    install does, and the test skips if that cannot be had.
    """
    full = resolve_commit(commit)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(dest)
    python = dest / "bin" / "python"
    paths = sysconfig.get_paths()
    shared = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            timeout=GIT_S,
            check=True,
            cwd=dest,
            env=release_env(os.environ),
        ).stdout.strip()
    )
    # Appended after the venv's own site-packages: the old package, installed there, wins.
    (site_packages / "zz_shared_dependencies.pth").write_text("".join(f"{p}\n" for p in shared))
    no_isolation = ["--no-build-isolation"] if _can_build_without_isolation() else []
    # pip too comes from the shared directory (the venv has none of its own) and installs
    # into the venv's site-packages. --ignore-installed: the shared directory has this
    # release's scheduler-svc (editable); pip must neither take it as installed nor try to
    # uninstall it.
    pip = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--ignore-installed",
            *no_isolation,
            f"git+file://{REPO_ROOT}@{full}#egg=scheduler-svc",
        ],
        capture_output=True,
        text=True,
        timeout=INSTALL_S,
        check=False,
        cwd=dest,
        env=release_env(os.environ),
    )
    if pip.returncode != 0:
        output = (pip.stdout + pip.stderr)[-3000:]
        if not no_isolation and "setuptools" in output and "version" in output.lower():
            pytest.skip(f"pip could not fetch a build backend for the previous release:\n{output}")
        raise AssertionError(f"installing {commit} failed ({pip.returncode}):\n{output}")
    script = dest / "bin" / "scheduler-svc"
    return Release((str(script),), full, python, dest)


class Releases:
    """Releases installed on demand under `root`, each once."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._installed: dict[str, Release] = {}

    def get(self, commit: str) -> Release:
        if commit not in self._installed:
            self._installed[commit] = install(self._root / commit, commit)
        return self._installed[commit]

    def command(self, commit: str | None) -> tuple[str, ...]:
        """How to run `scheduler-svc` of `commit` (None: this release)."""
        return CURRENT if commit is None else self.get(commit).command


@dataclass(frozen=True)
class Upgrade:
    """A rolling upgrade from release `old` to release `new` (None: this work tree), one
    release at a time: `new`'s `scheduler-svc migrate` runs under replicas of `old`, then
    replicas of `new` replace them. What differs between the pairs follows from the
    schema versions."""

    old: str
    new: str | None
    schema_before: int  # what `old` makes of an empty database
    schema_after: int  # what `new`'s migrate brings it to

    @property
    def id(self) -> str:
        return f"{self.old}-to-{self.new or 'this'}"

    @property
    def versioned(self) -> bool:
        """Whether `old` has versioned migrations (from 5): job_runs is partitioned by day
        from the start, and it runs on a schema a newer release migrated. The releases
        before apply their schema.sql on every start, which the event trigger of 0005
        (scheduler_refuse_older_release) refuses on a newer schema."""
        return self.schema_before >= 5

    @property
    def keys(self) -> bool:
        """Whether `old` has job keys (6): PUT /jobs/by-key/{key}."""
        return self.schema_before >= 6

    @property
    def cancels(self) -> bool:
        """Whether `old` has cancel (7): it reads a `cancelled` run, so a release after it
        does not hold cancels back while it is connected."""
        return self.schema_before >= 7


UPGRADES = (
    # 0005 and 0006 under the release before versioned migrations. Its rolling upgrade
    # is to 547dd3e, not to this release: 0007 adds columns to `jobs`, which ea3fc4c
    # returns with `RETURNING *` inside transactions (its PATCH, and the replay of a
    # create with an Idempotency-Key, would answer 500).
    Upgrade(UNVERSIONED_RELEASE, BEFORE_CANCEL_RELEASE, schema_before=4, schema_after=6),
    # 0007 to 0009 under the release before operator controls: schema 6 upgrades
    # straight to this release, whose replicas hold cancels back beside it. Not 547dd3e
    # to 096fa2e: two fixed commits, which would only run again what passed when 096fa2e
    # landed; this pair runs this release's migrate and replicas.
    Upgrade(BEFORE_CANCEL_RELEASE, None, schema_before=6, schema_after=migrate.SCHEMA_VERSION),
    # This release's migration (0009) under the release it follows. (0008 under 096fa2e,
    # schema 7, was this pair until 06dab8f landed.)
    Upgrade(PREVIOUS_RELEASE, None, schema_before=8, schema_after=migrate.SCHEMA_VERSION),
)


def imported_from(release: Release, module: str) -> Path:
    """The file `module` is imported from by the release's interpreter."""
    found = subprocess.run(
        [str(release.python), "-c", f"import {module} as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        timeout=GIT_S,
        check=True,
        cwd=release.venv,  # not the work tree: '' on sys.path must not find this release
        env=release_env(os.environ),
    )
    return Path(found.stdout.strip())


def replica_env(name: str, database_url: str, **env: str) -> dict[str, str]:
    """The environment of replica `name` (its worker id): the settings tests/replicas.py
    gives its replicas, and none of this process's SCHEDULER_ variables."""
    environ = release_env(
        {
            k: v
            for k, v in os.environ.items()
            if k != "DATABASE_URL" and not k.startswith("SCHEDULER_")
        }
    )
    environ.update(
        {
            "DATABASE_URL": database_url,
            "SCHEDULER_WORKER_ID": name,
            "SCHEDULER_WEBHOOK_ALLOW_PRIVATE": "true",
            "SCHEDULER_LOG_FORMAT": "json",
            "SCHEDULER_LEASE_MARGIN_S": str(LEASE_MARGIN_S),
            "SCHEDULER_SHUTDOWN_GRACE_S": "2",
            **env,
        }
    )
    return environ


def spawn(
    command: Sequence[str],
    name: str,
    database_url: str,
    directory: Path,
    role: str = "all",
    **env: str,
) -> Replica:
    """Start `<command> serve --role <role>` on a free loopback port as replica `name`,
    output to `<name>.log`."""
    port = free_port()
    log_path = directory / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, "serve", "--role", role, "--port", str(port)],
            env=replica_env(name, database_url, **env),
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Replica(name, port, process, log_path)
