"""What a command that connects to nodes imports: not paramiko's optional `invoke`
(0.03-0.06 s; only for ssh_config's `Match exec`, which orch never reads), and paramiko
still works without it."""

import subprocess
import sys


def test_the_transport_keeps_paramiko_from_importing_invoke():
    code = ("import sys, orchestrator.io.transport, orchestrator.io.nodes, paramiko; "
            "print(sys.modules.get('invoke') is None, hasattr(paramiko, 'Transport'), "
            "paramiko.SSHClient is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "True"]


def test_an_invoke_imported_before_is_left_alone():
    code = ("import sys, types; sys.modules['invoke'] = types.ModuleType('invoke'); "
            "import orchestrator.io.transport; print(sys.modules['invoke'] is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
