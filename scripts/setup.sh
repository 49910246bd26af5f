#!/usr/bin/env bash
# One-shot, idempotent set-up shared by `npm start`, `npm test` and the benchmarks:
# SoftHSM2 (and libsodium-dev for the native addon) from apt when missing, npm dependencies when
# node_modules is missing or stale, the native ristretto255 addon when it is missing or its sources
# changed. Quiet when there is nothing to do. With --test (npm test) also NSS softoken and opensc
# (the second token of the token suites) and Debian's chromium, in which
# the chaos report's test renders the page headless (optional: that test says so and skips without it).
set -euo pipefail
for_tests=0
[ "${1:-}" = "--test" ] && for_tests=1
cd "$(dirname "$0")/.."

say() { printf 'bkv setup: %s\n' "$*" >&2; }

module="${BKV_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
if [ -n "${BKV_PKCS11_MODULE:-}" ] && [ ! -e "$module" ]; then
  say "BKV_PKCS11_MODULE points at $module, which does not exist."
  exit 1
fi
need_softhsm=0
if [ ! -e "$module" ] || ! command -v softhsm2-util >/dev/null 2>&1; then need_softhsm=1; fi

# The native ristretto255 addon (native/) is rebuilt when its sources, Node or libsodium's header
# change; the stamp is that hash, written only after a successful build.
native_out=native/build/Release/bkv_native.node
native_stamp=native/build/.bkv-built
native_sum=$( { cat native/binding.gyp native/src/*.c; node --version; } 2>/dev/null | sha256sum | cut -c1-64)
need_native=0
if [ ! -f "$native_out" ] || [ ! -f "$native_stamp" ] || [ "$(cat "$native_stamp")" != "$native_sum" ]; then need_native=1; fi
have_sodium_h() { echo '#include <sodium.h>' | cc -E -x c - >/dev/null 2>&1; }
need_sodium=0
if [ "$need_native" -eq 1 ] && ! have_sodium_h; then need_sodium=1; fi

pkgs=()
[ "$need_softhsm" -eq 1 ] && pkgs+=(softhsm2)
[ "$need_sodium" -eq 1 ] && pkgs+=(libsodium-dev)
need_chromium=0
if [ "$for_tests" -eq 1 ] && ! command -v chromium >/dev/null 2>&1; then need_chromium=1; pkgs+=(chromium); fi
# The token suites also run on a second, independently written software token (NSS softoken, from
# libnss3) and read keys back with pkcs11-tool (opensc); optional: those tests skip and say why.
if [ "$for_tests" -eq 1 ] && [ ! -e /usr/lib/x86_64-linux-gnu/libsoftokn3.so ] && [ "$(uname -m)" = x86_64 ]; then pkgs+=(libnss3); fi
if [ "$for_tests" -eq 1 ] && ! command -v pkcs11-tool >/dev/null 2>&1; then pkgs+=(opensc); fi
if [ "${#pkgs[@]}" -gt 0 ]; then
  apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0)
  can_apt=1
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      apt=(sudo "${apt[@]}")
    else
      can_apt=0
    fi
  fi
  if [ "$can_apt" -eq 0 ]; then
    if [ "$need_softhsm" -eq 1 ]; then
      say "SoftHSM2 is not installed and this user cannot install it (not root, no password-less sudo)."
      say "Install it once with:  sudo apt-get install softhsm2 libsodium-dev"
      say "or point BKV_PKCS11_MODULE at another PKCS#11 module."
      exit 1
    fi
  else
    say "installing ${pkgs[*]} with apt-get (one time)..."
    if ! "${apt[@]}" install "${pkgs[@]}" >/tmp/bkv-apt.log 2>&1; then
      "${apt[@]}" update >>/tmp/bkv-apt.log 2>&1 || true
      if ! "${apt[@]}" install "${pkgs[@]}" >>/tmp/bkv-apt.log 2>&1 && [ "$need_softhsm" -eq 1 ]; then
        # libsodium-dev, chromium, libnss3 and opensc are optional: do not let them block SoftHSM2
        "${apt[@]}" install softhsm2 >>/tmp/bkv-apt.log 2>&1 || true
      fi
    fi
    if [ "$need_softhsm" -eq 1 ]; then
      if [ ! -e "$module" ] || ! command -v softhsm2-util >/dev/null 2>&1; then
        say "apt-get could not install softhsm2; its output is in /tmp/bkv-apt.log"
        exit 1
      fi
      say "SoftHSM2 installed: $(softhsm2-util --version 2>/dev/null || echo '?')"
    fi
    if [ "$need_chromium" -eq 1 ] && ! command -v chromium >/dev/null 2>&1; then
      say "warning: chromium did not install (see /tmp/bkv-apt.log); the chaos report's browser test will skip"
    fi
  fi
fi

# npm dependencies: reinstall when node_modules is absent or was installed from another lock file.
lock_sum=$(sha256sum package-lock.json package.json | sha256sum | cut -c1-64)
stamp=node_modules/.bkv-installed
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sum" ]; then
  # `npm install` rather than `npm ci`: the registry lacks some other platforms' optional prebuilt
  # packages (msgpackr-extract for darwin/win32), which `npm ci` treats as a lock-file mismatch.
  # --no-save: a plain `npm install` writes back the tree it resolved, and whether those platform
  # entries are in it depends on what this machine's registry or cache can see, so a fresh clone's
  # `npm test` would leave package-lock.json modified. The lock file is an input here, never an output.
  say "installing npm dependencies..."
  if ! npm install --no-save --no-audit --no-fund --loglevel=error >&2; then
    say "npm install failed; see the output above."
    exit 1
  fi
  echo "$lock_sum" > "$stamp"
fi

# The native ristretto255 addon (native/README.md). Optional: when it does not build, OPAQUE runs on
# libsodium's WebAssembly and says so (backendStatus(), bench:opaque); setup carries on.
if [ "$need_native" -eq 1 ] && command -v flock >/dev/null 2>&1; then
  # Several `npm test`s may share this tree: one builds, the others wait and then find it built.
  exec 9>"/tmp/bkv-native-build.$(id -u).lock"
  flock 9
  if [ -f "$native_out" ] && [ -f "$native_stamp" ] && [ "$(cat "$native_stamp")" = "$native_sum" ]; then need_native=0; fi
fi
if [ "$need_native" -eq 1 ]; then
  gyp="${npm_config_node_gyp:-}"
  if [ -z "$gyp" ] || [ ! -f "$gyp" ]; then
    gyp="$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js"
  fi
  # Build against the installed Node headers (no download): the prefix of this node binary.
  nodedir="${npm_config_nodedir:-$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")}"
  rm -f "$native_stamp" "$native_out" # never leave a stale build behind to be loaded
  if ! have_sodium_h; then
    echo "cannot compile against sodium.h: libsodium-dev or a C compiler is missing" >/tmp/bkv-native-build.log
    built=0
  elif [ ! -f "$gyp" ]; then
    echo "node-gyp not found at $gyp" >/tmp/bkv-native-build.log
    built=0
  elif (cd native && node "$gyp" rebuild --nodedir="$nodedir" --loglevel=warn) >/tmp/bkv-native-build.log 2>&1 && [ -f "$native_out" ]; then
    built=1
  else
    built=0
  fi
  if [ "$built" -eq 1 ]; then
    echo "$native_sum" > "$native_stamp"
  else
    why=$(grep -m1 -E 'error:|^gyp: |not found|\*\*\*' /tmp/bkv-native-build.log || tail -n 1 /tmp/bkv-native-build.log)
    say "warning: the native ristretto255 addon did not build (${why:0:140}); OPAQUE falls back to libsodium WebAssembly. Log: /tmp/bkv-native-build.log"
  fi
fi
