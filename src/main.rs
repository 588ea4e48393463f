fn main() {
    println!("{}", tollgate_enforcer::PROBE_OBJECT.len());
}
