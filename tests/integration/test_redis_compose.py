"""docker-compose.yml validates (no Docker engine needed: ``docker-compose config`` only parses)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from redis_helpers import REPO

COMPOSE = shutil.which("docker-compose")


@pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (apt-get install docker-compose)"
)
def test_compose_file_validates_and_has_both_worker_profiles() -> None:
    assert COMPOSE is not None
    res = subprocess.run(
        [COMPOSE, "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    services = yaml.safe_load(res.stdout)["services"]
    assert set(services) == {"redis", "mosquitto", "streamer", "worker-cpu", "worker-gpu"}
    assert all("healthcheck" in s for s in services.values())
    assert services["worker-cpu"]["profiles"] == ["cpu"] and services["worker-gpu"]["profiles"] == [
        "gpu"
    ]
    assert (
        "--device" in services["worker-gpu"]["command"]
        and "cuda" in services["worker-gpu"]["command"]
    )
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    for name in ("streamer", "worker-cpu", "worker-gpu"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
