"""rdmamsg.dask.framing: a Dask message's frames as a head and separate messages."""
import numpy as np
import pytest

pytest.importorskip("distributed")
from rdmamsg.dask import framing  # noqa: E402


def roundtrip(frames, limit=32768):
    head, separate = framing.plan(frames, limit)
    got, wanted = framing.parse(head)
    assert len(wanted) == len(separate)
    for (index, n), view in zip(wanted, separate):
        assert got[index] is None and n == view.nbytes
        got[index] = bytes(view)
    return [bytes(f) for f in got], head, separate


def test_small_serialized_frames_ride_in_the_head():
    frames = [b"header", b"", b"x" * 100]
    got, head, separate = roundtrip(frames)
    assert got == frames and separate == []


def test_buffers_and_long_frames_go_separately_in_order():
    arr = np.arange(4096, dtype=np.uint8)
    frames = [b"h", memoryview(arr), b"y" * 40000, memoryview(np.zeros(8, np.int64)), b"t"]
    got, head, separate = roundtrip(frames)
    assert got == [bytes(f) for f in frames]
    # the array and the long frame are their own messages; the small array rides along
    assert [v.nbytes for v in separate] == [4096, 40000]
    assert separate[0].obj is arr


def test_the_head_keeps_to_its_limit():
    frames = [b"a" * 1000] * 10
    head, separate = framing.plan(frames, 3500)
    assert len(head) <= 3500 and len(separate) == 7


def test_multidimensional_and_typed_views_are_sent_as_bytes():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    got, _, _ = roundtrip([memoryview(arr)], limit=16)
    assert got == [arr.tobytes()]


def test_empty_arrays_of_any_shape():
    got, _, separate = roundtrip([memoryview(np.zeros((0, 3))), b"", memoryview(bytearray())])
    assert got == [b"", b"", b""] and separate == []


@pytest.mark.parametrize("head, why", [
    (b"", "too short"),
    (bytes([2, 0, 0, 0, 0]), "version 2"),
    (bytes([1, 5, 0, 0, 0]), "announcing 5 frames"),
    (bytes([1, 1, 0, 0, 0]) + (10).to_bytes(8, "little") + b"abc", "runs past the end"),
    (bytes([1, 0, 0, 0, 0]) + b"junk", "left over"),
])
def test_malformed_heads_are_refused(head, why):
    with pytest.raises(ValueError, match=why):
        framing.parse(head)
