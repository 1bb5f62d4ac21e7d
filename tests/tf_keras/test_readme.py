"""The Python blocks of README.md and docs/*.md that run on tf-keras with
bert4keras (tests/readme.py). What the reader has and the suite cannot ship (a
pretrained checkpoint and its data) is a tiny random stand-in."""

import pytest

from tests import bert4keras_models, readme
from tests.testing import TestCase


def _token_batch():
    return bert4keras_models.token_batch(size=16, seed=1)


STAND_INS = {
    "config_path": lambda: bert4keras_models.CONFIG,
    "checkpoint_path": lambda: None,  # Random weights: nothing to download.
    "token_ids": lambda: _token_batch()[0][0],
    "segment_ids": lambda: _token_batch()[0][1],
    "labels": lambda: _token_batch()[1],
}


class TestReadme(TestCase):
    @pytest.mark.parametrize("block", readme.blocks_of("bert4keras"), ids=lambda block: block.name)
    def test_block_runs_as_written(self, block):
        readme.run(block, STAND_INS)
