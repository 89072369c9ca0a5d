//! A Postgres server a test owns: its own `initdb` in a temp folder, on its own loopback port,
//! which the test may stop, crash, freeze or configure (TLS, `pg_hba.conf`). The shared Postgres
//! on 5432 is never touched.
//!
//! Needs the Postgres server binaries (`/usr/lib/postgresql/<version>/bin`, or the folder in
//! `SESSIOND_TEST_PG_BIN`). As root, they run as the `postgres` user, since Postgres refuses root.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use tempfile::TempDir;

use super::free_addr;

/// A Postgres server in a temp folder, on a free loopback port. Dropping it stops it (immediate
/// mode) and deletes the folder, also when the test panics.
pub struct PostgresServer {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    running: bool,
    /// Whether its processes are stopped (SIGSTOP): alive, holding their sockets, answering nothing.
    frozen: bool,
}

impl PostgresServer {
    /// `initdb` (trust auth, superuser `postgres`), then starts it.
    pub fn init_and_start() -> Self {
        let mut postgres = Self::init();
        postgres.start();
        postgres
    }

    /// `initdb` (trust auth, superuser `postgres`), configured but not started.
    pub fn init() -> Self {
        let bin = postgres_bin();
        let dir = TempDir::new().unwrap();
        if running_as_root() {
            run(
                Command::new("chown").arg("postgres:").arg(dir.path()),
                "chown",
            );
        }
        let port = free_addr().port();
        let postgres = Self {
            bin,
            dir,
            port,
            running: false,
            frozen: false,
        };
        run(
            postgres
                .command("initdb")
                .arg("-D")
                .arg(postgres.data())
                .args(["--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]),
            "initdb",
        );
        postgres.append_conf(&format!(
            "\n# test server\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n\
             max_connections = 50\n\
             shared_buffers = 16MB\n\
             # The defaults, spelled out: a commit is acknowledged once it is in the WAL.\n\
             fsync = on\n\
             synchronous_commit = on\n",
            postgres.port,
            postgres.dir.path().display()
        ));
        postgres
    }

    /// Adds `text` to `postgresql.conf` (read at the next start).
    pub fn append_conf(&self, text: &str) {
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .unwrap();
        conf.write_all(text.as_bytes()).unwrap();
    }

    /// Replaces `pg_hba.conf` (read at the next start).
    pub fn set_hba(&self, text: &str) {
        std::fs::write(self.data().join("pg_hba.conf"), text).unwrap();
    }

    /// Writes `name` in the data folder, readable by the server alone (as a key file must be).
    pub fn write_private_file(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if running_as_root() {
            run(Command::new("chown").arg("postgres:").arg(&path), "chown");
        }
        path
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections (after crash recovery, if any).
    pub fn start(&mut self) {
        let log = self.dir.path().join("postgres.log");
        run(
            self.command("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(&log),
            "pg_ctl start",
        );
        self.running = true;
    }

    /// Stops the server as a crash would: no checkpoint, connections cut.
    pub fn stop_immediate(&mut self) {
        run(
            self.command("pg_ctl")
                .args(["stop", "-w", "-m", "immediate", "-D"])
                .arg(self.data()),
            "pg_ctl stop",
        );
        self.running = false;
    }

    /// Stops (SIGSTOP) the postmaster and every backend, as a hung host or a stuck disk would: the
    /// kernel still accepts connections and acknowledges data, but nothing answers.
    pub fn freeze(&mut self) {
        self.signal_all("-STOP");
        self.frozen = true;
    }

    /// Lets a frozen server run again.
    pub fn thaw(&mut self) {
        self.signal_all("-CONT");
        self.frozen = false;
    }

    /// Sends `signal` to this server's postmaster and its children, by pid.
    fn signal_all(&self, signal: &str) {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        let _ = Command::new("kill")
            .arg(signal)
            .args(pids.iter().map(u32::to_string))
            .status();
    }

    /// A command running `program` from the server binaries, as `postgres` when we are root.
    pub fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        command
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.frozen {
            self.signal_all("-CONT");
        }
        if self.running {
            let _ = self
                .command("pg_ctl")
                .args(["stop", "-w", "-m", "immediate", "-D"])
                .arg(self.data())
                .output();
        }
    }
}

/// The folder of the newest installed Postgres server binaries.
fn postgres_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("SESSIOND_TEST_PG_BIN") {
        return dir.into();
    }
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    newest.map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("no Postgres server binaries in {root:?}/<version>/bin; set SESSIOND_TEST_PG_BIN")
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {what}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed with {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
