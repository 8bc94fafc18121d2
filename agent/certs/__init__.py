"""Certificates on a node: the store HAProxy serves from and the ACME certificate daemon."""
