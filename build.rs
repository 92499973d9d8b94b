// The migrations are embedded in the binary (`sqlx::migrate!`); without this,
// adding or editing one alone does not rebuild it, and the binary and the
// tests run the old set.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
