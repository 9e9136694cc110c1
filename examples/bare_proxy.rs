//! The floor for benchmarks (row P): the smallest Pingora 0.9 proxy to one upstream, built
//! with the same profile as Gatehouse. Gatehouse's own cost is what it adds on top of this.
//!
//! `bare_proxy LISTEN UPSTREAM [THREADS]`

#[path = "bare/mod.rs"]
mod bare;

fn main() {
    bare::main()
}
