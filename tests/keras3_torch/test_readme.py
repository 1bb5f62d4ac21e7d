"""The Python blocks of README.md and docs/*.md that run on Keras 3 with
PyTorch (tests/readme.py)."""

import pytest

from tests import readme
from tests.testing import TestCase


class TestReadme(TestCase):
    @pytest.mark.parametrize("block", readme.blocks_of("torch"), ids=lambda block: block.name)
    def test_block_runs_as_written(self, block):
        readme.run(block)
