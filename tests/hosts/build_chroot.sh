#!/usr/bin/env bash
# Build (once, cached) a Debian trixie chroot holding a real GIMP 3.0 and a real Krita 5.2 with
# Python, for the host tests of the dragd plug-ins; then make sure its mounts are in place.
#
#   tests/hosts/build_chroot.sh            # build if needed, mount, print the chroot path last
#   tests/hosts/build_chroot.sh --umount   # unmount what this script mounted (for cleaning up)
#   tests/hosts/build_chroot.sh --rebuild  # throw the cached chroot away and build it anew
#   tests/hosts/build_chroot.sh --remove   # unmount and delete the cached chroot
#   tests/hosts/build_chroot.sh --check    # exit 0 (printing the path) iff a current chroot exists
#
# Cache: ${DRAGD_HOSTS_CHROOT:-/var/cache/dragd/trixie-hosts}. A chroot counts as built only when
# its stamp file holds the current recipe hash (suite + package list + recipe version): the stamp
# is written last, and the tree is built under "$ROOT.partial" and renamed into place only when
# complete, so an interrupted build is never taken for a finished one. Concurrent callers are
# serialised with flock on "$ROOT.lock". Needs root (debootstrap, chroot, mount).
set -euo pipefail

ROOT=${DRAGD_HOSTS_CHROOT:-/var/cache/dragd/trixie-hosts}
# Empty: debootstrap's own default mirror (the repository names no mirror host).
MIRROR=${DRAGD_DEBIAN_MIRROR:-}
SUITE=trixie
# Bump when the recipe below changes in a way the package list does not show.
RECIPE_VERSION=1
# The hosts and the Python modules the plug-ins and tests use. GIMP's Python plug-ins need
# PyGObject and the Gimp/Gegl typelibs: gimp 3.0.4 Depends on python3-gi and gir1.2-gimp-3.0,
# which Depends on gir1.2-gegl-0.4, so --no-install-recommends keeps them (only ghostscript is
# a Recommends); they are listed anyway so that the stamp covers them.
PACKAGES=(
    gimp python3-gi gir1.2-gimp-3.0 gir1.2-gegl-0.4
    krita python3-pyqt5
    python3-zmq python3-msgpack
    xvfb xauth xdotool
)
STAMP_NAME=.dragd-hosts-stamp

log() { printf '[build_chroot %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

recipe_hash() {
    printf '%s\n' "suite=$SUITE" "variant=minbase" "recipe=$RECIPE_VERSION" "${PACKAGES[@]}" |
        sha256sum | cut -c1-16
}

# Every mount point at or below $1, deepest first (read from mountinfo, so bind mounts count).
mounts_under() {
    local base
    base=$(readlink -m "$1")
    awk -v b="$base" '{ p = $5; gsub(/\\040/, " ", p); if (p == b || index(p, b "/") == 1) print p }' \
        /proc/self/mountinfo | sort -r | uniq
}

umount_all() {
    local m
    while read -r m; do
        [ -n "$m" ] || continue
        umount "$m" 2>/dev/null || umount -l "$m" || die "cannot unmount $m"
    done < <(mounts_under "$1")
    [ -z "$(mounts_under "$1")" ] || die "mounts remain under $1"
}

# Remove a (possibly half-built, possibly mounted) tree without ever crossing into host mounts.
remove_tree() {
    [ -e "$1" ] || return 0
    umount_all "$1"
    rm -rf --one-file-system -- "$1"
}

is_mounted() { [ -n "$(awk -v p="$(readlink -m "$1")" '$5 == p' /proc/self/mountinfo)" ]; }

mount_api() {
    local dir=$1
    # /proc: GIMP, Krita, Python and apt maintainer scripts all read it.
    # Each mount is made private so nothing propagates back to the host on shared-propagation
    # systems (systemd mounts / shared): the tmpfs on $dir/dev/shm must never appear on /dev/shm.
    is_mounted "$dir/proc" || { mount --bind /proc "$dir/proc" && mount --make-private "$dir/proc"; }
    # /dev: /dev/null, /dev/urandom, /dev/tty for Xvfb and everything else (non-recursive: the
    # host's /dev/pts and /dev/shm stay out).
    is_mounted "$dir/dev" || { mount --bind /dev "$dir/dev" && mount --make-private "$dir/dev"; }
    # /dev/shm: a private tmpfs for POSIX shared memory (Xvfb's MIT-SHM, Qt, GEGL).
    mkdir -p "$dir/dev/shm" 2>/dev/null || true
    is_mounted "$dir/dev/shm" || mount -t tmpfs -o mode=1777,nosuid,nodev shm "$dir/dev/shm"
}

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and mount need it)"
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || die "no debootstrap and no apt-get to install it"
    log "installing debootstrap on the host"
    apt-get install -y -q debootstrap >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; } ||
        die "cannot install debootstrap"
}

chroot_apt() {
    chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "${@:2}"
}

build() {
    local part="$ROOT.partial" t0 t
    t0=$(now)
    remove_tree "$part"
    mkdir -p "$(dirname "$ROOT")"

    t=$(now)
    local keyring=()
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] &&
        keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    local where=()
    if [ ! -e "/usr/share/debootstrap/scripts/$SUITE" ]; then
        # An older debootstrap without a trixie script: sid's serves, but a script can only be
        # named after a mirror, so take debootstrap's own default when none is set.
        local mirror=$MIRROR
        [ -n "$mirror" ] ||
            mirror=$(sed -n 's/^DEF_MIRROR="\(.*\)"$/\1/p' "$(command -v debootstrap)" | head -n 1)
        [ -n "$mirror" ] || die "debootstrap has no $SUITE script and no default mirror: set DRAGD_DEBIAN_MIRROR"
        where=("$mirror" /usr/share/debootstrap/scripts/sid)
    elif [ -n "$MIRROR" ]; then
        where=("$MIRROR")
    fi
    log "debootstrap --variant=minbase $SUITE ${where[*]:-(default mirror)}"
    debootstrap --variant=minbase "${keyring[@]}" "$SUITE" "$part" "${where[@]}" \
        >"$part.debootstrap.log" 2>&1 ||
        { tail -n 30 "$part.debootstrap.log" >&2; die "debootstrap failed (log: $part.debootstrap.log)"; }
    rm -f "$part.debootstrap.log"
    log "debootstrap done in $(since "$t") s"

    # Fast, quiet, lean package installs: no fsync, no services, no docs/man/translations.
    printf 'force-unsafe-io\n' >"$part/etc/dpkg/dpkg.cfg.d/dragd-unsafe-io"
    printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
        'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' \
        'path-exclude=/usr/share/locale/*/LC_MESSAGES/*.mo' \
        >"$part/etc/dpkg/dpkg.cfg.d/dragd-nodoc"
    printf '#!/bin/sh\nexit 101\n' >"$part/usr/sbin/policy-rc.d"
    chmod 755 "$part/usr/sbin/policy-rc.d"
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nAcquire::Retries "3";\n' \
        >"$part/etc/apt/apt.conf.d/99dragd"
    cp -L /etc/resolv.conf "$part/etc/resolv.conf" 2>/dev/null || true

    # Interrupted here on: leave no mounts behind (the next run removes the partial tree).
    trap 'umount_all "$part" 2>/dev/null; exit 130' INT TERM
    mount_api "$part"
    t=$(now)
    log "apt-get install ${PACKAGES[*]}"
    if ! { chroot_apt "$part" apt-get update -q &&
           chroot_apt "$part" apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; } \
           >"$part.apt.log" 2>&1; then
        tail -n 40 "$part.apt.log" >&2
        umount_all "$part"
        die "apt-get install failed (log: $part.apt.log)"
    fi
    rm -f "$part.apt.log"
    chroot_apt "$part" apt-get clean
    rm -rf "$part"/var/lib/apt/lists/*_Packages "$part"/var/lib/apt/lists/*_Translation-*
    log "packages installed in $(since "$t") s"

    # Verify before declaring it built.
    local f
    for f in /usr/bin/gimp-console-3.0 /usr/bin/kritarunner /usr/bin/xvfb-run /usr/bin/python3; do
        [ -x "$part$f" ] || { umount_all "$part"; die "missing $f in the new chroot"; }
    done
    chroot_apt "$part" python3 -c 'import zmq, msgpack, gi; gi.require_version("Gimp", "3.0"); from gi.repository import Gimp' ||
        { umount_all "$part"; die "python3 modules missing in the new chroot"; }
    mkdir -p "$part/home" "$part/tmp"
    chmod 1777 "$part/tmp"

    {
        echo "recipe: $(recipe_hash)"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        chroot_apt "$part" dpkg-query -W -f '${Package} ${Version}\n' gimp krita python3 python3-zmq python3-msgpack python3-pyqt5 xvfb
    } >"$part/$STAMP_NAME.tmp"
    umount_all "$part"
    remove_tree "$ROOT"
    mv "$part/$STAMP_NAME.tmp" "$part/$STAMP_NAME"
    mv "$part" "$ROOT"
    trap - INT TERM
    log "chroot built in $(since "$t0") s; size $(du -sh --one-file-system "$ROOT" | cut -f1)"
}

is_built() {
    [ -f "$ROOT/$STAMP_NAME" ] && [ "$(sed -n 's/^recipe: //p' "$ROOT/$STAMP_NAME")" = "$(recipe_hash)" ] &&
        [ -x "$ROOT/usr/bin/gimp-console-3.0" ] && [ -x "$ROOT/usr/bin/kritarunner" ]
}

main() {
    local mode=${1:-}
    case "$mode" in
        ""|--rebuild|--umount|--remove|--check) ;;
        *) die "usage: $0 [--rebuild|--umount|--remove|--check]" ;;
    esac
    if [ "$mode" = --check ]; then
        is_built && { echo "$ROOT"; exit 0; }
        exit 1
    fi
    need_root
    mkdir -p "$(dirname "$ROOT")"
    local t0 waited
    t0=$(now)
    exec 9>>"$ROOT.lock"
    flock -w "${DRAGD_HOSTS_LOCK_TIMEOUT:-3600}" 9 || die "timed out waiting for $ROOT.lock"
    waited=$(since "$t0")
    [ "${waited%.*}" -ge 1 ] && log "waited $waited s for the lock"

    if [ "$mode" = --umount ]; then
        umount_all "$ROOT"
        umount_all "$ROOT.partial"
        exit 0
    fi
    if [ "$mode" = --remove ]; then
        remove_tree "$ROOT.partial"
        remove_tree "$ROOT"
        rm -f "$ROOT".partial.*.log
        log "removed $ROOT"
        exit 0
    fi
    if [ "$mode" = --rebuild ] || ! is_built; then
        if [ -e "$ROOT" ] && [ "$mode" != --rebuild ]; then
            log "cached chroot at $ROOT is missing, stale or half-built: rebuilding"
        fi
        ensure_debootstrap
        build
    else
        log "cached chroot is current ($(sed -n 's/^recipe: //p' "$ROOT/$STAMP_NAME"))"
    fi
    mount_api "$ROOT"
    log "ready in $(since "$t0") s"
    echo "$ROOT"
}

main "$@"
