"""Every Python block of README.md runs, as written, in the suite.

Each ```python block is preceded by a directive, an HTML comment that a
reader of the rendered README does not see:

    <!-- readme-test: runs=keras3; id=quickstart; needs=...; given=...; check=... -->

- `runs` (required): the test process that runs it: `keras3` (Keras 3 on
  TensorFlow), `torch` (Keras 3 on PyTorch), `bert4keras` (tf-keras, eager)
  or `mirrored` (Keras 3 on two logical CPUs, in a process of its own).
- `id`: a name for other blocks' `needs`.
- `needs`: a block run first in the same namespace (the README's model and
  data, say), as a reader who pastes the blocks in order would.
- `given`: names that stand for what the reader has and the suite cannot
  ship (a pretrained checkpoint's config), provided by the process's test
  module from tiny random stand-ins.
- `check`: a Python expression, evaluated after the block, that must be
  true (that a recipe trains, not only that it runs).

A block with no directive, or a directive the harness does not know, fails
the suite: no block can rot unseen.
"""

import dataclasses
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PROCESSES = ("keras3", "torch", "bert4keras", "mirrored")
KEYS = ("runs", "id", "needs", "given", "check")

_BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<directive>.*?) -->\n)?(?P<indent>[ ]*)```python\n(?P<code>.*?)\n(?P=indent)```",
    re.DOTALL,
)


@dataclasses.dataclass(frozen=True)
class Block:
    line: int
    code: str
    runs: str
    id: str = ""
    needs: str = ""
    given: tuple = ()
    check: str = ""

    @property
    def name(self):
        return self.id or f"line {self.line}"


def blocks(path=README):
    """Every Python block of the file, with its directive.

    Raises:
        ValueError: For a block without a directive, or a directive with an
            unknown key or process.
    """
    text = open(path, encoding="utf-8").read()
    found = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        if match["directive"] is None:
            raise ValueError(f"README.md line {line}: a Python block without a readme-test directive.")
        fields = dict(_field(part, line) for part in match["directive"].split("; "))
        if fields.get("runs") not in PROCESSES:
            raise ValueError(f"README.md line {line}: `runs` must be one of {PROCESSES}, got {fields.get('runs')!r}.")
        given = tuple(name.strip() for name in fields.pop("given", "").split(",") if name.strip())
        code = "\n".join(row[len(match["indent"]):] for row in match["code"].split("\n"))
        found.append(Block(line, code, given=given, **fields))
    return found


def _field(part, line):
    key, _, value = part.partition("=")
    if key not in KEYS:
        raise ValueError(f"README.md line {line}: unknown readme-test key {key!r} (known: {KEYS}).")
    return key, value


def blocks_of(process):
    return [block for block in blocks() if block.runs == process]


def run(block, given=None):
    """Runs `block` (after the block it needs) in a fresh namespace holding
    the `given` stand-ins; asserts its `check`. Returns the namespace."""
    namespace = {"__name__": "__readme__"}
    for name in block.given:
        namespace[name] = given[name]()
    if block.needs:
        needed = [b for b in blocks() if b.id == block.needs]
        assert len(needed) == 1, f"README block {block.name} needs {block.needs!r}, found {len(needed)}."
        exec(compile(needed[0].code, f"README.md:{needed[0].line}", "exec"), namespace)
    exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
    if block.check:
        assert eval(block.check, namespace), f"README block {block.name}: `{block.check}` is false."
    return namespace
