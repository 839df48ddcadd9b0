//! Run inputs through a harness on stable, with timing and the panic's
//! backtrace (`RUST_BACKTRACE=1`):
//!
//!     cargo run --example replay -- <ini|config_file|values> FILE...
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay <ini|config_file|values> FILE...");
    let harness: fn(&[u8]) = match target.as_str() {
        "ini" => mkosi_fuzz::ini,
        "config_file" => mkosi_fuzz::config_file,
        "values" => mkosi_fuzz::values,
        t => panic!("unknown target {t}"),
    };
    for file in args {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let start = Instant::now();
        harness(&data);
        eprintln!("{file}: ok in {:.1} ms", start.elapsed().as_secs_f64() * 1000.0);
    }
}
