"""O_DIRECT shard I/O (`batray.expansion.direct_io`): the bytes and tensors are those of buffered I/O.

The staging buffer is made small here so that one file takes several aligned flushes and an unaligned
tail; the same classes run where the file system refuses O_DIRECT (they fall back to buffered I/O).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from batray.expansion.direct_io import ALIGN, DirectTensors, ShardWriter

FOLDERS = ["tmp"] + (["shm"] if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else [])


@pytest.fixture(params=FOLDERS)
def folder(request, tmp_path):
    if request.param == "tmp":
        yield tmp_path
        return
    shm = Path("/dev/shm") / f"batray-test-{os.getpid()}-{tmp_path.name}"
    shm.mkdir()
    yield shm
    for f in shm.iterdir():
        f.unlink()
    shm.rmdir()


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, ALIGN, 3 * ALIGN + 17, 5 * 2 * ALIGN])
@pytest.mark.parametrize("direct", [True, False])
def test_shard_writer_writes_exactly_the_bytes_it_is_given(folder, size, direct):
    data = os.urandom(size)
    path = folder / "out.bin"
    with ShardWriter(path, direct=direct, buffer_bytes=2 * ALIGN) as w:
        for i in range(0, size, 1000):  # pieces that straddle the buffer's end
            w.write(data[i:i + 1000])
    assert path.read_bytes() == data
    if not direct:
        assert not w.direct


def test_shard_writer_uses_o_direct_where_the_file_system_takes_it(tmp_path):
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    with ShardWriter(tmp_path / "out.bin", buffer_bytes=ALIGN) as w:
        w.write(b"x" * (2 * ALIGN + 5))
    # ext4/xfs (the usual /tmp) take it; a tmpfs /tmp may not, and then the bytes above were still checked
    print("O_DIRECT used:", w.direct)
    assert (tmp_path / "out.bin").stat().st_size == 2 * ALIGN + 5


def test_direct_tensors_reads_what_safetensors_wrote(folder):
    gen = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(37, 129, generator=gen).to(torch.bfloat16),
               "b.weight": torch.randn(5000, 3, generator=gen),
               "c.bias": torch.randn(7, generator=gen).half(),
               "scale": torch.tensor(2.5)}
    save_file(tensors, str(folder / "w.safetensors"))
    want = load_file(str(folder / "w.safetensors"))
    f = DirectTensors(folder / "w.safetensors")
    try:
        assert sorted(f.keys()) == sorted(tensors)
        for name, value in want.items():
            assert f.shape(name) == list(value.shape)
            assert torch.equal(f.get(name), value.float()), name
        assert torch.equal(f.rows("a.weight", 30, 37), want["a.weight"][30:37].float())
        assert torch.equal(f.rows("b.weight", 4000, 9999), want["b.weight"][4000:].float())  # stop past the end
        out = torch.empty(37, 129)
        assert f.get("a.weight", out=out).data_ptr() == out.data_ptr()  # into the given tensor: no new memory
        assert torch.equal(out, want["a.weight"].float())
    finally:
        f.close()


def test_direct_tensors_reads_a_shard_written_by_shard_writer(tmp_path):
    """The expansion's two halves together: a safetensors file made by ShardWriter, read back by DirectTensors."""
    from safetensors.torch import save

    value = torch.arange(3 * 1000, dtype=torch.float32).reshape(3, 1000).to(torch.bfloat16)
    blob = save({"w": value})
    with ShardWriter(tmp_path / "s.safetensors", buffer_bytes=ALIGN) as w:
        w.write(blob)
    f = DirectTensors(tmp_path / "s.safetensors")
    try:
        assert torch.equal(f.get("w"), value.float())
    finally:
        f.close()
    assert torch.equal(load_file(str(tmp_path / "s.safetensors"))["w"], value)


def test_a_truncated_file_is_an_error_naming_it(tmp_path):
    save_file({"w": torch.ones(4096)}, str(tmp_path / "t.safetensors"))
    raw = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:len(raw) // 2])
    f = DirectTensors(tmp_path / "t.safetensors")
    try:
        with pytest.raises(OSError, match="t.safetensors: the file ends at byte"):
            f.get("w")
    finally:
        f.close()


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_a_file_system_refusing_o_direct_gets_buffered_io_and_the_same_bytes(tmp_path, monkeypatch, refused_at):
    """Some file systems (older tmpfs, network mounts) answer EINVAL at open or only at the first transfer."""
    import errno

    import batray.expansion.direct_io as dio

    real_open, real_write, real_preadv = os.open, os.write, os.preadv

    def refusing_open(path, flags, *a):
        if refused_at == "open" and flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    def refusing(real):
        def call(fd, *a):
            import fcntl

            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(fd, *a)
        return call

    monkeypatch.setattr(dio.os, "open", refusing_open)
    monkeypatch.setattr(dio.os, "write", refusing(real_write))
    monkeypatch.setattr(dio.os, "preadv", refusing(real_preadv))
    data = os.urandom(3 * ALIGN + 100)
    with ShardWriter(tmp_path / "out.bin", buffer_bytes=ALIGN) as w:
        w.write(data)
    assert not w.direct and (tmp_path / "out.bin").read_bytes() == data
    value = torch.randn(10, 300)
    save_file({"w": value}, str(tmp_path / "w.safetensors"))
    f = DirectTensors(tmp_path / "w.safetensors")
    try:
        assert torch.equal(f.get("w"), value) and not f.direct
    finally:
        f.close()
