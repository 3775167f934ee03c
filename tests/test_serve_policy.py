"""The websocket policy server, driven by the stock openpi-client (installed with --no-deps: it pins numpy<2)."""

from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
import pytest
import transformers
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from data_utils.hdf5_io import find_all_hdf5
from evaluate import msgpack_numpy
from evaluate.policy import DexVLAPolicy
from evaluate.serve_policy import PolicyServer, dummy_observation
from tests.conftest import CAMERAS, EVAL_CHUNK
from tests.test_eval_policy import observation

transformers.logging.set_verbosity_error()
CHUNK = EVAL_CHUNK




@pytest.fixture(scope="module")
def policy(tiny_vla_ckpt):
    return DexVLAPolicy(tiny_vla_ckpt, device="cpu", max_new_tokens=4, seed=0)


@pytest.fixture(scope="module")
def server(policy):
    server = PolicyServer(policy, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(timeout=10)


def test_wire_format_matches_openpi():
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int64(3), "c": "text", "d": [1, 2.5]}
    for pack, unpack in ((msgpack_numpy.packb, openpi_msgpack.unpackb), (openpi_msgpack.packb, msgpack_numpy.unpackb)):
        back = unpack(pack(data))
        np.testing.assert_array_equal(back["a"], data["a"])
        assert back["a"].dtype == np.float32 and back["b"] == 3 and back["c"] == "text" and back["d"] == [1, 2.5]
    with pytest.raises((TypeError, ValueError)):
        msgpack_numpy.packb({"x": np.array([object()], dtype=object)})


def test_openpi_client_gets_an_action_chunk(server, policy, episodes_dir):
    client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    meta = client.get_server_metadata()
    assert meta["camera_names"] == CAMERAS and meta["chunk_size"] == CHUNK and meta["action_dim"] == 14
    obs = observation(find_all_hdf5(episodes_dir)[0], 4)
    reply = client.infer(obs)
    assert reply["actions"].shape == (CHUNK, 14) and reply["actions"].dtype == np.float32
    np.testing.assert_array_equal(reply["actions"], policy.infer(obs)["actions"])
    assert isinstance(reply["reasoning"], str) and reply["server_timing"]["infer_ms"] > 0
    second = client.infer(obs)
    assert "prev_total_ms" in second["server_timing"]
    client._ws.close()


def test_malformed_observation_gets_an_error_and_the_server_keeps_serving(server, episodes_dir):
    client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    good = observation(find_all_hdf5(episodes_dir)[0], 0)
    missing_camera = {**good, "images": {k: v for k, v in good["images"].items() if k != "cam_right_wrist"}}
    wrong_state = {**good, "state": np.zeros(5, np.float32)}
    wrong_dtype = {**good, "images": {**good["images"], "cam_high": good["images"]["cam_high"].astype(np.float64)}}
    for bad, field in ((missing_camera, "images.cam_right_wrist"), (wrong_state, "state"), (wrong_dtype, "images.cam_high")):
        with pytest.raises(RuntimeError, match=f"ObservationError: observation field '{field}'"):
            client.infer(bad)
        assert client.infer(good)["actions"].shape == (CHUNK, 14)  # same connection, still served
    # A fresh connection works as well, and the health check answers.
    other = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    assert other.infer(good)["actions"].shape == (CHUNK, 14)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
        assert response.status == 200
    client._ws.close()
    other._ws.close()


def test_round_trip_time(server, policy):
    client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    obs = dummy_observation(policy.metadata)
    client.infer(obs)
    start = time.perf_counter()
    for _ in range(3):
        reply = client.infer(obs)
    round_trip_ms = 1000 * (time.perf_counter() - start) / 3
    # Transport adds little to inference: round trip minus the server's own time stays small.
    assert round_trip_ms - reply["server_timing"]["infer_ms"] < 100
    client._ws.close()


def test_server_binds_loopback_by_default(policy):
    server = PolicyServer(policy, port=0)
    try:
        assert server.host == "127.0.0.1"
    finally:
        server.shutdown()
