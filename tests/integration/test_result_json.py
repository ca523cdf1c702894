"""Every kind of result serialises as it prints: json.dumps, Flask, Django and FastAPI.

Returning the result from an API view is the first thing people do with it. Each kind is
produced by the real client against the emulator: queued, delivered, duplicate, rejected
here (invalid) and by the server, failed, dropped, spooled, still pending, and flush/close
counts.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from cms_shipper import CMSClient, FlushResult, Outcome, Result, TrackResult
from cms_shipper.emulator import Emulator

from .conftest import FAST, TOKEN, ClientFactory, unused_port


def every_kind(emulator: Emulator, make_client: ClientFactory, tmp_path: Path) -> dict[str, Any]:
    """One result of each kind, by name."""
    client = make_client(retry_max_attempts=1)
    kinds: dict[str, Any] = {}
    queued = client.track_sale("buy", "u1", "inv-1", 4999, "USD", click_id="clk-1")
    kinds["queued"] = queued
    kinds["delivered"] = queued.wait(10.0)
    kinds["duplicate"] = client.track_sale("buy", "u1", "inv-1", 4999, "USD").wait(10.0)
    kinds["invalid"] = client.track_sale("buy", "u1", "inv-2", 49.99, "USD")  # type: ignore[arg-type]
    kinds["rejected by the server"] = client.track_lead("verify", "nobody").wait(10.0)
    emulator.fail_customer("u3", status=503)
    kinds["failed"] = client.track_lead("signup", "u3", click_id="k").wait(10.0)
    emulator.configure(latency_s=30.0)
    held = client.track_lead("signup", "u4", click_id="k")
    kinds["pending"] = held.wait(0.01)
    kinds["flush"] = client.flush(0.05)
    kinds["close"] = client.close(0.2)
    kinds["dropped"] = held.wait(0)
    kinds["closed"] = client.track_lead("signup", "u5", click_id="k")
    spooling = CMSClient(token=TOKEN, host=f"http://127.0.0.1:{unused_port()}",
                         spool_path=str(tmp_path / "spool.db"), **FAST)  # fmt: skip
    late = spooling.track_lead("signup", "u6", click_id="k")
    spooling.close(0.2)
    kinds["spooled"] = late.wait(0)
    return kinds


def round_trip(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value))  # noqa: S301  # bytes we just made


@pytest.fixture
def kinds(cms_emulator: Emulator, make_client: ClientFactory, tmp_path: Path) -> dict[str, Any]:
    return every_kind(cms_emulator, make_client, tmp_path)


def test_every_result_is_a_dict_that_json_dumps_as_it_prints(kinds: dict[str, Any]) -> None:
    expected = {
        "queued": None, "delivered": Outcome.DELIVERED, "duplicate": Outcome.DUPLICATE,
        "invalid": Outcome.REJECTED, "rejected by the server": Outcome.REJECTED,
        "failed": Outcome.FAILED, "pending": None, "dropped": Outcome.DROPPED,
        "closed": Outcome.DROPPED, "spooled": Outcome.SPOOLED,
    }  # fmt: skip
    for name, outcome in expected.items():
        result = kinds[name]
        assert isinstance(result, dict) and isinstance(result, Result), name
        assert result.outcome is outcome, (name, result)
        loaded = json.loads(json.dumps(result))
        assert loaded == result.to_dict() == json.loads(json.dumps(result.to_dict())), name
        assert loaded["outcome"] == (outcome.value if outcome else None)
        assert repr(result) == repr(loaded), name  # prints as it serialises
        assert result["success"] is result.success
        # An answer before the final outcome says so, in every view.
        assert result["queued"] is result.queued is loaded["queued"] is (outcome is None), name
    for name, pending in (("flush", 1), ("close", 0)):  # close settled it: dropped
        counts = kinds[name]
        assert isinstance(counts, FlushResult) and isinstance(counts, dict)
        loaded = json.loads(json.dumps(counts))
        assert loaded["delivered"] == counts.delivered == 1 and loaded["pending"] == pending
        assert loaded["timed_out"] is True and not counts
    assert isinstance(kinds["queued"], TrackResult) and kinds["queued"]["message"] == "queued"


def test_a_duplicate_is_a_success_in_every_view(kinds: dict[str, Any]) -> None:
    duplicate = kinds["duplicate"]
    assert (
        duplicate.success and duplicate["success"] and json.loads(json.dumps(duplicate))["success"]
    )
    assert duplicate.status_code == 409 and duplicate.error is None
    # The server's own body says "success": false; it is not passed on as data.
    assert duplicate.data is None and "Duplicate invoiceId" in (duplicate.message or "")
    assert "'success': False" not in repr(duplicate)
    assert '"success": false' not in json.dumps(duplicate)


def test_results_are_read_only_and_copy_and_pickle_as_snapshots(kinds: dict[str, Any]) -> None:
    result = kinds["rejected by the server"]
    with pytest.raises(TypeError, match="read-only"):
        result["success"] = True
    for change in (result.clear, lambda: result.update(x=1), lambda: result.pop("error")):
        with pytest.raises(TypeError):
            change()
    assert dict(result) == result and type(dict(result)) is dict  # a mutable copy
    for twin in (copy.copy(result), round_trip(result)):
        assert twin == result and type(twin) is Result and twin.outcome is Outcome.REJECTED
    queued = round_trip(kinds["queued"])
    assert queued == kinds["queued"] and type(queued) is Result  # a snapshot, no books
    counts = round_trip(kinds["close"])
    assert counts == kinds["close"] and isinstance(counts, FlushResult) and not counts


def test_flask_jsonify_returns_every_result(kinds: dict[str, Any]) -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)
    with app.app_context():
        for name, result in kinds.items():
            response = flask.jsonify(result)
            assert response.status_code == 200
            assert json.loads(response.get_data()) == json.loads(json.dumps(result)), name


def test_django_json_response_takes_every_result(kinds: dict[str, Any]) -> None:
    pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    from django.http import JsonResponse

    for name, result in kinds.items():
        response = JsonResponse(result)  # safe=True: only dicts are accepted
        assert json.loads(response.content) == json.loads(json.dumps(result)), name


def test_fastapi_returns_every_result(kinds: dict[str, Any]) -> None:
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    app = fastapi.FastAPI()

    @app.get("/result/{name}")
    def view(name: str) -> Any:
        return kinds[name]

    with TestClient(app) as http:
        for name, result in kinds.items():
            response = http.get(f"/result/{name}")
            assert response.status_code == 200, response.text
            assert response.json() == json.loads(json.dumps(result)), name


def test_stats_is_the_typed_dict_it_says_and_serialises(make_client: ClientFactory) -> None:
    import typing

    from cms_shipper import Stats

    assert typing.get_type_hints(CMSClient.stats)["return"] is Stats
    client = make_client()
    client.track_lead("signup", "u1", click_id="k").wait(10.0)
    stats = client.stats()
    hints = typing.get_type_hints(Stats)
    assert set(stats) == set(hints) == Stats.__required_keys__
    for key, value in stats.items():
        kind = typing.get_origin(hints[key]) or hints[key]
        if kind is typing.Literal:
            assert value in typing.get_args(hints[key]), key
        elif kind is not typing.Union:  # Optional[...]: checked by the json round trip
            assert isinstance(value, kind), (key, value)
    assert json.loads(json.dumps(stats)) == stats
