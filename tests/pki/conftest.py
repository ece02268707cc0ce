"""The pki suite uses the session-wide ``test_pki`` and ``trust_file`` fixtures of tests/conftest.py."""
