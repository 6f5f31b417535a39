"""Settings (environment, read once) and the campaign config file (``campaign.yaml``).

:class:`Settings` reads ``BUDDY_*`` environment variables through pydantic-settings; call
:func:`get_settings` instead of reading ``os.environ`` anywhere else (STYLE.md).
:class:`CampaignConfig` is the ``--config`` file: agents, strategy, mode and defaults;
CLI flags override it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from buddy.analysis.monitor import MonitorConfig
from buddy.coordinator.options import NotifyConfig
from buddy.errors import ConfigError, SpecialFileError
from buddy.models import AgentSpec, Mode, Strategy
from buddy.plan.jsonl import read_regular_file
from buddy.plan.policy import ConflictPolicy
from buddy.safety.gates import EscalationPolicy

CommaList = Annotated[list[str], NoDecode]


def _split_commas(v: Any) -> Any:
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    return v


class Settings(BaseSettings):
    """Process settings from ``BUDDY_*`` environment variables.

    - ``BUDDY_REDIS_URL``: Redis for broker, result backend and state (``redis://``,
      ``rediss://``, ``unix://``). Unset: ``buddy run`` starts an embedded private Redis.
    - ``BUDDY_SHELL_ALLOW``: comma list of programs the ``shell`` tool may run (``argv[0]``);
      empty means none.
    - ``BUDDY_PYTHON_ALLOW``: comma list of module prefixes ``python.call`` may import.
    - ``BUDDY_TOOLS``: comma list of modules to import for their ``@buddy.tool`` contracts.
    - ``BUDDY_VISIBILITY_TIMEOUT_S``: seconds before Redis redelivers an unacked message
      (Celery ``broker_transport_options.visibility_timeout``), default 7200: more than the
      longest built-in tool call with its retries (``sleep`` up to 3610 s); ``buddy doctor``
      checks it against every registered tool.
    - ``BUDDY_HEARTBEAT_INTERVAL_S`` (2) / ``BUDDY_HEARTBEAT_STALE_S`` (10): worker heartbeats.
    - ``BUDDY_EVENTS_MAXLEN``: approximate cap of a campaign's event stream (XADD MAXLEN ~).
    - ``BUDDY_LEASE_TTL_S`` (30): a resource lease's lifetime between renewals (renewed every
      third of it while the tool runs); ``BUDDY_LEASE_WAIT_S`` (10): how long a task waits for
      its leases before it ends ``conflict`` (retried).
    - ``BUDDY_LOG_FORMAT``: ``text`` or ``json``; ``BUDDY_LOG_LEVEL``.
    - ``BUDDY_FILE_ROOT``: a directory the file tools are confined to (paths that resolve
      outside it, through ``..``, an absolute path or a symlink, are refused); unset: no
      confinement (file tools still act on regular files only).
    - ``BUDDY_BROKER_URL``: the Celery broker when it is not the state Redis (``amqp://…``
      for RabbitMQ); unset: the broker is ``BUDDY_REDIS_URL``.
    - ``BUDDY_DEADLETTER_MAXLEN`` (10000): cap of ``buddy:deadletter``, the list of messages
      workers refused (malformed, forged, for no running campaign).
    - ``BUDDY_CONNECT_TIMEOUT_S`` (3): seconds a command waits for its first Redis
      connection before it reports the URL (redacted) and the fix.
    - ``BUDDY_INJECT_FAILURE_RATE`` (0): a testing aid (``buddy worker --inject-failure-rate``):
      this fraction (0–1) of the worker's task attempts fail with a retryable
      ``InjectedFailure`` before the tool runs. Never set it on a production fleet.
    """

    model_config = SettingsConfigDict(env_prefix="BUDDY_", extra="ignore")

    redis_url: str | None = None
    shell_allow: CommaList = Field(default_factory=list)
    python_allow: CommaList = Field(default_factory=list)
    tools: CommaList = Field(default_factory=list)
    visibility_timeout_s: int = Field(default=7200, ge=10)
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_stale_s: float = Field(default=10.0, gt=0)
    events_maxlen: int = Field(default=10_000, ge=100)
    lease_ttl_s: float = Field(default=30.0, gt=0)
    inject_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    lease_wait_s: float = Field(default=10.0, ge=0)
    result_expires_s: int = Field(default=86_400, ge=60)
    signing_key: str | None = None
    signing_cert: str | None = None
    signing_cert_store: str | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    file_root: str | None = None
    broker_url: str | None = None
    deadletter_maxlen: int = Field(default=10_000, ge=10)
    connect_timeout_s: float = Field(default=3.0, gt=0, le=60)

    _split = field_validator("shell_allow", "python_allow", "tools", mode="before")(_split_commas)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process settings, read from the environment on first call.

    Raises :class:`ConfigError` for a malformed variable.
    """
    try:
        return Settings()
    except ValidationError as e:
        lines = [
            f"BUDDY_{str(err['loc'][0]).upper() if err['loc'] else '?'}: {err['msg']}"
            f" (got {err.get('input')!r})"
            for err in e.errors()
        ]
        raise ConfigError("bad environment: " + "; ".join(lines)) from None


class TaskDefaults(BaseModel):
    """Defaults for plan fields a line leaves out (the ``defaults:`` section)."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(default=50, ge=0, le=100)
    predicted_success: float = Field(default=0.5, ge=0, le=1)
    confidence: float = Field(default=0.5, ge=0, le=1)


class CampaignConfig(BaseModel):
    """The ``--config campaign.yaml`` file. Every key is optional; CLI flags override it.

    ``shell_allow`` / ``python_allow`` / ``tools`` apply to the local workers that ``buddy run``
    starts itself; workers of a fleet keep their own ``BUDDY_*`` allow-lists. ``escalation``
    holds the confidence threshold per risk level (``low``, ``medium``, ``high``, ``critical``,
    0–1), ``allow_critical`` and ``auto_approve`` (:class:`buddy.safety.gates.EscalationPolicy`).
    ``conflicts`` maps a conflict type to its resolution (:mod:`buddy.plan.conflicts`), e.g.
    ``{write_write: priority}``. ``monitor`` holds the anomaly thresholds, health weights and
    bands (:class:`buddy.analysis.monitor.MonitorConfig`); ``auto_lock: false`` keeps the
    monitor's ``unsafe_escalation`` from locking the system; ``lock_timeout_s`` ends a live
    campaign the lock paused longer (seconds; default: wait for ``buddy unlock``); ``notify``
    a webhook (``url``, ``events``, ``headers``…: :class:`~buddy.coordinator.options.NotifyConfig`)
    that receives approval requests, pauses and the campaign's end.
    """

    model_config = ConfigDict(extra="forbid")

    agents: list[AgentSpec] | None = None
    strategy: Strategy | None = None
    mode: Mode | None = None
    workdir: str | None = None
    local_workers: int | None = Field(default=None, ge=0, le=64)
    batch_size: int | None = Field(default=None, ge=1, le=1000)
    shell_allow: list[str] = Field(default_factory=list)
    python_allow: list[str] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list)
    defaults: TaskDefaults = Field(default_factory=TaskDefaults)
    escalation: EscalationPolicy = Field(default_factory=EscalationPolicy)
    approval_timeout_s: float | None = Field(default=None, gt=0)
    max_fail_percentage: float | None = Field(default=None, ge=0, le=100)
    max_failures: int | None = Field(default=None, ge=0)
    conflicts: ConflictPolicy = Field(default_factory=ConflictPolicy)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    auto_lock: bool = True
    lock_timeout_s: float | None = Field(default=None, gt=0)
    notify: NotifyConfig | None = None

    @field_validator("conflicts", mode="before")
    @classmethod
    def _conflicts(cls, v: Any) -> Any:
        return {"resolutions": v} if isinstance(v, dict) and "resolutions" not in v else v


def load_campaign_config(path: Path) -> CampaignConfig:
    """Read and validate a campaign YAML file.

    Raises :class:`ConfigError` with ``FILE: field: message`` lines for a missing file,
    bad YAML (with its line) or fields that fail validation; and, with the YAML line, for
    what PyYAML would accept silently: a key given twice in one mapping (PyYAML keeps the
    last one): ``FILE:LINE: duplicate key "mode" (first on line 2)``, and ``.nan`` /
    ``.inf``, since every number of the config is a bound or a threshold:
    ``FILE:LINE: .inf is not a finite number``. A merge key (``<<: *base``) may still
    override what it merges. The file must be a regular file
    (``FILE: not a regular file (a FIFO)``): a FIFO or a device would hang the read.
    """
    import math

    try:
        raw = read_regular_file(path)
    except SpecialFileError as e:
        raise ConfigError(f"{path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start + 1} is not)") from None

    class StrictLoader(yaml.SafeLoader):
        """PyYAML's safe loader that refuses a repeated key and a non-finite float."""

        def construct_document(self, node: yaml.Node) -> Any:
            # before anything is built: the merge keys (<<) are still where they were written
            todo, done = [node], set()
            while todo:
                item = todo.pop()
                if id(item) in done:  # an alias
                    continue
                done.add(id(item))
                if isinstance(item, yaml.SequenceNode):
                    todo.extend(item.value)
                if not isinstance(item, yaml.MappingNode):
                    continue
                first: dict[Any, int] = {}
                for key_node, value_node in item.value:
                    todo += (key_node, value_node)
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue
                    key = self.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    if key in first:
                        shown = f'"{key}"' if isinstance(key, str) else repr(key)
                        raise ConfigError(
                            f"{path}:{line}: duplicate key {shown} (first on line {first[key]})"
                        )
                    first[key] = line
            return super().construct_document(node)

        def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
            value = super().construct_yaml_float(node)
            if not math.isfinite(value):
                raise ConfigError(f"{path}:{node.start_mark.line + 1}: {node.value} is not a finite number")
            return value

    StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)
    try:
        data = yaml.load(text, Loader=StrictLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(root)"
            lines.append(f"{path}: {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def parse_agents(value: str | None, default: int = 3) -> list[AgentSpec]:
    """``--agents``: ``a1,a2,a3`` or a count ``3`` (→ a1..a3); None gives ``default`` agents.

    Raises :class:`ConfigError` for an empty list, a non-positive count or a bad id.
    """
    if value is None or value.strip() == "":
        return [AgentSpec(id=f"a{i}") for i in range(1, default + 1)]
    value = value.strip()
    if re.fullmatch(r"[+-]?[0-9]+", value):
        n = int(value)
        if not 1 <= n <= 256:
            raise ConfigError(f"--agents {value}: a count must be 1..256")
        return [AgentSpec(id=f"a{i}") for i in range(1, n + 1)]
    ids = [x.strip() for x in value.split(",") if x.strip()]
    if not ids:
        raise ConfigError(f"--agents {value}: no agent id given")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--agents {value}: an agent id is repeated")
    try:
        return [AgentSpec(id=i) for i in ids]
    except ValidationError as e:
        raise ConfigError(f"--agents {value}: {e.errors()[0]['msg']}") from None
