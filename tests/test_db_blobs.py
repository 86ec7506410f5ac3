"""Blobs in the database (issue 19): with PostgreSQL, raw mails and attachments are rows
(content-addressed, deduplicated, written and read in chunks), so instances on several
hosts share nothing but the database; SQLite keeps the files under the data folder.
``gateway db move-blobs`` copies a file store into the database, checking every sha256."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import tracemalloc

import pytest
from sqlalchemy import func, select, text

from gateway.ingest.parse import parse
from store.blobs import BlobStore
from store.dbblobs import CHUNK, DatabaseBlobStore
from store.models import Blob, BlobChunk
from conftest import run_gateway, write_config
from harness.ingest import customer_mail, make_app, receive
from harness.largemail import _attachment, _b64_lines, _mail, _text_part


def _counts(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(Blob)).scalar(),
                conn.execute(select(func.count()).select_from(BlobChunk)).scalar())


def test_the_default_store_is_the_database_on_postgresql_and_files_on_sqlite(tmp_path, database_url):
    app = make_app(tmp_path, database_url=database_url)
    try:
        postgres = database_url.startswith("postgresql")
        assert isinstance(app.blobs, DatabaseBlobStore if postgres else BlobStore)
        outcome = receive(app, customer_mail())
        assert outcome.ticket
        files = [p for p in (tmp_path / "var" / "blobs").rglob("*") if p.is_file()]
        if postgres:
            assert files == [] and _counts(app.engine)[0] == 1
        else:
            assert len(files) == 1
    finally:
        app.engine.dispose()


def test_either_store_can_be_chosen_and_a_wrong_word_is_a_clear_error(tmp_path, postgres_url):
    app = make_app(tmp_path / "a", '[store]\nblobs = "files"\n', database_url=postgres_url)
    assert isinstance(app.blobs, BlobStore)
    app = make_app(tmp_path / "b", '[store]\nblobs = "database"\n')
    try:
        assert isinstance(app.blobs, DatabaseBlobStore)  # SQLite may keep them too
        sha = app.blobs.put(b"kept in SQLite\r\n")
        assert app.blobs.get(sha) == b"kept in SQLite\r\n"
    finally:
        app.engine.dispose()
    path = write_config(tmp_path / "c", '[store]\nblobs = "s3"\n')
    done = run_gateway("--config", str(path), "status", cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert "store.blobs: 's3' is not one of , database, files" in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


@pytest.mark.postgres
def test_a_blob_is_chunked_deduplicated_and_read_back_whole_or_as_a_stream(tmp_path, postgres_url):
    app = make_app(tmp_path, database_url=postgres_url)
    try:
        store = app.blobs
        data = random.Random(19).randbytes(3 * CHUNK + 12345)
        sha = store.put(data)
        assert sha == hashlib.sha256(data).hexdigest()
        assert store.put(data) == sha  # the same bytes twice: one blob
        assert _counts(app.engine) == (1, 4)
        assert store.exists(sha) and not store.exists("0" * 64)
        assert store.get(sha) == data
        with store.open(sha) as stream:
            pieces = []
            while piece := stream.read(100_000):
                pieces.append(piece)
        assert b"".join(pieces) == data and max(map(len, pieces)) == 100_000
        with pytest.raises(FileNotFoundError):
            store.get("0" * 64)
        with pytest.raises(FileNotFoundError):
            store.open("0" * 64)
        empty = store.put(b"")
        assert store.get(empty) == b"" and store.open(empty).read() == b""
        # The writer: written piece by piece, readable at its path, committed in chunks.
        with store.writer() as writer:
            for i in range(5):
                writer.write(data[i * CHUNK // 2:(i + 1) * CHUNK // 2])
            writer.flush()
            assert writer.path.read_bytes() == data[:5 * CHUNK // 2]
            got = writer.commit()
        assert store.get(got) == data[:5 * CHUNK // 2]
        assert list(store.root.iterdir()) == []  # no temporary file left behind
        # Dropped: nothing stored, nothing left.
        with store.writer() as writer:
            writer.write(b"never stored")
            writer.abort()
        assert not store.exists(hashlib.sha256(b"never stored").hexdigest())
        assert list(store.root.iterdir()) == []
    finally:
        app.engine.dispose()


@pytest.mark.postgres
def test_small_blobs_are_stored_together_and_a_small_one_read_in_one_query(tmp_path, postgres_url):
    """The recorder stores a batch of small mails' bytes in one transaction (put_many),
    and the worker reads a one-chunk blob in one query (its size with its first chunk);
    a missing or empty blob still says so; a blob whose chunks went missing is an
    error, never a short mail."""
    from sqlalchemy import event

    app = make_app(tmp_path, database_url=postgres_url)
    statements: list[str] = []
    commits: list[int] = []
    event.listen(app.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    event.listen(app.engine, "commit", lambda conn: commits.append(1))
    try:
        store = app.blobs
        rng = random.Random(20)
        datas = [rng.randbytes(n) for n in (10, 3000, 70_000, 3000)] + [b""]
        datas[3] = datas[1]  # the same bytes twice in one batch: one blob
        shas = store.put_many(datas)
        assert shas == [hashlib.sha256(d).hexdigest() for d in datas]
        assert len(commits) == 1
        assert _counts(app.engine) == (4, 3)  # the empty blob has no chunk
        assert store.put_many(datas[:2]) == shas[:2] and _counts(app.engine) == (4, 3)
        for sha, data in zip(shas, datas):
            statements.clear()
            assert store.get(sha) == data
            assert len(statements) == 1, statements
        big = rng.randbytes(2 * CHUNK + 5)
        sha = store.put(big)
        assert store.get(sha) == big
        with app.engine.begin() as conn:
            conn.execute(BlobChunk.__table__.delete().where(BlobChunk.__table__.c.sha256 == sha,
                                                            BlobChunk.__table__.c.seq == 2))
        with pytest.raises(OSError, match="short"):
            store.get(sha)
        with pytest.raises(FileNotFoundError):
            store.get("1" * 64)
    finally:
        app.engine.dispose()


@pytest.mark.postgres
def test_two_instances_storing_the_same_bytes_at_once_store_them_once(tmp_path, postgres_url):
    first = make_app(tmp_path / "one", database_url=postgres_url)
    second = make_app(tmp_path / "two", database_url=postgres_url)
    data = random.Random(7).randbytes(2 * CHUNK + 1)
    start = threading.Barrier(8)
    shas, errors = [], []

    def put(store):
        start.wait()
        try:
            shas.append(store.put(data))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    try:
        threads = [threading.Thread(target=put, args=((first, second)[i % 2].blobs,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and set(shas) == {hashlib.sha256(data).hexdigest()}
        assert _counts(first.engine) == (1, 3)
        assert second.blobs.get(shas[0]) == data
    finally:
        first.engine.dispose()
        second.engine.dispose()


@pytest.mark.postgres
def test_a_25_mb_attachment_goes_into_the_database_in_chunks_with_bounded_memory(tmp_path, postgres_url):
    payload = random.Random(8).randbytes(25_000_000)
    raw = _mail([_text_part("Voir la pièce jointe."),
                 _attachment("scan.pdf", "application/pdf", "base64", _b64_lines(payload))])
    app = make_app(tmp_path, database_url=postgres_url)
    try:
        tracemalloc.start()
        try:
            mail = parse(raw, blobs=app.blobs)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1.5 * len(raw), f"parse allocated {peak / len(raw):.2f} x the message size"
        digest = hashlib.sha256(payload).hexdigest()
        assert mail.attachments[0].blob == digest
        with app.engine.connect() as conn:
            largest = conn.execute(text("select max(length(data)) from blobchunk where sha256 = :s"),
                                   {"s": digest}).scalar()
        assert largest == CHUNK
        tracemalloc.start()
        try:
            with app.blobs.open(digest) as stream:
                h = hashlib.sha256()
                while piece := stream.read(CHUNK):
                    h.update(piece)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert h.hexdigest() == digest
        # A few chunks at a time (the driver's text of one, its bytes, the reader's
        # buffer), never the 25 MB.
        assert peak < 8 * CHUNK, f"reading the stream held {peak} bytes"
    finally:
        app.engine.dispose()


@pytest.mark.postgres
def test_move_blobs_copies_a_file_store_into_the_database_and_checks_every_sha256(tmp_path, postgres_url):
    # An instance that kept its blobs as files, against PostgreSQL (as before issue 19).
    files_cfg = write_config(tmp_path, f'[database]\nurl = "{postgres_url}"\n[store]\nblobs = "files"\n')
    mails = [customer_mail(subject=f"Printer {i}") for i in range(3)]
    for i, raw in enumerate(mails):
        (tmp_path / f"m{i}.eml").write_bytes(raw)
        run_gateway("--config", str(files_cfg), "ingest", str(tmp_path / f"m{i}.eml"), cwd=tmp_path)
    store = BlobStore(tmp_path / "var" / "blobs")
    shas = {hashlib.sha256(raw).hexdigest() for raw in mails}
    assert all(store.exists(sha) for sha in shas)
    # One file whose bytes are not its name (a disk that lied): named, not copied.
    bad = "ab" * 32
    (tmp_path / "var" / "blobs" / "ab" / bad).write_bytes(b"not these bytes")
    db_cfg = write_config(tmp_path, f'[database]\nurl = "{postgres_url}"\n')
    done = run_gateway("--config", str(db_cfg), "db", "move-blobs", cwd=tmp_path, check=False)
    out = done.stdout.decode()
    assert done.returncode == 1, done.stderr.decode()
    assert f"not copied: {tmp_path / 'var' / 'blobs' / 'ab' / bad}: its bytes' sha256 is " in out
    assert "copied 3 blob(s) into the database, 0 were there already, 1 do not match their name" in out
    app = make_app(tmp_path / "after", database_url=postgres_url)
    try:
        for sha in shas:
            assert app.blobs.get(sha) == store.get(sha)
        assert not app.blobs.exists(bad)
    finally:
        app.engine.dispose()
    # Again, once the bad file is gone: nothing more to copy.
    (tmp_path / "var" / "blobs" / "ab" / bad).unlink()
    done = run_gateway("--config", str(db_cfg), "db", "move-blobs", cwd=tmp_path)
    assert "copied 0 blob(s) into the database, 3 were there already" in done.stdout.decode()
    # The mails, read back through the database, are processed by an instance that has
    # no file store at all.
    import shutil

    shutil.rmtree(tmp_path / "var" / "blobs")
    # (the ids the database gave, not 1, 2, 3: a sequence may have moved before)
    listed = run_gateway("--config", str(db_cfg), "inbound", "list", "--json", cwd=tmp_path)
    ids = [row["id"] for row in json.loads(listed.stdout)]
    assert len(ids) == 3
    for inbound_id in ids:
        done = run_gateway("--config", str(db_cfg), "inbound", "show", str(inbound_id), "--raw", cwd=tmp_path,
                           check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout in mails


@pytest.mark.postgres
def test_a_batch_of_small_mails_is_read_in_one_query(tmp_path, postgres_url):
    """get_small reads the one-chunk blobs of a batch at once and leaves out the larger
    ones and those not stored (the worker gets those one by one); the file store reads
    nothing ahead."""
    from sqlalchemy import event

    app = make_app(tmp_path, database_url=postgres_url)
    statements: list[str] = []
    event.listen(app.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        rng = random.Random(21)
        small = [rng.randbytes(n) for n in (10, 5000)] + [b""]
        large = rng.randbytes(CHUNK + 1)
        shas = app.blobs.put_many(small) + [app.blobs.put(large)]
        statements.clear()
        got = app.blobs.get_small(shas + ["2" * 64])
        assert len(statements) == 1
        assert got == dict(zip(shas[:3], small))
        assert app.blobs.get_small([]) == {}
        assert BlobStore(tmp_path / "files").get_small(shas) == {}
    finally:
        app.engine.dispose()
