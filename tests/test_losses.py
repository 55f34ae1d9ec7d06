"""flopkit.losses: the one definition of the training losses (memory and profile)."""

import math

import pytest
import torch
from click.testing import CliRunner
from flopkit.cli import app
from torch import nn

from flopkit.losses import default_loss, loss_value, main_output, make_targets


class Classifier(nn.Linear):
    num_classes = 5


def test_default_is_ce_for_class_or_vocabulary_outputs_and_mse_otherwise():
    model = Classifier(3, 5)
    assert default_loss(model, torch.zeros(2, 5)) == "ce"
    assert default_loss(model, torch.zeros(2, 4)) == "mse"
    assert default_loss(nn.Identity(), {"logits": torch.zeros(2, 7, 11)}) == "ce"
    assert default_loss(nn.Identity(), {"last_hidden_state": torch.zeros(2, 7, 11)}) == "mse"


def test_ce_flattens_tokens_and_mse_is_the_mean_square_against_zeros():
    logits = torch.zeros(2, 3, 4)  # uniform over 4 classes at each of 6 positions
    targets = make_targets(logits, "ce")
    assert targets.shape == (2, 3) and targets.dtype == torch.int64
    assert loss_value(logits, targets, "ce").item() == pytest.approx(math.log(4))
    out = torch.full((2, 3), 2.0, dtype=torch.bfloat16)
    assert loss_value(out, make_targets(out, "mse"), "mse").item() == pytest.approx(4.0)


def test_main_output_takes_logits_before_other_tensors():
    logits, hidden = torch.zeros(1), torch.ones(1)
    assert main_output({"hidden": hidden, "logits": logits}) is logits
    assert main_output((hidden, logits)) is hidden


def test_profile_refuses_loss_without_training():
    result = CliRunner().invoke(app, ["profile", "vit5-small", "--device", "cpu", "--loss", "mse"])
    assert result.exit_code == 2 and "--loss applies to a training step: add --training" in result.stderr
