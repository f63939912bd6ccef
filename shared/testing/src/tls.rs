//! A certificate authority of the test's own.

use std::process::Command;

use super::{TempDir, run};

/// A certificate authority of the test's own (openssl), and one server certificate
/// it signed, for `localhost` and 127.0.0.1. `ca.crt` is what `DATABASE_CA_FILE` /
/// `REDIS_CA_FILE` point at; `server.crt` / `server.key` are the server's.
pub struct TestCa {
    pub dir: TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = TempDir::new("ca");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-keyout", &dir.file("ca.key"), "-out", &dir.file("ca.crt")])
            .args(["-days", "2", "-subj", "/CN=kai-test-ca"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
        run(Command::new("openssl")
            .arg("req")
            .args(ec)
            .args([
                "-keyout",
                &dir.file("server.key"),
                "-out",
                &dir.file("server.csr"),
            ])
            .args(["-subj", "/CN=localhost"]));
        std::fs::write(
            dir.file("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write extensions");
        run(Command::new("openssl")
            .args(["x509", "-req", "-in", &dir.file("server.csr")])
            .args(["-CA", &dir.file("ca.crt"), "-CAkey", &dir.file("ca.key")])
            .args([
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &dir.file("server.crt"),
            ])
            .args(["-extfile", &dir.file("server.ext")]));
        Self { dir }
    }

    pub fn ca_file(&self) -> String {
        self.dir.file("ca.crt")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
