"""The MSSanté MTA: inbound MX, submission, outbound queue runner (see the [mta] issue)."""
