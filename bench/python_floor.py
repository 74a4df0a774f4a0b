"""The least work a Python loop can do per packet, as a measuring stick for the decoder.

Not a decoder: no TCP reassembly, no record-marking state, no call/reply matching, no
checks. It reads each pcap record, unpacks the IPv4 and TCP headers and, when a segment
starts with an RPC header, prints the same four values the bench asks tshark for. What
this costs is the floor under any correct pure-Python decoder on this interpreter.

    python bench/python_floor.py CAPTURE.pcap > /dev/null
"""
import struct
import sys

LINK_HEADER = {1: 14, 113: 16, 276: 20, 101: 0, 228: 0}


def main(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    if struct.unpack_from("<I", data)[0] != 0xA1B2C3D4:
        raise SystemExit("python_floor: wants a little-endian microsecond pcap")
    off = LINK_HEADER[struct.unpack_from("<I", data, 20)[0] & 0xFFFF]
    record = struct.Struct("<IIII").unpack_from
    ipv4 = struct.Struct("!BxH5xB").unpack_from
    tcp = struct.Struct("!12xB").unpack_from
    rpc = struct.Struct("!IIII").unpack_from
    call = struct.Struct("!III").unpack_from
    write = sys.stdout.write
    pos, end = 24, len(data)
    while pos + 16 <= end:
        sec, usec, caplen, _ = record(data, pos)
        pkt = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        vihl, total, proto = ipv4(pkt, off)
        if proto != 6:
            continue
        start = off + (vihl & 15) * 4
        payload = pkt[start + (tcp(pkt, start)[0] >> 4) * 4:off + total]
        if len(payload) >= 28:
            _mark, xid, mtype, _ = rpc(payload)
            if mtype == 0:
                prog, _vers, proc = call(payload, 16)
                write(f"{sec}.{usec:06d}\t{xid:#010x}\t{prog}\t{proc}\n")
            else:
                write(f"{sec}.{usec:06d}\t{xid:#010x}\t\t\n")


if __name__ == "__main__":
    main(sys.argv[1])
