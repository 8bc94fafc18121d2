"""Agent bundles on a node: older ones are pruned, but never one an agent started from
lately (several controllers on different versions share the nodes; an agent reads files
from its bundle's unpacked copy, which goes with the bundle). That each agent start marks
its bundle as used: test_transport_ssh.py."""

import time
from types import SimpleNamespace

from orchestrator.io.transport.agent_session import IN_USE_SECONDS, prune_bundles


class FakeSFTP:
    def __init__(self, files):
        self.files = dict(files)  # name -> mtime
        self.removed = []

    def listdir_attr(self, directory):
        return [SimpleNamespace(filename=n, st_mtime=m) for n, m in self.files.items()]

    def remove(self, path):
        self.removed.append(path.rsplit("/", 1)[-1])


def test_old_bundles_go_but_not_one_used_lately():
    now = time.time()
    sftp = FakeSFTP({
        "orch-agent-current.pyz": now,
        "orch-agent-a.pyz": now - 10,  # the two newest others: kept
        "orch-agent-b.pyz": now - 20,
        "orch-agent-busy.pyz": now - 60,  # beyond the two, but an agent started from it a minute ago
        "orch-agent-old.pyz": now - IN_USE_SECONDS - 60,
        "orch-agent-older.pyz": now - 10 * IN_USE_SECONDS,
    })
    conn = SimpleNamespace(sftp=lambda: sftp)
    doomed = prune_bundles(conn, "/var/lib/orch-agent/bundles", keep={"orch-agent-current.pyz"})
    assert sorted(doomed) == sorted(sftp.removed) == ["orch-agent-old.pyz", "orch-agent-older.pyz"]

