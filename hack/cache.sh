# Sourced by the build scripts: the machine-wide cache rule of hack/cache.py, in shell.
#
# A binary NAME built from sources with key KEY (a version, a hash of the sources) lives in
# .cache/bin/NAME with the stamp .cache/bin/.NAME.KEY, and is copied to
# $ASGI_SHARED_CACHE/bin/NAME-KEY (default ~/.cache/asgi-operator/bin), so a fresh clone on
# the same machine copies it instead of building it again.
#
#   cache_reuse NAME KEY || { build into .cache/bin/NAME; cache_keep NAME KEY; }

ASGI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASGI_BIN="$ASGI_ROOT/.cache/bin"
ASGI_SHARED_BIN="${ASGI_SHARED_CACHE:-$HOME/.cache/asgi-operator}/bin"
mkdir -p "$ASGI_BIN" "$ASGI_SHARED_BIN"

# cache_copy SRC DEST: never leaves DEST half-written (another clone may be reading it).
cache_copy() { cp "$1" "$2.$$.tmp" && mv "$2.$$.tmp" "$2"; }

# cache_stamp NAME KEY: .cache/bin/NAME is the build of KEY (and of no other key).
cache_stamp() { rm -f "$ASGI_BIN/.$1".*; touch "$ASGI_BIN/.$1.$2"; }

# cache_reuse NAME KEY: true if .cache/bin/NAME is the build of KEY, already (then it is
# also kept machine-wide) or copied now from the machine-wide cache; false: build it.
cache_reuse() {
  local shared="$ASGI_SHARED_BIN/$1-$2"
  if [ -x "$ASGI_BIN/$1" ] && [ -f "$ASGI_BIN/.$1.$2" ]; then
    [ -x "$shared" ] || cache_copy "$ASGI_BIN/$1" "$shared"
    return 0
  fi
  if [ -x "$shared" ]; then
    cache_copy "$shared" "$ASGI_BIN/$1" && cache_stamp "$1" "$2"
    return 0
  fi
  return 1
}

# cache_keep NAME KEY: after building .cache/bin/NAME from KEY: stamp it, keep it machine-wide.
cache_keep() { cache_stamp "$1" "$2" && cache_copy "$ASGI_BIN/$1" "$ASGI_SHARED_BIN/$1-$2"; }
