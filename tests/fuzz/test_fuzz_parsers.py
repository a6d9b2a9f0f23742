"""Hypothesis fuzzing of the file and text parsers: garbage in gives a HwpruneError (the CLI's one-line error),
never another exception; what they write they read back.

Garbage is drawn two ways: arbitrary JSON-like values, and a valid document with one or two of its fields
deleted, replaced by garbage or joined by an unknown one, which reaches the checks deep inside a parser that
arbitrary values stop short of. Every test is derandomized so a CI failure reproduces.
"""

import copy
import json
import math
import re

import pytest
import torch.nn as nn
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hwprune.core.errors import HwpruneError
from hwprune.export.model import load, read_spec, save_model
from hwprune.hardware.sim.spec import catalog_paths, parse_spec
from hwprune.pipeline.config import SECTIONS, PruneConfig, flat_fields
from hwprune.plan.plan import GroupPlan, Plan
from hwprune.zoo.specs import parse_shape, resolve

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True), st.text(max_size=6))
jsonish = st.recursive(
    leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8
)


def _paths(d, prefix=()):
    yield prefix
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


@st.composite
def mutated(draw, base, keys=()):
    """`base` (a valid document) with one or two fields deleted, replaced by garbage, or added (an unknown
    name, or one of `keys`: optional fields the valid document leaves out)."""
    d = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(list(_paths(d))))
        if not path:
            return draw(jsonish)
        *head, last = path
        parent = d
        for k in head:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.one_of(st.text(max_size=6), st.sampled_from([*keys, "x"])))] = draw(jsonish)
        else:
            parent[last] = draw(jsonish)
    return d


def _hwprune_error_or(fn, *args):
    """fn(*args), or None where it raised a one-line HwpruneError (any other exception propagates)."""
    try:
        return fn(*args)
    except HwpruneError as e:
        assert "\n" not in str(e).strip(), str(e)
        return None


# ---- plans ----------------------------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8"), max_size=8)


@st.composite
def plans(draw):
    groups = []
    for i in range(draw(st.integers(0, 4))):
        size = draw(st.integers(1, 40))
        keep = sorted(draw(st.sets(st.integers(0, size - 1), min_size=1, max_size=size)))
        groups.append(GroupPlan(f"g{i}:{draw(names)}", size, len(keep), keep))
    meta = draw(st.dictionaries(names, st.one_of(st.integers(), st.floats(allow_nan=False), names), max_size=3))
    latency = draw(st.one_of(st.none(), st.floats(0, 10, allow_nan=False)))
    return Plan(groups, draw(names), draw(names), draw(names), latency, meta)


@settings(FUZZ, max_examples=60)
@given(plans())
def test_plan_round_trips_through_dict_and_file(tmp_path_factory, plan):
    assert Plan.from_dict(plan.to_dict()) == plan
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    plan.save(path)
    assert Plan.load(path) == plan
    assert json.loads(path.read_text())["format"] == "hwprune-plan/1"


VALID_PLAN = Plan([GroupPlan("conv1", 4, 2, [0, 3]), GroupPlan("fc", 3, 3, [0, 1, 2])], "hw", "l1", "latency=0.5")
plan_garbage = st.one_of(jsonish, mutated(VALID_PLAN.to_dict()))


def _check_plan(plan):
    if plan is not None:  # what is accepted is a well-typed plan
        for g in plan.groups:
            assert isinstance(g.id, str) and isinstance(g.size, int) and isinstance(g.keep, list)
            assert all(isinstance(i, int) and 0 <= i < g.size for i in g.keep) and g.keep == sorted(set(g.keep))


@FUZZ
@given(plan_garbage)
@example(None)
def test_plan_from_dict_garbage_is_hwprune_error(d):
    _check_plan(_hwprune_error_or(Plan.from_dict, d))


@FUZZ
@given(plan_garbage)
@example([])
@example({"format": "hwprune-plan/1", "groups": [{"id": "a", "size": 2, "width": 3, "keep": [0]}]})
def test_plan_load_garbage_file_is_hwprune_error(tmp_path_factory, d):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    path.write_text(json.dumps(d))
    _check_plan(_hwprune_error_or(Plan.load, path))


# ---- recipes (PruneConfig) ------------------------------------------------------------------------------

CONFIG_KEYS = [*flat_fields(), *SECTIONS, "bogus"]
config_garbage = st.one_of(
    jsonish,
    st.dictionaries(st.sampled_from(CONFIG_KEYS), jsonish, max_size=3),
    mutated(PruneConfig().to_dict()),
)


@FUZZ
@given(config_garbage)
@example(None)
@example({"max_iters": None})
def test_config_from_dict_garbage_is_hwprune_error(d):
    _hwprune_error_or(PruneConfig.from_dict, d)


@FUZZ
@given(st.one_of(st.text(max_size=20), config_garbage.map(lambda d: yaml.safe_dump(d, allow_unicode=True))))
@example("max_iters: null\n")
def test_config_from_yaml_garbage_is_hwprune_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    _hwprune_error_or(PruneConfig.from_yaml, path)


option_values = {
    "criterion": st.sampled_from([None, "l1", "l2", "taylor"]),
    "granularity": st.sampled_from(["channel", "unstructured", "2:4"]),
    "sparsity": st.one_of(st.none(), st.floats(0, 0.99)),
    "schedule": st.sampled_from(["one-shot", "iterative", "gradual"]),
    "rounds": st.integers(1, 5),
    "allocator": st.sampled_from(["hw", "uniform", "global"]),
    "min_keep": st.floats(0.01, 1),
    "max_iters": st.integers(1, 9),
    "finetune_epochs": st.integers(0, 3),
    "lr": st.floats(1e-6, 1),
    "target": st.sampled_from(["cpu", "sim:rpi5"]),
    "budget": st.sampled_from([None, "latency=0.5", "memory=8MB,params=0.5"]),
    "seed": st.integers(0, 2**31),
}


@FUZZ
@given(st.fixed_dictionaries({}, optional=option_values))
def test_config_round_trips_through_dict_and_yaml(tmp_path_factory, flat):
    cfg = _hwprune_error_or(PruneConfig.from_dict, flat)
    if cfg is None:  # an inconsistent combination (e.g. a schedule without --sparsity), refused by name
        return
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path_factory.mktemp("cfg") / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert PruneConfig.from_yaml(path) == cfg


# ---- model specs ----------------------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=12))
@example("3x224x224")
@example("3,32,32")
def test_parse_shape_garbage_is_hwprune_error(text):
    shape = _hwprune_error_or(parse_shape, text)
    if shape is not None:
        assert shape and all(isinstance(n, int) and n >= 1 for n in shape)
        assert parse_shape("x".join(map(str, shape))) == shape


# A name that is no torchvision model or example (those are lower-case identifiers), so no model is built.
spec_names = st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=10).filter(
    lambda s: not re.fullmatch(r"[a-z0-9_.]*", s)
)


@settings(FUZZ, max_examples=50)  # torchvision lists its models on every torchvision: spec
@given(
    st.tuples(st.sampled_from(["", "torchvision:", "example:", "nope.py:", "./", "/", "sim:"]), spec_names).map(
        "".join
    ),
    st.one_of(st.none(), st.text(max_size=6)),
)
def test_resolve_garbage_spec_is_hwprune_error(spec, input_shape):
    assert _hwprune_error_or(resolve, spec, 1, input_shape, False) is None


def test_resolve_error_quotes_the_spec_on_one_line():
    with pytest.raises(HwpruneError) as e:
        resolve("no\nmodel", 1, None, False)
    assert "\n" not in str(e.value)


# ---- saved models (spec.json) ---------------------------------------------------------------------------


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("saved") / "model"
    save_model(_tiny(), d)
    return d, json.loads((d / "spec.json").read_text())


@FUZZ
@given(st.data())
def test_saved_spec_garbage_is_hwprune_error(saved, data):
    directory, valid = saved
    garbage = data.draw(st.one_of(jsonish, mutated(valid, ["replaced", "sparse", "input_shape"])))
    (directory / "spec.json").write_text(json.dumps(garbage))
    try:
        _hwprune_error_or(read_spec, directory)
        _hwprune_error_or(load, directory, _tiny())
    finally:
        (directory / "spec.json").write_text(json.dumps(valid))


# ---- simulated-target specs -----------------------------------------------------------------------------

SIM_BASE = yaml.safe_load(catalog_paths()["rpi5"].read_text())


@settings(FUZZ, max_examples=200)
@example({**SIM_BASE, "calibration": 5})
@given(st.one_of(jsonish, mutated(SIM_BASE, ["calibration", "sparsity", "memory_model", "kind", "description"])))
def test_sim_spec_garbage_is_hwprune_error(data):
    spec = _hwprune_error_or(parse_spec, data, "board.yaml")
    if spec is not None:
        assert math.isfinite(spec.memory_bandwidth) and spec.dtypes
        assert parse_spec(spec.to_dict(), "again").to_dict() == spec.to_dict()
