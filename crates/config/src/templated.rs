//! drove-gateway's nginx and HAProxy keys: where the rendered config goes, the template, how
//! to check and reload, and the values templates read (`.NginxMaxFailsUpstream`, the HAProxy
//! naming keys, ...).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use crate::file::FileConfig;
use crate::validate::{positive_seconds, Checker};
use crate::ProxyPlatform;

/// Everything the nginx or HAProxy engine needs from the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplatedSettings {
    /// The rendered config; `None` with `*_reload_disabled`, where the runtime API does
    /// everything and nothing is rendered or reloaded.
    pub files: Option<ConfigFiles>,
    pub left_delimiter: String,
    pub right_delimiter: String,
    pub nginx_max_fails: i64,
    pub nginx_fail_timeout: String,
    pub nginx_slow_start: String,
    /// `nginxplusapiaddr` (`host:port`): membership changes through the NGINX Plus API.
    pub nginx_plus_api: Option<std::net::SocketAddr>,
    /// `haproxy_manage_global_server_state_file`: where the servers are saved after each
    /// runtime update, and the config whose `#DROVE-SERVERS-BEGIN` blocks
    /// `gatehouse sync-haproxy-state-config` fills from it.
    pub haproxy_state_file: Option<HaproxyStateFile>,
    /// `dns_resolution_timeout_sec` (default 2 s): one lookup for the runtime APIs.
    pub dns_timeout: Duration,
    /// `proxy_control_plane_timeout_sec` (default 30 s): how long a proxy restart announced
    /// by SIGUSR1 holds changes back without its SIGUSR2.
    pub restart_hold: Duration,
    pub haproxy: HaproxyNaming,
}

/// Where the rendered config goes and how the proxy checks and reloads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigFiles {
    /// The live config file the proxy reads.
    pub config_path: PathBuf,
    pub template_path: PathBuf,
    /// Command prefix for the check (`nginx_cmd` / `haproxy_cmd`); `None` skips the check.
    pub check_command: Option<String>,
    /// nginx: `nginx_cmd` (` -s reload` is appended); HAProxy: `haproxy_reload_cmd` as written.
    /// With a runtime API, a reload happens only when the set of vhosts or backends changes.
    pub reload_command: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaproxyStateFile {
    pub path: PathBuf,
    /// `haproxy_config`, the operator's file with the managed blocks.
    pub config_path: Option<PathBuf>,
}

/// drove-gateway's HAProxy keys that templates read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaproxyNaming {
    pub socket_addr: String,
    pub add_server_attributes: String,
    pub add_server_ssl_attributes: String,
    pub server_name_prefix: String,
    pub server_name_host_port_separator: String,
    pub backend_name_separator: String,
    pub backend_include_routing_tag_suffix: bool,
}

type Keys<'a> = (&'a Option<Spanned<String>>, &'a Option<Spanned<String>>, &'a Option<Spanned<String>>, Option<bool>);

/// The config file, template and commands; `None` (with errors recorded) when one is missing.
fn config_files(
    c: &mut Checker<'_>,
    file: &FileConfig,
    platform: ProxyPlatform,
    name: &str,
    (config, template, check, ignore_check): Keys<'_>,
) -> Option<ConfigFiles> {
    // A missing key is reported where the platform was chosen: `proxy_platform`, or the
    // first key of the engine that implied it.
    let platform_span =
        file.proxy_platform.as_ref().or(config.as_ref()).or(template.as_ref()).or(check.as_ref()).map(Spanned::span);
    let mut required = |key: &str, value: &Option<Spanned<String>>| match text(value) {
        Some(v) => Some(v.to_string()),
        None => {
            let span = value.as_ref().map(Spanned::span).or_else(|| platform_span.clone());
            c.error(span, format!("the {name} engine needs `{key}`"));
            None
        }
    };
    let config_path = required(&format!("{name}_config"), config);
    let template_path = required(&format!("{name}_template"), template);
    let ignore_check = ignore_check.unwrap_or(false);
    // nginx checks and reloads with `nginx_cmd`; HAProxy checks with `haproxy_cmd` and
    // reloads with `haproxy_reload_cmd`.
    let command =
        if platform == ProxyPlatform::Nginx || !ignore_check { required(&format!("{name}_cmd"), check) } else { None };
    let reload_command = match platform {
        ProxyPlatform::Nginx => command.clone(),
        _ => required("haproxy_reload_cmd", &file.haproxy_reload_cmd),
    };
    let check_command = if ignore_check {
        c.warn(None, format!("`{name}_ignore_check` is set: rendered configs go live without `{name}` checking them"));
        None
    } else {
        command
    };
    Some(ConfigFiles {
        config_path: c.resolve(&config_path?),
        template_path: c.resolve(&template_path?),
        check_command,
        reload_command: reload_command?,
    })
}

fn text(value: &Option<Spanned<String>>) -> Option<&str> {
    value.as_ref().map(|v| v.get_ref().as_str()).filter(|v| !v.trim().is_empty())
}

/// The platform when the file names none: nginx if it has nginx keys (drove-gateway's
/// default), HAProxy if it has only HAProxy keys, else the native proxy.
pub(crate) fn implied_platform(file: &FileConfig) -> ProxyPlatform {
    if file.nginx_config.is_some() || file.nginx_template.is_some() || file.nginx_cmd.is_some() {
        ProxyPlatform::Nginx
    } else if file.haproxy_config.is_some() || file.haproxy_template.is_some() {
        ProxyPlatform::Haproxy
    } else {
        ProxyPlatform::Native
    }
}

/// drove-gateway's `^\d+s$` durations; anything else is `0s`, as there, with a warning.
fn seconds(c: &mut Checker<'_>, key: &str, value: Option<&Spanned<String>>) -> String {
    let Some(value) = value else { return "0s".into() };
    let v = value.get_ref().trim();
    let digits = v.strip_suffix('s').unwrap_or("");
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return v.to_string();
    }
    c.warn(Some(value.span()), format!("`{key}` must be whole seconds such as \"10s\"; using \"0s\""));
    "0s".into()
}

pub(crate) fn convert(c: &mut Checker<'_>, file: &FileConfig, platform: ProxyPlatform) -> Option<TemplatedSettings> {
    let (config, template, check, ignore_check, reload_disabled) = match platform {
        ProxyPlatform::Native => return None,
        ProxyPlatform::Nginx => (
            &file.nginx_config,
            &file.nginx_template,
            &file.nginx_cmd,
            file.nginx_ignore_check,
            &file.nginx_reload_disabled,
        ),
        ProxyPlatform::Haproxy => (
            &file.haproxy_config,
            &file.haproxy_template,
            &file.haproxy_cmd,
            file.haproxy_ignore_check,
            &file.haproxy_reload_disabled,
        ),
    };
    let name = match platform {
        ProxyPlatform::Nginx => "nginx",
        _ => "haproxy",
    };
    let api_only = reload_disabled.as_ref().filter(|f| *f.get_ref());
    let has_api = match platform {
        ProxyPlatform::Nginx => text(&file.nginxplusapiaddr).is_some(),
        _ => text(&file.haproxysocketaddr).is_some(),
    };
    if let Some(flag) = api_only.filter(|_| !has_api) {
        let api = if platform == ProxyPlatform::Nginx { "nginxplusapiaddr" } else { "haproxysocketaddr" };
        c.error(
            Some(flag.span()),
            format!("`{name}_reload_disabled` needs `{api}`: without reloads only the runtime API can change servers"),
        );
    }
    let files = if api_only.is_some() {
        c.warn(
            api_only.map(Spanned::span),
            format!("`{name}_reload_disabled`: nothing is rendered or reloaded; a new vhost needs the proxy's config changed by hand"),
        );
        None
    } else {
        config_files(c, file, platform, name, (config, template, check, ignore_check))
    };
    let alias = |c: &mut Checker<'_>, old: &str, new: &str, span| {
        c.warn(Some(span), format!("`{old}` is deprecated, please use `{new}` instead (it overrides `{new}`)"));
    };
    let mut max_fails = file.nginx_max_fails.as_ref().map_or(0, |v| *v.get_ref());
    if let Some(old) = &file.maxfailsupstream {
        alias(c, "maxfailsupstream", "nginx_max_fails", old.span());
        max_fails = *old.get_ref();
    }
    let fail_timeout = match &file.failtimeoutupstream {
        Some(old) => {
            alias(c, "failtimeoutupstream", "nginx_fail_timeout", old.span());
            seconds(c, "failtimeoutupstream", Some(old))
        }
        None => seconds(c, "nginx_fail_timeout", file.nginx_fail_timeout.as_ref()),
    };
    let slow_start = match &file.slowstartupstream {
        Some(old) => {
            alias(c, "slowstartupstream", "nginx_slow_start", old.span());
            seconds(c, "slowstartupstream", Some(old))
        }
        None => seconds(c, "nginx_slow_start", file.nginx_slow_start.as_ref()),
    };
    let nginx_plus_api = match (&file.nginxplusapiaddr, platform) {
        (Some(addr), ProxyPlatform::Nginx) if !addr.get_ref().trim().is_empty() => {
            match addr.get_ref().trim().parse::<std::net::SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.error(
                        Some(addr.span()),
                        "`nginxplusapiaddr` must be an IP address and port, such as \"127.0.0.1:8080\"",
                    );
                    None
                }
            }
        }
        (Some(addr), _) => {
            c.warn(Some(addr.span()), "`nginxplusapiaddr` only applies to the nginx engine; ignored");
            None
        }
        (None, _) => None,
    };
    let haproxy_state_file = match &file.haproxy_manage_global_server_state_file {
        Some(flag) if *flag.get_ref() => match (platform, text(&file.haproxy_global_server_state_file_path)) {
            (ProxyPlatform::Haproxy, Some(path)) => Some(HaproxyStateFile {
                path: c.resolve(path),
                config_path: text(&file.haproxy_config).map(|p| c.resolve(p)),
            }),
            (ProxyPlatform::Haproxy, None) => {
                c.error(
                    Some(flag.span()),
                    "`haproxy_manage_global_server_state_file` needs `haproxy_global_server_state_file_path` (HAProxy's `server-state-file`)",
                );
                None
            }
            _ => None,
        },
        _ => None,
    };
    let dns_timeout =
        positive_seconds(c, &file.dns_resolution_timeout_sec, "dns_resolution_timeout_sec", Duration::from_secs(2));
    let restart_hold = positive_seconds(
        c,
        &file.proxy_control_plane_timeout_sec,
        "proxy_control_plane_timeout_sec",
        Duration::from_secs(30),
    );
    let or = |value: &Option<String>, default: &str| value.clone().unwrap_or_else(|| default.to_string());
    let haproxy = HaproxyNaming {
        socket_addr: text(&file.haproxysocketaddr).unwrap_or_default().to_string(),
        add_server_attributes: or(&file.haproxy_add_server_attributes_string, ""),
        add_server_ssl_attributes: or(&file.haproxy_add_server_ssl_attributes_string, "ssl verify none"),
        server_name_prefix: or(&file.haproxy_server_name_prefix, "server"),
        server_name_host_port_separator: or(&file.haproxy_server_name_host_port_delimiter, "_"),
        backend_name_separator: or(&file.haproxy_backend_name_separator, "_"),
        backend_include_routing_tag_suffix: file.haproxy_backend_include_routing_tag_suffix.unwrap_or(false),
    };
    Some(TemplatedSettings {
        files,
        left_delimiter: or(&file.left_delimiter, "{{"),
        right_delimiter: or(&file.right_delimiter, "}}"),
        nginx_max_fails: max_fails,
        nginx_fail_timeout: fail_timeout,
        nginx_slow_start: slow_start,
        nginx_plus_api,
        haproxy_state_file,
        dns_timeout,
        restart_hold,
        haproxy,
    })
}
