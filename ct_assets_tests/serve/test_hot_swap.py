"""Hot swap: promotions swap in under load without a failed request; bad versions are refused."""

from __future__ import annotations

import threading
import time

import httpx

from ct_assets.lib.model_store import POINTER, ModelStore, now_iso, write_json_atomic
from ct_assets.lib.training import LIGHTGBM_FILE
from ct_assets.serve.request_log import read_request_log
from ct_assets_tests.serve.conftest import MODEL, oip_inputs, save_version, serve_in_thread

CLIENTS = 16


def served_version(client: httpx.Client) -> str:
    return client.get(f"/v2/models/{MODEL}").json()["parameters"]["version"]


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def deploy_unverified(store: ModelStore, version: str) -> None:
    """Point deployed.json at `version` as a promotion would, without verifying it (a file
    corrupted after its promotion looks like this to the server)."""
    state = store.pointer()
    record = {**state["deployed"], "version": version, "promoted_at": now_iso(),
              "reason": "manual"}
    write_json_atomic(store.root / POINTER, {"deployed": record,
                                             "history": [*state["history"], record]})


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_promotions_swap_in_under_load_without_a_failed_request(settings, trained):
    store = ModelStore(settings.models_dir)
    body = {"inputs": oip_inputs(trained["rows"].head(20), trained["schema"])}
    stop = threading.Event()
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def client_loop(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.post(f"/v2/models/{MODEL}/infer", json=body)
                    seen = (response.status_code, response.json().get("model_version"))
                except httpx.HTTPError as error:
                    seen = (0, repr(error))
                with lock:
                    results.append(seen)

    promotions = ["v2", "v3", "v1", "v2", "v3"]
    with serve_in_thread(settings) as (server, client):
        threads = [threading.Thread(target=client_loop, args=(server.url,))
                   for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for version in promotions:
            time.sleep(0.15)
            store.promote(version, "manual")
            wait_for(lambda v=version: served_version(client) == v)
        with lock:
            answered_before_last = len(results)
        wait_for(lambda: len(results) > answered_before_last + 3 * CLIENTS)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        swaps = metric(client, "ct_serve_hot_swaps_total")
        refused = metric(client, "ct_serve_hot_swaps_refused_total")
    failures = [seen for seen in results if seen[0] != 200]
    assert failures == [] and len(results) > 100
    assert swaps == len(promotions) and refused == 0
    assert {version for _, version in results} == {"v1", "v2", "v3"}
    # every response after the last swap was observed carries the last version
    assert {version for _, version in results[answered_before_last + CLIENTS:]} == {"v3"}
    log = read_request_log(settings.request_log_dir)
    assert log.height == 20 * len(results)
    assert set(log["model_version"]) == {"v1", "v2", "v3"}


def test_a_tampered_or_unfit_version_is_refused_and_the_old_one_keeps_serving(settings,
                                                                             trained, tmp_path):
    store = ModelStore(settings.models_dir)
    save_version(store, "unfit-schema", trained["models"]["multiclass"], tmp_path / "work")
    save_version(store, "not-probabilities", trained["models"]["amounts"], tmp_path / "work",
                 task="binary")
    body = {"inputs": oip_inputs(trained["rows"].head(5), trained["schema"])}
    with serve_in_thread(settings) as (_, client):
        def infer_version() -> str:
            response = client.post(f"/v2/models/{MODEL}/infer", json=body)
            assert response.status_code == 200, response.text
            return response.json()["model_version"]

        assert infer_version() == "v1"
        flip_a_byte(store.path("v2") / LIGHTGBM_FILE)
        deploy_unverified(store, "v2")
        wait_for(lambda: metric(client, "ct_serve_hot_swaps_refused_total") == 1)
        assert infer_version() == "v1"
        time.sleep(10 * settings.watch_seconds)  # not retried while deployed.json is the same
        assert metric(client, "ct_serve_hot_swaps_refused_total") == 1
        response = client.post(f"/v2/models/{MODEL}/versions/v2/infer", json=body)
        assert response.status_code == 409
        assert "model.txt: sha256 mismatch" in response.json()["error"]

        store.promote("unfit-schema", "manual")
        wait_for(lambda: metric(client, "ct_serve_hot_swaps_refused_total") == 2)
        store.promote("not-probabilities", "manual")
        wait_for(lambda: metric(client, "ct_serve_hot_swaps_refused_total") == 3)
        assert infer_version() == "v1"
        assert metric(client, "ct_serve_hot_swaps_total") == 0

        store.promote("v3", "manual")
        wait_for(lambda: served_version(client) == "v3")
        assert infer_version() == "v3"
        assert metric(client, "ct_serve_hot_swaps_total") == 1
        assert 'ct_serve_model_info{model_name="ct-model",model_version="v3"} 1.0' in \
            client.get("/metrics").text


def test_refusal_reasons_are_kept(settings, trained, tmp_path, caplog):
    store = ModelStore(settings.models_dir)
    save_version(store, "unfit-schema", trained["models"]["multiclass"], tmp_path / "work")
    save_version(store, "not-probabilities", trained["models"]["amounts"], tmp_path / "work",
                 task="binary")
    with serve_in_thread(settings) as (server, client):
        slot = server.app.state.service.slot
        store.promote("unfit-schema", "manual")
        wait_for(lambda: slot.refused is not None)
        assert "feature schema differs" in slot.refused["reason"]
        assert "channel" in slot.refused["reason"]
        store.promote("not-probabilities", "manual")
        wait_for(lambda: slot.refused["version"] == "not-probabilities")
        assert "canary" in slot.refused["reason"] and "[0, 1]" in slot.refused["reason"]
        assert served_version(client) == "v1"
    assert any("refused unfit-schema" in record.getMessage() for record in caplog.records)


def test_an_unreadable_pointer_keeps_the_model_serving(settings, trained):
    store = ModelStore(settings.models_dir)
    body = {"inputs": oip_inputs(trained["rows"].head(2), trained["schema"])}
    with serve_in_thread(settings) as (_, client):
        (store.root / POINTER).write_text("{ half a file", encoding="utf-8")
        time.sleep(5 * settings.watch_seconds)
        response = client.post(f"/v2/models/{MODEL}/infer", json=body)
        assert response.status_code == 200 and response.json()["model_version"] == "v1"
        write_json_atomic(store.root / POINTER, {"deployed": None, "history": []})
        store.promote("v2", "manual")
        wait_for(lambda: served_version(client) == "v2")
