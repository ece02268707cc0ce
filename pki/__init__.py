"""IGC-Santé certificates, TLS contexts and S/MIME (see the [pki] issue)."""
