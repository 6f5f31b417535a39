"""The deployment files name things that exist: compose.yaml, ops/, the Makefile, .dockerignore.

Docker is not needed: compose.yaml is parsed with PyYAML, each service's command line is
checked against the real ``buddy`` CLI (typer) and Celery app, and every file it refers to
must be in the repository.
"""

from __future__ import annotations

import importlib
import itertools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from buddy.cli import app

ROOT = Path(__file__).resolve().parents[2]
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
    assert {"worker", "run"} <= set(seen)


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


def test_flower_command_is_celery_of_the_workers_app(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["flower"])
    assert argv[:4] == ["celery", "-A", "workers", "flower"]
    workers = importlib.import_module("workers")
    assert hasattr(workers, "app"), "`celery -A workers` needs workers.app"
    from flower.options import options

    known = {name.replace("_", "-") for name in options._options}
    for flag in _used_flags(argv[4:]):
        assert flag.lstrip("-") in known, f"flower has no option {flag}"
    assert any(a.startswith("--basic-auth=") for a in argv)
    assert "5555:5555" in [str(p) for p in services["flower"]["ports"]]


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


def test_prometheus_is_optional_and_scrapes_flower(services: dict[str, dict[str, Any]]) -> None:
    prom = services["prometheus"]
    assert prom["profiles"] == ["metrics"]
    assert str(prom["image"]).startswith("prom/prometheus")
    cfg = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = [t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "flower:5555" in targets
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in cfg["scrape_configs"])


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
    for name in ("venv", "install", "demo", "test", "lint", "fmt", "clean", ".PHONY"):
        assert name in targets, f"Makefile: no {name} target"
    assert any("examples/demo.py" in line for line in targets["demo"])
    recipe = targets["test"]
    assert [r.split()[0].rsplit("/", 1)[-1] for r in recipe[-3:]] == ["ruff", "mypy", "pytest"]
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^PYTHON \?= python3$", text, re.M)
    assert re.search(r"^\.PHONY:.*\bdemo\b.*\btest\b", text, re.M)
