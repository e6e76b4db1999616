//! Putting a rendered config in service: skip it when the file already says the same,
//! stage it beside the live file, have the proxy check the staged copy, swap it in, and
//! reload. A failed check leaves the live file as it was.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_files::Staged;

/// Which proxy reads the file: it decides how a file is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Nginx,
    Haproxy,
}

impl Platform {
    /// The reload command from the configured one: nginx's `-s reload` after `nginx_cmd`,
    /// HAProxy's `haproxy_reload_cmd` as written.
    pub fn reload_command(self, configured: &CommandLine) -> Vec<String> {
        match self {
            Platform::Nginx => configured.with(&["-s", "reload"]),
            Platform::Haproxy => configured.words(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Platform::Nginx => "nginx",
            Platform::Haproxy => "haproxy",
        }
    }
}

/// A command line split on whitespace, as drove-gateway does (`docker exec nginx nginx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(Vec<String>);

impl CommandLine {
    /// `None` for an empty or blank line.
    pub fn parse(line: &str) -> Option<Self> {
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        (!words.is_empty()).then_some(CommandLine(words))
    }

    /// The program and its arguments.
    pub fn words(&self) -> Vec<String> {
        self.0.clone()
    }

    fn with(&self, extra: &[&str]) -> Vec<String> {
        self.0.iter().cloned().chain(extra.iter().map(|s| s.to_string())).collect()
    }
}

/// How a config reaches the proxy.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub platform: Platform,
    pub config_path: PathBuf,
    /// `nginx_cmd` / `haproxy_cmd`; `None` skips the check (`*_ignore_check`).
    pub check: Option<CommandLine>,
    /// `nginx_cmd -s reload` / `haproxy_reload_cmd`; `None` when reloads are disabled.
    pub reload: Option<Vec<String>>,
    /// Longest a check or reload command may run.
    pub command_timeout: Duration,
}

impl Deployment {
    fn check_command(&self, staged: &Path) -> Option<Vec<String>> {
        let file = staged.to_string_lossy();
        self.check.as_ref().map(|c| match self.platform {
            Platform::Nginx => c.with(&["-t", "-c", &file]),
            Platform::Haproxy => c.with(&["-c", "-f", &file]),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The live file already had this content.
    Unchanged,
    Written {
        reloaded: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the {platform} check rejected the new config (the live file is unchanged): {output}")]
    Check { platform: &'static str, output: String },
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
}

/// Puts `text` in service as the live config file of `deployment`.
pub fn apply(text: &str, deployment: &Deployment) -> Result<Applied, ApplyError> {
    let path = &deployment.config_path;
    if std::fs::read(path).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(Applied::Unchanged);
    }
    let write_error = |source| ApplyError::Write { path: path.clone(), source };
    let staged = Staged::write(path, text.as_bytes()).map_err(write_error)?;
    if let Some(check) = deployment.check_command(staged.path()) {
        run(&check, deployment.command_timeout).map_err(|e| match e {
            ApplyError::Command { output, .. } => ApplyError::Check { platform: deployment.platform.name(), output },
            other => other,
        })?;
    }
    staged.commit().map_err(write_error)?;
    match &deployment.reload {
        Some(reload) => {
            run(reload, deployment.command_timeout)?;
            Ok(Applied::Written { reloaded: true })
        }
        None => Ok(Applied::Written { reloaded: false }),
    }
}

/// Runs a command to its end (or kills it at `timeout`); its output is the error when it
/// fails.
pub fn run(command: &[String], timeout: Duration) -> Result<(), ApplyError> {
    let shown = command.join(" ");
    let failed = |output: String| ApplyError::Command { command: shown.clone(), output };
    let Some((program, args)) = command.split_first() else {
        return Err(failed("empty command".into()));
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start: {e}")))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("still running after {timeout:?}; killed")));
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!("{status}: {}", stderr.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(dir: &Path, check: &str, reload: &str) -> Deployment {
        Deployment {
            platform: Platform::Nginx,
            config_path: dir.join("nginx.conf"),
            check: CommandLine::parse(check),
            reload: CommandLine::parse(reload).map(|c| c.0),
            command_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn checks_the_staged_copy_and_keeps_the_live_file_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("reloaded");
        let reload = format!("touch {}", marker.display());
        // `sh -c 'grep -q good "$3"' sh -t -c FILE` passes when the staged file says "good".
        let check = ["sh", "-c", "grep -q good \"$3\"", "sh"].map(String::from).to_vec();
        let d = Deployment { check: Some(CommandLine(check)), ..deployment(dir.path(), "", &reload) };
        assert_eq!(apply("good 1", &d).unwrap(), Applied::Written { reloaded: true });
        assert!(marker.exists());
        assert_eq!(apply("good 1", &d).unwrap(), Applied::Unchanged);
        let err = apply("bad", &d).unwrap_err();
        assert!(matches!(err, ApplyError::Check { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&d.config_path).unwrap(), "good 1", "the live file is unchanged");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no staged file left behind");
    }

    #[test]
    fn commands_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let d = deployment(dir.path(), "", "false");
        let err = apply("x", &d).unwrap_err().to_string();
        assert!(err.starts_with("`false` failed: exit status: 1"), "{err}");
        let err = run(&["/nonexistent/nginx".into()], Duration::from_secs(1)).unwrap_err().to_string();
        assert!(err.contains("cannot start"), "{err}");
        let err = run(&["sleep".into(), "5".into()], Duration::from_millis(100)).unwrap_err().to_string();
        assert!(err.contains("killed"), "{err}");
        assert_eq!(CommandLine::parse("  "), None);
        let docker = CommandLine::parse("docker exec nginx nginx").unwrap();
        assert_eq!(Platform::Nginx.reload_command(&docker).join(" "), "docker exec nginx nginx -s reload");
        assert_eq!(Platform::Haproxy.reload_command(&docker).join(" "), "docker exec nginx nginx");
    }
}
