"""Bad input is stored byte-for-byte with its metadata computed or marked, never a crash."""

from __future__ import annotations

import os

import pytest

from store import Store

MALFORMED = {
    "empty": b"",
    "no_headers": b"\r\njust a body, no header at all\r\n",
    "no_separator": b"Subject: only a header line and nothing after it",
    "eight_bit_headers": "Subject: Résultat très urgent\r\nFrom: Zoé <zoé@exemple.fr>\r\n\r\nx\r\n".encode(
        "latin-1"
    ),
    "nul_in_header": b"Subject: a\x00b\r\nMessage-ID: <\x00@x>\r\n\r\nbody\r\n",
    "bad_mime": (
        b'Content-Type: multipart/mixed; boundary="unterminated\r\n\r\n'
        b"--unterminated\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
    ),
    "missing_close_boundary": (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\n\r\nworld\r\n"
    ),
    "garbage_addresses": b'From: <<<@@@>>>, "unterminated\r\nTo: ;;;:\r\n\r\nx\r\n',
    "bare_lf": b"From: a@b.fr\nSubject: lf only\n\nbody\n",
    "binary_junk": bytes(range(256)) * 16,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_message_is_stored_byte_for_byte(
    store: Store, doctor: str, name: str
) -> None:
    raw = MALFORMED[name]
    result = await store.deliver(doctor, raw)
    [info] = await store.list_messages(result.folder_id, [result.uid])
    assert await store.read_message(info) == raw
    assert info.size == len(raw)
    assert 0 <= info.body["body_start"] <= info.body["end"] <= len(raw)
    assert isinstance(info.envelope["from"], list)


async def test_malformed_structure_is_marked_as_a_problem(store: Store, doctor: str) -> None:
    r = await store.deliver(doctor, MALFORMED["missing_close_boundary"])
    [info] = await store.list_messages(r.folder_id)
    assert info.problems, "a multipart without its close delimiter must be reported"


async def test_eight_bit_header_does_not_crash_and_keeps_the_raw_header(
    store: Store, doctor: str
) -> None:
    r = await store.deliver(doctor, MALFORMED["eight_bit_headers"])
    [info] = await store.list_messages(r.folder_id)
    assert info.subject is not None
    assert info.subject.startswith("R")
    assert (
        await store.read_header(info)
        == MALFORMED["eight_bit_headers"].split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    )


@pytest.mark.slow
async def test_a_30_mb_message_is_stored_and_parsed(store: Store, doctor: str) -> None:
    attachment = os.urandom(22 * 1024 * 1024).hex().encode()[: 30 * 1024 * 1024 - 400]
    raw = (
        b"From: a@labo-test.mssante.fr\r\nSubject: gros fichier\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n" + attachment + b"\r\n--zz--\r\n"
    )
    assert len(raw) > 30_000_000
    r = await store.deliver(doctor, raw)
    [info] = await store.list_messages(r.folder_id)
    assert info.size == len(raw)
    part = info.body["parts"][0]
    assert part["size"] == len(attachment)
    assert await store.read_message(info) == raw
