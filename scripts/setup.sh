#!/usr/bin/env bash
# One-shot, idempotent set-up shared by `npm start`, `npm test` and the benchmarks:
# SoftHSM2 from apt when its module is missing, npm dependencies when node_modules is missing or stale.
# Quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'bkv setup: %s\n' "$*" >&2; }

module="${BKV_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
if [ ! -e "$module" ] || ! command -v softhsm2-util >/dev/null 2>&1; then
  if [ -n "${BKV_PKCS11_MODULE:-}" ] && [ ! -e "$module" ]; then
    say "BKV_PKCS11_MODULE points at $module, which does not exist."
    exit 1
  fi
  apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0)
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      apt=(sudo "${apt[@]}")
    else
      say "SoftHSM2 is not installed and this user cannot install it (not root, no password-less sudo)."
      say "Install it once with:  sudo apt-get install softhsm2"
      say "or point BKV_PKCS11_MODULE at another PKCS#11 module."
      exit 1
    fi
  fi
  say "installing SoftHSM2 with apt-get (one time)..."
  if ! "${apt[@]}" install softhsm2 >/tmp/bkv-apt.log 2>&1; then
    "${apt[@]}" update >>/tmp/bkv-apt.log 2>&1 || true
    if ! "${apt[@]}" install softhsm2 >>/tmp/bkv-apt.log 2>&1; then
      say "apt-get could not install softhsm2; its output is in /tmp/bkv-apt.log"
      exit 1
    fi
  fi
  say "SoftHSM2 installed: $(softhsm2-util --version 2>/dev/null || echo '?')"
fi

# npm dependencies: reinstall when node_modules is absent or was installed from another lock file.
lock_sum=$(sha256sum package-lock.json package.json | sha256sum | cut -c1-64)
stamp=node_modules/.bkv-installed
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sum" ]; then
  # `npm install` rather than `npm ci`: the registry lacks some other platforms' optional prebuilt
  # packages (msgpackr-extract for darwin/win32), which `npm ci` treats as a lock-file mismatch.
  # With an unchanged lock file, `npm install` installs exactly what it records.
  say "installing npm dependencies..."
  if ! npm install --no-audit --no-fund --loglevel=error >&2; then
    say "npm install failed; see the output above."
    exit 1
  fi
  echo "$lock_sum" > "$stamp"
fi
