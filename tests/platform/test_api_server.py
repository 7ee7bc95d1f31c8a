"""The api-server against a real PostgreSQL and a real model-server."""

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

SETOSA = [5.1, 3.5, 1.4, 0.2]
API_IMAGE = "registry.local/mlops/api-server:{}"


def test_health_reports_version_database_and_feature_flags(launch, api_env):
    api = launch("api_server", FEATURE_BATCH_PREDICT="false", FEATURE_NEW_UI="TRUE", **api_env)
    reply = api.get("/health")
    assert reply.status == 200
    assert reply.body == {
        "status": "ok",
        "version": "1.4.2",
        "database": "ok",
        "features": {"batch_predict": False, "new_ui": True},
    }
    assert api.metric("app_info", version="1.4.2") == 1


def test_predict_round_trip_records_a_row(launch, api_env, postgres):
    api = launch("api_server", **api_env)
    reply = api.post("/predict", {"features": SETOSA, "user_id": 4201})
    assert reply.status == 200, reply.body
    assert reply.body["prediction"] == "setosa"
    assert reply.body["model_version"] == "2.1.0"
    assert set(reply.body["probabilities"]) == {"setosa", "versicolor", "virginica"}

    rows = postgres.query(
        "SELECT model_version, input, output, latency_ms, now() - created_at < interval '1 minute'"
        " FROM predictions WHERE user_id = 4201"
    )
    assert len(rows) == 1
    model_version, stored_input, output, latency_ms, recent = rows[0]
    assert (model_version, stored_input, output, recent) == ("2.1.0", {"features": SETOSA}, "setosa", True)
    assert latency_ms > 0
    assert api.metric("predictions_total", model_version="2.1.0") == 1
    assert api.metric("active_users") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"features": [5.1, 3.5, 1.4]},
        {"features": [5.1, 3.5, 1.4, "wide"]},
        {"features": [5.1, 3.5, 1.4, True]},
        {"features": SETOSA, "user_id": "alice"},
        ["not", "an", "object"],
    ],
)
def test_malformed_prediction_requests_are_refused_with_400(launch, api_env, body):
    api = launch("api_server", **api_env)
    reply = api.post("/predict", body)
    assert reply.status == 400
    assert reply.body["error"]
    assert api.metric("http_requests_total", method="POST", path="/predict", status="400") == 1


def test_wrong_api_key_is_refused_and_counted(launch, api_env):
    api = launch("api_server", API_KEY="key-for-tests", **api_env)
    assert api.post("/predict", {"features": SETOSA}).status == 401
    assert api.post("/predict", {"features": SETOSA}, headers={"X-API-Key": "guess"}).status == 401
    assert api.post("/predict", {"features": SETOSA}, headers={"X-API-Key": "key-for-tests"}).status == 200
    assert api.metric("auth_failures_total") == 2


def test_batch_prediction_exists_only_behind_its_feature_flag(launch, api_env, postgres):
    batch = {"instances": [{"features": SETOSA, "user_id": 4301}, {"features": [6.7, 3.0, 5.6, 2.2], "user_id": 4301}]}
    without_flag = launch("api_server", **api_env)
    assert without_flag.post("/predict/batch", batch).status == 404

    with_flag = launch("api_server", FEATURE_BATCH_PREDICT="true", **api_env)
    reply = with_flag.post("/predict/batch", batch)
    assert reply.status == 200, reply.body
    assert [p["prediction"] for p in reply.body["predictions"]] == ["setosa", "virginica"]
    assert postgres.query("SELECT count(*) FROM predictions WHERE user_id = 4301") == [(2,)]


def test_faulty_release_fails_a_third_of_predictions_slowly_and_metrics_show_it(launch, api_env):
    api = launch("api_server", IMAGE=API_IMAGE.format("1.5.1"), **api_env)
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(lambda _: api.post("/predict", {"features": SETOSA}).status, range(100)))

    failed = statuses.count(500)
    assert failed + statuses.count(200) == 100
    assert 15 <= failed <= 45, f"{failed} of 100 failed"  # 30% expected; this band is over 3 sigma wide
    assert api.metric("http_requests_total", method="POST", path="/predict", status="500") == failed
    assert api.metric("predictions_total", model_version="2.1.0") == 100 - failed
    # Every prediction took the added 300 ms: none is in the buckets at or under 250 ms.
    assert api.metric("http_request_duration_seconds_bucket", method="POST", path="/predict", le="0.25") == 0
    assert api.metric("http_request_duration_seconds_count", method="POST", path="/predict") == 100
    fault_lines = [line for line in api.logs() if "KeyError" in line["msg"]]
    assert len(fault_lines) == failed and {line["level"] for line in fault_lines} == {"error"}


def test_leaking_release_grows_its_resident_memory(launch):
    healthy = launch("api_server")
    leaking = launch("api_server", IMAGE=API_IMAGE.format("1.5.2"))
    healthy_before, leaking_before = healthy.rss_bytes(), leaking.rss_bytes()
    time.sleep(3)
    healthy_growth = healthy.rss_bytes() - healthy_before
    leaking_growth = leaking.rss_bytes() - leaking_before
    # 2 MiB a second for 3 seconds; the healthy release, idle, stays put.
    assert leaking_growth >= 4 * 2**20, leaking_growth
    assert healthy_growth < 2**20, healthy_growth
    assert leaking.metric("process_resident_memory_bytes") >= leaking_before + 4 * 2**20


@pytest.mark.parametrize(("module", "image"), [
    ("api_server", "registry.local/mlops/api-server:1.6.0"),
    ("model_server", "registry.local/mlops/model-server:2.3.0"),
])  # fmt: skip
def test_release_that_cannot_start_exits_with_a_clear_error(launch, module, image):
    started = time.monotonic()
    program = launch(module, IMAGE=image, wait=False)
    assert program.wait_exit(timeout=10) == 1
    assert time.monotonic() - started < 3
    [*_, last] = program.logs()
    assert last["level"] == "error"
    assert last["msg"].startswith("startup failed:") and "FEATURE_STORE_URL" in last["msg"]
    assert last["image"] == image


@pytest.mark.parametrize("module", ["api_server", "model_server"])
def test_unknown_tag_exits_naming_the_known_tags(launch, module):
    program = launch(module, IMAGE="registry.local/mlops/api-server:9.9.9", wait=False)
    assert program.wait_exit(timeout=10) == 2
    [line] = program.logs()
    assert line["level"] == "error"
    assert "'9.9.9'" in line["msg"] and "1.4.2" in line["msg"] and "2.1.0" in line["msg"]


def test_malformed_feature_flag_stops_the_start(launch):
    program = launch("api_server", FEATURE_BATCH_PREDICT="yes please", wait=False)
    assert program.wait_exit(timeout=10) == 2
    assert "FEATURE_BATCH_PREDICT must be true or false" in program.logs()[-1]["msg"]


def test_wrong_database_password_fails_health_quickly_without_leaking_secrets(launch, api_env, postgres):
    api = launch("api_server", **{**api_env, "DB_PASSWORD": "rotated-away"})
    started = time.monotonic()
    reply = api.get("/health")
    assert time.monotonic() - started < 3
    assert reply.status == 503
    assert reply.body["status"] == "error"
    assert reply.body["database"].startswith("error: ")
    assert "password authentication failed" in reply.body["database"]
    assert api.post("/predict", {"features": SETOSA}).status == 503
    assert api.metric("db_errors_total") >= 2
    output = api.output()
    assert "rotated-away" not in output and postgres.password not in output


def test_unresponsive_database_is_given_up_on_within_the_connect_timeout(launch):
    # A listener that accepts connections and never says a word, like a hung database.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        api = launch("api_server", DB_PORT=str(silent.getsockname()[1]))
        started = time.monotonic()
        reply = api.get("/health")
        waited = time.monotonic() - started
    assert reply.status == 503
    assert "timeout" in reply.body["database"]
    assert 2.5 < waited < 6, waited


def test_unreachable_model_server_answers_502(launch, api_env):
    # Without MODEL_SERVER_URL, launch points it at a closed loopback port.
    api = launch("api_server", **{k: v for k, v in api_env.items() if k != "MODEL_SERVER_URL"})
    reply = api.post("/predict", {"features": SETOSA})
    assert reply.status == 502
    assert reply.body["error"].startswith("model server unreachable")


def test_logs_are_json_lines_and_the_request_id_reaches_the_model_server(launch, api_env, model_server):
    api = launch("api_server", **api_env)
    assert api.post("/predict", {"features": SETOSA}, headers={"X-Request-ID": "trace-me-42"}).status == 200
    assert api.get("/no/such/path").status == 404

    lines = api.logs()
    assert all({"ts", "level", "msg", "service"} <= line.keys() for line in lines)
    requests = {line["path"]: line for line in lines if "status" in line}
    assert requests["/predict"]["request_id"] == "trace-me-42"
    assert {"method", "path", "status", "duration_ms", "request_id"} <= requests["/predict"].keys()
    assert (requests["/predict"]["level"], requests["/no/such/path"]["level"]) == ("info", "warning")
    assert any(line.get("request_id") == "trace-me-42" for line in model_server.logs())


def test_sigterm_stops_the_server_cleanly(launch):
    api = launch("api_server")
    started = time.monotonic()
    api.process.send_signal(signal.SIGTERM)
    assert api.wait_exit(timeout=5) == 0
    assert time.monotonic() - started < 1.5
    assert [line["msg"] for line in api.logs()][-2:] == ["stopping", "stopped"]
