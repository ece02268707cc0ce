"""Test messages shared by the store suites and the benchmarks."""

from __future__ import annotations

import random

from store import Flag, Store


def simple_message(n: int = 0, *, subject: str = "Compte rendu") -> bytes:
    return (
        f"From: Dr Martin <martin@clinique-test.mssante.fr>\r\n"
        f"To: Jean Dupont <jean.dupont@hopital-test.mssante.fr>\r\n"
        f"Subject: {subject} {n}\r\n"
        f"Date: Sun, 22 Nov 2026 10:00:00 +0100\r\n"
        f"Message-ID: <{n}.test@clinique-test.mssante.fr>\r\n"
        f"\r\n"
        f"Bonjour, voici le compte rendu {n}.\r\n"
    ).encode()


def message_of_size(size: int, n: int = 0, *, seed: int | None = None) -> bytes:
    """A realistic multipart message (text + base64 PDF-like attachment) of about ``size`` octets."""
    rng = random.Random(seed if seed is not None else n)
    head = (
        f"From: Laboratoire <resultats@labo-test.mssante.fr>\r\n"
        f"To: Jean Dupont <jean.dupont@hopital-test.mssante.fr>\r\n"
        f"Subject: =?utf-8?q?R=C3=A9sultats_d=27analyses?= {n}\r\n"
        f"Date: Sun, 22 Nov 2026 10:00:00 +0100\r\n"
        f"Message-ID: <{n}.{rng.getrandbits(64):x}@labo-test.mssante.fr>\r\n"
        f"X-MSS-NIL: TEST-LPS-1.0\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="=_b{n}"\r\n'
        f"\r\n"
        f"--=_b{n}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n"
        f"\r\n"
        f"Bonjour Docteur, veuillez trouver ci-joint les résultats.\r\n"
        f"--=_b{n}\r\n"
        f'Content-Type: application/pdf; name="resultats.pdf"\r\n'
        f"Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="resultats.pdf"\r\n'
        f"\r\n"
    ).encode()
    tail = f"--=_b{n}--\r\n".encode()
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    remaining = max(0, size - len(head) - len(tail))
    lines = []
    while remaining > 0:
        width = min(76, max(1, remaining - 2))
        lines.append(bytes(rng.choices(alphabet, k=width)) + b"\r\n")
        remaining -= width + 2
    return head + b"".join(lines) + tail


async def random_write(
    store: Store, bal: str, inbox_id: int, other_id: int, rng: random.Random, step: int
) -> str:
    """One write to the INBOX of a seeded random kind (a delivery, a flag change, an expunge,
    a copy or a move to ``other_id``); returns the kind."""
    uids = await store.uids(inbox_id)
    action = rng.choice(["deliver", "flags", "flags", "expunge", "copy", "move"])
    picked = rng.sample(uids, min(len(uids), rng.randint(1, 3))) if uids else []
    if action == "deliver" or not picked:
        await store.deliver(bal, simple_message(step), flags=Flag.SEEN)
        return "deliver"
    if action == "flags":
        await store.set_flags(
            inbox_id,
            picked,
            flags=rng.choice([Flag.SEEN, Flag.DELETED, Flag.FLAGGED]),
            keywords=rng.choice([(), ("$Label1",)]),
            mode=rng.choice(["add", "remove", "replace"]),
        )
    elif action == "expunge":
        await store.expunge(inbox_id)
    else:
        await store.copy_messages(inbox_id, picked, other_id, move=action == "move")
    return action
