"""Small, valid media files made by the tests themselves: an Ogg/Opus voice note, a PNG and a PDF.

They are built byte by byte from the formats' specifications (RFC 3533 Ogg, RFC 7845 Ogg Opus, RFC 6716
Opus, PNG, PDF 1.4) so no binary fixture has to be shipped and each test can make its own distinct bytes.
"""

from __future__ import annotations

import struct
import zlib

# RFC 6716: TOC byte 0xF8 = config 31 (CELT-only, fullband, 20 ms), mono, one frame; 0xFF 0xFE is the
# shortest CELT frame that decodes to silence, the packet encoders emit for digital silence.
OPUS_SILENT_FRAME = b"\xf8\xff\xfe"
OPUS_FRAME_SAMPLES = 960  # 20 ms at 48 kHz, the granule rate of Ogg Opus


def _ogg_crc(data: bytes) -> int:
    """CRC-32 of RFC 3533: polynomial 0x04C11DB7, no reflection, initial value 0, no final xor."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packets: list[bytes], *, serial: int, sequence: int, granule: int, flags: int) -> bytes:
    lacing = b""
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing)) + lacing
    page = header + b"".join(packets)
    crc = _ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def ogg_opus_voice_note(seconds: float = 1.0, *, serial: int = 0x5A17, vendor: str = "wa-assistant tests") -> bytes:
    """A mono 48 kHz Ogg Opus stream of `seconds` of silence, shaped like a WhatsApp voice note."""
    pre_skip = 312
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, pre_skip, 48000, 0, 0)
    tags_vendor = vendor.encode()
    tags = b"OpusTags" + struct.pack("<I", len(tags_vendor)) + tags_vendor + struct.pack("<I", 0)
    frames = max(1, int(seconds * 50))
    pages = [
        _ogg_page([head], serial=serial, sequence=0, granule=0, flags=0x02),  # beginning of stream
        _ogg_page([tags], serial=serial, sequence=1, granule=0, flags=0),
    ]
    sequence, done = 2, 0
    while done < frames:
        count = min(50, frames - done)  # one second of audio per page
        done += count
        last = done == frames
        pages.append(
            _ogg_page(
                [OPUS_SILENT_FRAME] * count,
                serial=serial,
                sequence=sequence,
                granule=pre_skip + done * OPUS_FRAME_SAMPLES,
                flags=0x04 if last else 0,  # end of stream on the last page
            )
        )
        sequence += 1
    return b"".join(pages)


def png(width: int = 4, height: int = 3, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A solid-colour truecolour PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width  # filter type 0 per scanline
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def pdf(text: str = "Orcamento 1234") -> bytes:
    """A one-page PDF 1.4 that shows `text` (ASCII) in Helvetica, with a correct xref table."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(out)
