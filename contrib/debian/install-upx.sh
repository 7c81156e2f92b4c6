#!/bin/sh
# Installs Debian's upx-ucl, which the antivirus runs (`upx -d`) to unpack UPX-packed PE files,
# when no upx program is there. Debian 12 (bookworm) ships it only in its official
# bookworm-backports suite (4.2.2, built for bookworm, needs only libc and libstdc++), so on
# bookworm that suite is added first when no apt source names it; later Debian releases and
# Ubuntu have it in main/universe. Run as root; idempotent (does nothing once upx is there).
# Used by `make av-packages` (so `make serve` and `make test`) and by the tests.
set -eu

if command -v upx >/dev/null 2>&1 || command -v upx-ucl >/dev/null 2>&1; then
	exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "install-upx: upx is missing and apt-get as root is not available" >&2
	exit 1
fi

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
apt="apt-get -o DPkg::Lock::Timeout=600"
target=""
if [ "$codename" = bookworm ]; then
	target="-t bookworm-backports"
	if ! grep -rqsE --include='*.list' --include='*.sources' '^[^#]*bookworm-backports' \
		/etc/apt/sources.list /etc/apt/sources.list.d/; then
		# deb822, signed by the same keyring as the system's own Debian sources
		cat >/etc/apt/sources.list.d/bookworm-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
	fi
fi
$apt update -qq
# shellcheck disable=SC2086 # $target is empty or two words on purpose
DEBIAN_FRONTEND=noninteractive $apt install -y -qq --no-install-recommends $target upx-ucl
