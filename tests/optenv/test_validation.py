"""optenv.validation's device parsing: an unavailable device is named with why."""

from __future__ import annotations

import pytest
import torch

from optenv.validation import parse_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a CUDA device")
def test_cuda_on_a_machine_without_it_says_so() -> None:
    with pytest.raises(ValueError, match=r"--device: got 'cuda', but this torch .* has no CUDA "
                                         r"device.*allowed: 'cpu'"):
        parse_device("cuda", "--device")


def test_an_unknown_device_type_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^device: got 'tpu0', allowed: an available torch"):
        parse_device("tpu0")
    assert parse_device("cpu") == torch.device("cpu")
