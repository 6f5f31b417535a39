"""The deployment files name things that exist: compose.yaml, ops/, the Makefile, .dockerignore.

Docker is not needed: compose.yaml is parsed with PyYAML, each service's command line is
checked against the real ``buddy`` CLI (typer) and Celery app, and every file it refers to
must be in the repository.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from buddy.cli.app import app

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "ops" / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _image_entrypoint() -> list[str]:
    [ep] = [rest for word, rest in _dockerfile_instructions() if word == "ENTRYPOINT"]
    return json.loads(ep)


def _argv(service: dict[str, Any]) -> list[str]:
    """The command line a service runs: its entrypoint (or the image's) then its command."""
    entry = service.get("entrypoint")
    if entry is None:
        entry = _image_entrypoint() if "build" in service else []
    command = service.get("command", [])
    as_list = lambda v: shlex.split(v) if isinstance(v, str) else [str(x) for x in v]  # noqa: E731
    return as_list(entry) + as_list(command)


def _cli() -> Any:
    """The click group behind ``buddy.cli.app`` (typer may vendor its own click)."""
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return group


def _flags(cmd: Any) -> set[str]:
    return {o for p in cmd.params for o in [*p.opts, *p.secondary_opts] if o.startswith("-")}


def _used_flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-")]


# -- compose: commands ----------------------------------------------------------------------


def test_compose_has_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "worker", "flower", "coordinator", "prometheus"} <= set(services)


def test_dockerfile_entrypoint_is_buddy() -> None:
    assert _image_entrypoint() == ["buddy"]


def test_every_buddy_command_is_a_real_subcommand_with_real_flags(
    services: dict[str, dict[str, Any]],
) -> None:
    cli = _cli()
    seen = []
    for name, svc in services.items():
        argv = _argv(svc)
        if not argv or argv[0] != "buddy":
            continue
        sub = argv[1]
        assert sub in cli.commands, f"{name}: `buddy {sub}` is not a command of buddy.cli.app"
        known = _flags(cli.commands[sub])
        unknown = [f for f in _used_flags(argv[2:]) if f not in known]
        assert not unknown, f"{name}: `buddy {sub}` has no option(s) {unknown}"
        seen.append(sub)
    assert {"worker", "run", "flower", "exporter"} <= set(seen)


def test_worker_serves_three_agents(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["worker"])
    assert argv[:2] == ["buddy", "worker"]
    agents = [argv[i + 1] for i, a in enumerate(argv) if a == "--agent"]
    assert agents == ["a1", "a2", "a3"]
    assert argv[argv.index("--concurrency") + 1] == "4"


def test_worker_can_scale(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container name prevents --scale"
    assert "ports" not in worker, "published ports prevent --scale"


def test_coordinator_is_a_one_shot_run_of_the_example(services: dict[str, dict[str, Any]]) -> None:
    coord = services["coordinator"]
    argv = _argv(coord)
    assert argv[:2] == ["buddy", "run"]
    assert coord["restart"] == "no"
    assert coord["depends_on"]["redis"]["condition"] == "service_healthy"
    assert argv[argv.index("--local-workers") + 1] == "0"
    assert "--no-progress" in argv
    plan = argv[2]
    assert not plan.startswith("-")
    for path in (plan, argv[argv.index("--config") + 1]):
        assert (ROOT / path).is_file(), f"coordinator: {path} does not exist"


def _opt(argv: list[str], name: str) -> str:
    """The value of ``--name value`` or ``--name=value`` in ``argv``."""
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def test_ops_commands_are_registered() -> None:
    assert {"flower", "exporter", "doctor"} <= set(_cli().commands)


def test_flower_is_buddy_flower_with_auth_on_the_network(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["flower"])
    assert argv[:2] == ["buddy", "flower"]
    assert _opt(argv, "--basic-auth").startswith("${FLOWER_USER")
    assert _opt(argv, "--address") == "0.0.0.0"
    assert "5555:5555" in [str(p) for p in services["flower"]["ports"]]
    assert _opt(argv, "--port") == "5555"


def test_buddy_services_share_one_env_anchor(services: dict[str, dict[str, Any]]) -> None:
    envs = [services[s]["environment"] for s in ("worker", "flower", "coordinator")]
    assert envs[0] is envs[1] is envs[2], "the shared env should be one YAML anchor"
    url = envs[0]["BUDDY_REDIS_URL"]
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD[^}]*\}@redis:6379/0", url), url


def test_redis_is_persistent_never_evicts_and_needs_a_password(
    services: dict[str, dict[str, Any]],
) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    argv = _argv(redis)
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] == "everysec"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--requirepass"].startswith("${REDIS_PASSWORD:?")
    assert "healthcheck" in redis
    conf = (ROOT / "ops" / "redis.conf").read_text(encoding="utf-8")
    settings = dict(
        line.split(None, 1) for line in conf.splitlines() if line.strip() and not line.startswith("#")
    )
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "everysec"
    assert settings["maxmemory-policy"] == "noeviction"
    assert "requirepass" not in settings, "the password comes from --requirepass, not the file"


def test_prometheus_is_optional_and_scrapes_flower_exporter_and_coordinator(
    services: dict[str, dict[str, Any]],
) -> None:
    prom = services["prometheus"]
    assert prom["profiles"] == ["metrics"]
    assert services["exporter"]["profiles"] == ["metrics"]
    assert str(prom["image"]).startswith("prom/prometheus")
    cfg = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = [t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in cfg["scrape_configs"])
    # each target is a service of compose.yaml on the port its command serves
    ports = {
        "flower": _opt(_argv(services["flower"]), "--port"),
        "exporter": _opt(_argv(services["exporter"]), "--port"),
        "coordinator": _opt(_argv(services["coordinator"]), "--metrics-port"),
    }
    assert sorted(targets) == sorted(f"{name}:{port}" for name, port in ports.items())
    assert _opt(_argv(services["exporter"]), "--address") == "0.0.0.0"
    assert _opt(_argv(services["coordinator"]), "--metrics-address") == "0.0.0.0"


# -- compose: files -------------------------------------------------------------------------


def test_files_compose_refers_to_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        build = svc.get("build")
        if build is not None:
            context = ROOT / (build["context"] if isinstance(build, dict) else build)
            dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            assert (context / dockerfile).is_file(), f"{name}: {dockerfile} does not exist"
        for vol in svc.get("volumes", []):
            source = str(vol).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: volume source {source} does not exist"
            else:
                assert source in (yaml.safe_load(COMPOSE.read_text())["volumes"] or {}), source


def test_dockerfile_is_slim_non_root_and_copies_what_exists() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "--uid 10001" in runs and "pip install --no-cache-dir ." in runs
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] == "buddy"
    copied = {src for word, rest in instructions if word == "COPY" for src in rest.split()[:-1]}
    assert copied == {"pyproject.toml", "README.md", "buddy/", "workers/", "examples/"}
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


def test_dockerignore_keeps_what_the_image_copies() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    assert not ignored & {"pyproject.toml", "README.md", "buddy", "workers", "examples"}


# -- Makefile -------------------------------------------------------------------------------


def _make_targets() -> dict[str, list[str]]:
    """Target → recipe lines of the Makefile (simple rules only)."""
    targets: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        if line.startswith("\t") and current is not None:
            current.append(line.strip())
            continue
        m = re.match(r"^([A-Za-z0-9_.$()/-]+)\s*:(?!=)", line)
        current = targets.setdefault(m.group(1), []) if m else None
    return targets


def test_makefile_has_demo_and_test_targets() -> None:
    targets = _make_targets()
    for name in ("venv", "install", "browser", "demo", "test", "lint", "fmt", "clean", ".PHONY"):
        assert name in targets, f"Makefile: no {name} target"
    assert any("examples/demo.py" in line for line in targets["demo"])
    recipe = targets["test"]
    assert [r.split()[0].rsplit("/", 1)[-1] for r in recipe[-3:]] == ["ruff", "mypy", "pytest"]
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^PYTHON \?= python3$", text, re.M)
    assert re.search(r"^\.PHONY:.*\bbrowser\b.*\bdemo\b.*\btest\b", text, re.M)
    assert re.search(r"^test: install browser$", text, re.M)


# -- ops/k8s --------------------------------------------------------------------------------

K8S = ROOT / "ops" / "k8s"


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                doc["_file"] = path.name
                docs.append(doc)
    return docs


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def test_k8s_manifests_parse_and_are_named(k8s: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in k8s}
    assert {"ConfigMap", "Deployment", "Job", "Service", "ScaledObject", "ServiceMonitor"} <= kinds
    seen = set()
    for d in k8s:
        assert d.get("apiVersion") and d["metadata"].get("name"), d["_file"]
        key = (d["kind"], d["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
    for d in _of_kind(k8s, "Deployment"):
        assert (
            d["spec"]["selector"]["matchLabels"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        )


def test_k8s_containers_run_real_buddy_commands_as_non_root(k8s: list[dict[str, Any]]) -> None:
    cli = _cli()
    config = _of_kind(k8s, "ConfigMap")[0]["data"]
    for w in _workloads(k8s):
        pod = _pod_spec(w)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (ops/Dockerfile)
        for c in pod["containers"]:
            assert str(c["image"]).startswith("buddy:")
            args = [str(a) for a in c["args"]]
            assert args[0] in cli.commands, f"{w['_file']}: `buddy {args[0]}` is not a command"
            unknown = [f for f in _used_flags(args[1:]) if f not in _flags(cli.commands[args[0]])]
            assert not unknown, f"{w['_file']}: `buddy {args[0]}` has no option(s) {unknown}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            env = {e["name"]: e for e in c.get("env", [])}
            assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "buddy-redis"
            assert env["BUDDY_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@$(REDIS_ADDRESS)/0"
            assert [r["configMapRef"]["name"] for r in c["envFrom"]] == ["buddy-config"]
            assert "REDIS_ADDRESS" in config


def test_k8s_config_names_real_settings_and_a_safe_visibility_timeout(k8s: list[dict[str, Any]]) -> None:
    from buddy.config import Settings
    from buddy.infra.doctor import check_visibility_timeout
    from buddy.tools.registry import default_registry

    data = _of_kind(k8s, "ConfigMap")[0]["data"]
    fields = {f"BUDDY_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(k for k in data if k.startswith("BUDDY_") and k not in fields)
    assert not unknown, f"not settings: {unknown}"
    assert data["BUDDY_SHELL_ALLOW"] == "" and data["BUDDY_PYTHON_ALLOW"] == ""
    assert check_visibility_timeout(default_registry(), float(data["BUDDY_VISIBILITY_TIMEOUT_S"])).ok


def test_k8s_worker_deployment_per_agent_scaled_by_keda_on_its_queue(k8s: list[dict[str, Any]]) -> None:
    workers = [
        d
        for d in _of_kind(k8s, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    assert workers
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in _of_kind(k8s, "ScaledObject")}
    for d in workers:
        [c] = _pod_spec(d)["containers"]
        agent = c["args"][c["args"].index("--agent") + 1]
        assert d["metadata"]["labels"]["buddy.io/agent"] == agent
        assert d["metadata"]["name"] == f"buddy-worker-{agent}"
        so = scaled[d["metadata"]["name"]]
        assert so["spec"]["minReplicaCount"] >= 1  # `buddy run` aborts on an agent without workers
        [trigger] = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "redis"
        assert meta["listName"] == f"buddy.agent.{agent}"
        assert str(meta["listLength"]).isdigit() and int(meta["listLength"]) > 0
        env = {e["name"] for e in c["env"]}
        config = _of_kind(k8s, "ConfigMap")[0]["data"]
        assert meta["passwordFromEnv"] in env
        assert meta["addressFromEnv"] in env | set(config)


def test_k8s_services_and_service_monitors_line_up(k8s: list[dict[str, Any]]) -> None:
    pods = [(w, w["spec"]["template"]["metadata"]["labels"]) for w in _workloads(k8s)]
    services = _of_kind(k8s, "Service")
    for svc in services:
        sel = svc["spec"]["selector"]
        matches = [w for w, labels in pods if sel.items() <= labels.items()]
        assert matches, f"Service {svc['metadata']['name']} selects no pods"
        ports = {p["name"] for w in matches for c in _pod_spec(w)["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"{svc['metadata']['name']}: no container port {p['targetPort']}"

    def selects(sm: dict[str, Any], svc: dict[str, Any]) -> bool:
        labels = svc["metadata"]["labels"]
        sel = sm["spec"]["selector"]
        if not sel.get("matchLabels", {}).items() <= labels.items():
            return False
        return all(labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", []))

    monitored = set()
    for sm in _of_kind(k8s, "ServiceMonitor"):
        chosen = [s for s in services if selects(sm, s)]
        assert chosen, f"ServiceMonitor {sm['metadata']['name']} selects no Service"
        for ep in sm["spec"]["endpoints"]:
            assert ep["path"] == "/metrics"
            for s in chosen:
                assert ep["port"] in {p["name"] for p in s["spec"]["ports"]}
        monitored |= {s["metadata"]["name"] for s in chosen}
    assert monitored == {"buddy-flower", "buddy-exporter", "buddy-coordinator"}


def test_operations_doc_covers_the_topics() -> None:
    raw = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    text = raw.lower()
    for topic in (
        "sizing",
        "visibility timeout",
        "persistence",
        "upgrade",
        "what to watch",
        "signing",
        "tls",
    ):
        assert topic in text, f"docs/operations.md says nothing about {topic}"
    for path in re.findall(r"`((?:ops|docs)/[\w./-]+)`", raw):
        assert (ROOT / path).exists(), f"docs/operations.md names {path}, which does not exist"
