"""agent.registry: the light operations are the very functions agent.operations registers,
and a session that uses only them never imports the heavy modules."""

import subprocess
import sys
from pathlib import Path

from agent.operations import OPERATIONS
from agent.registry import LIGHT, Operations

ROOT = Path(__file__).resolve().parents[2]


def test_light_operations_are_the_registered_ones():
    ops = Operations()
    for op in LIGHT:
        assert ops[op] is OPERATIONS[op], op
    assert sorted(ops) == sorted(OPERATIONS)
    assert ops.get("apply") is OPERATIONS["apply"]
    assert ops.get("no-such-op") is None


def test_a_no_op_session_imports_no_heavy_module():
    # hello, state, lock and ledger in a fresh interpreter: none of the heavy modules loaded
    code = (
        "import sys\n"
        "from agent.registry import Operations\n"
        "ops = Operations()\n"
        "for op in ('hello', 'state', 'lock_acquire', 'lock_release', 'release_list'):\n"
        "    assert callable(ops.get(op))\n"
        "heavy = ['agent.operations', 'agent.rollout', 'agent.mesh.ops', 'agent.certs.ops', 'agent.transfer', 'docker']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
