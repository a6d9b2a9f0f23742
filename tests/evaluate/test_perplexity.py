"""Sliding-window perplexity: every token but the first scored once, exact on models with known probabilities."""

import math

import pytest
import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.evaluate.perplexity import perplexity, window_ends


class Uniform(nn.Module):
    """Equal logits over `vocab` tokens: perplexity is exactly the vocabulary size."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return torch.zeros(*input_ids.shape, self.vocab) + 0 * self.dummy


class Bigram(nn.Module):
    """Logits from the previous token only: a context-free model scores the same under any window."""

    def __init__(self, vocab):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Parameter(torch.randn(vocab, vocab))

    def forward(self, input_ids):
        return self.table[input_ids]


def test_uniform_model_has_perplexity_equal_to_the_vocabulary():
    ids = torch.randint(0, 37, (1000,))
    p = perplexity(Uniform(37), ids, context=64, stride=16)
    assert p.perplexity == pytest.approx(37, rel=1e-6)
    assert p.tokens == 999


@pytest.mark.parametrize("context,stride", [(8, 8), (16, 5), (50, 25), (2000, 1000)])
def test_every_token_but_the_first_is_scored_once_whatever_the_window(context, stride):
    ids = torch.randint(0, 20, (301,))
    model = Bigram(20)
    p = perplexity(model, ids, context=context, stride=stride, batch_size=3)
    logp = torch.log_softmax(model.table[ids[:-1]].detach(), -1).gather(1, ids[1:, None]).squeeze(1)
    assert p.tokens == 300
    assert p.nll == pytest.approx(float(-logp.mean()), rel=1e-6)
    assert p.perplexity == pytest.approx(math.exp(float(-logp.mean())), rel=1e-6)


def test_window_ends_cover_the_text():
    assert window_ends(10, 4, 2) == [4, 6, 8, 10]
    assert window_ends(9, 4, 2) == [4, 6, 8, 9]
    assert window_ends(3, 4, 2) == [3]


def test_a_window_reads_context_tokens():
    seen = []

    class Spy(Uniform):
        def forward(self, input_ids):
            seen.append(input_ids.shape[1])
            return super().forward(input_ids)

    perplexity(Spy(5), torch.zeros(100, dtype=torch.long), context=32, stride=32, batch_size=100)
    assert seen == [32]


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(HwpruneError, match="stride"):
        perplexity(Uniform(5), torch.zeros(10, dtype=torch.long), context=4, stride=5)
    with pytest.raises(HwpruneError, match="1-D"):
        perplexity(Uniform(5), torch.zeros(2, 10, dtype=torch.long))
