"""The real Solidity parser: npm's ``solc`` (the compiler built to JavaScript) run with node.

A prediction is one function, which uses state, modifiers and types it does not declare. It is
wrapped as ``contract C { ... }`` and only parsed (standard JSON ``settings.stopAfter:
"parsing"``), so a fragment is not scored invalid for what a type check would miss. Each
fragment is compiled on its own (one bad fragment would hide the others' ASTs), all of a batch
in one node process: starting node and loading the compiler costs about 0.7 s, a parse
milliseconds.

Where node or the compiler is absent, syntax validity is "not measured"; ``hack/install-solc.sh``
installs the pinned version into ``solc_dir()``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tac2sol.errors import InvalidInput

SOLC_VERSION = "0.8.30"
SOLC_DIR_ENV = "TAC2SOL_SOLC_DIR"
WRAPPER_OPEN = "contract C {\n"
WRAPPER_CLOSE = "\n}\n"
BATCH_ROWS = 1000  # fragments per node process: bounds the JSON that comes back

# Reads {"key": "source", ...} on stdin, parses each source alone, writes
# {"key": {"errors": [{"message", "type", "start"}], "ast": {...} | null}}.
_PARSE_JS = r"""
const solc = require(process.env.TAC2SOL_SOLC_MODULE);
let data = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (c) => { data += c; });
process.stdin.on('end', () => {
  const out = {};
  for (const [key, content] of Object.entries(JSON.parse(data))) {
    const input = {language: 'Solidity', sources: {[key]: {content}},
      settings: {stopAfter: 'parsing', outputSelection: {'*': {'': ['ast']}}}};
    const res = JSON.parse(solc.compile(JSON.stringify(input)));
    const errors = (res.errors || []).filter((e) => e.severity === 'error').map((e) => ({
      message: e.message, type: e.type, start: e.sourceLocation ? e.sourceLocation.start : -1}));
    out[key] = {errors, ast: errors.length || !res.sources ? null : res.sources[key].ast};
  }
  process.stdout.write(JSON.stringify(out));
});
"""


def solc_dir() -> Path:
    """Where the pinned compiler lives: ``$TAC2SOL_SOLC_DIR``, else ``~/.cache/tac2sol/solc-<version>``."""
    configured = os.environ.get(SOLC_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "tac2sol" / f"solc-{SOLC_VERSION}"


def install_script() -> Path:
    """``hack/install-solc.sh`` of this checkout (npm install of the pinned version)."""
    return Path(__file__).resolve().parents[1] / "hack" / "install-solc.sh"


@dataclass(frozen=True)
class Solc:
    node: str
    module: Path  # .../node_modules/solc
    version: str

    def describe(self) -> str:
        return f"solc {self.version} (npm package solc, run with node; parser only)"


def find_solc() -> Solc | None:
    """The pinned compiler and node, or None when either is missing (see ``missing_reason``)."""
    node = shutil.which("node")
    module = solc_dir() / "node_modules" / "solc"
    try:
        version = json.loads((module / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    if node is None or version != SOLC_VERSION:
        return None
    return Solc(node, module, version)


def missing_reason() -> str:
    """Why ``find_solc`` found nothing, and what to do: one line for a report."""
    if shutil.which("node") is None:
        return "node is not on PATH; install Node.js, then run hack/install-solc.sh"
    return (
        f"solc {SOLC_VERSION} is not installed in {solc_dir()}; run hack/install-solc.sh "
        f"(or point {SOLC_DIR_ENV} at a directory where it is)"
    )


def wrap(fragment: str) -> str:
    """A function fragment as a source unit the parser accepts."""
    return WRAPPER_OPEN + fragment + WRAPPER_CLOSE


@dataclass(frozen=True)
class Parsed:
    """One fragment's parse: errors (``ParserError: ... (line N)``, lines of the fragment) or its AST."""

    errors: list[str] = field(default_factory=list)
    ast: dict[str, Any] | None = None

    @property
    def valid(self) -> bool:
        return not self.errors

    def function(self) -> dict[str, Any] | None:
        """The first function (or modifier, constructor, fallback) defined in the fragment."""
        for unit in (self.ast or {}).get("nodes", []):
            for node in unit.get("nodes", []) if unit.get("nodeType") == "ContractDefinition" else []:
                if node.get("nodeType") in ("FunctionDefinition", "ModifierDefinition"):
                    return node
        return None


def _chunks(items: list[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def parse_fragments(
    solc: Solc, fragments: Mapping[str, str], batch_rows: int = BATCH_ROWS
) -> dict[str, Parsed]:
    """Parse each fragment (wrapped) with ``solc``: one node process per ``batch_rows`` fragments."""
    out: dict[str, Parsed] = {}
    env = {**os.environ, "TAC2SOL_SOLC_MODULE": str(solc.module)}
    for chunk in _chunks(list(fragments.items()), batch_rows):
        sources = {key: wrap(text) for key, text in chunk}
        proc = subprocess.run(
            [solc.node, "-e", _PARSE_JS],
            input=json.dumps(sources),
            capture_output=True,
            text=True,
            env=env,
            timeout=120 + len(chunk),
            check=False,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise InvalidInput(
                f"{solc.module}: node could not run the Solidity parser ({last}); "
                "reinstall it with hack/install-solc.sh"
            )
        for key, result in json.loads(proc.stdout).items():
            errors = []
            for e in result["errors"]:
                where = ""
                if e["start"] >= 0:
                    where = f" (line {sources[key][: e['start']].count(chr(10))})"
                errors.append(f"{e['type']}: {e['message']}{where}")
            out[key] = Parsed(errors, result["ast"])
    return out
