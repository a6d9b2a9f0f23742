"""The fine-tuning stage: schedules, accumulation, clipping, evaluation, keep-best, early stopping,
feature distillation and mixed precision, on a tiny model."""

import math

import pytest
import torch
from conftest import accuracy, toy_net

import hwprune.finetune.distill as distill
import hwprune.finetune.trainer as trainer
from hwprune.core.errors import HwpruneError
from hwprune.finetune.trainer import TrainConfig, TrainConfigError, fit
from hwprune.zoo.text import cosine_loss


def test_fit_learns_the_task_and_reports_its_figures(data):
    model = toy_net()
    before = accuracy(data)(model)
    res = fit(model, data, TrainConfig(epochs=3, batch_size=32, lr=1e-2), evaluate=accuracy(data), progress=False)
    per_epoch = len(data.x_train) // 32
    assert res.steps == 3 * per_epoch and res.epochs == 3 and res.processes == 1
    assert len(res.seconds_per_epoch) == 3 and all(s > 0 for s in res.seconds_per_epoch)
    assert res.samples_per_s > 0
    assert [e.step for e in res.evaluations] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert res.evaluations[-1].metric > max(before, 0.85)
    assert not model.training  # handed back in eval mode


def test_steps_override_epochs_and_run_past_one_pass(data):
    res = fit(toy_net(), data, TrainConfig(epochs=1, steps=30, batch_size=32), progress=False)
    assert res.steps == 30 and res.epochs == 3  # 12 steps per epoch: 30 steps end in the third


def test_accumulation_takes_one_step_per_group_of_batches(data):
    res = fit(toy_net(), data, TrainConfig(epochs=1, batch_size=32, accumulate=4), progress=False)
    assert res.steps == 3  # 12 batches, 4 per step


def test_accumulating_two_half_batches_equals_one_full_batch(data):
    """The gradient of the mean over 64 samples is the mean of the two 32-sample means."""
    a, b = toy_net(bn=False), toy_net(bn=False)
    a[3].p = b[3].p = 0.0  # no dropout: the two runs draw differently
    cfg = dict(epochs=1, lr=1e-2, lr_schedule="constant", optimizer="sgd")
    fit(a, data, TrainConfig(batch_size=64, steps=1, **cfg), progress=False)
    # The same 64 samples as two batches of 32: a Dataset's batches come from one permutation per epoch.
    fit(b, data, TrainConfig(batch_size=32, steps=1, accumulate=2, **cfg), progress=False)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def _learning_rates(monkeypatch, *args, **kwargs) -> list[float]:
    """The learning rate of every optimizer step of `fit(*args, **kwargs)` (AdamW, the default optimizer)."""
    lrs = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    fit(*args, progress=False, **kwargs)
    return lrs


@pytest.mark.parametrize(
    "schedule,last_factor",
    [("cosine", 0.0), ("step", 0.01), ("constant", 1.0)],
)
def test_schedules_end_where_they_should(data, monkeypatch, schedule, last_factor):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.1, lr_schedule=schedule, warmup_steps=4)
    lrs = _learning_rates(monkeypatch, toy_net(), data, cfg)
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # linear warm-up
    end = lrs[-1] / 0.1
    assert end == pytest.approx(last_factor, abs=0.01)


def test_one_cycle_warmup_sets_its_rising_part(data, monkeypatch):
    lrs = _learning_rates(monkeypatch, toy_net(), data, TrainConfig(epochs=2, batch_size=32, lr=0.1, warmup_steps=6))
    assert max(range(len(lrs)), key=lrs.__getitem__) == 5 and max(lrs) == pytest.approx(0.1)


def test_clipping_bounds_the_gradient_norm(data):
    model = toy_net()
    norms = []
    orig = torch.optim.SGD.step

    def spy(self, *a, **k):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.norm(torch.stack([g.norm() for g in grads]))))
        return orig(self, *a, **k)

    torch.optim.SGD.step = spy
    try:
        fit(
            model,
            data,
            TrainConfig(steps=5, batch_size=32, optimizer="sgd", lr=10.0, clip_grad_norm=0.01),
            progress=False,
        )
    finally:
        torch.optim.SGD.step = orig
    assert len(norms) == 5 and max(norms) <= 0.01 * 1.0001


def test_keep_best_and_early_stopping(data):
    metrics = iter([0.5, 0.9, 0.7, 0.6, 0.8, 0.95])
    seen = []

    def evaluate(model):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(metrics)

    model = toy_net()
    cfg = TrainConfig(epochs=10, batch_size=32, eval_every=3, keep_best=True, patience=2)
    res = fit(model, data, cfg, evaluate=evaluate, progress=False)
    assert res.best_step == 6 and res.best_metric == 0.9
    assert res.stopped_early_at == 12  # two evaluations (steps 9, 12) below 0.9
    assert [e.step for e in res.evaluations] == [3, 6, 9, 12]
    for k, v in model.state_dict().items():  # the weights evaluated at step 6
        torch.testing.assert_close(v, seen[1][k], atol=0, rtol=0)


def test_feature_distillation_adapts_a_narrowed_layer(data):
    teacher, student = toy_net(width=8), toy_net(width=4, seed=2)
    losses = []
    orig = distill.FeatureDistiller.loss

    def spy(self, adapters):
        value = orig(self, adapters)
        losses.append(float(value.detach()))
        # conv: 4 channels mapped to the teacher's 8; flatten: 64 features to 128 (the Linear after it is not narrowed)
        assert adapters["0"].weight.shape == (8, 4) and adapters["4"].weight.shape == (128, 64)
        return value

    distill.FeatureDistiller.loss = spy
    try:
        cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, kd_features=("0", "4"))
        fit(student, data, cfg, teacher=teacher, progress=False)
    finally:
        distill.FeatureDistiller.loss = orig
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # the student's features move towards the teacher's
    assert not student[0]._forward_hooks and not teacher[0]._forward_hooks  # hooks removed


def test_a_feature_name_that_is_no_module_is_refused(data):
    with pytest.raises(TrainConfigError, match=r"kd_features 'conv9'.*no module"):
        fit(toy_net(), data, TrainConfig(kd_features=("conv9",)), teacher=toy_net(), progress=False)


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"optimizer": "adam"}, "choose one of: adamw, sgd"),
        ({"lr_schedule": "linear"}, "one-cycle, cosine, step"),
        ({"precision": "fp8"}, "fp32, bf16, fp16"),
        ({"lr": 0.0}, "must be positive"),
        ({"accumulate": 0}, "at least 1"),
        ({"kd_alpha": 2.0}, "in [0, 1]"),
        ({"clip_grad_norm": -1.0}, "must be positive"),
    ],
)
def test_bad_settings_are_refused_by_name(kw, needle):
    with pytest.raises(TrainConfigError) as e:
        TrainConfig(**kw)
    assert needle in str(e.value) and e.value.field == next(iter(kw))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no GPU")
def test_fp16_without_cuda_is_refused(data):
    with pytest.raises(HwpruneError, match="fp16 with a GradScaler needs a CUDA GPU"):
        fit(toy_net(), data, TrainConfig(precision="fp16"), progress=False)


def test_bf16_autocast_on_cpu_trains_as_well_as_fp32(data):
    a, b = toy_net(), toy_net()
    cfg = dict(epochs=3, batch_size=32, lr=1e-2, device="cpu")
    ra = fit(a, data, TrainConfig(**cfg), evaluate=accuracy(data), progress=False)
    rb = fit(b, data, TrainConfig(precision="bf16", **cfg), evaluate=accuracy(data), progress=False)
    assert all(p.dtype == torch.float32 for p in b.parameters())  # autocast: weights stay fp32
    assert abs(ra.evaluations[-1].metric - rb.evaluations[-1].metric) <= 0.05


@pytest.mark.gpu
def test_fp16_with_a_grad_scaler_on_cuda(data, tmp_path):
    model, teacher = toy_net(), toy_net(seed=3)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, precision="fp16", device="cuda")
    res = fit(model, data, cfg, teacher=teacher, evaluate=accuracy(data), checkpoint_dir=tmp_path, progress=False)
    assert res.steps == 24 and math.isfinite(res.final_loss)
    assert next(model.parameters()).device.type == "cpu"  # handed back where it came from
    assert res.evaluations[-1].metric > 0.8
    again = toy_net()
    fit(again, data, cfg, teacher=teacher, checkpoint_dir=tmp_path, resume=True, progress=False)  # already done
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_progress_off_prints_one_line_per_epoch(data, capsys):
    fit(toy_net(), data, TrainConfig(epochs=2, batch_size=64), evaluate=accuracy(data), progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("fine-tuning: epoch 1/2, step 6/12") and "samples/s" in err[0]


def test_an_unlabelled_loader_distils_and_counts_its_samples():
    torch.manual_seed(0)
    batches = [torch.randn(8, 1, 16) for _ in range(5)]  # inputs only: distillation from the teacher
    res = fit(toy_net(), batches, TrainConfig(epochs=2, batch_size=8), teacher=toy_net(seed=4), progress=False)
    assert res.steps == 10
    assert res.samples == 80 and res.samples_per_s > 0
    assert isinstance(res.final_loss, float) and math.isfinite(res.final_loss)


class _Embedder(torch.nn.Module):
    """A sentence-encoder stand-in: its outputs are embeddings, its targets the dense model's (zoo.text)."""

    hwprune_output = "embedding"

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))

    def forward(self, x):
        return torch.nn.functional.normalize(self.body(x), dim=-1)


def test_an_embedder_distils_its_features_from_the_teacher_without_a_logit_term(monkeypatch):
    teacher, student = _Embedder(0).eval(), _Embedder(1)
    x = torch.randn(64, 6)
    with torch.no_grad():
        batches = [(x[i : i + 16], teacher(x[i : i + 16])) for i in range(0, 64, 16)]
    feature_losses, logit_terms = [], []
    orig = distill.FeatureDistiller.loss
    monkeypatch.setattr(distill.FeatureDistiller, "loss", lambda s, a: feature_losses.append(1) or orig(s, a))
    kd = trainer.kd_loss
    monkeypatch.setattr(trainer, "kd_loss", lambda out, y, t, *a: logit_terms.append(t) or kd(out, y, t, *a))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2, kd_features=("body.0",))
    fit(student, batches, cfg, teacher=teacher, loss_fn=cosine_loss, progress=False)
    assert len(feature_losses) == 12 and logit_terms == [None] * 12  # features from the teacher; embeddings: cosine
