"""The traffic generator, against a real api-server, model-server and database."""

import signal
import time


def test_bounded_run_sends_its_count_and_predictions_land(launch, api_env, postgres):
    api = launch("api_server", **api_env)
    before = postgres.query("SELECT count(*) FROM predictions")[0][0]

    traffic = launch("traffic", wait=False, args=("--count", "20"), TARGET_URL=api.url, RATE="20")
    assert traffic.wait_exit(timeout=20) == 0

    summary = traffic.logs()[-1]
    assert summary["msg"] == "traffic stopped"
    assert (summary["total_requests"], summary["errors"]) == (20, 0)
    assert set(summary["outcomes"]) <= {"/predict 200", "/health 200"}
    predictions = summary["outcomes"].get("/predict 200", 0)
    assert predictions > 0
    assert postgres.query("SELECT count(*) FROM predictions")[0][0] == before + predictions


def test_counts_a_dead_target_as_errors_and_stops_on_sigterm(launch):
    # Without TARGET_URL, launch points it at a closed loopback port.
    traffic = launch("traffic", wait=False, RATE="10")
    time.sleep(1.5)
    stopped_at = time.monotonic()
    traffic.process.send_signal(signal.SIGTERM)
    assert traffic.wait_exit(timeout=5) == 0
    assert time.monotonic() - stopped_at < 1

    summary = traffic.logs()[-1]
    assert summary["final"] is True
    assert summary["total_requests"] >= 5
    assert summary["errors"] == summary["total_requests"]


def test_duration_bounds_a_run(launch):
    started = time.monotonic()
    traffic = launch("traffic", wait=False, args=("--duration", "1"), RATE="5")
    assert traffic.wait_exit(timeout=10) == 0
    assert time.monotonic() - started < 4
    assert 3 <= traffic.logs()[-1]["total_requests"] <= 7
