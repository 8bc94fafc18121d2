"""Unit tests never wait for real time in the deploy engine's delay/monitor windows."""

import pytest


@pytest.fixture(autouse=True)
def no_deploy_waits(monkeypatch):
    slept = []
    monkeypatch.setattr("orchestrator.app.deploy._sleep", slept.append)
    return slept
