"""The user's loss reaches every place a loss is computed: gradient criteria and fine-tuning."""

import pytest
import torch
import torch.nn.functional as F
from helpers import mlp3, mlp3_batches

import hwprune
from hwprune.core.errors import HwpruneError

# A loader smaller than the calibration request once left the sensitivity probe an empty batch list (NaN loss).
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@pytest.mark.parametrize("method", [{"criterion": "taylor", "sparsity": 0.5}, {"criterion": "taylor"}])
def test_custom_loss_scores_the_channels(method):
    calls = []

    def loss_fn(out, y):
        calls.append(out.shape)
        return F.cross_entropy(out, y)

    kw = {"budget": "params=0.7"} if "sparsity" not in method else {}
    x = torch.randn(4, 12)
    hwprune.prune(
        mlp3(), x, method=method, data=mlp3_batches(), loss_fn=loss_fn, target="analytic-test", progress=False, **kw
    )
    assert calls and all(s[-1] == 3 for s in calls)  # taylor's gradients came from the user's loss


def test_finetune_without_data_names_the_python_argument():
    with pytest.raises(HwpruneError, match=r"pass data=\.\.\. to hwprune\.prune"):
        hwprune.prune(mlp3(), torch.randn(4, 12), finetune=2, target="analytic-test", progress=False)


def test_a_language_model_is_trained_on_its_vocabulary_dimension_without_a_loss_fn():
    """(batch, tokens, vocab) logits against (batch, tokens) next-token ids: F.cross_entropy would read the 8
    tokens as the classes and fail; the default loss for a transformers model reads the last dimension."""
    pytest.importorskip("transformers")
    from helpers import tiny_llama  # noqa: PLC0415

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (6, 16, 9), generator=g)
    batches = [({"input_ids": x[:, :-1]}, x[:, 1:]) for x in ids]
    result = hwprune.prune(
        tiny_llama(),
        batches[0][0],
        budget="params=0.8",
        method={"criterion": "taylor"},
        data=batches,
        finetune=1,
        target="analytic-test",
        progress=False,
    )
    assert result.report.pruned.params < 0.8 * result.report.dense.params + 1
