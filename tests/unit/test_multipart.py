"""The incremental multipart reader and the capped body readers: same parts whatever the chunking."""

import json

import pytest

from gateway.bodies import check_declared_length, iter_lines, read_capped
from gateway.errors import GatewayError
from gateway.multipart import Data, End, MultipartReader, PartStart

BOUNDARY = b"b0und4ry"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b"preamble\r\n"
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + BOUNDARY + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\nepilogue"


def read(body: bytes, size: int) -> dict[str, tuple[str | None, bytes]]:
    reader = MultipartReader(BOUNDARY)
    parts: dict[str, tuple[str | None, bytes]] = {}
    current = None
    for start in range(0, len(body), size):
        for event in reader.feed(body[start : start + size]):
            if isinstance(event, PartStart):
                current = event
                parts[event.name] = (event.filename, b"")
            elif isinstance(event, Data):
                assert current is not None
                parts[current.name] = (parts[current.name][0], parts[current.name][1] + event.data)
            elif isinstance(event, End):
                current = None
    reader.close()
    return parts


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, 64, 10_000])
def test_parts_are_the_same_whatever_the_chunk_size(size):
    tricky = b"line\r\n--b0und4r\r\nx--b0und4ry\r\n\r\n-" * 3  # almost-delimiters inside the data
    body = form(("purpose", None, b"batch"), ("file", "in.jsonl", tricky), ("empty", None, b""))
    assert read(body, size) == {"purpose": (None, b"batch"), "file": ("in.jsonl", tricky), "empty": (None, b"")}


@pytest.mark.parametrize(
    "body",
    [
        form(("file", "a", b"x"))[:-20],  # no closing boundary
        b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data\r\n\r\nx\r\n--" + BOUNDARY + b"--",  # no name
        b"--" + BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + BOUNDARY + b"--",  # no disposition
        b"--" + BOUNDARY + b"\r\n" + b"X-Long: " + b"a" * 20_000,  # endless part headers
        b"--" + BOUNDARY + b"junk\r\n",
        b"",
    ],
)
def test_malformed_bodies_are_a_400(body):
    with pytest.raises(GatewayError) as info:
        read(body, 5)
    assert info.value.status == 400 and json.loads(info.value.body())["error"]["code"] == "invalid_multipart"


async def chunks(*parts: bytes):
    for part in parts:
        yield part


async def test_read_capped_stops_at_the_cap():
    assert await read_capped(chunks(b"ab", b"cd"), 4) == b"abcd"
    with pytest.raises(GatewayError) as info:
        await read_capped(chunks(b"ab", b"cd", b"e"), 4)
    assert info.value.status == 413


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    check_declared_length({"content-length": "10"}, 10)
    with pytest.raises(GatewayError) as info:
        check_declared_length({"content-length": "11"}, 10)
    assert info.value.status == 413


async def test_iter_lines_splits_on_newline_only_and_caps_a_line():
    got = [x async for x in iter_lines(chunks(b"a\r\nb\xe2\x80", b"\xa8c\n", b"", b"last"), 10)]
    assert got == [b"a", "b\u2028c".encode(), b"last"]
    with pytest.raises(GatewayError):
        _ = [x async for x in iter_lines(chunks(b"12345", b"67890", b"1\n"), 10)]
