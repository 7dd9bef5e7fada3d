#!/usr/bin/env python3
"""An independent reader of a Nydus blob's tail, as nydus-snapshotter's converter reads it
(pkg/converter/convert_unix.go: seekFileByTarHeader, seekFileByTOC): tar headers walked from the blob's
end with Python's tarfile (which checks each header's checksum), each section's data just before its
header; the TOC's 128-byte entries (flags, name, sha256 of the uncompressed data, offset, sizes)
decoded with struct, each entry's data decompressed with the zstd CLI where its flags say zstd, and its
sha256 and size checked against the entry.

  nydus-blob-tail.py <blob> <out-dir>
prints JSON {"sections": [[name, offset, size], ... from the end], "toc": [{...}], "toc_digest": hex}
and writes each TOC entry's uncompressed data to <out-dir>/<name>. Exits 1 naming what is wrong.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import tarfile


def fail(msg):
    print(f"nydus-blob-tail: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    blob_path, out = sys.argv[1], sys.argv[2]
    data = open(blob_path, "rb").read()
    sections = []
    cur = len(data) - 512
    while cur >= 0:
        try:
            hdr = tarfile.TarInfo.frombuf(data[cur:cur + 512], "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            fail(f"no tar header at {cur}: {e}")
        if hdr.size > cur:
            fail(f"section {hdr.name} of {hdr.size} bytes before offset {cur}")
        sections.append([hdr.name, cur - hdr.size, hdr.size])
        if hdr.name == "image.blob":
            break  # the chunk data, at the blob's start
        cur -= hdr.size + 512
    toc = []
    toc_digest = None
    if sections and sections[0][0] == "rafs.blob.toc":
        _, off, size = sections[0]
        raw = data[off:off + size]
        if size % 128:
            fail(f"TOC of {size} bytes is not a whole number of entries")
        toc_digest = hashlib.sha256(raw).hexdigest()
        os.makedirs(out, exist_ok=True)
        for i in range(0, size, 128):
            flags, _, name, digest, c_off, c_size, u_size = struct.unpack_from("<II16s32sQQQ", raw, i)
            name = name.rstrip(b"\0").decode()
            stored = data[c_off:c_off + c_size]
            if len(stored) != c_size:
                fail(f"TOC entry {name}: [{c_off}, {c_off + c_size}) is beyond the blob's end")
            entry = {"name": name, "flags": flags, "offset": c_off, "compressed_size": c_size, "uncompressed_size": u_size, "digest": digest.hex()}
            toc.append(entry)
            if name == "image.blob":
                # The chunk data (chunks compressed one by one, its size their uncompressed space), and
                # its digest nydus's running blob hash (data and header): nothing to decompress or hash.
                continue
            if flags & 0xF == 2:
                plain = subprocess.run(["zstd", "-d", "-c", "-q"], input=stored, capture_output=True, check=True).stdout
            elif flags & 0xF == 1:
                plain = stored
            else:
                fail(f"TOC entry {name}: flags {flags:#x}")
            if len(plain) != u_size:
                fail(f"TOC entry {name}: {len(plain)} bytes uncompressed, the entry says {u_size}")
            if hashlib.sha256(plain).digest() != digest:
                fail(f"TOC entry {name}: sha256 differs from the entry's")
            with open(os.path.join(out, name), "wb") as f:
                f.write(plain)
    print(json.dumps({"sections": sections, "toc": toc, "toc_digest": toc_digest}))


main()
