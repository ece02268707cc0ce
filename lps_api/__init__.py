"""The API LPS: Pro Santé Connect tokens, SASL XOAUTH2 and the REST API (to come)."""
