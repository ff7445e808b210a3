#!/usr/bin/python3
"""Independent check of iris's TensorBoard event files, standard library only.

Written from the format descriptions (TFRecord framing, protobuf wire format,
tensorflow.Event / Summary), not from iris's C++, so that the two can catch
each other's mistakes; TensorBoard itself is not installed on the test
machines.

  read_tfevents.py FILE        prints "version<TAB>V" for file_version events
                               and "scalar<TAB>wall_time<TAB>step<TAB>tag<TAB>value"
                               for each simple_value (floats as repr, which
                               round-trips); exit 1 with a message on any defect
  read_tfevents.py --write FILE
                               writes a fixed event file with fields iris does
                               not write (unknown fields, other value kinds,
                               unusual field order) for iris's reader to decode
"""
import struct
import sys


def crc32c(data):
    # Bit by bit over the reflected Castagnoli polynomial 0x1EDC6F41.
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(data):
    crc = crc32c(data)
    rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    return (rotated + 0xA282EAD8) & 0xFFFFFFFF


class Defect(Exception):
    pass


def records(blob):
    pos = 0
    while pos < len(blob):
        if len(blob) - pos < 12:
            raise Defect("truncated header at offset %d" % pos)
        (length,) = struct.unpack_from("<Q", blob, pos)
        (length_crc,) = struct.unpack_from("<I", blob, pos + 8)
        if length_crc != masked(blob[pos:pos + 8]):
            raise Defect("length CRC mismatch at offset %d" % pos)
        end = pos + 12 + length
        if end + 4 > len(blob):
            raise Defect("truncated data at offset %d" % pos)
        data = blob[pos + 12:end]
        (data_crc,) = struct.unpack_from("<I", blob, end)
        if data_crc != masked(data):
            raise Defect("data CRC mismatch at offset %d" % pos)
        yield data
        pos = end + 4


def read_varint(buf, pos):
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise Defect("varint past end of message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise Defect("varint too long")


def fields(buf):
    """Yields (field_number, wire_type, value): int for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise Defect("fixed field past end of message")
            value = bytes(buf[pos:pos + size])
            pos += size
        elif wire == 2:
            size, pos = read_varint(buf, pos)
            if pos + size > len(buf):
                raise Defect("length-delimited field past end of message")
            value = bytes(buf[pos:pos + size])
            pos += size
        else:
            raise Defect("wire type %d not expected in tensorflow.Event" % wire)
        yield number, wire, value


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    out = []
    for data in records(blob):
        wall_time, step, version, values = 0.0, 0, None, []
        for number, wire, value in fields(data):
            if number == 1 and wire == 1:
                (wall_time,) = struct.unpack("<d", value)
            elif number == 2 and wire == 0:
                step = value - (1 << 64) if value >= (1 << 63) else value
            elif number == 3 and wire == 2:
                version = value.decode("utf-8")
            elif number == 5 and wire == 2:
                for vnum, vwire, vbytes in fields(value):
                    if vnum != 1 or vwire != 2:
                        continue
                    tag, simple = None, None
                    for fnum, fwire, fval in fields(vbytes):
                        if fnum == 1 and fwire == 2:
                            tag = fval.decode("utf-8")
                        elif fnum == 2 and fwire == 5:
                            (simple,) = struct.unpack("<f", fval)
                    if simple is not None:
                        values.append((tag, simple))
        if version is not None:
            out.append("version\t%s" % version)
        for tag, simple in values:
            out.append("scalar\t%r\t%d\t%s\t%r" % (wall_time, step, tag, simple))
    return out


# ---- writer for the reverse check ------------------------------------------

def varint(n):
    n &= (1 << 64) - 1  # negative int64 as two's complement
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def key(number, wire):
    return varint((number << 3) | wire)


def length_delimited(number, payload):
    return key(number, 2) + varint(len(payload)) + payload


def write(path):
    def value(tag, simple=None, extra=b""):
        body = extra + length_delimited(1, tag.encode("utf-8"))
        if simple is not None:
            body += key(2, 5) + struct.pack("<f", simple)
        return length_delimited(1, body)

    events = [
        # file_version event, as TensorFlow writes it
        key(1, 1) + struct.pack("<d", 1700000000.25) + length_delimited(3, b"brain.Event:2"),
        # summary first, step next, wall_time last; unknown fields of every
        # wire type in Event and in Value (node_name = 7, metadata = 9)
        length_delimited(5, value("loss", 0.5, extra=length_delimited(7, b"node") + length_delimited(9, b"\x0a\x00")))
        + key(2, 0) + varint(7)
        + key(40, 0) + varint(300)
        + key(41, 1) + b"\x01" * 8
        + key(42, 5) + b"\x02" * 4
        + key(1, 1) + struct.pack("<d", 1700000001.5),
        # two values in one summary, one of them an image (field 4), no scalar
        key(1, 1) + struct.pack("<d", 1700000002.0) + key(2, 0) + varint(-3)
        + length_delimited(5, value("lr", 1e-3) + value("picture", extra=length_delimited(4, b"\x08\x01"))
                           + value("dice", -2.25)),
        # a log_message event (field 6): no scalars
        key(1, 1) + struct.pack("<d", 1700000003.0) + length_delimited(6, b"\x08\x02\x12\x02hi"),
        # large step
        key(1, 1) + struct.pack("<d", 1700000004.0) + key(2, 0) + varint(1 << 40) + length_delimited(5, value("x/y", 3.0)),
    ]
    with open(path, "wb") as f:
        for event in events:
            header = struct.pack("<Q", len(event))
            f.write(header + struct.pack("<I", masked(header)) + event + struct.pack("<I", masked(event)))


def main(argv):
    if len(argv) == 3 and argv[1] == "--write":
        write(argv[2])
        return 0
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    try:
        lines = read(argv[1])
    except Defect as e:
        sys.stderr.write("%s: %s\n" % (argv[1], e))
        return 1
    sys.stdout.buffer.write("".join(line + "\n" for line in lines).encode("utf-8"))  # whatever the locale
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
