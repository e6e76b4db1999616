#!/usr/bin/env bash
# Checks what scripts/package.sh built: the tarball has the layout HostKit installs, and the
# .deb, unpacked into a scratch root, holds the binary, the unit (not enabled), the default
# config as a conffile and the scripts that make the account, and its binary accepts its
# default config. Run after scripts/package.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "check-package: $*" >&2; exit 1; }
version=$("${CARGO_TARGET_DIR:-target}/release/gatehouse" --version | awk '{print $2}')
tarball="target/dist/gatehouse-$version-x86_64-linux.tar.gz"
deb=$(ls target/dist/gatehouse_"$version"-*_amd64.deb 2>/dev/null | head -1)
[ -f "$tarball" ] || fail "no $tarball"
[ -n "$deb" ] || fail "no .deb for $version in target/dist"

listing=$(tar -tzf "$tarball")
for entry in bin/gatehouse share/man/man1/gatehouse.1 share/bash-completion/completions/gatehouse \
    share/zsh/vendor-completions/_gatehouse share/fish/vendor_completions.d/gatehouse.fish \
    etc/gatehouse.toml share/gatehouse/gatehouse.service; do
    grep -qx "gatehouse-$version-x86_64-linux/$entry" <<<"$listing" || fail "$tarball lacks $entry"
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
dpkg-deb -x "$deb" "$scratch/root"
dpkg-deb -e "$deb" "$scratch/control"
for file in usr/bin/gatehouse etc/gatehouse/gatehouse.toml usr/lib/systemd/system/gatehouse.service \
    usr/share/man/man1/gatehouse.1.gz usr/share/bash-completion/completions/gatehouse; do
    [ -e "$scratch/root/$file" ] || fail "$deb lacks /$file"
done
grep -qx /etc/gatehouse/gatehouse.toml "$scratch/control/conffiles" || fail "the config is not a conffile"
grep -q adduser "$scratch/control/postinst" || fail "postinst does not create the gatehouse account"
grep -q /var/lib/gatehouse "$scratch/control/postinst" || fail "postinst does not create /var/lib/gatehouse"
# Installed, never enabled nor started by the package; an upgrade swaps the binary in
# without a restart.
! grep -v "^#" "$scratch/control/postinst" | grep -qE "deb-systemd-invoke (start|restart|try-restart)|systemctl (enable|start|restart)" ||
    fail "postinst starts or restarts the unit"
grep -q "gatehouse upgrade" "$scratch/control/postinst" || fail "postinst does not upgrade a running service"
cmp -s "$scratch/root/usr/lib/systemd/system/gatehouse.service" \
    <("$scratch/root/usr/bin/gatehouse" systemd-unit --binary /usr/bin/gatehouse) || fail "the packaged unit differs from the printed one"
"$scratch/root/usr/bin/gatehouse" check -c "$scratch/root/etc/gatehouse/gatehouse.toml" || fail "the packaged binary rejects the default config"
echo "check-package: $(basename "$tarball") and $(basename "$deb") OK"
