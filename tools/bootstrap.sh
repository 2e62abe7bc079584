#!/bin/sh
# Install every Debian 12 package ringmx builds, tests or benchmarks with.
# Idempotent: packages already present are skipped, apt runs only when needed.
set -eu

# clang with libclang-rt-14-dev (libFuzzer and the sanitizer runtimes) builds
# the fuzz targets (tests/fuzz/run.sh); llvm-14 brings llvm-symbolizer, without
# which their crash reports are bare addresses (clang only recommends it,
# through llvm-14-dev, and --no-install-recommends below skips that).
PKGS="build-essential meson ninja-build pkg-config clang clang-format
libclang-rt-14-dev llvm-14 liburing-dev libwolfssl-dev libck-dev libjson-c-dev
libhiredis-dev libmemcached-dev libspf2-dev libc-ares-dev libpcre2-dev
libcmocka-dev python3 python3-pytest redis-server memcached postfix swaks libnet-ssleay-perl
openssl procps nsd bind9-dnsutils dovecot-core dovecot-lmtpd msmtp
universal-ctags"

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "bootstrap: missing packages:$missing (run as root to install)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# postfix asks what kind of site it is; we only use its smtp-sink/smtp-source
# tools and private loopback instances (the benchmarks, tests/blackbox/peers.py),
# never the system one. msmtp asks about its AppArmor profile: the peer tests
# run it with a config file in a temp dir, which the profile would refuse.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
echo "msmtp msmtp/apparmor boolean false" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing
# Debian starts some of these as system services on install; the tests start
# their own on free loopback ports.  Stop and disable the services of the
# packages installed just now (a reboot must not bring them back: a system
# dovecot would hold ports 24/110/143).  A service of a package the machine
# already had is its owner's (a system postfix that carries the host's mail):
# left as it is, the tests never touch it.
for ps in redis-server:redis-server memcached:memcached postfix:postfix nsd:nsd \
	dovecot-core:dovecot.socket dovecot-core:dovecot; do
	case " $missing " in
	*" ${ps%%:*} "*) ;;
	*) continue ;;
	esac
	s=${ps#*:}
	systemctl disable --now "$s" 2>/dev/null || service "${s%.socket}" stop 2>/dev/null || true
done
