"""One registry helper behind every name lookup: criteria, targets, allocators, selections, data sets, methods."""

import pytest

import hwprune.pipeline.api  # noqa: F401  (importing the pipeline registers its methods, as `hwprune prune` does)
from hwprune.apply.blocks import BLOCK_CRITERIA
from hwprune.core.errors import HwpruneError
from hwprune.core.registry import Registry
from hwprune.hardware.targets import TARGETS
from hwprune.importance import CRITERIA
from hwprune.pipeline.context import METHODS
from hwprune.plan.allocate import ALLOCATORS
from hwprune.plan.select import SELECTIONS
from hwprune.zoo.datasets import DATASETS


def test_register_get_names_and_describe():
    reg: Registry = Registry("widget", "--widget")

    @reg.register("b")
    def b():
        """Second widget.

        More text."""

    reg.register("a", None, description="first widget")
    assert reg.get("b") is b and reg["a"] is None
    assert reg.names() == ["b", "a"] and reg.names("a*") == ["a"]
    assert reg.describe("b") == "Second widget." and reg.describe("a") == "first widget"
    assert "a" in reg and len(reg) == 2 and list(reg) == ["b", "a"]
    with pytest.raises(HwpruneError, match=r"unknown widget 'c' for --widget; choose one of: a, b$"):
        reg.get("c")


@pytest.mark.parametrize(
    "registry, expected",
    [
        (CRITERIA, {"l1", "taylor", "random"}),
        (BLOCK_CRITERIA, {"loss-change"}),
        (TARGETS, {"cpu"}),
        (ALLOCATORS, {"hw", "uniform", "global"}),
        (SELECTIONS, {"budget", "ratio", "threshold"}),
        (DATASETS, {"mnist1d", "digits"}),
        (METHODS, {"budget", "units", "weights", "hierarchical"}),
    ],
)
def test_every_name_lookup_is_a_registry(registry, expected):
    assert isinstance(registry, Registry) and expected <= set(registry.names())
