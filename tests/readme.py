"""Every Python block of README.md and of docs/*.md runs, as written, in the suite.

Each ```python block is preceded by a directive, an HTML comment that a
reader of the rendered page does not see:

    <!-- readme-test: runs=keras3; id=quickstart; needs=...; given=...; check=... -->

- `runs` (required): the test process that runs it: `keras3` (Keras 3 on
  TensorFlow), `torch` (Keras 3 on PyTorch), `bert4keras` (tf-keras, eager)
  or `mirrored` (Keras 3 on two logical CPUs, in a process of its own).
- `id`: a name for other blocks' `needs`, unique over every document.
- `needs`: a block run first in the same namespace (the README's model and
  data, say), as a reader who pastes the blocks in order would; it may be in
  another document (a docs/ page builds on the README's `setup`), and its
  own `needs` run before it.
- `given`: names that stand for what the reader has and the suite cannot
  ship (a pretrained checkpoint's config), provided by the process's test
  module from tiny random stand-ins.
- `check`: a Python expression, evaluated after the block, that must be
  true (that a recipe trains, not only that it runs).

A block with no directive, a directive the harness does not know, or an `id`
used twice fails the suite: no block can rot unseen.
"""

import dataclasses
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
PROCESSES = ("keras3", "torch", "bert4keras", "mirrored")
KEYS = ("runs", "id", "needs", "given", "check")

_BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<directive>.*?) -->\n)?(?P<indent>[ ]*)```python\n(?P<code>.*?)\n(?P=indent)```",
    re.DOTALL,
)


@dataclasses.dataclass(frozen=True)
class Block:
    source: str  # The document, relative to the repository root ("README.md", "docs/methods.md").
    line: int
    code: str
    runs: str
    id: str = ""
    needs: str = ""
    given: tuple = ()
    check: str = ""

    @property
    def name(self):
        return self.id or f"{self.source} line {self.line}"


def documents():
    """The documents whose Python blocks run: README.md, then every
    Markdown file under docs/, in sorted order (so that a block's index in
    `blocks_of` is the same in every process)."""
    found = sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
    return [README, *found]


def blocks(paths=None):
    """Every Python block of the documents (`documents()` by default), with
    its directive.

    Raises:
        ValueError: For a block without a directive, a directive with an
            unknown key or process, or an `id` that two blocks share.
    """
    found = []
    for path in documents() if paths is None else paths:
        found.extend(_blocks_of_file(path))
    seen = {}
    for block in found:
        if block.id and block.id in seen:
            raise ValueError(
                f"{block.source} line {block.line}: readme-test id {block.id!r} is taken by "
                f"{seen[block.id].source} line {seen[block.id].line}."
            )
        seen[block.id] = block
    return found


def _blocks_of_file(path):
    source = os.path.relpath(path, ROOT)
    text = open(path, encoding="utf-8").read()
    found = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        if match["directive"] is None:
            raise ValueError(f"{source} line {line}: a Python block without a readme-test directive.")
        fields = dict(_field(part, source, line) for part in match["directive"].split("; "))
        if fields.get("runs") not in PROCESSES:
            raise ValueError(f"{source} line {line}: `runs` must be one of {PROCESSES}, got {fields.get('runs')!r}.")
        given = tuple(name.strip() for name in fields.pop("given", "").split(",") if name.strip())
        code = "\n".join(row[len(match["indent"]):] for row in match["code"].split("\n"))
        found.append(Block(source, line, code, given=given, **fields))
    return found


def _field(part, source, line):
    key, _, value = part.partition("=")
    if key not in KEYS:
        raise ValueError(f"{source} line {line}: unknown readme-test key {key!r} (known: {KEYS}).")
    return key, value


def blocks_of(process):
    return [block for block in blocks() if block.runs == process]


def _chain(block, every):
    """The blocks to run for `block`, in order: what it needs (and what that
    needs, first), then itself."""
    chain = [block]
    while chain[0].needs:
        needed = [b for b in every if b.id == chain[0].needs]
        assert len(needed) == 1, f"Block {chain[0].name} needs {chain[0].needs!r}, found {len(needed)}."
        assert needed[0] not in chain, f"Block {block.name}: its `needs` form a cycle."
        chain.insert(0, needed[0])
    return chain


def run(block, given=None):
    """Runs `block` (after the blocks it needs) in a fresh namespace holding
    the `given` stand-ins; asserts its `check`. Returns the namespace."""
    namespace = {"__name__": "__readme__"}
    for name in block.given:
        namespace[name] = given[name]()
    for step in _chain(block, blocks()):
        exec(compile(step.code, f"{step.source}:{step.line}", "exec"), namespace)
    if block.check:
        assert eval(block.check, namespace), f"Block {block.name}: `{block.check}` is false."
    return namespace
