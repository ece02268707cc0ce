#!/usr/bin/env bash
# Install what bench/mta_bench.py and bench/imap_bench.py compare Colombe with: Debian's Postfix and
# Dovecot (core + LMTP + IMAP).
# Idempotent. The packages' own system instances are NOT wanted (they would listen on every
# interface, port 25 included): the bench runs private instances in a temporary directory, so the
# system services are kept from starting during the install (policy-rc.d answering 101, "action
# forbidden") and are disabled and stopped afterwards.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root (or sudo) to run: $*" >&2; exit 1; fi; }

PACKAGES=(postfix dovecot-core dovecot-lmtpd dovecot-imapd)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  # No service may start during the install. Keep an existing policy-rc.d (containers ship one);
  # otherwise put ours in place for the duration of the install only.
  policy=/usr/sbin/policy-rc.d
  ours=0
  if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    ours=1
  fi
  cleanup() { if [ "$ours" = 1 ]; then as_root rm -f "$policy"; fi; }
  trap cleanup EXIT
  # Postfix asks what kind of mail server this is: none (the bench writes its own main.cf).
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  echo "postfix postfix/mailname string localhost" | as_root debconf-set-selections
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
fi

# Whatever happened before (an install without policy-rc.d, a reboot): system instances off.
for svc in postfix dovecot; do
  if command -v systemctl >/dev/null; then
    # Works without a running systemd too (removes the wants/ symlinks).
    as_root systemctl disable "$svc" >/dev/null 2>&1 || true
  fi
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl stop "$svc" >/dev/null 2>&1 || true
  else
    as_root service "$svc" stop >/dev/null 2>&1 || true
    as_root update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done

command -v /usr/sbin/postfix >/dev/null
command -v /usr/sbin/dovecot >/dev/null
test -x /usr/lib/dovecot/lmtp
test -x /usr/lib/dovecot/imap
