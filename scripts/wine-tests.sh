#!/bin/sh
# Runs the Windows build's tests under Wine, on Linux — a check that the Windows build works; `.ci/run` runs
# it whenever Wine can be installed. See docs/reliability.md, "Windows under Wine".
#
#   scripts/wine-tests.sh                 # every test binary
#   scripts/wine-tests.sh --test watch    # any `cargo test` arguments
#
# Needs: wine (Debian: `apt-get install wine wine64`), MinGW (`gcc-mingw-w64-x86-64`) and the Rust target
# (`rustup target add x86_64-pc-windows-gnu`). Wine 8 has no bcryptprimitives.dll, whose ProcessPrng Rust's
# standard library imports, so a small stand-in built from scripts/wine/ is put into the Wine prefix's
# system32 first (only there: it is never shipped).
set -eu
cd "$(dirname "$0")/.."
command -v wine >/dev/null || { echo "wine is not installed" >&2; exit 2; }
command -v x86_64-w64-mingw32-gcc >/dev/null || { echo "MinGW (x86_64-w64-mingw32-gcc) is not installed" >&2; exit 2; }
rustup target add x86_64-pc-windows-gnu >/dev/null 2>&1 || true

export WINEDEBUG=-all
prefix="${WINEPREFIX:-$HOME/.wine}"
[ -d "$prefix/drive_c/windows/system32" ] || wineboot -u >/dev/null 2>&1
# A new prefix is still being set up by background processes when wineboot returns; the first test binary
# started meanwhile has failed once. Wait until the Wine server has nothing left to do.
wineserver -w >/dev/null 2>&1 || true
shim_dir="$(mktemp -d)"
x86_64-w64-mingw32-gcc -shared -O2 -o "$shim_dir/bcryptprimitives.dll" \
    scripts/wine/bcryptprimitives.c scripts/wine/bcryptprimitives.def -ladvapi32
cp "$shim_dir/bcryptprimitives.dll" "$prefix/drive_c/windows/system32/bcryptprimitives.dll"
rm -rf "$shim_dir"

export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
exec cargo test --target x86_64-pc-windows-gnu "$@"
