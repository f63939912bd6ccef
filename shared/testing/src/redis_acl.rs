//! The shipped Redis ACL file (`docker/redis/users.acl`, the dev overlay's copy
//! is identical) as tests use it: rendered for a test's key prefix, applied to a
//! private server user by user (`ACL SETUSER`), and the URL a service connects
//! with as its user.

/// The file every deployment loads (`aclfile`).
pub const ACL_FILE: &str = include_str!("../../../docker/redis/users.acl");

/// The example password of a shipped user (`kai-journal` →
/// `kai-journal-example-password`; the file holds its SHA-256).
pub fn example_password(user: &str) -> String {
    format!("{user}-example-password")
}

/// The file with every key and channel pattern moved from the shipped prefix
/// `kai` to `prefix`.
pub fn render(prefix: &str) -> String {
    ACL_FILE
        .replace("~kai:", &format!("~{prefix}:"))
        .replace("&kai:", &format!("&{prefix}:"))
}

/// Each `user` line of the rendered file: the user's name and its rules.
pub fn users(prefix: &str) -> Vec<(String, Vec<String>)> {
    render(prefix)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("user")).then(|| {
                let name = words.next().expect("a user name").to_owned();
                (name, words.map(str::to_owned).collect())
            })
        })
        .collect()
}

/// Creates the file's users on the server `conn` is connected to (as an
/// administrator), with patterns for `prefix` — all but `default`, which stays
/// the test's own administrator.
pub fn apply(conn: &mut redis::Connection, prefix: &str) {
    for (name, rules) in users(prefix) {
        if name == "default" {
            continue;
        }
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(&name).arg("reset").arg(&rules);
        cmd.query::<()>(conn)
            .unwrap_or_else(|e| panic!("ACL SETUSER {name}: {e}"));
    }
}

/// `url` (`redis://host:port…`) with `user` and its example password.
pub fn url_as(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a Redis URL");
    format!("{scheme}://{user}:{}@{rest}", example_password(user))
}
