//! `gatehouse systemd-unit`: a hardened unit for running Gatehouse as a system service, with
//! the readiness, reload and watchdog protocol it speaks (crate::systemd).

use std::path::Path;

/// The unit text for `binary` serving `config` as `user`.
pub fn render(binary: &Path, config: &Path, user: &str) -> String {
    let (binary, config) = (binary.display(), config.display());
    format!(
        "# Gatehouse, written by `gatehouse systemd-unit`.
[Unit]
Description=Gatehouse edge proxy
After=network-online.target
Wants=network-online.target

[Service]
# READY=1 once every listener is bound, the state restored and the routes in service;
# RELOADING=1 around reloads; watchdog pings only while every proxy worker runs.
Type=notify
NotifyAccess=main
ExecStartPre={binary} check --config {config}
ExecStart={binary} run --config {config}
ExecReload=/bin/kill -HUP $MAINPID
# `gatehouse upgrade` swaps in a new binary without dropping a connection; the old process
# tells systemd the new MAINPID.
WatchdogSec=30s
Restart=on-failure
RestartSec=2s
# SIGTERM lets requests in flight finish (10 s drain) before the process exits.
KillMode=mixed
TimeoutStopSec=30s
User={user}
Group={user}
# Ports 80 and 443 without root.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
# /run/gatehouse (admin socket, pid file), /var/lib/gatehouse (deploys, certificates).
RuntimeDirectory=gatehouse
RuntimeDirectoryMode=0750
StateDirectory=gatehouse
StateDirectoryMode=0750
ProtectSystem=strict
ReadWritePaths=/var/lib/gatehouse
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_hardened_and_speaks_notify() {
        let unit = render(Path::new("/usr/bin/gatehouse"), Path::new("/etc/gatehouse/gatehouse.toml"), "gatehouse");
        for line in [
            "Type=notify",
            "ExecStart=/usr/bin/gatehouse run --config /etc/gatehouse/gatehouse.toml",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/gatehouse",
            "LimitNOFILE=1048576",
            "Restart=on-failure",
            "WatchdogSec=30s",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line}");
        }
    }
}
