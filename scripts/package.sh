#!/usr/bin/env bash
# Builds the release artefacts into target/dist:
#   gatehouse-VERSION-x86_64-linux.tar.gz  the layout HostKit installs (bin/gatehouse), with
#                                          the man page, completions, unit and default config;
#   gatehouse_VERSION-1_amd64.deb          (cargo-deb) /usr/bin/gatehouse, the unit
#                                          (installed, not enabled), /etc/gatehouse/gatehouse.toml,
#                                          the gatehouse account and /var/lib/gatehouse.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release --locked -p gatehouse
bin="${CARGO_TARGET_DIR:-target}/release/gatehouse"
version=$("$bin" --version | awk '{print $2}')
generated=target/packaging
mkdir -p "$generated/completions" target/dist
"$bin" man >"$generated/gatehouse.1"
"$bin" completions bash >"$generated/completions/gatehouse"
"$bin" completions zsh >"$generated/completions/_gatehouse"
"$bin" completions fish >"$generated/completions/gatehouse.fish"
# The unit in the package is the one the binary prints (a test keeps them equal too).
if ! cmp -s packaging/debian/gatehouse.service <("$bin" systemd-unit --binary /usr/bin/gatehouse); then
    echo "packaging/debian/gatehouse.service is stale: gatehouse systemd-unit --binary /usr/bin/gatehouse" >&2
    exit 1
fi
name="gatehouse-$version-x86_64-linux"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
install -D -m 0755 "$bin" "$root/bin/gatehouse"
install -D -m 0644 "$generated/gatehouse.1" "$root/share/man/man1/gatehouse.1"
install -D -m 0644 "$generated/completions/gatehouse" "$root/share/bash-completion/completions/gatehouse"
install -D -m 0644 "$generated/completions/_gatehouse" "$root/share/zsh/vendor-completions/_gatehouse"
install -D -m 0644 "$generated/completions/gatehouse.fish" "$root/share/fish/vendor_completions.d/gatehouse.fish"
install -D -m 0644 packaging/gatehouse.toml "$root/etc/gatehouse.toml"
mkdir -p "$root/share/gatehouse"
"$bin" systemd-unit --binary /opt/gatehouse/bin/gatehouse >"$root/share/gatehouse/gatehouse.service"
tar -C "$stage" -czf "target/dist/$name.tar.gz" "$name"
cargo deb -p gatehouse --no-build --output target/dist/
ls -l target/dist
