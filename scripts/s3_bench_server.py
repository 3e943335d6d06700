"""The local S3-compatible server for scripts/bench-remote.sh: moto (as scripts/s3-local.sh runs it
for the tests), with one change: a ranged GET reads just its range.

moto answers a ranged GET by reading the whole object into memory and slicing it (FakeKey.value,
then S3Response._handle_range_header), so a 64 KiB range of a 1 GiB object costs reading 1 GiB:
about 0.1 s per request for a 128 MiB object here, whatever the range. A lazy reader makes many
ranged GETs of large objects, so against plain moto the benchmark would measure moto. Real S3 (and
MinIO, Ceph...) serve a range from where it lies; so does this patched moto. Everything else is
moto's own.

    python3 scripts/s3_bench_server.py PORT      # serves on 127.0.0.1:PORT until killed
"""

import sys

from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer

plain_get_object = S3Response.get_object


def parse_range(spec, size):
    """(first, last) of a single `bytes=` range within `size` bytes, or None to let moto decide."""
    if not spec.startswith("bytes=") or "," in spec or size == 0:
        return None
    first, _, last = spec[len("bytes="):].partition("-")
    try:
        if first:
            first = int(first)
            last = min(int(last), size - 1) if last else size - 1
        elif last:
            first, last = max(size - int(last), 0), size - 1
        else:
            return None
    except ValueError:
        return None
    if first > last or first >= size:
        return None  # moto's own answer (416, or the whole object)
    return first, last


def get_object(self):
    spec = self.headers.get("range") or ""
    key, not_modified = self._get_key()
    wanted = None if not_modified or self._get_int_param("partNumber") else parse_range(spec, key.size)
    if wanted is None:
        return plain_get_object(self)
    first, last = wanted
    headers = self._get_cors_headers_other()
    if key.version_id != "null":
        headers["x-amz-version-id"] = key.version_id
    headers.update(key.response_dict)
    headers.update(key.metadata)
    headers["Accept-Ranges"] = "bytes"
    with key.lock:
        key._value_buffer.seek(first)
        body = key._value_buffer.read(last - first + 1)
    headers["content-length"] = str(len(body))
    headers["content-range"] = f"bytes {first}-{last}/{key.size}"
    return 206, headers, body


S3Response.get_object = get_object

if __name__ == "__main__":
    port = int(sys.argv[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()
