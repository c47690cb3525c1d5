//! The host the kind substrate and `cdcheck doctor` act on, behind one trait: commands
//! to run, files to read, free disk space. [`SystemHost`] is the machine itself; tests
//! drive a scripted host instead, so "tool missing", "wrong version" or "limits too low"
//! need no change to the machine.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A command cdcheck runs: the typed step of a plan, shown to users as a shell line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    /// Extra environment for this command only (e.g. `KIND_EXPERIMENTAL_PROVIDER`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Text fed to the command's standard input (e.g. a manifest for `kubectl apply -f -`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

impl Cmd {
    pub fn new<I, S>(program: &str, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd {
            program: program.to_string(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            stdin: None,
        }
    }

    pub fn with_stdin(mut self, text: String) -> Cmd {
        self.stdin = Some(text);
        self
    }

    pub fn with_env(mut self, name: &str, value: &str) -> Cmd {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '@' | ',' | '+')
        });
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in &self.env {
            write!(f, "{name}={} ", shell_quote(value))?;
        }
        write!(f, "{}", shell_quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(arg))?;
        }
        if self.stdin.is_some() {
            write!(f, " <<'EOF' ... EOF")?;
        }
        Ok(())
    }
}

/// What a finished command left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last non-empty lines of stderr (else stdout), for an error message.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }
}

/// The machine cdcheck acts on.
pub trait Host {
    /// Runs a command to completion. `Err` only when it could not be started
    /// (`ErrorKind::NotFound`: the program is not installed).
    fn run(&self, cmd: &Cmd) -> std::io::Result<Output>;
    /// Reads a text file (`/proc/meminfo`, `/proc/sys/fs/inotify/...`).
    fn read_file(&self, path: &Path) -> std::io::Result<String>;
    /// Bytes free for an unprivileged user on the file system that holds (or would hold) `path`.
    fn free_bytes(&self, path: &Path) -> std::io::Result<u64>;
    /// Writes a file cdcheck generates (the kind config, the Istio overlay), mode 0600.
    fn write_file(&self, path: &Path, contents: &str) -> std::io::Result<()>;
    /// Removes a directory cdcheck created, and everything in it.
    fn remove_dir(&self, path: &Path) -> std::io::Result<()>;
}

/// The machine itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn run(&self, cmd: &Cmd) -> std::io::Result<Output> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut command = Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = command.spawn()?;
        if let (Some(text), Some(mut stdin)) = (&cmd.stdin, child.stdin.take()) {
            stdin.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn free_bytes(&self, path: &Path) -> std::io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = existing_ancestor(path);
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a NUL-terminated path and a zeroed statvfs the call fills in.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        #[allow(clippy::unnecessary_cast)]
        Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
    }

    fn write_file(&self, path: &Path, contents: &str) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents.as_bytes())
    }

    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// The first existing ancestor of `path` (free space is asked of a directory that exists).
pub fn existing_ancestor(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    while !current.exists() {
        match current.parent() {
            Some(parent) => current = parent.to_path_buf(),
            None => return PathBuf::from("/"),
        }
    }
    current
}

/// A command that did not do its job: it could not start, or it exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{purpose}: `{cmd}` could not be started")]
    Spawn {
        purpose: String,
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{purpose}: `{cmd}` exited with {code}: {tail}")]
    Failed {
        purpose: String,
        cmd: String,
        code: String,
        tail: String,
    },
}

/// Runs `cmd` on `host` for `purpose`; its output when it exits 0.
pub fn output(host: &dyn Host, purpose: &str, cmd: &Cmd) -> Result<Output, CommandError> {
    let out = host.run(cmd).map_err(|source| CommandError::Spawn {
        purpose: purpose.to_string(),
        cmd: cmd.to_string(),
        source,
    })?;
    if out.success() {
        Ok(out)
    } else {
        Err(CommandError::Failed {
            purpose: purpose.to_string(),
            cmd: cmd.to_string(),
            code: out
                .code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "a signal".into()),
            tail: out.tail(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_prints_as_a_shell_line_quoting_only_what_needs_it() {
        let cmd = Cmd::new("kubectl", ["get", "cm", "-o", "jsonpath={.data}", "a b"])
            .with_env("KIND_EXPERIMENTAL_PROVIDER", "podman");
        assert_eq!(
            cmd.to_string(),
            "KIND_EXPERIMENTAL_PROVIDER=podman kubectl get cm -o 'jsonpath={.data}' 'a b'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_system_host_reports_a_missing_program_as_not_found() {
        let error = SystemHost
            .run(&Cmd::new("cdcheck-no-such-program-4f1c", ["--version"]))
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
        // Control: a program that exists runs, and its exit code and output are kept.
        let out = SystemHost
            .run(&Cmd::new("sh", ["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (Some(3), "out\n", "err\n")
        );
        let fed = SystemHost
            .run(&Cmd::new("cat", Vec::<String>::new()).with_stdin("fed".into()))
            .unwrap();
        assert_eq!(fed.stdout, "fed");
    }
}
