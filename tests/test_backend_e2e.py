"""The real torch backend behind the real ZeroMQ server, over loopback, on a tiny generator."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from dragd.daemon.model.checkpoints import load_checkpoint
from dragd.daemon.edit.drag import DragConfig, DragSession
from dragd.daemon.edit.image_prep import make_geometry
from dragd.daemon.service.server import Server, ServerConfig
from dragd.daemon.edit.session import _mask_to_generator, to_generator, to_layer
from dragd.daemon.service.torch_backend import TorchBackend
from dragd.protocol import Client, Image, RemoteError


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    backend = TorchBackend(model=str(tiny_model_path), device="cpu",
                           cache_dir=tmp_path_factory.mktemp("inversions"))
    srv = Server(backend, ServerConfig(endpoint="tcp://127.0.0.1:0")).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with Client(server.endpoint, timeout=10.0) as c:
        yield c


def layer_image(w=48, h=40, channels=4, seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.random((h, w, channels)) * 255).astype(np.uint8)
    if channels == 4:
        arr[..., 3] = 200
    return arr, Image(np.ascontiguousarray(arr).data, w, h, channels)


def as_array(img: Image) -> np.ndarray:
    return np.frombuffer(bytes(img.data), np.uint8).reshape(img.height, img.width, img.channels)


def test_round_trip_matches_the_engine_and_keeps_pixels_outside_the_mask(client, tiny_model_path):
    arr, img = layer_image()
    session = client.open_session(img, invert={"method": "none"})
    mask = np.zeros(arr.shape[:2], np.uint8)
    mask[4:36, 6:42] = 255
    points = [((20.0, 20.0), (26.0, 22.0))]
    events = []
    result = client.drag(session, points, mask=Image(mask.data, 48, 40, 1), progress=events.append,
                         max_steps=8, preview_every=2, preview_max_size=32)
    progress = [e for e in events if e.kind == "progress"]
    assert [e["step"] for e in progress] == sorted(e["step"] for e in progress)
    assert any("preview" in e.images for e in progress)
    assert result["steps"] <= 8 and result["stop"] in ("converged", "max_steps")

    # The same drag run directly on the engine ends at the same handle positions.
    G = load_checkpoint(tiny_model_path).G
    geo = make_geometry(40, 48, G.resolution)
    gen_mask = _mask_to_generator(mask.astype(np.float32) / 255, geo)
    ds = DragSession(G, G.mean_w().unsqueeze(0), to_generator(geo, [p[0] for p in points]),
                     to_generator(geo, [p[1] for p in points]), mask=gen_mask, config=DragConfig(max_steps=8))
    *_, last = ds.run()
    expected = to_layer(geo, last.handles.numpy())
    np.testing.assert_allclose(np.array(result["handles"]), expected, atol=1e-3)

    out = as_array(result.images["image"])
    assert out.shape == arr.shape
    outside = mask == 0
    assert np.array_equal(out[outside], arr[outside])
    assert np.array_equal(out[..., 3], arr[..., 3])
    assert (out[~outside][..., :3] != arr[~outside][..., :3]).any()


def test_continue_undo_and_reset(client):
    _, img = layer_image(seed=1)
    session = client.open_session(img, invert={"method": "none"})
    r1 = client.drag(session, [((10, 10), (14, 10))], max_steps=3)
    r2 = client.drag(session, [((30, 20), (30, 26))], max_steps=3)
    assert r2["history"] == r1["history"] + 1
    back = client.undo(session)
    assert back["history"] == r1["history"]
    assert np.array_equal(as_array(back.image if hasattr(back, "image") else back.images["image"]),
                          as_array(r1.images["image"]))
    client.reset_points(session)
    client.undo(session)
    with pytest.raises(RemoteError) as e:
        client.undo(session)
    assert e.value.code == "bad_state"


def test_pti_session_is_cached_second_time(client):
    _, img = layer_image(seed=2, channels=3)
    first = client.open_session(img, invert={"method": "pti", "quality": "fast", "w_steps": 10, "tune_steps": 10})
    steps = []
    second = client.open_session(img, invert={"method": "pti", "quality": "fast", "w_steps": 10, "tune_steps": 10},
                                 progress=lambda e: steps.append(e) if e.kind == "progress" else None)
    assert steps == []
    assert second.info["info"]["from_cache"] is True and first.info["info"]["from_cache"] is False


def test_opening_a_result_layer_continues_that_edit_without_inverting(client):
    """The host's next run on the layer a drag produced (same pixels, region and settings)
    starts from the drag's latent and tuned generator: no inversion, nothing re-fitted."""
    invert = {"method": "pti", "quality": "fast", "w_steps": 10, "tune_steps": 10}
    _, img = layer_image(seed=7, channels=3)
    first = client.open_session(img, invert=invert)
    dragged = client.drag(first, [((20.0, 20.0), (27.0, 22.0))], max_steps=4, stall_steps=0)
    result = dragged.images["image"]

    steps = []
    job = client.start_open_session(result, invert=invert,
                                    on_event=lambda e: steps.append(e) if e.kind == "progress" else None)
    client.wait(job, 30)
    opened = job.get()
    assert steps == [] and opened["info"]["continues_edit"] is True
    # What it reopened is what the drag left: rendering it again gives the result's pixels.
    assert bytes(opened.images["image"].data) == bytes(result.data)
    # The drag's state carries on: a further drag starts where the first one ended.
    more = client.drag(job.session, [((27.0, 22.0), (30.0, 22.0))], max_steps=2, stall_steps=0)
    assert more["steps"] >= 1

    # Other settings, or other pixels, are a fresh inversion.
    other = client.open_session(result, invert={**invert, "w_steps": 11})
    assert other.info["info"]["continues_edit"] is False and other.info["info"]["from_cache"] is False
    changed = bytearray(result.data)
    changed[0] ^= 0xFF
    fresh = client.open_session(Image(bytes(changed), result.width, result.height, result.channels),
                                invert=invert)
    assert fresh.info["info"]["continues_edit"] is False


@pytest.mark.parametrize("points, mask_kind, code, words", [
    ([((47.9, 5), (70, 5))], None, "bad_points", "outside"),
    ([((5, 5), (9, 5))], "empty", "bad_value", "empty"),
    ([((5, 5), (9, 5)), ((5, 5), (9, 9))], None, "bad_points", "duplicate"),
])
def test_bad_drags_get_clear_errors_and_the_session_survives(client, points, mask_kind, code, words):
    _, img = layer_image(seed=3)
    session = client.open_session(img, invert={"method": "none"})
    mask = None
    if mask_kind == "empty":
        mask = Image(bytes(48 * 40), 48, 40, 1)
    with pytest.raises(RemoteError) as e:
        client.drag(session, points, mask=mask, max_steps=2)
    assert e.value.code == code and words in e.value.message.lower()
    ok = client.drag(session, [((10, 10), (12, 10))], max_steps=2)
    assert ok["steps"] >= 1


def test_cancel_stops_a_running_drag_and_the_session_stays_usable(client):
    _, img = layer_image(seed=4)
    session = client.open_session(img, invert={"method": "none"})
    job = client.start_drag(session, [((10, 10), (40, 30))], max_steps=5000, stop_distance=0.0)
    seen = threading.Event()
    while not job.done:
        for ev in client.poll(100):
            if ev.kind == "progress" and ev["step"] >= 2 and not seen.is_set():
                seen.set()
                client.cancel(job, wait=False)
    result = job.get()
    assert result["stop"] == "cancelled" and result["steps"] < 5000
    again = client.drag(session, [((10, 10), (12, 10))], max_steps=2)
    assert again["steps"] >= 1


def test_a_short_stall_window_does_not_end_a_drag_that_still_arrives(client):
    _, img = layer_image(seed=6)
    session = client.open_session(img, invert={"method": "none"})
    # The old rule (no gain of half the stop distance within the window) ended this drag as
    # "stalled" after one step; its handle never hops back and forth, so it goes on and arrives.
    result = client.drag(session, [((10, 10), (40, 30))], max_steps=800, stall_steps=1)
    assert result["stop"] == "converged" and result["steps"] < 800
    again = client.drag(session, [((10, 10), (40, 30))], max_steps=3, stall_steps=0)
    assert again["stop"] == "max_steps" and again["steps"] == 3


def test_unknown_model_is_a_clear_error(client):
    _, img = layer_image(seed=5)
    with pytest.raises(RemoteError) as e:
        client.open_session(img, model="no-such-model", invert={"method": "none"})
    assert e.value.code == "unknown_model" and "no-such-model" in e.value.message


def test_detail_paste_keeps_pixels_outside_the_mask_and_edits_inside(client):
    arr, img = layer_image(w=96, h=80, channels=4, seed=6)
    session = client.open_session(img, invert={"method": "none"})
    mask = np.zeros(arr.shape[:2], np.uint8)
    mask[10:70, 20:80] = 255
    r = client.drag(session, [((40.0, 40.0), (50.0, 44.0))], mask=Image(mask.data, 96, 80, 1),
                    max_steps=6, paste="detail")
    out = as_array(r.images["image"])
    assert np.array_equal(out[mask == 0], arr[mask == 0])
    assert np.array_equal(out[..., 3], arr[..., 3])
    assert (out[mask > 0][..., :3] != arr[mask > 0][..., :3]).any()
