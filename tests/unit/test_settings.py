"""Settings from BUDDY_* variables, the campaign config file, and ``--agents``."""

from __future__ import annotations

from pathlib import Path

import pytest

from buddy.config import CampaignConfig, Settings, get_settings, load_campaign_config, parse_agents
from buddy.errors import ConfigError
from buddy.models import Mode, Strategy

# -- Settings ----------------------------------------------------------------------------------


def test_defaults_without_environment() -> None:
    s = get_settings()
    assert s.redis_url is None
    assert (s.shell_allow, s.python_allow, s.tools) == ([], [], [])
    assert s.visibility_timeout_s == 7200
    assert (s.heartbeat_interval_s, s.heartbeat_stale_s) == (2.0, 10.0)
    assert s.events_maxlen == 10_000
    assert s.log_format == "text"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDDY_REDIS_URL", "unix:///tmp/r.sock")
    monkeypatch.setenv("BUDDY_SHELL_ALLOW", " ls , cat,,  echo ")
    monkeypatch.setenv("BUDDY_PYTHON_ALLOW", "json")
    monkeypatch.setenv("BUDDY_TOOLS", "")
    monkeypatch.setenv("BUDDY_VISIBILITY_TIMEOUT_S", "120")
    monkeypatch.setenv("BUDDY_HEARTBEAT_STALE_S", "2.5")
    monkeypatch.setenv("BUDDY_EVENTS_MAXLEN", "500")
    monkeypatch.setenv("BUDDY_LOG_FORMAT", "json")
    s = get_settings()
    assert s.redis_url == "unix:///tmp/r.sock"
    assert s.shell_allow == ["ls", "cat", "echo"]
    assert s.python_allow == ["json"]
    assert s.tools == []
    assert s.visibility_timeout_s == 120
    assert s.heartbeat_stale_s == 2.5
    assert s.events_maxlen == 500
    assert s.log_format == "json"


@pytest.mark.parametrize("value", ["", " ", " , ,", ","])
def test_empty_comma_lists(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BUDDY_SHELL_ALLOW", value)
    assert get_settings().shell_allow == []


def test_settings_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_settings()
    monkeypatch.setenv("BUDDY_SHELL_ALLOW", "ls")
    assert get_settings() is first
    assert first.shell_allow == []
    get_settings.cache_clear()
    assert get_settings().shell_allow == ["ls"]


def test_comma_lists_given_as_python_lists() -> None:
    assert Settings(shell_allow=["a", "b"]).shell_allow == ["a", "b"]


@pytest.mark.parametrize(
    ("var", "value", "field"),
    [
        ("BUDDY_VISIBILITY_TIMEOUT_S", "abc", "visibility_timeout_s"),
        ("BUDDY_VISIBILITY_TIMEOUT_S", "5", "visibility_timeout_s"),
        ("BUDDY_HEARTBEAT_STALE_S", "0", "heartbeat_stale_s"),
        ("BUDDY_HEARTBEAT_INTERVAL_S", "-1", "heartbeat_interval_s"),
        ("BUDDY_EVENTS_MAXLEN", "10", "events_maxlen"),
        ("BUDDY_LOG_FORMAT", "xml", "log_format"),
    ],
)
def test_bad_environment_raises_config_error(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert f"{var}:" in str(err.value)  # the variable the operator sets, not the field name


def test_unrelated_environment_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDDY_NOT_A_SETTING", "whatever")
    assert get_settings().redis_url is None


# -- campaign config ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "campaign.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_load_a_full_config(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "agents:\n"
        "  - id: a1\n"
        "  - id: web-2\n"
        "    tools: [http.request]\n"
        "    concurrency: 8\n"
        "strategy: load_balanced\n"
        "mode: dry_run\n"
        "batch_size: 4\n"
        "shell_allow: [ls]\n"
        "defaults:\n"
        "  priority: 70\n"
        "  confidence: 0.9\n",
    )
    cfg = load_campaign_config(p)
    assert cfg.agents is not None
    assert [a.id for a in cfg.agents] == ["a1", "web-2"]
    assert cfg.agents[1].tools == ["http.request"]
    assert cfg.agents[1].concurrency == 8
    assert cfg.strategy is Strategy.LOAD_BALANCED
    assert cfg.mode is Mode.DRY_RUN
    assert cfg.batch_size == 4
    assert cfg.shell_allow == ["ls"]
    assert (cfg.defaults.priority, cfg.defaults.confidence, cfg.defaults.predicted_success) == (70, 0.9, 0.5)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_config_is_all_defaults(tmp_path: Path, text: str) -> None:
    assert load_campaign_config(write(tmp_path, text)) == CampaignConfig()


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_campaign_config(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}:")
    assert "cannot read" in msg


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_campaign_config(tmp_path)
    assert str(err.value).startswith(f"{tmp_path}:")


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "mode: mock\nstrategy: round_robin\nbatch_size: @2\n")
    with pytest.raises(ConfigError) as err:
        load_campaign_config(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}:3: ")
    assert "YAML" in msg


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_campaign_config(write(tmp_path, "- a1\n- a2\n"))
    assert "mapping" in str(err.value)


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    p = write(tmp_path, "mode: mock\nstrategyy: round_robin\n")
    with pytest.raises(ConfigError) as err:
        load_campaign_config(p)
    assert str(err.value).startswith(f"{p}: strategyy: ")


def test_unknown_nested_key(tmp_path: Path) -> None:
    p = write(tmp_path, "defaults:\n  priorty: 3\n")
    with pytest.raises(ConfigError) as err:
        load_campaign_config(p)
    assert f"{p}: defaults.priorty: " in str(err.value)


def test_bad_agent_id_names_file_and_field(tmp_path: Path) -> None:
    p = write(tmp_path, "agents:\n  - id: a1\n  - id: 'bad id!'\n")
    with pytest.raises(ConfigError) as err:
        load_campaign_config(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: agents.1.id: ")
    assert "agent id" in msg


def test_every_bad_field_is_reported(tmp_path: Path) -> None:
    p = write(tmp_path, "strategy: fastest\nmode: yolo\nbatch_size: 0\n")
    with pytest.raises(ConfigError) as err:
        load_campaign_config(p)
    lines = str(err.value).splitlines()
    assert [ln.split(": ")[1] for ln in lines] == ["strategy", "mode", "batch_size"]
    assert all(ln.startswith(f"{p}: ") for ln in lines)


# -- --agents ----------------------------------------------------------------------------------


def ids(value: str | None, default: int = 3) -> list[str]:
    return [a.id for a in parse_agents(value, default)]


def test_parse_agents_count() -> None:
    assert ids("3") == ["a1", "a2", "a3"]
    assert ids(" 1 ") == ["a1"]
    assert len(ids("256")) == 256


def test_parse_agents_list() -> None:
    assert ids("a1,a2") == ["a1", "a2"]
    assert ids(" web , db.1 ,, batch_2 ") == ["web", "db.1", "batch_2"]


def test_parse_agents_default() -> None:
    assert ids(None) == ["a1", "a2", "a3"]
    assert ids("", default=2) == ["a1", "a2"]
    assert ids("   ", default=1) == ["a1"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "1..256"),
        ("257", "1..256"),
        ("-1", "1..256"),
        ("a1,a2,a1", "repeated"),
        ("a1, a1", "repeated"),
        ("bad id", "agent id"),
        ("a1,b@d", "agent id"),
        (",,", "no agent id"),
    ],
)
def test_parse_agents_errors(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_agents(value)
    msg = str(err.value)
    assert msg.startswith("--agents ")
    assert says in msg
