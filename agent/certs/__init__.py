"""Certificates on the node (issue 15, agent.wire.tls): the store HAProxy serves them
from (store: files, the runtime API, list), the `openssl` CLI behind it (openssl), the
runtime API's ssl commands as data (runtime), and the tls_* operations (ops). The
certificate daemon (certd: daemon, acme_client, certd_ops) puts what it obtains through
store.install.
"""
