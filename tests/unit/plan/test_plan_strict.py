"""Strict reading of plan, schedule and config files (buddy.plan, buddy.config).

What a JSON or YAML reader accepts silently but a campaign must not: nesting deeper than
:data:`buddy.plan.MAX_JSON_DEPTH`, numbers out of a field's range or not finite (``NaN``,
``Infinity``, ``1e400``), a key given twice in one object, and files that are not regular
files (a FIFO or a device would hang the read). Each is an error naming file and line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from buddy.config import load_campaign_config
from buddy.errors import ConfigError, PlanError, format_problem
from buddy.models import MAX_WAVE, Mode, PlanTask, ScheduleEntry, TaskSpec
from buddy.plan.build import build_plan
from buddy.plan.conflicts import resolve
from buddy.plan.jsonl import MAX_JSON_DEPTH, read_regular_file, screen
from buddy.plan.load import load_plan, load_schedule
from buddy.plan.model import CampaignPlan
from buddy.plan.policy import ConflictPolicy
from buddy.tools import ToolRegistry, tool
from tests.unit.plan.test_plan import AGENTS, Empty, _run, make_registry, t, write_lines

ROOT = Path(__file__).resolve().parents[3]


class AnyArgs(BaseModel):
    """``data``: any JSON value (like ``python.call`` kwargs or an HTTP ``json`` body)."""

    model_config = ConfigDict(extra="forbid")
    data: Any = None


@pytest.fixture
def reg() -> ToolRegistry:
    r = make_registry()
    tool("t.any", args=AnyArgs, result=Empty, registry=r)(_run)
    return r


def plan_file(tmp_path: Path, lines: list[Any]) -> Path:
    return write_lines(tmp_path / "plan.jsonl", lines)


def errors_of(tmp_path: Path, lines: list[Any], reg: ToolRegistry, **kw: Any) -> list[str]:
    path = plan_file(tmp_path, lines)
    with pytest.raises(PlanError) as info:
        build_plan(path, reg, AGENTS, workdir=tmp_path, **kw)
    return info.value.lines()


def builds(tmp_path: Path, lines: list[Any], reg: ToolRegistry) -> CampaignPlan:
    return build_plan(plan_file(tmp_path, lines), reg, AGENTS, workdir=tmp_path)


def nested(depth: int, leaf: str = "1") -> str:
    """A JSON value of ``depth`` levels: arrays and objects in turn."""
    text = leaf
    for k in range(depth):
        text = f"[{text}]" if k % 2 else f'{{"k":{text}}}'
    return text


def any_line(task_id: str, data: str) -> str:
    """A ``t.any`` task whose ``args.data`` is the JSON text ``data``."""
    return f'{{"task_id":"{task_id}","tool":"t.any","args":{{"data":{data}}}}}'


def spec_json(plan: CampaignPlan) -> list[str]:
    """What the coordinator sends for each task (coordinator._spec), as strict JSON."""
    out = []
    for pt in plan.tasks.values():
        spec = TaskSpec(
            task_id=pt.task_id,
            tool=pt.task.tool,
            args=pt.task.args,
            mode=Mode.MOCK,
            claims=pt.claims,
            planned_agent=pt.agent,
            planned_wave=pt.wave,
        )
        out.append(json.dumps(spec.model_dump(mode="json"), allow_nan=False))
    return out


# -- nesting ----------------------------------------------------------------------------------


def test_args_nested_up_to_the_limit_pass_and_serialize(tmp_path: Path, reg: ToolRegistry) -> None:
    # the line's object is level 1, args level 2, data's value levels 3..32
    line = any_line("a", nested(MAX_JSON_DEPTH - 2))
    plan = builds(tmp_path, [line], reg)
    assert len(spec_json(plan)) == 1
    resolve(plan, reg, ConflictPolicy())


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 1, 100, 250, 300, 1000, 5000])
def test_args_nested_deeper_than_the_limit_are_an_error(
    tmp_path: Path, reg: ToolRegistry, depth: int
) -> None:
    # 300 used to pass validation and crash the dispatch; 1000 crashed validate (conflicts)
    errs = errors_of(tmp_path, [t("a"), any_line("deep", nested(depth))], reg)
    assert errs == [f"{tmp_path / 'plan.jsonl'}:2: args nested deeper than {MAX_JSON_DEPTH} levels"]


def test_the_dependents_of_a_too_deep_line_are_not_blamed_too(tmp_path: Path, reg: ToolRegistry) -> None:
    errs = errors_of(tmp_path, [any_line("deep", nested(300)), t("b", depends_on=["deep"])], reg)
    assert errs == [f"{tmp_path / 'plan.jsonl'}:1: args nested deeper than {MAX_JSON_DEPTH} levels"]


def test_deep_nesting_is_named_by_its_field_or_refused_outside_an_object(
    tmp_path: Path, reg: ToolRegistry
) -> None:
    plan = tmp_path / "plan.jsonl"
    deep = "[" * 40 + "]" * 40
    errs = errors_of(tmp_path, [f'{{"task_id":"a","tool":"noop","depends_on":{deep}}}', deep], reg)
    assert errs == [
        f"{plan}:1: depends_on nested deeper than 32 levels",
        f"{plan}:2: JSON nested deeper than 32 levels",
    ]


def test_deep_nesting_in_a_broken_line_is_reported_as_such(tmp_path: Path, reg: ToolRegistry) -> None:
    # orjson cannot read it (unterminated), the nesting is still found, strings skipped
    line = '{"task_id":"a","tool":"t.any","args":{"data":["[[[\\"{{", ' + "[" * 2000
    errs = errors_of(tmp_path, [line], reg)
    assert errs == [f"{tmp_path / 'plan.jsonl'}:1: args nested deeper than 32 levels"]


def test_brackets_in_strings_and_many_shallow_brackets_are_fine(tmp_path: Path, reg: ToolRegistry) -> None:
    claims = [{"name": f"r{i}", "mode": "read"} for i in range(60)]
    lines = [
        any_line("a", json.dumps("[{" * 100)),
        t("b", resources=claims),
        any_line("c", "[" + ",".join(["[]"] * 50) + "]"),
    ]
    plan = builds(tmp_path, lines, reg)
    assert list(plan.tasks) == ["a", "b", "c"]
    assert len(plan.tasks["b"].claims) == 60


def test_a_deep_schedule_line_is_an_error(tmp_path: Path, reg: ToolRegistry) -> None:
    schedule = write_lines(tmp_path / "s.jsonl", ['{"task_id":"a","agent":' + nested(40, '"a1"') + "}"])
    entries, errors = load_schedule(schedule)
    assert entries == [] and errors == [(str(schedule), 1, "agent nested deeper than 32 levels")]


# -- numbers ----------------------------------------------------------------------------------


def test_wave_must_be_an_int_in_range(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = tmp_path / "plan.jsonl"
    errs = errors_of(
        tmp_path,
        [
            '{"task_id":"a","tool":"noop","wave":1000000000000000000000000000000}',
            '{"task_id":"b","tool":"noop","wave":1e30}',
            t("c", wave=MAX_WAVE + 1),
            t("d", wave=-3),
        ],
        reg,
    )
    assert errs == [
        f"{plan}:1: wave: Input should be less than or equal to 100000 (got 1000000000000000000000000000000)",
        f"{plan}:2: wave: Input should be a valid integer (got 1e+30)",
        f"{plan}:3: wave: Input should be less than or equal to 100000 (got 100001)",
        f"{plan}:4: wave: Input should be greater than or equal to 1 (got -3)",
    ]
    assert builds(tmp_path, [t("a", wave=MAX_WAVE)], reg).wave_numbers() == [MAX_WAVE]


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("confidence", "NaN"),
        ("predicted_success", "Infinity"),
        ("priority", "-Infinity"),
        ("wave", "NaN"),
        ("args", '{"data": NaN}'),
        ("args", '{"data": [1, -Infinity]}'),
    ],
)
def test_nan_and_infinity_are_not_json(tmp_path: Path, reg: ToolRegistry, field: str, literal: str) -> None:
    # pydantic's JSON reader takes them, and a NaN in args reached the workers
    tool_name = "t.any" if field == "args" else "noop"
    errs = errors_of(tmp_path, [f'{{"task_id":"a","tool":"{tool_name}","{field}":{literal}}}'], reg)
    assert len(errs) == 1
    assert errs[0].startswith(f"{tmp_path / 'plan.jsonl'}:1: not valid JSON: ")
    assert errs[0].endswith("; NaN and Infinity are not JSON numbers")


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" + "0" * 400])
def test_numbers_beyond_a_double_are_not_accepted(tmp_path: Path, reg: ToolRegistry, number: str) -> None:
    errs = errors_of(tmp_path, [any_line("a", number)], reg)
    assert len(errs) == 1 and errs[0].startswith(f"{tmp_path / 'plan.jsonl'}:1: not valid JSON: ")
    assert "must fit a 64-bit float" in errs[0]


def test_big_but_finite_numbers_in_args_pass(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = builds(tmp_path, [any_line("a", "[1e308, -1e-400, 18446744073709551616]")], reg)
    assert plan.tasks["a"].task.args["data"] == [1e308, -0.0, 18446744073709551616]
    spec_json(plan)


def test_fractions_must_be_finite() -> None:
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="finite number"):
            PlanTask.model_validate({"task_id": "a", "tool": "noop", "confidence": bad})


def test_schedule_numbers(tmp_path: Path) -> None:
    schedule = write_lines(
        tmp_path / "s.jsonl",
        [
            {"task_id": "a", "wave": MAX_WAVE + 1},
            '{"task_id":"b","wave":NaN}',
            {"task_id": "c", "wave": 2.5},
            {"task_id": "d", "wave": MAX_WAVE},
        ],
    )
    entries, problems = load_schedule(schedule)
    errors = [format_problem(p) for p in problems]
    assert [e.task_id for _, e in entries] == ["d"]
    assert errors[0] == f"{schedule}:1: wave: Input should be less than or equal to 100000 (got 100001)"
    assert errors[1].startswith(f"{schedule}:2: not valid JSON: ")
    assert errors[2].startswith(f"{schedule}:3: wave: Input should be a valid integer")
    with pytest.raises(ValidationError):
        ScheduleEntry(task_id="x", wave=MAX_WAVE + 1)


# -- duplicate keys ---------------------------------------------------------------------------


def test_a_duplicate_top_level_key_is_an_error(tmp_path: Path, reg: ToolRegistry) -> None:
    # last-wins used to turn this noop into a file.delete
    line = '{"task_id": "a", "tool": "noop", "args": {}, "tool": "t.write"}'
    errs = errors_of(tmp_path, [line, t("b", depends_on=["a"])], reg)
    assert errs == [f'{tmp_path / "plan.jsonl"}:1: duplicate key "tool"']


@pytest.mark.parametrize(
    ("line", "keys"),
    [
        ('{"task_id":"a","tool":"t.read","args":{"path":"x","path":"/etc/passwd"}}', ["path"]),
        ('{"task_id":"a","tool":"noop","resources":[{"name":"db","mode":"read","mode":"write"}]}', ["mode"]),
        (any_line("a", '{"x":{"y":[{"z":1,"z":1}]}}'), ["z"]),
        ('{"task_id":"a","tool":"noop","t\\u006fol":"t.write"}', ["tool"]),  # the same key, escaped
        (any_line("a", '{"a\\u003ab":1,"a:b":2}'), ["a:b"]),  # an escaped colon
        ('{"task_id":"a","task_id":"a","tool":"noop","tool":"noop"}', ["task_id", "tool"]),
        ('{ "task_id" : "a" , "tool" : "noop" , "tool" : "noop" }', ["tool"]),
    ],
)
def test_duplicate_keys_at_any_depth(tmp_path: Path, reg: ToolRegistry, line: str, keys: list[str]) -> None:
    errs = errors_of(tmp_path, [line], reg)
    assert errs == [f'{tmp_path / "plan.jsonl"}:1: duplicate key "{k}"' for k in keys]


def test_the_same_key_in_different_objects_or_inside_strings_is_fine(
    tmp_path: Path, reg: ToolRegistry
) -> None:
    lines = [
        '{"task_id":"a","tool":"t.any","args":{"data":{"name":1,"tool":{"name":2}}},"resources":[{"name":"n"}]}',
        any_line("b", json.dumps('"tool": "x", "tool": "y"')),
        any_line("c", '{"a\\u003ab":1,"a;b":2}'),
        any_line("d", '["tool","tool",{"tool":1},{"tool":2}]'),
    ]
    plan = builds(tmp_path, lines, reg)
    assert plan.tasks["c"].task.args == {"data": {"a:b": 1, "a;b": 2}}


def test_a_duplicate_key_in_a_schedule_line(tmp_path: Path, reg: ToolRegistry) -> None:
    schedule = write_lines(tmp_path / "s.jsonl", ['{"task_id":"a","agent":"a1","agent":"a2"}'])
    errs = errors_of(tmp_path, [t("a")], reg, schedule_path=schedule)
    assert errs == [f'{schedule}:1: duplicate key "agent"']


def test_the_fast_path_is_taken_by_usual_lines() -> None:
    # the byte-level screen must say "fine" for ordinary lines, or every line takes the slow path
    usual = [
        b'{"task_id":"p1","depends_on":["p0"],"resources":["file:/out/1.txt",{"name":"s:1","mode":"read"}],'
        b'"tool":"sleep","args":{"seconds":0.01}}',
        json.dumps(t("a", "t.any", args={"data": {"k": [1, 2.5, None, "x:y", "é"]}}, wave=3)).encode(),
        json.dumps(t("b", args={"a": "\\", "q": '"'})).encode(),
    ]
    assert all(screen(x) for x in usual)
    suspicious = [b'{"a":1,"a":2}', b'{"a":NaN}', b'{"a":1e400}', b"[" * 33 + b"]" * 33, b'{"a\\u003a":1}']
    assert not any(screen(x) for x in suspicious)


# -- campaign.yaml ----------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "campaign.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("text", "line", "key", "first"),
    [
        ("mode: mock\nstrategy: priority\nmode: live\n", 3, "mode", 1),
        ("agents:\n  - id: a1\n    concurrency: 2\n    concurrency: 64\n", 4, "concurrency", 3),
        ("defaults: {priority: 1, priority: 99}\n", 1, "priority", 1),
        ("conflicts:\n  write_write: priority\n  'write_write': reject\n", 3, "write_write", 2),
    ],
)
def test_a_duplicate_key_in_the_config_is_an_error(
    tmp_path: Path, text: str, line: int, key: str, first: int
) -> None:
    p = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_campaign_config(p)
    assert str(err.value) == f'{p}:{line}: duplicate key "{key}" (first on line {first})'


def test_merge_keys_may_still_override_in_the_config(tmp_path: Path) -> None:
    p = write_config(
        tmp_path,
        "agents:\n  - &base {id: a1, concurrency: 3}\n  - <<: *base\n    id: a2\n  - {<<: *base, id: a3}\n",
    )
    agents = load_campaign_config(p).agents or []
    assert [(a.id, a.concurrency) for a in agents] == [("a1", 3), ("a2", 3), ("a3", 3)]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN"])
def test_non_finite_numbers_in_the_config_are_errors(tmp_path: Path, value: str) -> None:
    p = write_config(tmp_path, f"mode: mock\napproval_timeout_s: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_campaign_config(p)
    assert str(err.value) == f"{p}:2: {value} is not a finite number"


def test_a_config_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "campaign.yaml"
    p.write_bytes(b"mode: mock\n# \xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text"):
        load_campaign_config(p)


# -- regular files only -----------------------------------------------------------------------


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a thread, failing the test if it has not returned after ``seconds``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    if th.is_alive():
        pytest.fail(f"still blocked after {seconds} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "plan.jsonl"
    os.mkfifo(path)
    yield path
    try:  # a reader a regression left blocked gets its EOF
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_plan_is_refused_at_once(fifo: Path, reg: ToolRegistry) -> None:
    tasks, lines, errors = within(10, lambda: load_plan(fifo, reg))
    assert (tasks, lines, errors) == ([], {}, [(str(fifo), 0, "not a regular file (a FIFO)")])


def test_a_fifo_schedule_and_config_are_refused_at_once(
    fifo: Path, tmp_path: Path, reg: ToolRegistry
) -> None:
    plan = write_lines(tmp_path / "p.jsonl", [t("a")])

    def build() -> list[str]:
        with pytest.raises(PlanError) as info:
            build_plan(plan, reg, AGENTS, schedule_path=fifo, workdir=tmp_path)
        return info.value.lines()

    assert within(10, build) == [f"{fifo}: not a regular file (a FIFO)"]

    def config() -> str:
        with pytest.raises(ConfigError) as err:
            load_campaign_config(fifo)
        return str(err.value)

    assert within(10, config) == f"{fifo}: not a regular file (a FIFO)"


def test_devices_and_directories_are_refused(tmp_path: Path, reg: ToolRegistry) -> None:
    zero = Path("/dev/zero")
    if not zero.exists():  # pragma: no cover - not Linux
        pytest.skip("no /dev/zero")
    assert within(10, lambda: load_plan(zero, reg))[2] == [
        ("/dev/zero", 0, "not a regular file (a character device)")
    ]
    # /dev/null used to read as an empty config: every default, silently
    with pytest.raises(ConfigError, match=r"^/dev/null: not a regular file \(a character device\)$"):
        load_campaign_config(Path("/dev/null"))
    assert load_plan(tmp_path, reg)[2] == [(str(tmp_path), 0, "not a regular file (a directory)")]


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path, reg: ToolRegistry) -> None:
    target = write_lines(tmp_path / "real.jsonl", [t("a")])
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert read_regular_file(link) == target.read_bytes()
    assert list(build_plan(link, reg, AGENTS).tasks) == ["a"]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_cli_exits_2_on_a_fifo_without_dispatching(fifo: Path, tmp_path: Path, command: str) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}  # no fleet Redis
    args = [sys.executable, "-m", "buddy", command, str(fifo)]
    if command == "run":
        args += ["--out", str(out), "--no-progress"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"{fifo}: not a regular file (a FIFO)" in " ".join(proc.stderr.split())  # rich wraps lines
    assert "Traceback" not in proc.stderr
    assert not out.exists()
