"""Unbuffered (O_DIRECT) I/O for the expanded shards: bytes go between one reused buffer and the disk.

Why not the page cache: an expansion writes three to four times its source's bytes, once. Buffered,
every byte first fills a fresh page of memory and is written out again by the final `sync`; on this
project's VMs the kernel spends ~1.7 s per GB filling pages of guest memory touched for the first
time (`dd` of 3.5 GB: 3.9-8.5 s buffered, 2.0 s with `oflag=direct`; benchmarks/RESULTS.md,
expansion). `ShardWriter` stages bytes in one page-aligned buffer and writes it with O_DIRECT;
`DirectTensors` reads tensors of a file written that way back the same way (the probe), since
reading it through the page cache would pay the same cost on the way in.

Where O_DIRECT is missing (not Linux) or refused (tmpfs, some network mounts: EINVAL at open or at
the first transfer), both fall back to ordinary buffered I/O with the same results.
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
from pathlib import Path

import torch

# O_DIRECT transfers need buffer address, file offset and length aligned to the device's logical block;
# 4 KiB covers every common device (512 B and 4 KiB sectors). mmap'd buffers are page aligned.
ALIGN = 4096
STAGING_BYTES = 32 << 20

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _open(path: str | Path, flags: int, direct: bool) -> tuple[int, bool]:
    """A file descriptor, with O_DIRECT where asked for and available; and whether it has it."""
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o644), True
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o644), False


def _drop_direct(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)


class ShardWriter:
    """A file written sequentially through one page-aligned staging buffer, flushed with O_DIRECT in whole
    buffers; the unaligned tail at `close` goes through a plain write. `direct` says which path was used."""

    def __init__(self, path: str | Path, *, direct: bool = True, buffer_bytes: int = STAGING_BYTES):
        self.fd, self.direct = _open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, direct)
        self._buf = mmap.mmap(-1, -(-buffer_bytes // ALIGN) * ALIGN)
        self._view = memoryview(self._buf)
        self._fill = 0

    def write(self, data) -> None:
        src = memoryview(data).cast("B")
        while len(src):
            n = min(len(src), len(self._buf) - self._fill)
            self._view[self._fill:self._fill + n] = src[:n]
            self._fill += n
            src = src[n:]
            if self._fill == len(self._buf):
                self._flush(self._fill)

    def _flush(self, n: int) -> None:
        out = self._view[:n]
        while len(out):
            try:
                k = os.write(self.fd, out)
            except OSError as e:  # the file system took the flag at open but refuses the transfer
                if not (self.direct and e.errno == errno.EINVAL):
                    raise
                _drop_direct(self.fd)
                self.direct = False
                continue
            out = out[k:]
        self._fill = 0

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            if self._fill and self.direct:
                aligned = self._fill - self._fill % ALIGN
                tail = bytes(self._view[aligned:self._fill])
                if aligned:
                    self._flush(aligned)
                _drop_direct(self.fd)  # the tail is not a whole block
                self._view[:len(tail)] = tail
                self._fill = len(tail)
            if self._fill:
                self._flush(self._fill)
        finally:
            os.close(self.fd)
            self.fd = -1
            self._view.release()
            self._buf.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DirectTensors:
    """Tensors of one safetensors file read with O_DIRECT into a reused aligned buffer (buffered reads where
    O_DIRECT is refused). `get` and `rows` return float32 copies, so the buffer can be reused."""

    def __init__(self, path: str | Path, *, direct: bool = True):
        self.path = str(path)
        self.fd, self.direct = _open(self.path, os.O_RDONLY, direct)
        self._buf = mmap.mmap(-1, ALIGN)
        try:
            n = int.from_bytes(bytes(self._read(0, 8)), "little")  # bytes(): no view left on the buffer
            header = json.loads(bytes(self._read(8, n)))
        except Exception:
            self.close()
            raise
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.entries = header

    def _read(self, start: int, length: int) -> memoryview:
        """Bytes [start, start + length) of the file, as a view into the buffer (valid until the next read)."""
        lo = start - start % ALIGN
        hi = -(-(start + length) // ALIGN) * ALIGN
        if hi - lo > len(self._buf):
            self._buf.close()
            self._buf = mmap.mmap(-1, hi - lo)
        view = memoryview(self._buf)[:hi - lo]
        got = 0
        while got < start + length - lo:
            try:
                k = os.preadv(self.fd, [view[got:]], lo + got)
            except OSError as e:
                if not (self.direct and e.errno == errno.EINVAL):
                    raise
                _drop_direct(self.fd)
                self.direct = False
                continue
            if k == 0:
                raise OSError(f"{self.path}: the file ends at byte {lo + got}, before byte {start + length}")
            got += k
        return view[start - lo:start - lo + length]

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> list[int]:
        return list(self.entries[name]["shape"])

    def rows(self, name: str, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows [start, stop) of axis 0 of tensor `name`, as float32 (into `out` when given: no new memory)."""
        entry = self.entries[name]
        dtype, shape = _DTYPES[entry["dtype"]], entry["shape"]
        begin, _ = entry["data_offsets"]
        row_elems = 1
        for d in shape[1:]:
            row_elems *= d
        item = torch.empty((), dtype=dtype).element_size()
        stop = min(stop, shape[0]) if shape else 1
        count = (stop - start) * row_elems
        view = self._read(self.data_start + begin + start * row_elems * item, count * item)
        block = torch.frombuffer(view, dtype=dtype, count=count) if count else torch.empty(0, dtype=dtype)
        block = block.reshape((stop - start, *shape[1:]) if shape else ())
        if out is not None:
            return out.copy_(block)
        return block.to(torch.float32, copy=True)

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        shape = self.entries[name]["shape"]
        return self.rows(name, 0, shape[0] if shape else 1, out=out)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._buf.close()
