"""Property: nothing that passes plan validation can crash dispatch or reporting.

Random plan and schedule files (random JSON in every field, deep nesting, numbers at and
beyond every bound, ``NaN`` / ``Infinity``, unicode ids, random dependencies, repeated keys,
broken lines) go through :func:`load_plan`, :func:`build_plan` and
:func:`buddy.conflicts.resolve`. Each either returns or reports its problems as
``FILE:LINE: message`` (:class:`PlanError`), never raises anything else; and a plan that
passes becomes the coordinator's :class:`TaskSpec` messages as strict JSON, with int waves.

``BUDDY_FUZZ_EXAMPLES`` sets the number of examples (default 200; a chaos run uses 500 or
more). The built-in tools are used, with a temporary directory as workdir.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from buddy.errors import PlanError, format_problem
from buddy.models import MAX_WAVE, AgentSpec, Mode, Strategy, TaskSpec
from buddy.plan.build import build_plan
from buddy.plan.conflicts import resolve
from buddy.plan.jsonl import MAX_JSON_DEPTH
from buddy.plan.load import load_plan, load_schedule
from buddy.plan.model import summary_table
from buddy.plan.policy import ConflictPolicy
from buddy.tools.registry import default_registry

EXAMPLES = int(os.environ.get("BUDDY_FUZZ_EXAMPLES", "200"))
REGISTRY = default_registry()
AGENTS = [AgentSpec(id="a1"), AgentSpec(id="a2", tools=["noop", "sleep"]), AgentSpec(id="a3")]
IDS = ["a", "b", "c", "d", "é1", "x.y:z", "a b", ""]
FIELDS = [
    "task_id", "tool", "args", "agent", "wave", "depends_on", "resources", "priority",
    "predicted_success", "confidence", "trigger_rule",
]  # fmt: skip

# -- JSON text, written by hand so that it can hold what json.dumps never writes ----------------


def number(x: float) -> str:
    """A float as a JSON-ish literal: ``NaN`` and ``Infinity`` as JavaScript writes them."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return repr(x)


def string(s: str, ascii_only: bool) -> str:
    return json.dumps(s, ensure_ascii=ascii_only)


odd_numbers = st.sampled_from(
    [
        "1e400", "-1e400", "1e308", "2e308", "1" + "0" * 400, "-0", "0.0", "1E2", "1e-400",
        "9223372036854775808", "-9223372036854775809", "100000", "100001", "1e30", "1.0", "NaN",
        "-Infinity", "Infinity", "0", "50", "101", "-1", "0.5", "1.5",
    ]
)  # fmt: skip
odd_strings = st.sampled_from(
    ['"\\ud800"', '"\\u0000"', '"a\\u003ab"', '"\\"tool\\": 1"', '"[[[[{{{{"', '"\\\\"', '"é"', '"🙂"']
)
texts = st.builds(string, st.text(max_size=12), st.booleans())
scalars = st.one_of(
    st.none().map(lambda _: "null"),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(number),
    odd_numbers,
    texts,
    odd_strings,
)
keys = st.one_of(
    st.sampled_from([*FIELDS, "name", "mode", "path", "seconds", "k", "k", "data"]).map(json.dumps),
    texts,
    st.sampled_from(['"t\\u006fol"', '"task\\u005fid"', '"k\\u003a"', '""']),
)


def array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def obj(pairs: list[tuple[str, str]], spaced: bool = False) -> str:
    colon, comma = (" : ", " , ") if spaced else (":", ",")
    return "{" + comma.join(f"{k}{colon}{v}" for k, v in pairs) + "}"


def deep(n: int, leaf: str, kind: str) -> str:
    for k in range(n):
        use_array = kind == "[" or (kind == "mix" and k % 2)
        leaf = f"[{leaf}]" if use_array else f'{{"k":{leaf}}}'
    return leaf


values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(array),
        st.lists(st.tuples(keys, inner), max_size=4).map(obj),
    ),
    max_leaves=12,
)
deep_values = st.builds(
    deep,
    st.integers(min_value=MAX_JSON_DEPTH - 4, max_value=1200),
    scalars,
    st.sampled_from(["[", "{", "mix"]),
)
any_value = st.one_of(values, values, values, deep_values)  # deep now and then

# -- fields: good ones, and anything -----------------------------------------------------------

finite_scalars = st.one_of(
    st.none().map(lambda _: "null"),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(number),
    st.sampled_from(["1e308", "-0", "1E2", "1e-400", "9223372036854775808"]),
    texts,
    st.sampled_from(['"a\\u003ab"', '"\\"tool\\": 1"', '"[[[[{{{{"', '"\\\\"', '"é"', '"🙂"', '"\\u0000"']),
)
finite_values = st.recursive(
    finite_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(array),
        st.lists(st.tuples(texts, inner), max_size=3).map(lambda ps: obj(list(dict(ps).items()))),
    ),
    max_leaves=8,
)
good_args = st.one_of(
    st.just(("noop", "{}")),
    st.builds(lambda s: ("sleep", obj([('"seconds"', s)])), st.sampled_from(["0", "0.01", "1e-3"])),
    st.builds(
        lambda v: ("python.call", obj([('"target"', '"math:sqrt"'), ('"kwargs"', obj([('"x"', v)]))])),
        st.one_of(
            finite_values, st.builds(deep, st.integers(1, MAX_JSON_DEPTH - 4), finite_scalars, st.just("mix"))
        ),
    ),
    st.builds(
        lambda v: ("http.request", obj([('"url"', '"http://example.invalid/"'), ('"json"', v)])),
        finite_values,
    ),
    st.builds(
        lambda p, c: ("file.write", obj([('"path"', p), ('"content"', c)])),
        st.sampled_from(['"out/a.txt"', '"out/b.txt"', '"é.txt"']),
        texts,
    ),
)
wild: dict[str, st.SearchStrategy[str]] = {
    "task_id": st.one_of(st.sampled_from(IDS).map(json.dumps), any_value),
    "tool": st.one_of(st.sampled_from([*REGISTRY.names(), "nope", ""]).map(json.dumps), any_value),
    "args": st.one_of(st.lists(st.tuples(keys, values), max_size=3).map(obj), any_value),
    "agent": st.one_of(st.sampled_from(["zz", "", "a2"]).map(json.dumps), any_value),
    "wave": st.one_of(st.integers(min_value=-2, max_value=6).map(str), odd_numbers, any_value),
    "depends_on": st.one_of(st.lists(st.sampled_from(IDS).map(json.dumps), max_size=3).map(array), any_value),
    "resources": st.one_of(
        st.lists(
            st.builds(
                lambda n, m: obj([('"name"', n), ('"mode"', m)]), texts, st.sampled_from(['"rw"', '"read"'])
            ),
            max_size=3,
        ).map(array),
        any_value,
    ),
    "priority": st.one_of(st.integers(min_value=-5, max_value=120).map(str), odd_numbers, any_value),
    "predicted_success": st.one_of(st.floats().map(number), odd_numbers, any_value),
    "confidence": st.one_of(st.floats().map(number), odd_numbers, any_value),
    "trigger_rule": st.one_of(st.just('"any"'), any_value),
}


edge_args = st.one_of(  # (tool, args): odd values where a tool takes any JSON
    st.builds(
        lambda v: ("python.call", obj([('"target"', '"math:sqrt"'), ('"kwargs"', obj([('"x"', v)]))])),
        st.one_of(values, deep_values),
    ),
    st.builds(
        lambda v: ("http.request", obj([('"url"', '"http://example.invalid/"'), ('"json"', v)])),
        st.one_of(values, deep_values),
    ),
    st.just(("python.call", '{"target":"math:sqrt","kwargs":{},"target":"os:system"}')),
)
EDGES = [*FIELDS, "args", "args", "args", "wave", "duplicate", "duplicate", "duplicate", "unknown"]


@st.composite
def task_line(
    draw: st.DrawFn, index: int, earlier: list[str], wildness: float, edge: str | None = None
) -> tuple[str, str]:
    """A task line and its id: each field good, or anything with probability ``wildness``;
    sometimes a key twice (maybe spelled with an escape) or an unknown field. ``edge``: that
    one field (or ``duplicate``, ``unknown``) is anything, the rest good."""
    tid = draw(st.sampled_from(["t", "T_", "x.y:", "a-"])) + str(index)
    tool, args = draw(edge_args if edge == "args" else good_args)
    good: dict[str, str] = {
        "task_id": json.dumps(tid, ensure_ascii=False),
        "tool": json.dumps(tool),
        "args": args,
        "agent": json.dumps(
            draw(st.sampled_from(["a1", "a2", "a3"] if tool in ("noop", "sleep") else ["a1", "a3"]))
        ),
        # after any earlier task's wave, so that a dependency is never in the way
        "wave": str(draw(st.sampled_from([1000 * (index + 1), MAX_WAVE - 6 + index]))),
        "depends_on": array(
            [json.dumps(d, ensure_ascii=False) for d in draw(st.lists(st.sampled_from(earlier)))]
        )
        if earlier
        else "[]",
        "resources": array(
            draw(st.lists(st.sampled_from(['"db"', '{"name":"db","mode":"read"}', '"file:x"']), max_size=2))
        ),
        "priority": str(draw(st.integers(min_value=0, max_value=100))),
        "predicted_success": number(draw(st.floats(min_value=0, max_value=1))),
        "confidence": number(draw(st.floats(min_value=0, max_value=1))),
        "trigger_rule": draw(st.sampled_from(['"all_success"', '"all_done"'])),
    }
    optional = draw(st.lists(st.sampled_from(FIELDS[3:]), unique=True, max_size=4))
    chosen = ["task_id", "tool", "args", *optional]
    if edge in FIELDS and edge not in chosen:
        chosen.append(edge)

    def chance(p: float) -> bool:
        return p > 0 and draw(st.floats(min_value=0, max_value=1)) < p

    pairs = []
    for f in chosen:
        odd = (f == edge and f != "args") or chance(wildness)  # odd args come from edge_args
        pairs.append((json.dumps(f), draw(wild[f]) if odd else good[f]))
    if edge == "duplicate" or chance(wildness / 3):  # a key again, maybe spelled with an escape
        k, v = draw(st.sampled_from(pairs))
        if edge != "duplicate":
            again = draw(wild["tool"])
        elif k == '"tool"':  # another tool: the last one would run
            again = json.dumps(draw(st.sampled_from(REGISTRY.names())))
        else:  # a good value: only the repeated key is wrong
            again = v
        pairs.append((draw(st.sampled_from([k, k.replace("o", "\\u006f", 1)])), again))
    if edge == "unknown" or chance(wildness / 3):
        pairs.append((draw(keys), draw(values)))
    return obj(draw(st.permutations(pairs)), spaced=draw(st.booleans())), tid


@st.composite
def plans(draw: st.DrawFn) -> list[str]:
    """The lines of a plan: clean, with one odd field, slightly off or wild, with now and then
    a line that is no task at all (garbage, a comment, a blank, JSON of another shape)."""
    wildness = draw(st.sampled_from([0.0, 0.0, 0.0, 0.0, 0.03, 0.2, 1.0]))
    count = draw(st.integers(min_value=1, max_value=6))
    odd_one = draw(st.integers(min_value=-1, max_value=count - 1)) if not wildness else None  # -1: none
    lines: list[str] = []
    ids: list[str] = []
    for i in range(count):
        if wildness and draw(st.floats(min_value=0, max_value=1)) < wildness / 4:
            lines.append(draw(st.one_of(st.text(max_size=30), any_value)))
            continue
        edge = draw(st.sampled_from(EDGES)) if i == odd_one else None
        line, tid = draw(task_line(i, ids, wildness, edge))
        lines.append(line)
        ids.append(tid)
    return lines


@st.composite
def schedule_lines(draw: st.DrawFn) -> str:
    pairs = [('"task_id"', draw(st.sampled_from(["t0", "t1", "é0", "zz"]).map(json.dumps)))]
    if draw(st.booleans()):
        pairs.append(
            ('"agent"', draw(st.one_of(st.sampled_from(["a1", "a3"]).map(json.dumps), wild["agent"])))
        )
    if draw(st.booleans()):
        pairs.append(('"wave"', draw(st.one_of(st.integers(1, 9).map(str), wild["wave"]))))
    if draw(st.integers(0, 5)) == 0:
        pairs.append(draw(st.sampled_from(pairs)))
    return obj(draw(st.permutations(pairs)))


# -- the property -------------------------------------------------------------------------------


def well_formed(errors: list[str], *files: Path) -> None:
    """Every error is one line, ``FILE: message`` or ``FILE:LINE: message`` (or the cap's tail)."""
    names = "|".join(re.escape(str(f)) for f in files)
    pattern = re.compile(rf"^(?:{names})(?::[0-9]+)?: \S")
    assert errors
    for e in errors:
        assert "\n" not in e, e
        assert pattern.match(e) or re.fullmatch(r"… and [0-9]+ more errors?", e), e


def strict_json(line: str) -> Any:
    """A line read by the rules a valid plan line must meet: no key twice in an object, no
    ``NaN`` / ``Infinity``; AssertionError otherwise."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        assert len({k for k, _ in items}) == len(items), f"a repeated key passed: {line!a}"
        return dict(items)

    def constant(name: str) -> Any:
        raise AssertionError(f"{name} passed: {line!a}")

    return json.loads(line, object_pairs_hook=pairs, parse_constant=constant)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    lines=plans(),
    schedule=st.one_of(st.none(), st.lists(schedule_lines(), max_size=3)),
    strategy=st.sampled_from(list(Strategy)),
)
def test_validation_never_crashes_and_what_passes_can_be_sent(
    tmp_path: Path, lines: list[str], schedule: list[str] | None, strategy: Strategy
) -> None:
    plan_path = tmp_path / "plan.jsonl"
    plan_path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    sched_path = None
    if schedule is not None:
        sched_path = tmp_path / "schedule.jsonl"
        sched_path.write_text("\n".join(schedule) + "\n", encoding="utf-8")

    tasks, line_of, errors = load_plan(plan_path, REGISTRY)
    assert len(tasks) == len(line_of)
    if errors:
        well_formed([format_problem(e) for e in errors], plan_path)
    if sched_path is not None:
        _, sched_errors = load_schedule(sched_path)
        if sched_errors:
            well_formed([format_problem(e) for e in sched_errors], sched_path)

    try:
        plan = build_plan(plan_path, REGISTRY, AGENTS, strategy, schedule_path=sched_path, workdir=tmp_path)
    except PlanError as e:
        well_formed(e.lines(), plan_path, *([sched_path] if sched_path else []))
        event("refused")
        return
    event("built")

    # it passed: every line was strict JSON, every task can be sent as strict JSON, and the
    # waves are ints (explicit ones up to MAX_WAVE, computed ones at most one per task above)
    raw = plan_path.read_text(encoding="utf-8", errors="surrogatepass").split("\n")
    for pt in plan.tasks.values():
        strict_json(raw[pt.line - 1])
    assert plan.waves and all(type(w) is int and 1 <= w <= MAX_WAVE + len(plan.tasks) for w in plan.waves)
    for number, wave in plan.waves.items():
        assert all(pt.wave == number for pt in wave)
    for pt in plan.tasks.values():
        assert type(pt.wave) is int
        spec = TaskSpec(
            task_id=pt.task_id,
            tool=pt.task.tool,
            args=pt.task.args,
            mode=Mode.MOCK,
            workdir=str(tmp_path),
            claims=pt.claims,
            planned_agent=pt.agent,
            planned_wave=pt.wave,
        )
        sent = json.dumps(spec.model_dump(mode="json"), allow_nan=False)
        assert TaskSpec.model_validate_json(sent).args == pt.task.args
        assert depth(pt.task.args) <= MAX_JSON_DEPTH - 1  # under the line's own object
        json.dumps(pt.task.args, sort_keys=True, allow_nan=False)  # the coordinator's args summary
        assert 0 <= pt.task.priority <= 100
        assert 0.0 <= pt.task.confidence <= 1.0 and 0.0 <= pt.task.predicted_success <= 1.0
    summary_table(plan)
    try:
        report = resolve(plan, REGISTRY, ConflictPolicy())
    except PlanError as e:  # a conflict whose resolution is reject
        assert e.errors and all(x.startswith(f"{plan_path}: conflict (") for x in e.lines())
        return
    json.dumps(report.model_dump(mode="json"), allow_nan=False)
    assert all(type(w) is int and w >= 1 for w in plan.waves)
    assert all(type(pt.wave) is int for pt in plan.tasks.values())
