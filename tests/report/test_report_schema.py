"""The typed report: it round-trips through JSON, the shipped JSON Schema is the one the dataclasses give,
and a real run's report.json validates against it."""

import json

import jsonschema
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import hwprune
from hwprune.core.errors import HwpruneError
from hwprune.pipeline.figures import MET_CONFIDENT, MET_MEDIAN, NOT_MET, verdict
from hwprune.report.files import FAST_LINE, markdown, text_table
from hwprune.report.schema import REPORT_FORMAT, SCHEMA_FILE, LoopStep, Report, json_schema


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    x, y = torch.randn(128, 16), torch.randint(0, 4, (128,))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    return hwprune.prune(Net(), x[:8], budget="params=0.6", target="analytic-test", data=loader, progress=False)


def test_shipped_schema_is_generated_from_the_dataclasses():
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), "run: python -m hwprune.report.schema"
    assert json_schema()["properties"]["format"] == {"const": REPORT_FORMAT}


def test_report_is_typed_and_round_trips(result, tmp_path):
    r = result.report
    assert isinstance(r, Report) and r.format == REPORT_FORMAT
    assert r.budget.met and r.budgets[0].kind == "params" and r.budgets[0].used <= 1.0
    assert r.loop and all(isinstance(step, LoopStep) and "params" in step.budgets for step in r.loop)
    assert r.dense.latency.median > r.pruned.latency.median > 0
    assert Report.from_dict(json.loads(r.to_json())) == r
    result.save(tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk == r.to_dict() and Report.load(tmp_path / "out" / "report.json") == r


def test_report_json_validates_against_the_schema(result):
    doc = result.report.to_dict()
    jsonschema.validate(doc, json_schema())
    doc["speedup"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, json_schema())


def test_other_format_or_unknown_field_is_a_one_line_error(result):
    doc = result.report.to_dict()
    with pytest.raises(HwpruneError, match="re-run `hwprune prune`"):
        Report.from_dict({**doc, "format": "hwprune-report/1"})
    with pytest.raises(HwpruneError, match="no field"):
        Report.from_dict({**doc, "surprise": 1})


def test_fast_timing_and_the_verdict_lead_the_report(result):
    r = result.report
    assert r.timing == "fast"  # the suite runs with HWPRUNE_TIMING=fast
    assert markdown(r).splitlines()[0] == f"**{FAST_LINE}**" and text_table(r).splitlines()[0] == FAST_LINE
    assert r.budget.verdict == r.budgets[0].verdict == "met (95% confidence)"  # a counted budget is exact
    assert r.speedup_ci[0] <= r.speedup <= r.speedup_ci[1]
    assert r.machine is not None and r.machine.dense_medians_ms


def test_verdicts_follow_the_interval():
    assert verdict(1.0, 0.9, 0.98) == MET_CONFIDENT
    assert verdict(1.0, 0.97, 1.03) == MET_MEDIAN
    assert verdict(1.0, 1.02, 1.05) == NOT_MET
