"""The IMAP4rev1/IMAP4rev2 server over store (see the [imap] issue)."""
