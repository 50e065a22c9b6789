#!/usr/bin/env bash
# Install the Tux Paint stamps (Debian package tuxpaint-stamps-default, ~160 MB download, 785
# captioned PNG cut-outs under /usr/share/tuxpaint/stamps) that data=stamps reads.
#
#   scripts/install-stamps.sh    a no-op when the package is installed; apt-get install otherwise
#                                (through sudo when not root); exit 0 with a message, installing
#                                nothing, where there is no apt-get or no way to become root
set -euo pipefail

PKG=tuxpaint-stamps-default
ME=install-stamps.sh
LOG=${CFH_STAMPS_LOG:-${TMPDIR:-/tmp}/cfh-install-stamps.log}

say() { printf '%s: %s\n' "$ME" "$*"; }
die() { printf '%s: error: %s\n' "$ME" "$*" >&2; exit 1; }

if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q 'install ok installed'; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  say "no apt-get here: $PKG not installed; data=stamps and its tests will say so"
  exit 0
fi
SUDO=()
if ((EUID != 0)); then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    say "not root and no passwordless sudo: $PKG not installed; data=stamps and its tests will say so"
    exit 0
  fi
fi
say "installing $PKG"
rc=0
{
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 update -qq &&
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 \
      install -y -qq --no-install-recommends "$PKG"
} >"$LOG" 2>&1 || rc=$?
((rc == 0)) || die "apt-get install $PKG failed (exit $rc); see $LOG: $(tail -n 3 "$LOG" | tr '\n' ' ')"
say "installed $PKG"
