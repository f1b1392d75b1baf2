"""LZO1X decompression in pure Python: the page compression of ``makedumpfile -l``.

No LZO package installs here from wheels (python-lzo builds against liblzo2's headers, and
cramjam has no LZO), and the log reader decompresses only the few dozen pages it reads, so a
plain decoder is fast enough. It follows ``lzo1x_decompress_safe`` of liblzo2 and of the Linux
kernel (lib/lzo/lzo1x_decompress_safe.c): every read and back-reference is bounds-checked, and
a stream that breaks a bound raises ``LzoError`` instead of reading past its input.
"""

__all__ = ["LzoError", "decompress"]

M2_MAX_OFFSET = 0x800


class LzoError(ValueError):
    """The bytes are not an LZO1X stream, or it does not fit the size expected."""


def _run(data: bytes, at: int, base: int) -> tuple[int, int]:
    """A long length: zero bytes each worth 255, then one byte added to ``base``."""
    start = at
    while at < len(data) and data[at] == 0:
        at += 1
    if at >= len(data):
        raise LzoError(f"length run at input byte {start} reaches the end of the input")
    return base + 255 * (at - start) + data[at], at + 1


def decompress(data: bytes, size: int) -> bytes:
    """Decompress one LZO1X block that must give exactly ``size`` bytes."""
    out = bytearray()
    ip, state, end = 0, 0, len(data)

    def literals(count: int) -> None:
        nonlocal ip
        if ip + count > end:
            raise LzoError(f"{count} literal bytes at input byte {ip}: past the input's {end} bytes")
        if len(out) + count > size:
            raise LzoError(f"stream gives more than the {size} bytes expected")
        out.extend(data[ip : ip + count])
        ip += count

    def need(count: int) -> None:
        if ip + count > end:
            raise LzoError(f"instruction at input byte {ip} needs {count} bytes past the input's end")

    if end and data[0] > 17:
        t = data[0] - 17
        ip = 1
        literals(t)
        state = t if t < 4 else 4
    while True:
        need(1)
        t = data[ip]
        ip += 1
        if t < 16:
            if state == 0:  # a literal run
                if t == 0:
                    t, ip = _run(data, ip, 15)
                literals(t + 3)
                state = 4
                continue
            need(1)
            if state != 4:  # a 2-byte match close behind
                nxt = t & 3
                distance = 1 + (t >> 2) + (data[ip] << 2)
                length = 2
            else:  # a 3-byte match just past M2_MAX_OFFSET
                nxt = t & 3
                distance = 1 + M2_MAX_OFFSET + (t >> 2) + (data[ip] << 2)
                length = 3
            ip += 1
        elif t >= 64:
            need(1)
            nxt = t & 3
            distance = 1 + ((t >> 2) & 7) + (data[ip] << 3)
            ip += 1
            length = (t >> 5) + 1
        elif t >= 32:
            length = (t & 31) + 2
            if length == 2:
                length, ip = _run(data, ip, 31 + 2)
            need(2)
            word = data[ip] | data[ip + 1] << 8
            ip += 2
            distance = 1 + (word >> 2)
            nxt = word & 3
        else:
            length = (t & 7) + 2
            if length == 2:
                length, ip = _run(data, ip, 7 + 2)
            need(2)
            word = data[ip] | data[ip + 1] << 8
            ip += 2
            distance = ((t & 8) << 11) + (word >> 2)
            nxt = word & 3
            if distance == 0:  # the end marker
                if len(out) != size:
                    raise LzoError(f"stream gives {len(out)} bytes, expected {size}")
                return bytes(out)
            distance += 0x4000
        start = len(out) - distance
        if start < 0:
            raise LzoError(f"match at input byte {ip} reaches {-start} bytes before the output's start")
        if len(out) + length > size:
            raise LzoError(f"stream gives more than the {size} bytes expected")
        if distance >= length:
            out.extend(out[start : start + length])
        else:  # overlapping: the match repeats its own last ``distance`` bytes
            out.extend((out[start:] * (length // distance + 1))[:length])
        if nxt:
            literals(nxt)
        state = nxt
