"""The orch node agent: runs on each node as `python3 orch-agent-<hash>.pyz rpc`.

It speaks JSON lines on stdin/stdout (see agent.wire.protocol) and drives the node's
Docker Engine through the docker SDK. Stdlib + docker SDK only, and Python 3.9
compatible: this code runs on the node's python3, not the controller's.
"""

__version__ = "0.1.0"
