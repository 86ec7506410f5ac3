"""The blob store's folders: made once when the store is opened, made again when one is
missing (an operator cleaned up), and every blob readable back by its sha256."""

from __future__ import annotations

import hashlib
import shutil

from store.blobs import BlobStore


def test_a_new_store_has_its_256_folders_and_blobs_go_in_them(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    assert sorted(p.name for p in store.root.iterdir()) == [f"{i:02x}" for i in range(256)]
    data = "L'imprimante ne répond plus.\r\n".encode()
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.path(sha).parent.name == sha[:2] and store.get(sha) == data
    assert store.put(data) == sha  # the same bytes twice: one blob


def test_a_folder_removed_while_running_is_made_again(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    data = b"Subject: x\r\n\r\nbody\r\n"
    sha = hashlib.sha256(data).hexdigest()
    shutil.rmtree(store.root / sha[:2])
    assert store.put(data) == sha and store.get(sha) == data
    # The writer (large parts and large mails) takes the same way.
    other = b"another body\r\n" * 100
    shutil.rmtree(store.root / hashlib.sha256(other).hexdigest()[:2])
    with store.writer() as writer:
        writer.write(other)
        assert store.get(writer.commit()) == other


def test_opening_an_existing_store_keeps_what_it_holds(tmp_path):
    first = BlobStore(tmp_path / "blobs")
    sha = first.put(b"kept\r\n")
    again = BlobStore(tmp_path / "blobs")
    assert again.get(sha) == b"kept\r\n"
