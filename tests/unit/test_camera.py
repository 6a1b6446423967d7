"""The QA viewer's camera: zoom around the cursor, pan, reset, bounds."""

from __future__ import annotations

import pytest

from nx47_widgets.state.camera import MAX_ZOOM, Camera


def test_fit_fills_the_view_and_centres_the_image():
    cam = Camera(view_size=(900.0, 600.0), image_size=(320.0, 320.0))
    assert cam.fit_scale == pytest.approx(600 / 320)
    x, y, w, h = cam.image_rect()
    assert (w, h) == pytest.approx((600.0, 600.0)) and x == pytest.approx(150.0) and y == pytest.approx(0.0)


@pytest.mark.parametrize("cursor", [(10.0, 20.0), (450.0, 300.0), (899.0, 599.0), (123.4, 567.8)])
def test_wheel_keeps_the_point_under_the_cursor(cursor):
    cam = Camera(view_size=(900.0, 600.0), image_size=(320.0, 200.0))
    before = cam.to_image(*cursor)
    for delta in (-100, -100, -300, 100, -50):
        cam.wheel(delta, *cursor)
        assert cam.to_image(*cursor) == pytest.approx(before, abs=1e-9)
    assert cam.zoom > 1


def test_zoom_in_makes_the_image_bigger_and_is_bounded():
    cam = Camera(view_size=(512.0, 512.0), image_size=(64.0, 64.0))
    w1 = cam.image_rect()[2]
    cam.set_zoom(4.0)
    assert cam.image_rect()[2] == pytest.approx(4 * w1)  # 4x is bigger, never smaller
    cam.set_zoom(1000.0)
    assert cam.zoom == MAX_ZOOM
    cam.wheel(+10_000, 10, 10)  # far out: back to the fit, not smaller
    assert cam.zoom == 1.0 and cam.image_rect()[2] == pytest.approx(w1)


def test_pan_moves_the_image_with_the_pointer_and_reset_fits():
    cam = Camera(view_size=(400.0, 400.0), image_size=(100.0, 100.0))
    cam.set_zoom(4.0)
    x0, y0, _, _ = cam.image_rect()
    cam.pan(30.0, -20.0)
    x1, y1, _, _ = cam.image_rect()
    assert (x1 - x0, y1 - y0) == pytest.approx((30.0, -20.0))
    v = cam.version
    cam.reset()
    assert cam.zoom == 1.0 and cam.center == (50.0, 50.0) and cam.version > v


def test_same_size_keeps_the_camera_a_new_size_resets_it():
    cam = Camera(view_size=(400.0, 400.0), image_size=(100.0, 100.0))
    cam.zoom_at(2.0, 10.0, 10.0)
    assert not cam.set_image(100, 100) and cam.zoom == 2.0  # the next slice: same view
    assert cam.set_image(50, 80) and cam.zoom == 1.0 and cam.center == (25.0, 40.0)
