"""The certificate daemon's decisions, as data (pure; the daemon and the operations act on
them): is a certificate due for an order, when to look again, how long to wait after a
failure, what a follower fetches, whether a new config restarts the daemon."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

from agent.wire.tls import RENEW_FRACTION

CHECK_SECONDS = 300.0  # the issuer looks at expiries this often (and at once on SIGUSR1)
RETRY_SECONDS = 300.0  # after a failed order, the first retry (doubling up to MAX_RETRY_SECONDS)
MAX_RETRY_SECONDS = 4 * 3600.0  # a public CA limits failed validations per name and hour

DUE_FORCED = "forced"
DUE_MISSING = "missing"
DUE_NAMES = "names"  # the certificate held does not name the host
DUE_RENEW = "renew"  # inside the renewal window (or expired)


def renew_at(not_before: float, not_after: float, renew_before: float) -> float:
    """When a certificate valid from not_before to not_after is renewed: `renew_before`
    seconds before expiry, or with RENEW_FRACTION of its lifetime left."""
    window = renew_before if renew_before > 0 else RENEW_FRACTION * max(0.0, not_after - not_before)
    return not_after - window


def due(host: str, leaf: Optional[object], now: float, renew_before: float, force: bool = False) -> str:
    """Why `host` needs an order now ("" : it does not). `leaf` is an acme_client.Leaf of
    the certificate held for it, or None."""
    if force:
        return DUE_FORCED
    if leaf is None:
        return DUE_MISSING
    if host not in getattr(leaf, "names", ()):
        return DUE_NAMES
    if now >= renew_at(leaf.not_before, leaf.not_after, renew_before):  # type: ignore[attr-defined]
        return DUE_RENEW
    return ""


def retry_delay(failures: int) -> float:
    """Seconds to wait before the next scheduled order of a name that failed `failures`
    times in a row (an explicit certd_ensure does not wait)."""
    if failures <= 0:
        return 0.0
    return min(MAX_RETRY_SECONDS, RETRY_SECONDS * 2 ** min(failures - 1, 16))


def next_check(now: float, renewals: List[float], retries: List[float], every: float = CHECK_SECONDS) -> float:
    """The next time the issuer looks: every `every` seconds, sooner when a renewal or a
    retry falls before that (short-lived certificates), never in the past."""
    return max(now, min([now + every] + list(renewals) + list(retries)))


def to_fetch(hosts: List[str], index: Mapping[str, str], local: Mapping[str, str]) -> List[str]:
    """A follower's pull: the names it serves whose certificate at the issuer (host ->
    fingerprint) differs from the one it holds."""
    return [h for h in hosts if index.get(h) and index[h] != local.get(h)]


def restart_needed(old: Optional[Dict[str, object]], new: Dict[str, object], running: bool, current: bool) -> bool:
    """certd_configure (re)starts the daemon when it is not running, runs other code, or
    its config (secret included) changed; the same config again leaves it alone."""
    return not running or not current or old != new
