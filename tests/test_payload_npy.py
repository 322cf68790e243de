"""`.npy` request bodies: the header must be exactly what np.save writes (issue 19 #12)."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from nfkd.serving.payload import ApiError, parse_npy

DIM = 13


def _npy(header: dict, body: bytes) -> bytes:
    """A version-1.0 .npy file with an arbitrary (crafted) header dict."""
    text = repr(header).encode("latin1")
    pad = (64 - (10 + len(text) + 1) % 64) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body


BODY = np.arange(2 * DIM, dtype="<f4").tobytes()


@pytest.mark.parametrize("header", [
    {"descr": "<f4", "fortran_order": False, "shape": (2.7, DIM)},
    {"descr": "<f4", "fortran_order": False, "shape": (True, DIM)},  # True would be taken as 1 row
    {"descr": "<f4", "fortran_order": False, "shape": (2, 13.0)},
    {"descr": "<f4", "fortran_order": "yes", "shape": (2, DIM)},
    {"descr": "<f4", "fortran_order": 1, "shape": (2, DIM)},
    {"descr": "<f4", "fortran_order": False, "shape": [2, DIM]},
])
def test_crafted_header_is_refused(header):
    # The body has the bytes the header's sizes would claim if read with int(): only the header is wrong.
    body = BODY[: int(header["shape"][0]) * DIM * 4]
    # numpy itself refuses these headers: the reference for "not a valid .npy file".
    with pytest.raises((ValueError, TypeError)):
        np.load(io.BytesIO(_npy(header, body)), allow_pickle=False)
    with pytest.raises(ApiError) as exc:
        parse_npy(_npy(header, body), (DIM,), 64)
    assert exc.value.status == 400 and "malformed .npy payload" in exc.value.message


@pytest.mark.parametrize("fortran", [False, True])
def test_np_save_output_still_parses(fortran):
    x = np.random.RandomState(0).randn(2, DIM).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(x) if fortran else x)
    np.testing.assert_array_equal(parse_npy(buf.getvalue(), (DIM,), 64), x)


# Issue 24 #9: headers that used to reach numpy (HTTP 500 with two tracebacks) or were accepted with extra keys.
@pytest.mark.parametrize("header, data, status, message", [
    ({"descr": "<f4", "fortran_order": False, "shape": (0, 10**20)}, b"", 422, "empty batch"),
    ({"descr": "<f4", "fortran_order": False, "shape": (1,) * 65}, BODY[:4], 400, "65 dimensions"),
    ({"descr": "<f4", "fortran_order": False, "shape": (1,) * 33}, BODY[:4], 400, "33 dimensions"),
    ({"descr": "<f4", "fortran_order": False, "shape": (2, 10**20)}, BODY, 400, "body has 104 data bytes"),
    ({"descr": "<f4", "fortran_order": False, "shape": (2**40, 2**40, 0)}, b"", 422, "empty batch"),
    ({"descr": "<f4", "fortran_order": False, "shape": (2, DIM), "extra": 1}, BODY, 400, "header keys ['extra']"),
])
def test_hostile_header_is_one_clear_client_error(header, data, status, message):
    with pytest.raises(ApiError) as exc:
        parse_npy(_npy(header, data), (DIM,), 64)
    assert exc.value.status == status and message in exc.value.message, exc.value.message
    assert "\n" not in exc.value.message and len(exc.value.message) < 300
