//! A scripted [`Host`] for the kind and doctor tests: commands answer from a table
//! (first matching prefix wins, unknown programs are "not installed"), files from a map,
//! and every command and write is recorded, so a test can drive "tool missing", "wrong
//! version" or "limits too low" and read back exactly what cdcheck would have run.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cdcheck::substrate::host::{Cmd, Host, Output};

const GIB: u64 = 1024 * 1024 * 1024;

pub struct FakeHost {
    /// `(command line prefix, answer)`; `None` answers "not installed".
    answers: Vec<(String, Option<Output>)>,
    pub files: BTreeMap<PathBuf, String>,
    pub free: u64,
    pub ran: Mutex<Vec<Cmd>>,
    pub written: Mutex<Vec<PathBuf>>,
    pub removed: Mutex<Vec<PathBuf>>,
}

pub fn ok(stdout: &str) -> Option<Output> {
    Some(Output {
        code: Some(0),
        stdout: stdout.to_string(),
        stderr: String::new(),
    })
}

pub fn fails(code: i32, stderr: &str) -> Option<Output> {
    Some(Output {
        code: Some(code),
        stdout: String::new(),
        stderr: stderr.to_string(),
    })
}

impl FakeHost {
    /// A machine where everything the kind substrate needs is present at the pins.
    pub fn ready() -> FakeHost {
        let mut files = BTreeMap::new();
        files.insert(
            PathBuf::from("/proc/sys/fs/inotify/max_user_watches"),
            "524288\n".to_string(),
        );
        files.insert(
            PathBuf::from("/proc/sys/fs/inotify/max_user_instances"),
            "512\n".to_string(),
        );
        files.insert(
            PathBuf::from("/proc/meminfo"),
            "MemTotal: 33554432 kB\nMemAvailable: 16777216 kB\n".to_string(),
        );
        let mut host = FakeHost {
            answers: Vec::new(),
            files,
            free: 100 * GIB,
            ran: Mutex::new(Vec::new()),
            written: Mutex::new(Vec::new()),
            removed: Mutex::new(Vec::new()),
        };
        host.answer("docker info --format '{{.ServerVersion}}'", ok("29.1.0\n"));
        host.answer(
            "docker info --format '{{.DockerRootDir}}'",
            ok("/var/lib/docker\n"),
        );
        host.answer(
            "kind version",
            ok(&format!(
                "kind {} go1.25.4 linux/amd64\n",
                cdcheck::versions::KIND
            )),
        );
        host.answer(
            "istioctl version --remote=false",
            ok(&format!(
                "client version: {}\n",
                cdcheck::versions::ISTIOCTL
            )),
        );
        host.answer(
            "kubectl version --client -o json",
            ok(&format!(
                r#"{{"clientVersion":{{"gitVersion":"{}"}}}}"#,
                cdcheck::versions::KUBECTL
            )),
        );
        host
    }

    /// Answers commands whose line starts with `prefix` (added first: wins over older answers).
    pub fn answer(&mut self, prefix: &str, output: Option<Output>) {
        self.answers.insert(0, (prefix.to_string(), output));
    }

    pub fn lines(&self) -> Vec<String> {
        self.ran
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect()
    }
}

impl Host for FakeHost {
    fn run(&self, cmd: &Cmd) -> std::io::Result<Output> {
        self.ran.lock().unwrap().push(cmd.clone());
        let line = cmd.to_string();
        let not_found = || std::io::Error::new(std::io::ErrorKind::NotFound, "not installed");
        for (prefix, answer) in &self.answers {
            if line.starts_with(prefix.as_str()) {
                return answer.clone().ok_or_else(not_found);
            }
        }
        // Tools the table knows (kind, kubectl...) succeed silently on other subcommands;
        // a program no answer names is not installed.
        let known = self
            .answers
            .iter()
            .any(|(p, a)| a.is_some() && p.split(' ').next() == Some(cmd.program.as_str()));
        if known {
            Ok(ok("").unwrap())
        } else {
            Err(not_found())
        }
    }

    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }

    fn free_bytes(&self, _path: &Path) -> std::io::Result<u64> {
        Ok(self.free)
    }

    fn write_file(&self, path: &Path, _contents: &str) -> std::io::Result<()> {
        self.written.lock().unwrap().push(path.to_path_buf());
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        self.removed.lock().unwrap().push(path.to_path_buf());
        Ok(())
    }
}
