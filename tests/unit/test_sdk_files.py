"""mailwarden_sdk.files.atomic_write, the one atomic write of the project, and its callers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mailwarden.stores.blobs import BlobStore
from mailwarden.tls import write_private
from mailwarden_sdk.files import atomic_write

Writer = Callable[[Path, bytes], None]
WRITERS: dict[str, Writer] = {"atomic_write": atomic_write, "tls.write_private": write_private}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_concurrent_writers_of_one_file_each_write_whole_and_none_fails(
    tmp_path: Path, name: str
) -> None:
    # Threads of one process writing the same file (two workers' DKIM keys, a config saved
    # twice at once): a temp name made from the pid alone is shared, and one writer fails or
    # renames the other's half-written file.
    write = WRITERS[name]
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    payloads = [bytes([65 + n]) * (2 << 20) for n in range(6)]
    errors: list[BaseException] = []
    for _ in range(5):
        start = threading.Barrier(len(payloads))

        def run(data: bytes, start: threading.Barrier = start) -> None:
            start.wait(timeout=30)
            try:
                write(target, data)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(data,)) for data in payloads]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert target.read_bytes() in payloads
        assert sorted(os.listdir(tmp_path)) == ["key.pem"]


# A real write failure, as on a full disk: the file size limit makes write(2) fail with EFBIG.
_FAILING_WRITE = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from mailwarden.tls import write_private
    from mailwarden_sdk.files import atomic_write

    write = {"atomic_write": atomic_write, "tls.write_private": write_private}[sys.argv[1]]
    target = Path(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        write(target, b"x" * (2 << 20))
    except OSError as exc:
        print("failed:", exc.strerror)
    print("left:", target.read_bytes().decode(), sorted(p.name for p in target.parent.iterdir()))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    # The disk has room again: the next write of the same file in this process works.
    write(target, b"new")
    print("then:", target.read_bytes().decode())
    """
)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_failed_write_keeps_the_old_file_leaves_no_temp_and_does_not_block_the_next(
    tmp_path: Path, name: str
) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    done = subprocess.run(
        [sys.executable, "-c", _FAILING_WRITE, name, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "failed: File too large",
        "left: old ['state.json']",
        "then: new",
    ]
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_the_old_content_is_intact_after_a_failure(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    # A folder cannot be renamed over by a file: the failure comes at the rename, after the
    # temporary file was written in full.
    os.mkdir(tmp_path / "in-the-way")
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "in-the-way", b"new")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["in-the-way", "state.json"]
    assert os.listdir(tmp_path / "in-the-way") == []


def test_modes_are_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "cert.pem", "public", mode=0o644)
    finally:
        os.umask(old)
    old = os.umask(0)
    try:
        atomic_write(tmp_path / "key.pem", b"secret")
    finally:
        os.umask(old)
    assert (tmp_path / "cert.pem").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "cert.pem").read_text() == "public"
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600


def test_blob_store_lists_no_temporary_file_and_removes_those_of_interrupted_writes(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"message body")
    folder = store.path_of(digest).parent
    # What a crash between write and rename leaves: this release's name and the earlier one.
    (folder / f".{digest}.k2j4h1.tmp").write_bytes(b"half")
    (folder / ".tmp-0011223344556677").write_bytes(b"half")
    assert list(store.digests()) == [digest]
    assert store.remove_unreferenced(lambda d: d == digest) == 2
    assert sorted(os.listdir(folder)) == [digest]
