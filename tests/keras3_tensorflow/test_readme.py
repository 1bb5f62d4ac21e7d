"""The Python blocks of README.md and docs/*.md that run on Keras 3 with
TensorFlow (tests/readme.py), and the check that every block has a process
to run it."""

import pytest

from tests import readme
from tests.testing import TestCase


def test_every_python_block_says_where_it_runs():
    blocks = readme.blocks()  # Raises for a block without a known directive, or a shared id.
    assert {block.runs for block in blocks} == set(readme.PROCESSES)
    assert len(blocks) >= 8
    # The docs/ pages are read too, not only the README.
    assert {"README.md", "docs/methods.md"} <= {block.source for block in blocks}


class TestReadme(TestCase):
    @pytest.mark.parametrize("block", readme.blocks_of("keras3"), ids=lambda block: block.name)
    def test_block_runs_as_written(self, block):
        readme.run(block)
