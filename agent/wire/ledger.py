"""The release ledger's contract: the statuses a release record may have (agent.ledger
stores the records, the controller's releases module moves them between statuses)."""

from __future__ import annotations

STATUSES = ("deploying", "live", "failed", "rolled_back", "superseded")
