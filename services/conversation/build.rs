// Re-embed migrations when a file is added (refinery's macro does not track the folder).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/conversation");
}
